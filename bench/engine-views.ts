// Experiment: engine CPU per row of a 100k-row key_usage insert, with every view and with each view dropped.
import { createHash } from 'node:crypto'
import { usageEvent } from '../contract/synthetic.ts'
import { toRow } from '../ingest/rows.ts'
import { openTestStorage, tempDir } from '../test/helpers.ts'
import { threadCpu, diffThreads } from './stages.ts'

const N = 300_000
const BLOCK = 100_000
const now = Date.now()
const rows = Array.from({ length: N }, (_, i) => toRow('key.usage', usageEvent(i, { keys: 10_000, accounts: 500, from: now - 3_600_000, to: now - 60_000 }) as never))
const arg = process.argv[2] ?? 'none'
const parallel = process.argv.includes('--parallel')
{
  const drop = arg === 'none' ? null : arg
  const storage = await openTestStorage(tempDir('kw-views-'))
  const views = (await storage.client.query({ query: "SELECT name FROM system.tables WHERE database = currentDatabase() AND engine = 'MaterializedView'", format: 'JSONEachRow' }).then((r) => r.json<{ name: string }>())).map((v) => v.name)
  if (drop === 'ALL') for (const v of views) await storage.client.command({ query: `DROP VIEW ${v}` })
  else if (drop) await storage.client.command({ query: `DROP VIEW ${drop}` })
  // warm-up block
  await storage.insertRows('key_usage', rows.slice(0, 5000).map((r) => r.values), {})
  const before = threadCpu(process.pid)
  const t = performance.now()
  for (let i = 0; i < N; i += BLOCK) {
    const block = rows.slice(i, i + BLOCK)
    const token = createHash('sha256').update(block.map((r) => r.eventId).join(',')).digest('hex')
    await storage.insertRows('key_usage', block.map((r) => r.values), { insert_deduplication_token: token, deduplicate_blocks_in_dependent_materialized_views: 1, ...(parallel ? { parallel_view_processing: 1 } : {}) })
  }
  const wall = performance.now() - t
  const d = diffThreads(threadCpu(process.pid), before)
  const eng = d['ClickHouse engine'] ?? 0
  const js = d['JS main thread'] ?? 0
  console.log(`${((drop ? 'without ' + drop : 'all views') + (parallel ? ' parallel' : '')).padEnd(36)} engine ${((eng * 1e6) / N).toFixed(2)} µs/row  js ${((js * 1e6) / N).toFixed(2)}  wall ${((wall * 1000) / N).toFixed(2)} µs/row  libuv ${(((d['libuv pool (fs, chdb calls)'] ?? 0) * 1e6) / N).toFixed(2)}`)
  await storage.close()
}
