// `keywatch ingest` of a 1,000,000-event NDJSON file: an exact summary and memory that stays flat however big the
// file (peak RSS well under the file's own size).
import { spawn } from 'node:child_process'
import { createWriteStream, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { once } from 'node:events'
import { afterAll, describe, expect, it } from 'vitest'
import type { Storage } from '../clickhouse/client.ts'
import { usageEvent } from '../contract/synthetic.ts'
import { count, nodeBinary, openTestStorage, repoRoot, tempDir } from './helpers.ts'

const LINES = 1_000_000
const INVALID_EVERY = 4_000 // 250 bad lines of each kind below, spread through the file

let storage: Storage | undefined
afterAll(async () => {
  await storage?.close()
})

describe('ingest of a 1,000,000-event file', () => {
  it('ends with a correct summary and bounded memory', { timeout: 15 * 60_000 }, async () => {
    const dir = tempDir('keywatch-1m-')
    const file = join(dir, 'events.ndjson')
    const out = createWriteStream(file)
    const now = Date.now()
    let invalid = 0
    let invalidSchema = 0
    for (let i = 0; i < LINES; i++) {
      let line: string
      if (i % INVALID_EVERY === 1) {
        line = '{"type":"key.usage", truncated'
        invalid++
      } else if (i % INVALID_EVERY === 2) {
        line = JSON.stringify({ ...usageEvent(i), ip: 'not-an-ip' })
        invalidSchema++
      } else {
        line = JSON.stringify(usageEvent(i, { keys: 10_000, accounts: 50, from: now - 30 * 86_400_000, to: now - 60_000 }))
      }
      if (!out.write(line + '\n')) await once(out, 'drain')
    }
    out.end()
    await once(out, 'finish')
    const fileMb = statSync(file).size / 1e6

    const dataDir = tempDir()
    const started = performance.now()
    const child = spawn(nodeBinary, [join(repoRoot, 'bin', 'keywatch.js'), 'ingest', file, '--json'], {
      env: { PATH: process.env.PATH, KEYWATCH_DATA_DIR: dataDir, LOG_LEVEL: 'warn' },
    })
    // Resident memory over the run, sampled from /proc: it must level off, not grow with the lines read.
    const samples: number[] = []
    const sampler = setInterval(() => {
      const m = /VmRSS:\s+(\d+) kB/.exec(safeRead(`/proc/${child.pid}/status`))
      if (m) samples.push(Number(m[1]) / 1024)
    }, 200)
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    const [code] = (await once(child, 'close')) as [number]
    clearInterval(sampler)
    const seconds = (performance.now() - started) / 1000
    const peakRssMb = Math.max(...samples)
    const third = Math.floor(samples.length / 3)
    const peakFirstThird = Math.max(...samples.slice(0, third))
    const peakRest = Math.max(...samples.slice(third))

    expect(code, stderr).toBe(1) // some lines were rejected
    const valid = LINES - invalid - invalidSchema
    expect(JSON.parse(stdout)).toMatchObject({
      lines: LINES,
      accepted: valid,
      duplicates: 0,
      rejected: invalid + invalidSchema,
      rejectedByReason: { invalid_json: invalid, schema_violation: invalidSchema },
    })
    console.log(
      `ingest 1M: ${fileMb.toFixed(0)} MB file, ${seconds.toFixed(1)} s, ${Math.round(LINES / seconds).toLocaleString('en')} lines/s, ` +
        `peak RSS ${peakRssMb.toFixed(0)} MB (first third of the run ${peakFirstThird.toFixed(0)} MB, rest ${peakRest.toFixed(0)} MB)`,
    )
    // Bounded: about 300 MB of it is the engine's library mapped in; the rest must not grow with the lines read.
    expect(peakRssMb).toBeLessThan(1_200)
    expect(peakRest - peakFirstThird).toBeLessThan(250)

    storage = await openTestStorage(dataDir)
    expect(await count(storage, 'SELECT count() AS n FROM key_usage')).toBe(valid)
    expect(await count(storage, 'SELECT sum(requests) AS n FROM key_usage_hourly')).toBe(valid)
    expect(await count(storage, 'SELECT count() AS n FROM ingest_errors')).toBe(invalid + invalidSchema)
  })
})
function safeRead(path: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return ''
  }
}
