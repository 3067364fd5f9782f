// npm run bench:export — a compliance export of key usage (10,000,000 rows by default, generated inside ClickHouse)
// as CSV and as Parquet, each with its signed manifest. Every run happens in a fresh process on the generated data,
// so its resident memory is measured from its own start (the engine runs in-process). Reference, same data: the
// engine writing every row as CSV with no filter, no order and no manifest.
// Args: --rows=N (default 10,000,000).
import { spawn } from 'node:child_process'
import { rmSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { queryRows } from '../clickhouse/client.ts'
import { exportToFile } from '../exports/export.ts'
import { openTestRuntime, tempDir } from '../test/helpers.ts'

type Run = 'reference' | 'csv' | 'parquet'
interface Figures {
  rows: number
  seconds: number
  rssGrowthMb: number
  bytes: number
}

const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1]
const child = arg('child') as Run | undefined
if (child) await runOne(child, arg('dir')!)
else await main(Number(arg('rows') ?? 10_000_000))

async function main(rows: number): Promise<void> {
  const dataDir = tempDir('keywatch-bench-export-data-')
  const rt = await openTestRuntime({ KEYWATCH_DATA_DIR: dataDir })
  const t = performance.now()
  for (let done = 0; done < rows; done += 5_000_000) {
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
  await rt.close()
  console.log(`generated ${rows.toLocaleString('en')} key.usage rows in ${((performance.now() - t) / 1000).toFixed(0)} s`)

  const results = {} as Record<Run, Figures>
  for (const run of ['reference', 'csv', 'parquet'] as const) {
    const stdout = await spawnSelf([`--child=${run}`, `--dir=${dataDir}`])
    results[run] = JSON.parse(stdout.trim().split('\n').pop()!) as Figures
  }
  rmSync(dataDir, { recursive: true, force: true })

  const rate = (f: Figures) => f.rows / f.seconds
  const n = (x: number) => Math.round(x).toLocaleString('en').padStart(11)
  const ref = results.reference
  console.log(`\nbench:export  ${rows.toLocaleString('en')} key-usage rows, 2 cores, embedded engine, each run in a fresh process`)
  console.log(`  reference: engine writes CSV, no order   ${n(rate(ref))} rows/s  ${ref.seconds.toFixed(1).padStart(5)} s   RSS +${ref.rssGrowthMb.toFixed(0)} MB`)
  for (const format of ['csv', 'parquet'] as const) {
    const r = results[format]
    console.log(`  export ${format.padEnd(8)} + signed manifest    ${n(rate(r))} rows/s  ${r.seconds.toFixed(1).padStart(5)} s   RSS +${r.rssGrowthMb.toFixed(0)} MB   ${(r.bytes / 1048576).toFixed(0)} MB   ratio ${(rate(r) / rate(ref)).toFixed(2)}`)
  }
  const ok = rate(results.csv) >= 250_000
  const flat = results.csv.rssGrowthMb < 150 && results.parquet.rssGrowthMb < 150
  console.log(`\ntarget >= 250,000 rows/s CSV: ${ok ? 'met' : 'NOT met'}; resident growth < 150 MB: ${flat ? 'met' : 'NOT met'}`)
}

/** One export (or the reference) on the data in `dir`; prints its figures as a JSON line. */
async function runOne(run: Run, dir: string): Promise<void> {
  const rt = await openTestRuntime({ KEYWATCH_DATA_DIR: dir })
  const [total] = await queryRows<{ n: number }>(rt.storage.client, 'SELECT count() AS n FROM key_usage')
  const file = join(tempDir('keywatch-bench-export-'), `out.${run}`)
  const filter = { from: new Date(Date.now() - 31 * 86_400_000).toISOString(), to: new Date(Date.now() + 60_000).toISOString() }
  const base = process.memoryUsage.rss()
  let peak = base
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 50)
  const started = performance.now()
  let rows: number
  if (run === 'reference') {
    await rt.storage.client.command({ query: `INSERT INTO FUNCTION file({p:String}, 'CSVWithNames') SELECT * FROM key_usage`, query_params: { p: file } })
    rows = Number(total!.n)
  } else {
    rows = (await exportToFile(rt.storage, { dataset: 'key-usage', format: run, filter, actor: 'bench' }, file, rt.exportSigningKey(), rt.version)).rows
  }
  const seconds = (performance.now() - started) / 1000
  clearInterval(sampler)
  peak = Math.max(peak, process.memoryUsage.rss())
  const bytes = statSync(file).size
  rmSync(file)
  await rt.close()
  console.log(JSON.stringify({ rows, seconds, rssGrowthMb: (peak - base) / 1048576, bytes } satisfies Figures))
}

function spawnSelf(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
    let stdout = ''
    p.stdout.on('data', (d: Buffer) => (stdout += d))
    p.on('exit', (code) => (code === 0 ? resolve(stdout) : reject(new Error(`${args.join(' ')} exited with ${code}`))))
  })
}
