// The `keywatch` command as a user runs it: help, config errors, migrate, ingest (file, stdin, JSON), and the
// running instance that owns the embedded data directory.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import type { Storage } from '../clickhouse/client.ts'
import { usageEvent } from '../contract/synthetic.ts'
import { contractExamples, count, openTestStorage, runCli, startKeywatch, tempDir } from './helpers.ts'

const work = tempDir('keywatch-cli-')
const good = contractExamples()
  .filter((e) => e.type !== 'key.command')
  .map((e) => e.line)
const goodFile = join(work, 'good.ndjson')
writeFileSync(goodFile, good.join('\n') + '\n')
const mixedFile = join(work, 'mixed.ndjson')
writeFileSync(mixedFile, [JSON.stringify(usageEvent(1)), 'garbage', JSON.stringify({ ...usageEvent(2), status: 42 })].join('\n') + '\n')

let storage: Storage | undefined
afterAll(async () => {
  await storage?.close()
})

describe('keywatch CLI', () => {
  it('prints help listing its commands', async () => {
    const r = await runCli(['--help'], {})
    expect(r.code).toBe(0)
    for (const command of ['start', 'migrate', 'ingest']) expect(r.stdout).toContain(command)
  })

  it.each([
    ['PORT', 'abc', 'port number'],
    ['KAFKA_BROKERS', 'nope', 'host:port'],
    ['CLICKHOUSE_URL', 'not a url', 'URL'],
    ['INGEST_BATCH_MAX_ROWS', '-5', 'positive integer'],
    ['LOG_LEVEL', 'loud', 'LOG_LEVEL'],
  ])('stops on a wrong %s and names it', async (name, value, expects) => {
    const r = await runCli(['migrate'], { [name]: value, KEYWATCH_DATA_DIR: tempDir() })
    expect(r.code).toBe(2)
    expect(r.stderr).toContain(name)
    expect(r.stderr).toContain(expects)
  })

  it('migrates once and is safe to rerun', async () => {
    const dataDir = tempDir()
    const first = await runCli(['migrate'], { KEYWATCH_DATA_DIR: dataDir })
    expect(first.code).toBe(0)
    expect(first.stdout).toContain('applied  001_events')
    const second = await runCli(['migrate'], { KEYWATCH_DATA_DIR: dataDir })
    expect(second.code).toBe(0)
    expect(second.stdout).toContain('0 applied now')
  })

  it('ingests a file: summary, exit 0 when all accepted, duplicates on a second run', async () => {
    const dataDir = tempDir()
    const first = await runCli(['ingest', goodFile], { KEYWATCH_DATA_DIR: dataDir })
    expect(first.code).toBe(0)
    expect(first.stdout).toMatch(new RegExp(`accepted\\s+${good.length}\\n`))
    const again = await runCli(['ingest', goodFile, '--json'], { KEYWATCH_DATA_DIR: dataDir })
    expect(again.code).toBe(0)
    expect(JSON.parse(again.stdout)).toMatchObject({ accepted: 0, duplicates: good.length, rejected: 0 })
  })

  it('exits 1 when a line is rejected, naming line and reason; reads stdin with -', async () => {
    const dataDir = tempDir()
    const r = await runCli(['ingest', mixedFile], { KEYWATCH_DATA_DIR: dataDir })
    expect(r.code).toBe(1)
    expect(r.stdout).toContain('line 2: invalid_json')
    expect(r.stdout).toContain('line 3: schema_violation: status')
    const piped = await runCli(['ingest', '-', '--json'], { KEYWATCH_DATA_DIR: dataDir }, [JSON.stringify(usageEvent(3)), 'x'].join('\n'))
    expect(piped.code).toBe(1)
    expect(JSON.parse(piped.stdout)).toMatchObject({ accepted: 1, rejected: 1, rejectedByReason: { invalid_json: 1 } })
  })

  it('goes through the running instance that holds the data directory, and never shows a raw engine error', async () => {
    const dataDir = tempDir()
    const keywatch = await startKeywatch({ KEYWATCH_DATA_DIR: dataDir })
    try {
      const ingest = await runCli(['ingest', goodFile, '--json'], { KEYWATCH_DATA_DIR: dataDir })
      expect(ingest.code).toBe(0)
      expect(JSON.parse(ingest.stdout)).toMatchObject({ accepted: good.length, rejected: 0 })

      const migrate = await runCli(['migrate'], { KEYWATCH_DATA_DIR: dataDir })
      expect(migrate.code).toBe(1)
      expect(migrate.stderr).toContain(`pid ${keywatch.child.pid}`)
      expect(migrate.stderr + migrate.stdout).not.toMatch(/Code: 76|Cannot lock/)

      const posted = await fetch(`${keywatch.url}/v1/events`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-ndjson' },
        body: [JSON.stringify(usageEvent(7)), '{"broken"'].join('\n'),
      })
      expect(posted.status).toBe(200)
      expect(await posted.json()).toMatchObject({ accepted: 1, rejected: 1, errors: [{ line: 2, reason: 'invalid_json' }] })

      const wrongType = await fetch(`${keywatch.url}/v1/events`, { method: 'POST', headers: { 'content-type': 'application/xml' }, body: '<x/>' })
      expect(wrongType.status).toBe(415)
      expect(await wrongType.json()).toMatchObject({ error: { code: 'unsupported_media_type' } })

      expect((await fetch(`${keywatch.url}/readyz`)).status).toBe(200)
    } finally {
      keywatch.child.kill('SIGTERM')
      expect(await keywatch.exited).toBe(0)
    }
    storage = await openTestStorage(dataDir)
    expect(await count(storage, 'SELECT count() AS n FROM event_ids')).toBe(good.length + 1)
  })

  it('says which process holds the directory when no instance note exists', async () => {
    const dataDir = tempDir()
    const keywatch = await startKeywatch({ KEYWATCH_DATA_DIR: dataDir })
    try {
      // `keywatch start` with a second API port on the same directory: refused with the holder's pid.
      const second = await runCli(['start'], { KEYWATCH_DATA_DIR: dataDir, PORT: '0' })
      expect(second.code).toBe(1)
      expect(second.stderr).toContain(`held by another keywatch process (pid ${keywatch.child.pid})`)
      expect(second.stderr).not.toMatch(/Code: 76|Cannot lock/)
    } finally {
      keywatch.child.kill('SIGTERM')
      await keywatch.exited
    }
  })
})
