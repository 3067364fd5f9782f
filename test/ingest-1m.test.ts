// `keywatch ingest` of a 1,000,000-line NDJSON file (about 575 MB) as a child process: an exact summary, every
// event stored once with the rollups agreeing, and resident memory that levels off instead of growing with the file.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { createWriteStream, existsSync, readFileSync, readdirSync, readlinkSync, realpathSync, rmSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { queryRows, type Storage } from '../clickhouse/client.ts'
import { usageEvent } from '../contract/synthetic.ts'
import { closedOutput, count, nodeBinary, openTestStorage, repoRoot, tempDir } from './helpers.ts'

const LINES = 1_000_000
const KEYS = 10_000
const ACCOUNTS = 50
const MB = 1024 * 1024
// Measured on 2 cores (Node 24, chdb): peak RSS 835-940 MB over five runs (934-977 MiB alone with issue 12's larger
// batches, 1,104 inside the full suite at 16 chunks in flight; 12 now), of which about 235 MB is the engine's
// library mapped in and about 315 MB is what `keywatch migrate` alone reaches. It stays below this ceiling...
const PEAK_RSS_CEILING_MB = 1_150
// ...and once a quarter of the file is read, the high-water mark grows by less than this share of the bytes read
// after it (measured: 70-135 MB over 431 MB). Holding the input, even as raw bytes, would grow it by all of them.
const MAX_GROWTH_PER_BYTE_READ = 0.5

const TIME = '/usr/bin/time'
const BAD_KINDS = ['invalid_json', 'schema_violation', 'future_timestamp', 'unknown_type', 'too_large'] as const

let storage: Storage | undefined
const leftovers: string[] = []
afterAll(async () => {
  await storage?.close()
  for (const dir of leftovers) rmSync(dir, { recursive: true, force: true }) // half a gigabyte of NDJSON, and its data
})

// Linux: memory and read progress come from /proc.
describe.skipIf(process.platform !== 'linux')('ingest of a 1,000,000-line file', () => {
  it('stores every valid line once, rejects the rest by reason, and keeps memory bounded', { timeout: 10 * 60_000 }, async () => {
    // The file: valid usage events of 10,000 keys in 50 accounts over the last 30 days, a few hundred invalid lines
    // of each kind, and a hundred redeliveries of earlier lines, all at positions that do not line up with the keys.
    const dir = tempDir('keywatch-1m-')
    leftovers.push(dir)
    const file = join(dir, 'events.ndjson')
    const out = createWriteStream(file)
    const now = Date.now()
    const expected = { valid: 0, duplicates: 0, byReason: Object.fromEntries(BAD_KINDS.map((k) => [k, 0])) as Record<(typeof BAD_KINDS)[number], number> }
    const keys = new Set<string>()
    const accounts = new Set<string>()
    let saved: string | undefined
    let badTurn = 0
    let buffer = ''
    const generateStarted = performance.now()
    for (let i = 0; i < LINES; i++) {
      const e = usageEvent(i, { keys: KEYS, accounts: ACCOUNTS, from: now - 30 * 86_400_000, to: now - 60_000 })
      let line: string
      if (i % 2_503 === 1_234) {
        const kind = BAD_KINDS[badTurn++ % BAD_KINDS.length]!
        expected.byReason[kind]++
        line =
          kind === 'invalid_json' ? JSON.stringify(e).slice(0, -20)
          : kind === 'schema_violation' ? JSON.stringify({ ...e, ip: 'not-an-ip' })
          : kind === 'future_timestamp' ? JSON.stringify({ ...e, occurred_at: new Date(now + 2 * 3_600_000).toISOString() })
          : kind === 'unknown_type' ? JSON.stringify({ ...e, type: 'key.usage.v2' })
          : JSON.stringify({ ...e, padding: 'x'.repeat(70_000) })
      } else if (i % 9_973 === 4_321 && saved) {
        line = saved // the same event again, some 3,000 lines (and several batches) later
        saved = undefined
        expected.duplicates++
      } else {
        line = JSON.stringify(e)
        if (i % 9_973 === 1_321) saved = line
        expected.valid++
        keys.add(e.key_id!)
        accounts.add(e.account_id)
      }
      buffer += line + '\n'
      if (buffer.length >= MB) {
        if (!out.write(buffer)) await once(out, 'drain')
        buffer = ''
      }
    }
    out.end(buffer)
    await once(out, 'finish')
    const fileBytes = statSync(file).size
    const rejected = Object.values(expected.byReason).reduce((a, b) => a + b, 0)
    expect(expected.valid + expected.duplicates + rejected).toBe(LINES)
    expect(rejected).toBeGreaterThanOrEqual(300)
    expect(expected.duplicates).toBeGreaterThanOrEqual(90)
    console.log(`ingest 1M: generated ${(fileBytes / MB).toFixed(0)} MiB in ${((performance.now() - generateStarted) / 1000).toFixed(1)} s`)

    // The run: `keywatch ingest FILE --json`, under /usr/bin/time for the exact peak RSS when it is there.
    const dataDir = tempDir()
    leftovers.push(dataDir)
    const rssFile = join(dir, 'peak-rss-kb')
    // The recent-id index is a cache bounded by its setting, not by the input: at its default (1,000,000 ids, about
    // 113 MB) it would fill over exactly this file and look like growth with the file. At 200,000 it is full within
    // the first quarter, so what grows after that is what the pipeline holds. (With the default, the code of the
    // turn before grew +205 MiB against the bound's 207 on a quiet machine, and +234 in a loaded CI run; at 200,000,
    // +70 and +161.)
    const env = { PATH: process.env.PATH, KEYWATCH_DATA_DIR: dataDir, LOG_LEVEL: 'warn', INGEST_DEDUP_INDEX_IDS: '200000' }
    const keywatchArgs = [join(repoRoot, 'bin', 'keywatch.js'), 'ingest', file, '--json']
    const timed = existsSync(TIME)
    const started = performance.now()
    const child = timed
      ? spawn(TIME, ['-f', '%M', '-o', rssFile, nodeBinary, ...keywatchArgs], { env, cwd: repoRoot })
      : spawn(nodeBinary, keywatchArgs, { env, cwd: repoRoot })
    // Resident size and how far into the file keywatch has read, from /proc, four times a second.
    const realFile = realpathSync(file)
    const samples: { pos: number; rssMb: number; hwmMb: number }[] = []
    let keywatchPid: number | undefined
    const sampler = setInterval(() => {
      keywatchPid ??= timed ? Number(read(`/proc/${child.pid}/task/${child.pid}/children`).trim().split(/\s+/)[0]) || undefined : child.pid
      if (!keywatchPid) return
      const status = read(`/proc/${keywatchPid}/status`)
      const rss = /VmRSS:\s+(\d+) kB/.exec(status)
      const hwm = /VmHWM:\s+(\d+) kB/.exec(status)
      if (!rss || !hwm) return
      samples.push({ pos: filePosition(keywatchPid, realFile), rssMb: Number(rss[1]) / 1024, hwmMb: Number(hwm[1]) / 1024 })
    }, 250)
    const { code, stdout, stderr } = await closedOutput(child)
    clearInterval(sampler)
    const seconds = (performance.now() - started) / 1000
    const sampledPeakMb = Math.max(0, ...samples.map((s) => s.hwmMb))
    const peakRssMb = timed ? Number(read(rssFile).trim().split('\n').pop()) / 1024 : sampledPeakMb
    const quarter = samples.find((s) => s.pos >= fileBytes / 4)
    const growthMb = quarter ? peakRssMb - quarter.hwmMb : NaN
    const readAfterQuarterMb = quarter ? (fileBytes - quarter.pos) / MB : NaN
    console.log(
      `ingest 1M: ${LINES.toLocaleString('en')} lines, ${(fileBytes / MB).toFixed(0)} MiB in ${seconds.toFixed(1)} s = ${Math.round(LINES / seconds).toLocaleString('en')} lines/s; ` +
        `peak RSS ${peakRssMb.toFixed(0)} MiB (${timed ? '/usr/bin/time' : 'VmHWM'}); at a quarter of the file ${quarter?.hwmMb.toFixed(0)} MiB, ` +
        `then +${growthMb.toFixed(0)} MiB while reading ${readAfterQuarterMb.toFixed(0)} MiB more`,
    )

    // The summary is exact.
    expect(code, stderr).toBe(1) // some lines were rejected
    expect(stderr).not.toMatch(/DB::Exception|Error:/)
    const summary = JSON.parse(stdout) as Record<string, unknown>
    expect(summary).toMatchObject({
      lines: LINES,
      accepted: expected.valid,
      duplicates: expected.duplicates,
      rejected,
      rejectedByReason: expected.byReason,
    })

    // Memory: bounded, and not growing with what is read.
    expect(peakRssMb).toBeGreaterThan(100) // the measurement is real
    expect(peakRssMb).toBeLessThan(PEAK_RSS_CEILING_MB)
    expect(samples.length).toBeGreaterThan(20)
    expect(quarter, 'no sample showed keywatch reading the file').toBeDefined()
    expect(growthMb).toBeLessThan(MAX_GROWTH_PER_BYTE_READ * readAfterQuarterMb)

    // What was stored.
    storage = await openTestStorage(dataDir)
    expect(await count(storage, 'SELECT count() AS n FROM key_usage')).toBe(expected.valid)
    expect(await count(storage, 'SELECT uniqExact(event_id) AS n FROM key_usage')).toBe(expected.valid)
    expect(await count(storage, 'SELECT count() AS n FROM event_ids FINAL')).toBe(expected.valid)
    expect(await count(storage, 'SELECT sum(requests) AS n FROM key_usage_hourly')).toBe(expected.valid)
    expect(await count(storage, 'SELECT sum(requests) AS n FROM key_usage_daily')).toBe(expected.valid)
    expect(await count(storage, 'SELECT sum(requests) AS n FROM key_last_used')).toBe(expected.valid)
    expect(await count(storage, 'SELECT uniqExact(key_id) AS n FROM key_last_used')).toBe(keys.size)
    expect(await count(storage, 'SELECT uniqExact(account_id) AS n FROM key_usage')).toBe(accounts.size)
    const errors = await queryRows<{ reason: string; n: number; source: string }>(
      storage.client,
      'SELECT reason, source, count() AS n FROM ingest_errors GROUP BY reason, source ORDER BY reason',
    )
    expect(errors).toEqual(
      Object.entries(expected.byReason)
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([reason, n]) => ({ reason, source: 'file', n })),
    )
  })
})

function read(path: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return ''
  }
}

/** How far process `pid` has read into `file`: the offset of its descriptor, or -1 when it has none open. */
function filePosition(pid: number, file: string): number {
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      let target: string
      try {
        target = readlinkSync(`/proc/${pid}/fd/${fd}`)
      } catch {
        continue
      }
      if (target === file) return Number(/pos:\s+(\d+)/.exec(read(`/proc/${pid}/fdinfo/${fd}`))?.[1] ?? -1)
    }
  } catch {
    // the process is gone
  }
  return -1
}
