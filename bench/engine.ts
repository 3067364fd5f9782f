// npm run bench:engine — what the embedded engine spends per key_usage row of an insert, and on what: the input
// format and the types file() reads, the parse alone, and each materialized view. 300,000 rows of the bench's
// events in 100,000-row blocks through `INSERT … SELECT FROM file()` (the writer's path), background merges stopped
// so that only the insert is counted; CPU of the whole process (the engine runs in it), best of 5, so compare the
// rows of one run with each other.
// Args: --rows=N (default 300,000), --block=N (default 100,000), --days=N (occurred_at spread over N days, as in a
// replay of history; default: the last hour).
import { rmSync, writeFileSync } from 'node:fs'
import type { ClickHouseSettings } from '@clickhouse/client'
import { join } from 'node:path'
import { encodeLines, queryRows, readAs } from '../clickhouse/client.ts'
import { usageEvent } from '../contract/synthetic.ts'
import { LINE_OF, toRow } from '../ingest/rows.ts'
import { INSERT_SETTINGS } from '../ingest/writer.ts'
import { openTestStorage, tempDir } from '../test/helpers.ts'

const arg = (name: string, fallback: number) => Number(process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? fallback)
const N = arg('rows', 300_000)
const BLOCK = arg('block', 100_000)
const SPAN_MS = process.argv.some((a) => a.startsWith('--days=')) ? arg('days', 1) * 86_400_000 : 3_600_000
const COLUMNS = LINE_OF.key_usage!.columns
const now = Date.now()
const made = Array.from({ length: N }, (_, i) => toRow('key.usage', usageEvent(i, { keys: 10_000, accounts: 500, from: now - SPAN_MS, to: now - 60_000 })))
const tsv = made.map((r) => r.line!) // what keywatch builds (ingest/rows.ts)
const json = made.map((r) => JSON.stringify(Object.values(r.values))) // the same cells as JSONCompactEachRow
const bodies = (lines: string[]) => Array.from({ length: Math.ceil(N / BLOCK) }, (_, b) => encodeLines(lines.slice(b * BLOCK, (b + 1) * BLOCK)).body)
const jsonBodies = bodies(json)
const tsvBodies = bodies(tsv)

const dir = tempDir('keywatch-bench-engine-')
const storage = await openTestStorage(dir)
const { client } = storage
await client.command({ query: 'SYSTEM STOP MERGES' })
const types = new Map((await queryRows<{ name: string; type: string }>(client, "SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = 'key_usage'")).map((c) => [c.name, c.type]))
const structure = (typeOf: (type: string) => string) => COLUMNS.map((c) => `${c} ${typeOf(types.get(c)!)}`).join(', ')
const AS_IN_TABLE = structure((t) => t)
const AS_READ = structure(readAs)
const TABLES = (await queryRows<{ name: string }>(client, "SELECT name FROM system.tables WHERE database = currentDatabase() AND engine LIKE '%MergeTree'")).map((t) => t.name)
await client.command({ query: 'CREATE TABLE usage_null AS key_usage ENGINE = Null' })
await client.command({ query: 'CREATE TABLE lines_null (line String) ENGINE = Null' })

let sequence = 0
/** µs of process CPU per row to insert every block, best of 5 (the files are written before the clock starts). */
async function cost(table: string, format: string, fileStructure: string, blocks: Buffer[]): Promise<number> {
  let best = Infinity
  for (let round = 0; round < 5; round++) {
    if (!table.endsWith('_null')) for (const t of TABLES) await client.command({ query: 'TRUNCATE TABLE {t:Identifier}', query_params: { t } })
    const files = blocks.map((body) => {
      const file = join(dir, `block-${sequence++}`)
      writeFileSync(file, body)
      return file
    })
    const columns = table === 'lines_null' ? '' : `(${COLUMNS.join(', ')})`
    const cpu0 = process.cpuUsage()
    for (const file of files) {
      await client.command({
        query: `INSERT INTO ${table} ${columns} SELECT * FROM file({file:String}, {format:String}, {structure:String})`,
        query_params: { file, format, structure: fileStructure },
        clickhouse_settings: INSERT_SETTINGS(`bench-engine-${sequence++}`) as ClickHouseSettings,
      })
    }
    const cpu = process.cpuUsage(cpu0)
    best = Math.min(best, (cpu.user + cpu.system) / N)
    for (const file of files) rmSync(file)
  }
  return best
}

const rows: [string, number][] = []
const row = (label: string, us: number) => (rows.push([label, us]), console.log(`  ${label.padEnd(66)} ${us.toFixed(2).padStart(6)} µs/row`))
console.log(`bench:engine  ${N.toLocaleString('en')} key_usage rows over ${SPAN_MS / 3_600_000} hours in ${BLOCK.toLocaleString('en')}-row blocks, merges stopped, process CPU per row\n`)
console.log('parse: into a Null table (nothing stored, no views)')
row('lines only (LineAsString): the floor of reading the file', await cost('lines_null', 'LineAsString', 'line String', jsonBodies))
row('JSONCompactEachRow, LowCardinality columns parsed as such', await cost('usage_null', 'JSONCompactEachRow', AS_IN_TABLE, jsonBodies))
row('JSONCompactEachRow, read as plain types, cast by the insert', await cost('usage_null', 'JSONCompactEachRow', AS_READ, jsonBodies))
row('TabSeparated, read as plain types', await cost('usage_null', 'TabSeparated', AS_READ, tsvBodies))
console.log('\ninsert into key_usage with every view')
const before = await cost('key_usage', 'JSONCompactEachRow', AS_IN_TABLE, jsonBodies)
row('JSONCompactEachRow, LowCardinality parsed as such (before)', before)
const now_ = await cost('key_usage', 'JSONCompactEachRow', AS_READ, jsonBodies)
row('JSONCompactEachRow, read as plain types', now_)
const keywatch = await cost('key_usage', 'TabSeparated', AS_READ, tsvBodies)
row('TabSeparated, read as plain types (what keywatch does)', keywatch)
console.log(`  ratio what keywatch does / before: ${(keywatch / before).toFixed(2)}`)

console.log('\nthe views, by group: dropped one group after another, the cost that went with it')
const GROUPS: [string, string[]][] = [
  ['networks, scopes and probes (4 views)', ['key_networks_daily_mv', 'key_networks_hourly_mv', 'key_scopes_daily_mv', 'key_probes_1m_mv']],
  ['event ids by time and by id (2 views)', ['event_ids_by_id_mv', 'event_ids_key_usage']],
  ['usage hourly, daily and last used (3 views)', ['key_last_used_mv', 'key_usage_daily_mv', 'key_usage_hourly_mv']],
]
let previous = keywatch
for (const [label, views] of GROUPS) {
  for (const v of views) await client.command({ query: 'DROP VIEW {v:Identifier}', query_params: { v } })
  const after = await cost('key_usage', 'TabSeparated', AS_READ, tsvBodies)
  row(label, previous - after)
  previous = after
}
row('the raw table alone', previous)
await storage.close()
rmSync(dir, { recursive: true, force: true })
