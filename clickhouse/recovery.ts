// Recovery after an unclean stop. An insert into a table with materialized views is not atomic in ClickHouse: the
// raw table's part is committed first, then each view's (seen with SIGKILL mid-insert: raw rows present, their
// event_ids or rollup rows missing). The raw tables are the truth; this re-derives, from the raw rows received
// shortly before the stop, whatever the views missed:
//  - event_ids, so redelivered events are recognised as stored (else they would be stored twice);
//  - the usage and 429 rollups of the keys and days those rows touch, rebuilt from raw.
// It runs at every start; when nothing is missing it only reads.
import { TupleParam } from '@clickhouse/client'
import { queryRows, type Storage } from './client.ts'

// A rebuilt block may equal one inserted before the deletes: it must not be taken for a duplicate and dropped.
const NO_DEDUP = { insert_deduplicate: 0 } as const
// Deletes take effect before the rebuilt rows go in.
const SYNC = { mutations_sync: '2', lightweight_deletes_sync: '2' } as const

/** Kafka batches not yet committed at a stop are seconds old; ten minutes leaves a wide margin. */
const WINDOW_SECONDS = 600

const RAW_TABLES = [
  { table: 'key_usage', type: 'key.usage' },
  { table: 'key_ratelimits', type: 'key.ratelimited' },
  { table: 'auth_events', type: 'auth.event' },
  { table: 'key_lifecycle', type: 'key.lifecycle' },
  { table: 'leak_reports', type: 'leak.reported' },
] as const

export interface RecoveryReport {
  eventIdsRestored: number
  usageKeyDaysRebuilt: number
  ratelimitKeyBucketsRebuilt: number
}

export async function recoverViews(storage: Storage): Promise<RecoveryReport> {
  const report: RecoveryReport = { eventIdsRestored: 0, usageKeyDaysRebuilt: 0, ratelimitKeyBucketsRebuilt: 0 }
  const { client } = storage
  for (const { table, type } of RAW_TABLES) {
    const [latest] = await queryRows<{ at: string | null }>(client, 'SELECT toString(max(received_at)) AS at FROM {table:Identifier}', { table })
    if (!latest?.at || latest.at.startsWith('1970')) continue
    const window = { from: latest.at, seconds: WINDOW_SECONDS }
    const recent = `received_at >= {from:DateTime64(3, 'UTC')} - toIntervalSecond({seconds:UInt32})`

    const [missing] = await queryRows<{ n: number }>(
      client,
      `SELECT count() AS n FROM {table:Identifier} WHERE ${recent}
         AND (occurred_at, event_id) NOT IN (SELECT occurred_at, event_id FROM event_ids WHERE type = {type:String})`,
      { ...window, type, table },
    )
    if (missing && missing.n > 0) {
      await client.command({
        query: `INSERT INTO event_ids SELECT occurred_at, event_id, {type:String} FROM {table:Identifier} WHERE ${recent}
                  AND (occurred_at, event_id) NOT IN (SELECT occurred_at, event_id FROM event_ids WHERE type = {type:String})`,
        query_params: { ...window, type, table },
      })
      report.eventIdsRestored += missing.n
    }
    if (table === 'key_usage') report.usageKeyDaysRebuilt = await rebuildUsageRollups(storage, window)
    if (table === 'key_ratelimits') report.ratelimitKeyBucketsRebuilt = await rebuildRatelimitRollup(storage, window)
  }
  return report
}

/** Keys and days touched by recent raw rows whose daily rollup disagrees with raw: rebuilt hourly, daily, last use. */
async function rebuildUsageRollups(storage: Storage, window: { from: string; seconds: number }): Promise<number> {
  const { client } = storage
  const off = await queryRows<{ account_id: string; key_id: string; day: string }>(
    client,
    `WITH touched AS (
         SELECT DISTINCT account_id, key_id, toDate(occurred_at) AS day FROM key_usage
         WHERE key_id != '' AND received_at >= {from:DateTime64(3, 'UTC')} - toIntervalSecond({seconds:UInt32}))
     SELECT t.account_id AS account_id, t.key_id AS key_id, toString(t.day) AS day
     FROM touched AS t
     LEFT JOIN (SELECT account_id, key_id, toDate(occurred_at) AS day, count() AS n FROM key_usage
                WHERE (account_id, key_id, toDate(occurred_at)) IN (SELECT account_id, key_id, day FROM touched)
                GROUP BY account_id, key_id, day) AS r USING (account_id, key_id, day)
     LEFT JOIN (SELECT account_id, key_id, day, sum(requests) AS n FROM key_usage_daily
                WHERE (account_id, key_id, day) IN (SELECT account_id, key_id, day FROM touched)
                GROUP BY account_id, key_id, day) AS d USING (account_id, key_id, day)
     LEFT JOIN (SELECT account_id, key_id, toDate(hour) AS day, sum(requests) AS n FROM key_usage_hourly
                WHERE (account_id, key_id, toDate(hour)) IN (SELECT account_id, key_id, day FROM touched)
                GROUP BY account_id, key_id, day) AS h USING (account_id, key_id, day)
     WHERE r.n != d.n OR r.n != h.n`,
    window,
  )
  if (off.length === 0) return 0
  const keyDays = off.map((o) => new TupleParam([o.account_id, o.key_id, o.day]))
  const keys = [...new Map(off.map((o) => [`${o.account_id}\u0000${o.key_id}`, new TupleParam([o.account_id, o.key_id])])).values()]
  const sync = SYNC
  const inKeyDays = `(account_id, key_id, toString(toDate(hour))) IN {keyDays:Array(Tuple(String, String, String))}`
  await client.command({ query: `DELETE FROM key_usage_hourly WHERE ${inKeyDays}`, query_params: { keyDays }, clickhouse_settings: sync })
  await client.command({
    query: `DELETE FROM key_usage_daily WHERE (account_id, key_id, toString(day)) IN {keyDays:Array(Tuple(String, String, String))}`,
    query_params: { keyDays },
    clickhouse_settings: sync,
  })
  // Re-inserting the hourly rows feeds the daily rollup (and key_last_used) through their views.
  const [hourlyView] = await queryRows<{ q: string }>(client, "SELECT as_select AS q FROM system.tables WHERE database = currentDatabase() AND name = 'key_usage_hourly_mv'")
  await client.command({
    query: `INSERT INTO key_usage_hourly SELECT * FROM (${hourlyView!.q}) WHERE ${inKeyDays}`,
    query_params: { keyDays },
    clickhouse_settings: NO_DEDUP,
  })
  // key_last_used covers all time: rebuild those keys' rows from the daily rollup.
  await client.command({
    query: 'DELETE FROM key_last_used WHERE (account_id, key_id) IN {keys:Array(Tuple(String, String))}',
    query_params: { keys },
    clickhouse_settings: sync,
  })
  await client.command({
    query: `INSERT INTO key_last_used SELECT account_id, key_id, min(first_used_at), max(last_used_at), sum(requests)
            FROM key_usage_daily WHERE (account_id, key_id) IN {keys:Array(Tuple(String, String))} GROUP BY account_id, key_id`,
    query_params: { keys },
    clickhouse_settings: NO_DEDUP,
  })
  return off.length
}

async function rebuildRatelimitRollup(storage: Storage, window: { from: string; seconds: number }): Promise<number> {
  const { client } = storage
  const off = await queryRows<{ account_id: string; key_id: string; bucket: string }>(
    client,
    `WITH touched AS (
         SELECT DISTINCT account_id, key_id, toStartOfFiveMinutes(occurred_at) AS bucket FROM key_ratelimits
         WHERE received_at >= {from:DateTime64(3, 'UTC')} - toIntervalSecond({seconds:UInt32}))
     SELECT t.account_id AS account_id, t.key_id AS key_id, toString(t.bucket) AS bucket
     FROM touched AS t
     LEFT JOIN (SELECT account_id, key_id, toStartOfFiveMinutes(occurred_at) AS bucket, count() AS n FROM key_ratelimits
                WHERE (account_id, key_id, toStartOfFiveMinutes(occurred_at)) IN (SELECT account_id, key_id, bucket FROM touched)
                GROUP BY account_id, key_id, bucket) AS r USING (account_id, key_id, bucket)
     LEFT JOIN (SELECT account_id, key_id, bucket, sum(events) AS n FROM key_ratelimits_5m
                WHERE (account_id, key_id, bucket) IN (SELECT account_id, key_id, bucket FROM touched)
                GROUP BY account_id, key_id, bucket) AS m USING (account_id, key_id, bucket)
     WHERE r.n != m.n`,
    window,
  )
  if (off.length === 0) return 0
  const buckets = off.map((o) => new TupleParam([o.account_id, o.key_id, o.bucket]))
  const inBuckets = '(account_id, key_id, toString(bucket)) IN {buckets:Array(Tuple(String, String, String))}'
  await client.command({ query: `DELETE FROM key_ratelimits_5m WHERE ${inBuckets}`, query_params: { buckets }, clickhouse_settings: SYNC })
  const [view] = await queryRows<{ q: string }>(client, "SELECT as_select AS q FROM system.tables WHERE database = currentDatabase() AND name = 'key_ratelimits_5m_mv'")
  await client.command({ query: `INSERT INTO key_ratelimits_5m SELECT * FROM (${view!.q}) WHERE ${inBuckets}`, query_params: { buckets }, clickhouse_settings: NO_DEDUP })
  return off.length
}
