// The oracle: what the instances stored, against the ids that were produced. The counting is copied from the
// outside fault harness (/work/shared/faults/oracle.ts, "in the style of ClickHouse Kafka Connect's chaos tests"),
// made a function over an open store so instances sharing one engine in this process can be judged in place.
// PASS iff raw count == distinct event_id == expected, no produced id missing, no unknown id, and every rollup
// (hourly, daily, last-use sums of requests; event_ids FINAL) == expected.
import { queryRows, type ClickHouseClient } from '../../clickhouse/client.ts'

export interface Verdict {
  expected: number
  raw: number
  distinct: number
  duplicates: number
  missing: number
  extra: number
  hourly: number
  daily: number
  lastUsed: number
  eventIds: number
  verdict: 'PASS' | 'FAIL'
  failures: string[]
}

/** `produced`: every produced event id (lower case). */
export async function judge(client: ClickHouseClient, produced: Set<string>): Promise<Verdict> {
  const one = async (sql: string) => Number((await queryRows<{ n: number | string }>(client, sql))[0]?.n ?? 0)
  const expected = produced.size
  const raw = await one('SELECT count() AS n FROM key_usage')
  const distinct = await one('SELECT uniqExact(event_id) AS n FROM key_usage')
  const hourly = await one('SELECT sum(requests) AS n FROM key_usage_hourly')
  const daily = await one('SELECT sum(requests) AS n FROM key_usage_daily')
  const lastUsed = await one('SELECT sum(requests) AS n FROM key_last_used')
  const eventIds = await one("SELECT count() AS n FROM event_ids FINAL WHERE type = 'key.usage'")
  const stored = new Set((await queryRows<{ id: string }>(client, 'SELECT DISTINCT toString(event_id) AS id FROM key_usage')).map((r) => r.id.toLowerCase()))
  let missing = 0
  for (const id of produced) if (!stored.has(id)) missing++
  let extra = 0
  for (const id of stored) if (!produced.has(id)) extra++
  const failures: string[] = []
  const want = (name: string, got: number, exp: number) => {
    if (got !== exp) failures.push(`${name} ${got} != ${exp}`)
  }
  want('raw', raw, expected)
  want('distinct', distinct, expected)
  want('duplicates', raw - distinct, 0)
  want('missing', missing, 0)
  want('extra', extra, 0)
  want('hourly', hourly, expected)
  want('daily', daily, expected)
  want('last_used', lastUsed, expected)
  want('event_ids', eventIds, expected)
  return { expected, raw, distinct, duplicates: raw - distinct, missing, extra, hourly, daily, lastUsed, eventIds, verdict: failures.length ? 'FAIL' : 'PASS', failures }
}

/**
 * The negative control's damage (as in /work/shared/faults/negctl.ts): 100 stored events deleted from the raw table
 * (rollups untouched) and 50 raw rows inserted a second time (their views fire). The oracle must then FAIL.
 */
export async function damage(client: ClickHouseClient): Promise<void> {
  const ids = (await queryRows<{ id: string }>(client, 'SELECT toString(event_id) AS id FROM key_usage ORDER BY event_id LIMIT 100')).map((r) => r.id)
  await client.command({ query: 'DELETE FROM key_usage WHERE event_id IN {ids:Array(UUID)}', query_params: { ids }, clickhouse_settings: { lightweight_deletes_sync: '2', mutations_sync: '2' } })
  await client.command({ query: 'INSERT INTO key_usage SELECT * FROM key_usage ORDER BY event_id DESC LIMIT 50', clickhouse_settings: { insert_deduplicate: 0 } })
}
