// npm run bench:export — a compliance export of key usage (10,000,000 rows by default, generated inside ClickHouse)
// as CSV and as Parquet, each with its signed manifest. Every run happens in a fresh process on the generated data,
// so its resident memory is measured from its own start (the engine runs in-process). Reference, same data: the
// engine writing every row as CSV with no filter, no order and no manifest. Last, the CSV export over HTTP on a real
// loopback connection: the time to its first byte (it streams while the engine writes) and to its last.
// Args: --rows=N (default 10,000,000); --data=DIR keeps the generated rows in DIR and reuses them on the next run
// (same N), to compare runs without generating again.
import { spawn } from 'node:child_process'
import { readFileSync, rmSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { request } from 'node:http'
import type { AddressInfo } from 'node:net'
import { buildApi } from '../api/server.ts'
import { apiDepsOf } from '../app/runtime.ts'
import { queryRows } from '../clickhouse/client.ts'
import { exportToFile } from '../exports/export.ts'
import { bearer, openTestRuntime, tempDir } from '../test/helpers.ts'

type Run = 'reference' | 'csv' | 'parquet' | 'http'
interface Figures {
  firstByteMs?: number
  rows: number
  seconds: number
  rssGrowthMb: number
  anonGrowthMb: number
  fileGrowthMb: number
  bytes: number
}

const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1]
const child = arg('child') as Run | undefined
if (child) await runOne(child, arg('dir')!)
else await main(Number(arg('rows') ?? 10_000_000))

async function main(rows: number): Promise<void> {
  const keep = arg('data')
  const dataDir = keep ?? tempDir('keywatch-bench-export-data-')
  const rt = await openTestRuntime({ KEYWATCH_DATA_DIR: dataDir })
  const [stored] = await queryRows<{ n: number }>(rt.storage.client, 'SELECT count() AS n FROM key_usage')
  if (Number(stored!.n) !== rows) await rt.storage.client.command({ query: 'TRUNCATE TABLE key_usage' })
  const t = performance.now()
  for (let done = Number(stored!.n) === rows ? rows : 0; done < rows; done += 5_000_000) {
    await rt.storage.client.command({
      query: `INSERT INTO key_usage (event_id, occurred_at, account_id, key_id, key_prefix, key_kind, mode, request_id, method, endpoint, scope, status, error_code,
                                     ip, country, asn, user_agent, origin, sdk, client_env, latency_ms, amount_minor, currency)
              SELECT generateUUIDv4(), now64(3) - toIntervalMillisecond(number * 7 % 2592000000), concat('acct_', leftPad(toString(number % 500), 6, '0')),
                     concat('key_', leftPad(toString(number % 10000), 8, '0')), 'sk_live_Ab12', 'secret', 'live', concat('req_', toString(number)),
                     ['GET', 'POST'][1 + number % 2], '/v1/payments', 'payments', if(number % 50 = 0, 429, 200), if(number % 50 = 0, 'RATE_LIMIT_EXCEEDED', ''),
                     concat('10.', toString(number % 250), '.1.', toString(number % 7)), 'PH', 64500, 'paykore-node/3.2.1 node/22.11.0', '', 'paykore-node/3.2.1',
                     'production', 20 + number % 200, if(number % 2 = 1, 1000 + number % 100000, 0), if(number % 2 = 1, 'PHP', '')
              FROM numbers({offset:UInt64}, {n:UInt64})`,
      query_params: { offset: done, n: Math.min(5_000_000, rows - done) },
      clickhouse_settings: { max_insert_threads: '2' } as never,
    })
  }
  // Merge the generated parts now: otherwise the engine merges them in the background of the first runs, and its
  // memory is counted against the export.
  await rt.storage.client.command({ query: 'OPTIMIZE TABLE key_usage FINAL' })
  await rt.close()
  console.log(Number(stored!.n) === rows ? `reusing ${rows.toLocaleString('en')} key.usage rows in ${dataDir}` : `generated ${rows.toLocaleString('en')} key.usage rows in ${((performance.now() - t) / 1000).toFixed(0)} s`)

  const results = {} as Record<Run, Figures>
  for (const run of ['reference', 'csv', 'parquet', 'http'] as const) {
    const stdout = await spawnSelf([`--child=${run}`, `--dir=${dataDir}`])
    results[run] = JSON.parse(stdout.trim().split('\n').pop()!) as Figures
  }
  if (!keep) rmSync(dataDir, { recursive: true, force: true })

  const rate = (f: Figures) => f.rows / f.seconds
  const n = (x: number) => Math.round(x).toLocaleString('en').padStart(11)
  const ref = results.reference
  console.log(`\nbench:export  ${rows.toLocaleString('en')} key-usage rows, 2 cores, embedded engine, each run in a fresh process`)
  const mem = (f: Figures) => `RSS +${f.rssGrowthMb.toFixed(0)} MB (anon +${f.anonGrowthMb.toFixed(0)}, file +${f.fileGrowthMb.toFixed(0)})`
  console.log(`  reference: engine writes CSV, no order   ${n(rate(ref))} rows/s  ${ref.seconds.toFixed(1).padStart(5)} s   ${mem(ref)}`)
  for (const format of ['csv', 'parquet'] as const) {
    const r = results[format]
    console.log(`  export ${format.padEnd(8)} + signed manifest    ${n(rate(r))} rows/s  ${r.seconds.toFixed(1).padStart(5)} s   ${mem(r)}   ${(r.bytes / 1048576).toFixed(0)} MB   ratio ${(rate(r) / rate(ref)).toFixed(2)}`)
  }
  const h = results.http
  console.log(`  export csv over HTTP (loopback)         ${n(rate(h))} rows/s  ${h.seconds.toFixed(1).padStart(5)} s   first byte after ${h.firstByteMs!.toFixed(0)} ms   ${(h.bytes / 1048576).toFixed(0)} MB`)
  console.log('  (anon: heap, grows with the data; file: the engine library code paged in on first use of a format)')
  const ok = rate(results.csv) >= 250_000
  const flat = results.csv.rssGrowthMb < 150 && results.parquet.rssGrowthMb < 150
  const firstByte = h.firstByteMs! < 1000
  console.log(`\ntarget >= 250,000 rows/s CSV: ${ok ? 'met' : 'NOT met'}; resident growth < 150 MB: ${flat ? 'met' : 'NOT met'}; HTTP first byte < 1 s: ${firstByte ? 'met' : 'NOT met'}`)
}

/** One export (or the reference) on the data in `dir`; prints its figures as a JSON line. */
async function runOne(run: Run, dir: string): Promise<void> {
  const rt = await openTestRuntime({ KEYWATCH_DATA_DIR: dir })
  const [total] = await queryRows<{ n: number }>(rt.storage.client, 'SELECT count() AS n FROM key_usage')
  const file = join(tempDir('keywatch-bench-export-'), `out.${run}`)
  const filter = { from: new Date(Date.now() - 31 * 86_400_000).toISOString(), to: new Date(Date.now() + 60_000).toISOString() }
  const base = process.memoryUsage.rss()
  const baseSplit = rssSplit()
  let peak = base
  const peakSplit = { ...baseSplit }
  const sample = () => {
    peak = Math.max(peak, process.memoryUsage.rss())
    const now = rssSplit()
    peakSplit.anon = Math.max(peakSplit.anon, now.anon)
    peakSplit.file = Math.max(peakSplit.file, now.file)
  }
  const sampler = setInterval(sample, 50)
  const started = performance.now()
  let rows: number
  let firstByteMs: number | undefined
  let httpBytes = 0
  if (run === 'http') {
    const api = await buildApi(apiDepsOf(rt))
    await api.listen({ host: '127.0.0.1', port: 0 })
    const { authorization } = await bearer(rt, 'auditor')
    const url = `http://127.0.0.1:${(api.server.address() as AddressInfo).port}/v1/exports/key-usage?from=${encodeURIComponent(filter.from)}&to=${encodeURIComponent(filter.to)}&format=csv`
    const t0 = performance.now()
    rows = await new Promise<number>((resolve, reject) => {
      request(url, { headers: { authorization } }, (res) => {
        res.on('data', (c: Buffer) => {
          firstByteMs ??= performance.now() - t0
          httpBytes += c.length
        })
        res.on('end', () => resolve(Number(res.trailers['x-keywatch-rows'])))
        res.on('error', reject)
      })
        .on('error', reject)
        .end()
    })
    await api.close()
  } else if (run === 'reference') {
    await rt.storage.client.command({ query: `INSERT INTO FUNCTION file({p:String}, 'CSVWithNames') SELECT * FROM key_usage`, query_params: { p: file } })
    rows = Number(total!.n)
  } else {
    rows = (await exportToFile(rt.storage, { dataset: 'key-usage', format: run, filter, actor: 'bench' }, file, rt.exportSigningKey(), rt.version)).rows
  }
  const seconds = (performance.now() - started) / 1000
  clearInterval(sampler)
  sample()
  const bytes = run === 'http' ? httpBytes : statSync(file).size
  if (run !== 'http') rmSync(file)
  await rt.close()
  const anonGrowthMb = (peakSplit.anon - baseSplit.anon) / 1024
  const fileGrowthMb = (peakSplit.file - baseSplit.file) / 1024
  console.log(JSON.stringify({ rows, seconds, rssGrowthMb: (peak - base) / 1048576, anonGrowthMb, fileGrowthMb, bytes, firstByteMs } satisfies Figures))
}

/**
 * Resident memory in kB split into anonymous (heap: what grows with the data) and file-backed (mostly the engine's
 * library code paged in on first use of a format, shared and reclaimable).
 */
function rssSplit(): { anon: number; file: number } {
  const status = readFileSync('/proc/self/status', 'utf8')
  const kb = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? 0)
  return { anon: kb('RssAnon'), file: kb('RssFile') + kb('RssShmem') }
}

function spawnSelf(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
    let stdout = ''
    p.stdout.on('data', (d: Buffer) => (stdout += d))
    p.on('exit', (code) => (code === 0 ? resolve(stdout) : reject(new Error(`${args.join(' ')} exited with ${code}`))))
  })
}
