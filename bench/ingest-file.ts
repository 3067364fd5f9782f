// npm run bench:ingest:file — `keywatch ingest FILE` of 1,000,000 contract-shaped key.usage lines, from process
// start to its summary, as an operator runs it: once with events of the last hour (live traffic written to a
// file), once with the same count spread over 30 days (a replay of history). The reference, in the same run, is
// the floor of any JS pipeline: one Node process reading the same file line by line and JSON.parsing each line.
// Args: --lines=N (default 1,000,000), --only=recent|history (one of the two files), --only=shuffled [--days=N],
// --only=http [--requests=C]: the recent file POSTed to a running `keywatch start` as /v1/events bodies of at most
// the default 16 MiB, C at a time (default 4), as a platform's shipper sends them; timed from the first request to
// the last answer.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { createWriteStream, readFileSync, rmSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { queryRows } from '../clickhouse/client.ts'
import { usageEvent } from '../contract/synthetic.ts'
import { closedOutput, nodeBinary, openTestStorage, repoRoot, runCli, startKeywatch, tempDir } from '../test/helpers.ts'
import { DEFAULT_EVENTS_BODY_LIMIT } from '../api/server.ts'
import { runtimeEnv } from '../bin/runtime-env.js'

const LINES = Number(process.argv.find((a) => a.startsWith('--lines='))?.split('=')[1] ?? 1_000_000)
const ONLY = process.argv.find((a) => a.startsWith('--only='))?.split('=')[1]
const TARGET = 60_000
const dir = tempDir('keywatch-bench-file-')

async function writeFile(name: string, spanMs: number, shuffled = false): Promise<string> {
  const file = join(dir, name)
  const out = createWriteStream(file)
  const now = Date.now()
  let buffer = ''
  for (let i = 0; i < LINES; i++) {
    // Shuffled: the same events in an order that jumps across the whole span (999,983 is prime: a permutation).
    const j = shuffled ? (i * 999_983) % LINES : i
    buffer += JSON.stringify(usageEvent(j, { keys: 10_000, accounts: 500, from: now - spanMs, to: now - 60_000 })) + '\n'
    if (buffer.length >= 1 << 20) {
      if (!out.write(buffer)) await once(out, 'drain')
      buffer = ''
    }
  }
  out.end(buffer)
  await once(out, 'finish')
  return file
}

/** The floor: read the file and JSON.parse every line, in a fresh process. */
async function reference(file: string): Promise<number> {
  const script = `
    const { createReadStream } = require('node:fs'); const t = performance.now(); let n = 0, carry = ''
    createReadStream(${JSON.stringify(file)}, { encoding: 'utf8', highWaterMark: 1 << 20 })
      .on('data', (s) => { const parts = (carry + s).split('\\n'); carry = parts.pop(); for (const l of parts) if (l) { JSON.parse(l); n++ } })
      .on('end', () => console.log(JSON.stringify({ n, ms: performance.now() - t })))`
  const started = performance.now()
  const { stdout } = await closedOutput(spawn(nodeBinary, ['-e', script]))
  if (JSON.parse(stdout).n !== LINES) throw new Error(`reference read ${stdout}`)
  return (performance.now() - started) / 1000
}

/** `keywatch ingest FILE --json` on a fresh data directory: seconds from process start, peak RSS, the summary. */
async function keywatchIngest(file: string): Promise<{ seconds: number; peakMiB: number; accepted: number; stored: number; rollup: number }> {
  const dataDir = tempDir('keywatch-bench-file-data-')
  const env = runtimeEnv({ PATH: process.env.PATH, KEYWATCH_DATA_DIR: dataDir, LOG_LEVEL: 'warn', ...passedThrough() })
  const started = performance.now()
  const child = spawn(nodeBinary, [join(repoRoot, 'bin', 'keywatch.js'), 'ingest', file, '--json'], { env, cwd: repoRoot })
  let peakKiB = 0
  const sampler = setInterval(() => {
    const m = /VmHWM:\s+(\d+) kB/.exec(read(`/proc/${child.pid}/status`))
    if (m) peakKiB = Math.max(peakKiB, Number(m[1]))
  }, 100)
  const { code, stdout, stderr } = await closedOutput(child)
  clearInterval(sampler)
  const seconds = (performance.now() - started) / 1000
  if (code !== 0) throw new Error(`keywatch ingest exited with ${code}:\n${stderr}`)
  const summary = JSON.parse(stdout) as { accepted: number }
  const storage = await openTestStorage(dataDir)
  const [stored] = await queryRows<{ n: string }>(storage.client, 'SELECT count() AS n FROM key_usage')
  const [rollup] = await queryRows<{ n: string }>(storage.client, 'SELECT sum(requests) AS n FROM key_usage_hourly')
  await storage.close()
  rmSync(dataDir, { recursive: true, force: true })
  return { seconds, peakMiB: peakKiB / 1024, accepted: summary.accepted, stored: Number(stored!.n), rollup: Number(rollup!.n) }
}

/** The file POSTed to a running instance in bodies cut at line ends, `concurrency` requests at a time. */
async function keywatchHttp(file: string, concurrency: number): Promise<{ seconds: number; peakMiB: number; accepted: number; stored: number; rollup: number; requests: number }> {
  const dataDir = tempDir('keywatch-bench-file-data-')
  const keywatch = await startKeywatch({ KEYWATCH_DATA_DIR: dataDir, ...passedThrough(), ...(process.env.BENCH_NODE_OPTIONS ? { NODE_OPTIONS: process.env.BENCH_NODE_OPTIONS } : {}) })
  try {
    const created = await runCli(['token', 'create', '--role', 'ingest', '--name', 'bench', '--json'], { KEYWATCH_DATA_DIR: dataDir })
    if (created.code !== 0) throw new Error(`token create: ${created.stderr}`)
    const authorization = `Bearer ${(JSON.parse(created.stdout) as { token: string }).token}`
    const bodies: Uint8Array<ArrayBuffer>[] = []
    const all = readFileSync(file)
    for (let start = 0; start < all.length; ) {
      const end = all.lastIndexOf(0x0a, Math.min(all.length, start + DEFAULT_EVENTS_BODY_LIMIT) - 1) + 1
      bodies.push(new Uint8Array(all.buffer, all.byteOffset + start, end - start))
      start = end
    }
    let peakKiB = 0
    const sampler = setInterval(() => {
      const m = /VmHWM:\s+(\d+) kB/.exec(read(`/proc/${keywatch.child.pid}/status`))
      if (m) peakKiB = Math.max(peakKiB, Number(m[1]))
    }, 100)
    let accepted = 0
    let next = 0
    const started = performance.now()
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < bodies.length) {
          const body = bodies[next++]!
          const res = await fetch(`${keywatch.url}/v1/events`, { method: 'POST', headers: { 'content-type': 'application/x-ndjson', authorization }, body })
          if (res.status !== 200) throw new Error(`POST /v1/events: ${res.status} ${await res.text()}`)
          accepted += ((await res.json()) as { accepted: number }).accepted
        }
      }),
    )
    const seconds = (performance.now() - started) / 1000
    clearInterval(sampler)
    keywatch.child.kill('SIGTERM')
    await keywatch.exited
    const storage = await openTestStorage(dataDir)
    const [stored] = await queryRows<{ n: string }>(storage.client, 'SELECT count() AS n FROM key_usage')
    const [rollup] = await queryRows<{ n: string }>(storage.client, 'SELECT sum(requests) AS n FROM key_usage_hourly')
    await storage.close()
    return { seconds, peakMiB: peakKiB / 1024, accepted, stored: Number(stored!.n), rollup: Number(rollup!.n), requests: bodies.length }
  } finally {
    keywatch.child.kill('SIGKILL')
    rmSync(dataDir, { recursive: true, force: true })
  }
}

/** INGEST_* and CLICKHOUSE_* settings of the bench's own environment, for keywatch to try. */
function passedThrough(): Record<string, string> {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => /^(INGEST|CLICKHOUSE)_/.test(k))) as Record<string, string>
}

function read(path: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return ''
  }
}

const fmt = (n: number) => Math.round(n).toLocaleString('en').padStart(9)
let exact = true
try {
  const runs: [string, string][] = []
  if (ONLY === undefined || ONLY === 'recent') runs.push(['events of the last hour', await writeFile('recent.ndjson', 3_600_000)])
  if (ONLY === undefined || ONLY === 'history') runs.push(['spread over 30 days', await writeFile('history.ndjson', 30 * 86_400_000)])
  const SHUFFLED_DAYS = Number(process.argv.find((a) => a.startsWith('--days='))?.split('=')[1] ?? 30)
  if (ONLY === 'shuffled') runs.push([`${SHUFFLED_DAYS} days, shuffled`, await writeFile('shuffled.ndjson', SHUFFLED_DAYS * 86_400_000, true)])
  if (ONLY === 'http') runs.push(['events of the last hour', await writeFile('recent.ndjson', 3_600_000)])
  console.log(`\nbench:ingest:file  keywatch ingest of ${LINES.toLocaleString('en')} key.usage lines (${(statSync(runs[0]![1]).size / 1e6).toFixed(0)} MB), 2 cores, embedded engine`)
  for (const [label, file] of runs) {
    const ref = await reference(file)
    if (ONLY === 'http') {
      const concurrency = Number(process.argv.find((a) => a.startsWith('--requests='))?.split('=')[1] ?? 4)
      const r = await keywatchHttp(file, concurrency)
      exact &&= r.accepted === LINES && r.stored === LINES && r.rollup === LINES
      console.log(`  POST /v1/events, ${r.requests} bodies, ${concurrency} at a time  ${fmt(LINES / r.seconds)} lines/s  (${r.seconds.toFixed(1)} s, first request to last answer)  peak RSS ${r.peakMiB.toFixed(0)} MiB  ` +
        `accepted ${r.accepted.toLocaleString('en')}, stored ${r.stored.toLocaleString('en')}, hourly rollup ${r.rollup.toLocaleString('en')} ${exact ? '(exact)' : '(MISMATCH)'}`)
      console.log(`    reference: read + JSON.parse   ${fmt(LINES / ref)} lines/s  (${ref.toFixed(1)} s)   ratio ${(ref / r.seconds).toFixed(2)}`)
      continue
    }
    const r = await keywatchIngest(file)
    exact &&= r.accepted === LINES && r.stored === LINES && r.rollup === LINES
    console.log(`  ${label.padEnd(24)} ${fmt(LINES / r.seconds)} lines/s  (${r.seconds.toFixed(1)} s from process start)  peak RSS ${r.peakMiB.toFixed(0)} MiB  ` +
      `stored ${r.stored.toLocaleString('en')}, hourly rollup ${r.rollup.toLocaleString('en')} ${r.stored === LINES && r.rollup === LINES ? '(exact)' : '(MISMATCH)'}`)
    console.log(`    reference: read + JSON.parse   ${fmt(LINES / ref)} lines/s  (${ref.toFixed(1)} s)   ratio ${(ref / r.seconds).toFixed(2)}`)
  }
  console.log(`  target: >= ${TARGET.toLocaleString('en')} lines/s; load average at the end: ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`)
} finally {
  rmSync(dir, { recursive: true, force: true })
}
if (!exact) process.exitCode = 1
