// The `keywatch` command as a user runs it, as real child processes: help, config errors, migrate, ingest (file,
// stdin, JSON), and the running `keywatch start` that owns the embedded data directory.
import { randomUUID } from 'node:crypto'
import { existsSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { queryRows, type Storage } from '../clickhouse/client.ts'
import { usageEvent } from '../contract/synthetic.ts'
import { contractExamples, count, openTestStorage, repoRoot, runCli, startKeywatch, tempDir } from './helpers.ts'

const work = tempDir('keywatch-cli-')
const examples = contractExamples()
  .filter((e) => e.type !== 'key.command')
  .map((e) => e.line)
const examplesFile = join(work, 'examples.ndjson')
writeFileSync(examplesFile, examples.join('\n') + '\n')
const mixedFile = join(work, 'mixed.ndjson')
writeFileSync(mixedFile, [JSON.stringify(usageEvent(1)), 'garbage', JSON.stringify({ ...usageEvent(2), status: 42 }), JSON.stringify(usageEvent(3))].join('\n') + '\n')

const RAW_ENGINE_ERROR = /Code: 76|Cannot lock|DB::Exception/
const STACK_FRAME = /^\s+at .+:\d+:\d+\)?$/m
const summaryOf = (stdout: string) => JSON.parse(stdout) as { accepted: number; duplicates: number; rejected: number; rejectedByReason: Record<string, number>; lines: number }

describe('keywatch CLI', () => {
  it('prints help listing its commands', async () => {
    const r = await runCli(['--help'], {})
    expect(r.code).toBe(0)
    const commands = r.stdout.slice(r.stdout.indexOf('Commands:'))
    for (const command of ['start', 'migrate', 'ingest']) expect(commands).toMatch(new RegExp(`^  ${command}\\b`, 'm'))
  })

  it.each([
    ['PORT', 'abc', 'port number', ['start']],
    ['PORT', '70000', 'port number', ['start']],
    ['KAFKA_BROKERS', 'nope', 'host:port', ['start']],
    ['CLICKHOUSE_URL', 'not a url', 'URL', ['migrate']],
    ['INGEST_BATCH_MAX_ROWS', '-5', 'positive integer', ['ingest', mixedFile]],
    ['LOG_LEVEL', 'loud', 'LOG_LEVEL', ['migrate']],
  ])('stops on %s=%s with exit 2 and names the variable', async (name, value, expects, args) => {
    const dataDir = tempDir()
    const r = await runCli(args, { [name]: value, KEYWATCH_DATA_DIR: dataDir })
    expect(r.code).toBe(2)
    expect(r.stderr).toContain(`${name}=${JSON.stringify(value)}`)
    expect(r.stderr).toContain(expects)
    expect(r.stderr).not.toMatch(STACK_FRAME)
    expect(r.stdout).toBe('')
    expect(readdirSync(dataDir)).toEqual([]) // nothing was opened
  })

  it('migrates once and is safe to rerun', async () => {
    const dataDir = tempDir()
    const first = await runCli(['migrate'], { KEYWATCH_DATA_DIR: dataDir })
    expect(first.code, first.stderr).toBe(0)
    expect(first.stdout).toContain('applied  001_events')
    const migrations = readdirSync(join(repoRoot, 'clickhouse', 'migrations')).filter((f) => f.endsWith('.sql'))
    for (const m of migrations) expect(first.stdout).toContain(`applied  ${m.replace(/\.sql$/, '')}`)
    const second = await runCli(['migrate'], { KEYWATCH_DATA_DIR: dataDir })
    expect(second.code, second.stderr).toBe(0)
    expect(second.stdout).not.toContain('applied  ')
    expect(second.stdout).toContain(`0 applied now, ${migrations.length} before`)
  }, 180_000) // two runs of the CLI, on a busy machine

  describe('ingest', () => {
    const dataDir = tempDir()

    it('prints the summary and exits 0 when every line was accepted', async () => {
      const r = await runCli(['ingest', examplesFile], { KEYWATCH_DATA_DIR: dataDir })
      expect(r.code, r.stderr).toBe(0)
      expect(r.stdout).toMatch(new RegExp(`^accepted\\s+${examples.length}$`, 'm'))
      expect(r.stdout).toMatch(/^duplicates\s+0$/m)
      expect(r.stdout).toMatch(/^rejected\s+0$/m)
    })

    it('prints JSON with --json; a second run finds duplicates', async () => {
      const r = await runCli(['ingest', examplesFile, '--json'], { KEYWATCH_DATA_DIR: dataDir })
      expect(r.code, r.stderr).toBe(0)
      expect(summaryOf(r.stdout)).toMatchObject({ accepted: 0, duplicates: examples.length, rejected: 0, rejectedByReason: {}, lines: examples.length })
    })

    it('exits 1 when a line was rejected, naming its line and reason', async () => {
      const r = await runCli(['ingest', mixedFile], { KEYWATCH_DATA_DIR: dataDir })
      expect(r.code).toBe(1)
      expect(r.stdout).toMatch(/^accepted\s+2$/m)
      expect(r.stdout).toMatch(/^rejected\s+2$/m)
      expect(r.stdout).toContain('line 2: invalid_json')
      expect(r.stdout).toContain('line 3: schema_violation: status')
      const json = await runCli(['ingest', mixedFile, '--json'], { KEYWATCH_DATA_DIR: dataDir })
      expect(json.code).toBe(1)
      expect(summaryOf(json.stdout)).toMatchObject({ accepted: 0, duplicates: 2, rejected: 2, rejectedByReason: { invalid_json: 1, schema_violation: 1 } })
    })

    it('reads stdin with -', async () => {
      const input = [JSON.stringify(usageEvent(4)), 'x', JSON.stringify(usageEvent(5))].join('\n')
      const r = await runCli(['ingest', '-', '--json'], { KEYWATCH_DATA_DIR: dataDir }, input)
      expect(r.code).toBe(1)
      expect(summaryOf(r.stdout)).toMatchObject({ accepted: 2, duplicates: 0, rejected: 1, rejectedByReason: { invalid_json: 1 }, lines: 3 })
      const clean = await runCli(['ingest', '-', '--json'], { KEYWATCH_DATA_DIR: dataDir }, JSON.stringify(usageEvent(6)) + '\n')
      expect(clean.code).toBe(0)
      expect(summaryOf(clean.stdout)).toMatchObject({ accepted: 1, rejected: 0 })
    })

    // The embedded engine takes a process's piped stdin as data for its INSERTs (chdb-io/chdb-core#239): on a fresh
    // directory the migrations' own inserts met the piped events and failed.
    it('reads stdin with - on a fresh data directory, large input included', async () => {
      const input = Array.from({ length: 20_000 }, (_, i) => JSON.stringify(usageEvent(100_000 + i))).join('\n')
      const r = await runCli(['ingest', '-', '--json'], { KEYWATCH_DATA_DIR: tempDir() }, input)
      expect(r.code, r.stderr).toBe(0)
      expect(summaryOf(r.stdout)).toMatchObject({ accepted: 20_000, rejected: 0 })
    })

    // On 2 cores decoding stays on the main thread by default; with workers (INGEST_DECODE_WORKERS) a file's report
    // is the same, line numbers and reasons included.
    it('reports the same with decoding on worker threads as inline', async () => {
      const file = join(work, 'workers.ndjson')
      const lines = Array.from({ length: 12_000 }, (_, i) => JSON.stringify(usageEvent(200_000 + i)))
      lines[777] = '{"type":'
      lines[6_001] = JSON.stringify({ ...usageEvent(1), status: 'ok' })
      lines[11_999] = JSON.stringify({ ...usageEvent(2), type: 'key.sneeze' })
      writeFileSync(file, lines.join('\n'))
      const pooled = await runCli(['ingest', file, '--json'], { KEYWATCH_DATA_DIR: tempDir(), INGEST_DECODE_WORKERS: '2' })
      const inline = await runCli(['ingest', file, '--json'], { KEYWATCH_DATA_DIR: tempDir(), INGEST_DECODE_WORKERS: '0' })
      expect(pooled.code, pooled.stderr).toBe(1)
      const report = summaryOf(pooled.stdout)
      expect(report).toMatchObject({ lines: 12_000, accepted: 11_997, duplicates: 0, rejected: 3, rejectedByReason: { invalid_json: 1, schema_violation: 1, unknown_type: 1 } })
      expect(report).toEqual(summaryOf(inline.stdout))
      expect((report as unknown as { errors: { line: number }[] }).errors.map((e) => e.line)).toEqual([778, 6_002, 12_000])
    }, 180_000)

    it('says plainly that a file does not exist', async () => {
      const missing = join(work, 'no-such-file.ndjson')
      const r = await runCli(['ingest', missing], { KEYWATCH_DATA_DIR: dataDir })
      expect(r.code).not.toBe(0)
      expect(r.stderr).toContain(missing)
      expect(r.stderr).not.toMatch(STACK_FRAME)
    })
  })

  describe('while `keywatch start` holds the data directory', () => {
    const dataDir = tempDir()
    let keywatch: Awaited<ReturnType<typeof startKeywatch>>
    let storage: Storage | undefined
    // More than Fastify's 1 MiB body limit: the file must be streamed to the instance, not buffered.
    const bigFile = join(work, 'big.ndjson')
    const bigEvents = Array.from({ length: 5_000 }, (_, i) => usageEvent(100_000 + i, { keys: 40 }))
    const bigLines = bigEvents.map((e) => JSON.stringify(e))
    bigLines.splice(1_000, 0, '{"not json')
    bigLines.splice(4_000, 0, JSON.stringify({ ...usageEvent(7), type: 'key.exploded' }))
    bigLines.splice(4_500, 0, JSON.stringify({ ...usageEvent(8), occurred_at: new Date(Date.now() + 3_600_000).toISOString() }))
    writeFileSync(bigFile, bigLines.join('\n') + '\n')
    const posted = [{ ...usageEvent(9), request_id: `req_posted_${randomUUID()}` }, { ...usageEvent(10), request_id: `req_posted_${randomUUID()}` }]

    let auth: { authorization: string }

    beforeAll(async () => {
      keywatch = await startKeywatch({ KEYWATCH_DATA_DIR: dataDir, PORT: '0' })
      // Created through the running instance (the CLI signs in with the token only the data directory holds).
      const created = await runCli(['token', 'create', '--role', 'ingest', '--name', 'platform', '--json'], { KEYWATCH_DATA_DIR: dataDir })
      expect(created.code, created.stderr).toBe(0)
      auth = { authorization: `Bearer ${(JSON.parse(created.stdout) as { token: string }).token}` }
    })

    it('refuses the API without a valid token, and the CLI lists tokens without their secrets', async () => {
      const none = await fetch(`${keywatch.url}/v1/events`, { method: 'POST', headers: { 'content-type': 'application/x-ndjson' }, body: '{}\n' })
      expect(none.status).toBe(401)
      const wrong = await fetch(`${keywatch.url}/v1/events`, { method: 'POST', headers: { 'content-type': 'application/x-ndjson', authorization: 'Bearer kw_' + 'x'.repeat(32) }, body: '{}\n' })
      expect(wrong.status).toBe(401)
      const listed = await runCli(['token', 'list', '--json'], { KEYWATCH_DATA_DIR: dataDir })
      const tokens = JSON.parse(listed.stdout) as Record<string, unknown>[]
      expect(tokens).toEqual([expect.objectContaining({ name: 'platform', role: 'ingest', created_by: expect.stringMatching(/^cli:/) })])
      expect(listed.stdout).not.toContain(auth.authorization.slice(7))
      expect(Object.keys(tokens[0]!)).not.toContain('token_hash')
    })
    afterAll(async () => {
      if (keywatch && keywatch.child.exitCode === null && keywatch.child.signalCode === null) {
        keywatch.child.kill('SIGKILL')
        await keywatch.exited
      }
      await storage?.close()
    })

    it('ingests a file through the running instance', async () => {
      const r = await runCli(['ingest', bigFile, '--json'], { KEYWATCH_DATA_DIR: dataDir })
      expect(r.stderr).not.toMatch(RAW_ENGINE_ERROR)
      expect(r.code).toBe(1) // three lines were rejected
      expect(summaryOf(r.stdout)).toMatchObject({
        lines: 5_003,
        accepted: 5_000,
        duplicates: 0,
        rejected: 3,
        rejectedByReason: { invalid_json: 1, unknown_type: 1, future_timestamp: 1 },
      })
      const text = await runCli(['ingest', bigFile], { KEYWATCH_DATA_DIR: dataDir })
      expect(text.code).toBe(1)
      expect(text.stdout).toMatch(/^duplicates\s+5000$/m)
      expect(text.stdout).toContain('line 1001: invalid_json')
    })

    it('ingests stdin through the running instance', async () => {
      const r = await runCli(['ingest', '-', '--json'], { KEYWATCH_DATA_DIR: dataDir }, examples.join('\n') + '\n')
      expect(r.code, r.stderr).toBe(0)
      expect(summaryOf(r.stdout)).toMatchObject({ accepted: examples.length, duplicates: 0, rejected: 0 })
    })

    it('refuses `migrate`, naming the pid that holds the directory, without an engine error', async () => {
      const r = await runCli(['migrate'], { KEYWATCH_DATA_DIR: dataDir })
      expect(r.code).not.toBe(0)
      expect(r.stderr).toContain(`pid ${keywatch.child.pid}`)
      expect(r.stderr).toContain(dataDir)
      expect(r.stderr + r.stdout).not.toMatch(RAW_ENGINE_ERROR)
      expect(r.stderr).not.toMatch(STACK_FRAME)
    })

    it('refuses a second `start` on the same directory, naming the holder', async () => {
      const r = await runCli(['start'], { KEYWATCH_DATA_DIR: dataDir, PORT: '0' })
      expect(r.code).not.toBe(0)
      expect(r.stderr).toContain(`pid ${keywatch.child.pid}`)
      expect(r.stderr + r.stdout).not.toMatch(RAW_ENGINE_ERROR)
    })

    it('answers POST /v1/events with the summary', async () => {
      const res = await fetch(`${keywatch.url}/v1/events`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-ndjson', ...auth },
        body: [JSON.stringify(posted[0]), '{"broken"', JSON.stringify(posted[1])].join('\n') + '\n',
      })
      expect(res.status).toBe(200)
      expect(res.headers.get('content-type')).toContain('application/json')
      expect(await res.json()).toMatchObject({
        lines: 3,
        accepted: 2,
        duplicates: 0,
        rejected: 1,
        rejectedByReason: { invalid_json: 1 },
        errors: [{ line: 2, reason: 'invalid_json' }],
      })
    })

    it('takes the NDJSON content types with a charset parameter', async () => {
      for (const type of ['application/x-ndjson; charset=utf-8', 'application/ndjson']) {
        const res = await fetch(`${keywatch.url}/v1/events`, { method: 'POST', headers: { 'content-type': type, ...auth }, body: JSON.stringify(posted[0]) + '\n' })
        expect(res.status, type).toBe(200)
        expect(await res.json()).toMatchObject({ accepted: 0, duplicates: 1, rejected: 0 }) // stored by the POST above
      }
    })

    it('refuses a body that is not NDJSON with 415 and the JSON error shape', async () => {
      const res = await fetch(`${keywatch.url}/v1/events`, { method: 'POST', headers: { 'content-type': 'application/xml', ...auth }, body: '<event/>' })
      expect(res.status).toBe(415)
      const body = (await res.json()) as { error: { code: string; message: string } }
      expect(body).toEqual({ error: { code: 'unsupported_media_type', message: expect.any(String) } })
      expect(body.error.message).not.toBe('')
      // A JSON body (one event, not NDJSON) is refused too, and told what to send.
      const json = await fetch(`${keywatch.url}/v1/events`, { method: 'POST', headers: { 'content-type': 'application/json', ...auth }, body: JSON.stringify(posted[0]) })
      expect(json.status).toBe(415)
      expect(await json.json()).toEqual({ error: { code: 'unsupported_media_type', message: expect.stringContaining('NDJSON') } })
    })

    it('stops cleanly on SIGTERM and keeps everything it stored', async () => {
      keywatch.child.kill('SIGTERM')
      expect(await keywatch.exited, keywatch.logs().slice(-3000)).toBe(0)
      expect(existsSync(join(dataDir, 'keywatch.instance.json'))).toBe(false)

      // With no instance running, the CLI opens the directory itself and finds what the instance stored.
      const again = await runCli(['ingest', examplesFile, '--json'], { KEYWATCH_DATA_DIR: dataDir })
      expect(again.code, again.stderr).toBe(0)
      expect(summaryOf(again.stdout)).toMatchObject({ accepted: 0, duplicates: examples.length })

      storage = await openTestStorage(dataDir)
      const n = (type: string) => examples.filter((l) => (JSON.parse(l) as { type: string }).type === type).length
      expect(await count(storage, 'SELECT count() AS n FROM key_usage')).toBe(5_000 + n('key.usage') + 2)
      expect(await count(storage, 'SELECT count() AS n FROM key_usage WHERE request_id IN {ids:Array(String)}', { ids: posted.map((e) => e.request_id) })).toBe(2)
      expect(await count(storage, 'SELECT sum(requests) AS n FROM key_usage_hourly WHERE key_id IN {keys:Array(String)}', { keys: [...new Set(bigEvents.map((e) => e.key_id!))] })).toBe(
        5_000 + posted.filter((p) => bigEvents.some((e) => e.key_id === p.key_id)).length,
      )
      expect(await count(storage, 'SELECT count() AS n FROM key_lifecycle')).toBe(n('key.lifecycle'))
      expect(await count(storage, 'SELECT count() AS n FROM leak_reports')).toBe(n('leak.reported'))
      expect(await count(storage, 'SELECT count() AS n FROM auth_events')).toBe(n('auth.event'))
      expect(await count(storage, 'SELECT count() AS n FROM key_ratelimits')).toBe(n('key.ratelimited'))
      expect(await count(storage, 'SELECT count() AS n FROM event_ids')).toBe(5_000 + examples.length + 2)
      // Rejections from the first pass over the big file, the second (same lines again) and the POST.
      expect(await queryRows(storage.client, 'SELECT source, reason, count() AS n FROM ingest_errors GROUP BY source, reason ORDER BY reason')).toEqual([
        { source: 'http', reason: 'future_timestamp', n: 2 },
        { source: 'http', reason: 'invalid_json', n: 3 },
        { source: 'http', reason: 'unknown_type', n: 2 },
      ])
    })
  })
})
