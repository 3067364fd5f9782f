// Recovery after an unclean stop. An insert into a table with materialized views is not atomic in ClickHouse: the
// raw table's part is committed first, then each view's (seen with SIGKILL mid-insert: raw rows present, their
// event_ids or rollup rows missing). The raw tables are the truth; this re-derives, from the raw rows received
// shortly before the stop, whatever the views missed:
//  - event_ids (and event_ids_by_id), so redelivered events are recognised as stored (else they would be stored twice);
//  - the usage and 429 rollups of the keys and days those rows touch, rebuilt from raw.
// It never deletes first: the corrected partitions are built in a staging table (the rows of other keys copied, the
// touched ones rebuilt) and swapped in with REPLACE PARTITION, one atomic step per partition, so a repair that fails
// part-way leaves every partition as it was or as it should be, never empty. It runs at every start; when nothing is
// missing it only reads.
import { TupleParam } from '@clickhouse/client'
import { queryRows, type Storage } from './client.ts'

// A rebuilt block may equal one inserted before: it must not be taken for a duplicate and dropped. A staging table
// has no views, and a day-partitioned one may take a year of days in one insert.
const STAGING_INSERT = { insert_deduplicate: 0, max_partitions_per_insert_block: '0' } as const

/** Kafka batches not yet committed at a stop are seconds old; ten minutes leaves a wide margin. */
const WINDOW_SECONDS = 600

const RAW_TABLES = [
  { table: 'key_usage', type: 'key.usage' },
  { table: 'key_ratelimits', type: 'key.ratelimited' },
  { table: 'auth_events', type: 'auth.event' },
  { table: 'key_lifecycle', type: 'key.lifecycle' },
  { table: 'leak_reports', type: 'leak.reported' },
] as const

/** Per raw table, the latest received_at when the repair was planned: a retry repairs the same rows. */
export type RecoveryWindows = Partial<Record<(typeof RAW_TABLES)[number]['table'], string>>

export async function recentWindows(storage: Storage): Promise<RecoveryWindows> {
  const windows: RecoveryWindows = {}
  for (const { table } of RAW_TABLES) {
    const [latest] = await queryRows<{ at: string | null }>(storage.client, 'SELECT toString(max(received_at)) AS at FROM {table:Identifier}', { table })
    if (latest?.at && !latest.at.startsWith('1970')) windows[table] = latest.at
  }
  return windows
}

export interface RecoveryReport {
  eventIdsRestored: number
  usageKeyDaysRebuilt: number
  ratelimitKeyBucketsRebuilt: number
}

export async function recoverViews(storage: Storage, windows?: RecoveryWindows): Promise<RecoveryReport> {
  const report: RecoveryReport = { eventIdsRestored: 0, usageKeyDaysRebuilt: 0, ratelimitKeyBucketsRebuilt: 0 }
  const { client } = storage
  windows ??= await recentWindows(storage)
  for (const { table, type } of RAW_TABLES) {
    const latest = windows[table]
    if (!latest) continue
    const window = { from: latest, seconds: WINDOW_SECONDS }
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
    // A stop between event_ids' part and event_ids_by_id's: the lookup by id would miss them.
    await client.command({
      query: `INSERT INTO event_ids_by_id SELECT event_id, occurred_at, {type:String} FROM {table:Identifier} WHERE ${recent}
                AND event_id NOT IN (SELECT event_id FROM event_ids_by_id WHERE event_id IN (SELECT event_id FROM {table:Identifier} WHERE ${recent}))`,
      query_params: { ...window, type, table },
    })
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
  const days = [...new Set(off.map((o) => o.day))]
  const [hourlyView] = await queryRows<{ q: string }>(client, "SELECT as_select AS q FROM system.tables WHERE database = currentDatabase() AND name = 'key_usage_hourly_mv'")
  const [dailyView] = await queryRows<{ q: string }>(client, "SELECT as_select AS q FROM system.tables WHERE database = currentDatabase() AND name = 'key_usage_daily_mv'")
  const inKeyDays = (day: string) => `(account_id, key_id, toString(${day})) IN {keyDays:Array(Tuple(String, String, String))}`
  // Hourly from raw, then daily from the repaired hourly, then last use from the repaired daily.
  await replacePartitions(storage, {
    table: 'key_usage_hourly',
    partitions: days.map((d) => d.replaceAll('-', '')),
    keep: `NOT ${inKeyDays('toDate(hour)')}`,
    rebuilt: `SELECT * FROM (${hourlyView!.q}) WHERE ${inKeyDays('toDate(hour)')}`,
    params: { keyDays },
  })
  await replacePartitions(storage, {
    table: 'key_usage_daily',
    partitions: [...new Set(days.map((d) => d.slice(0, 4)))],
    keep: `NOT ${inKeyDays('day')}`,
    rebuilt: `SELECT * FROM (${dailyView!.q}) WHERE ${inKeyDays('day')}`,
    params: { keyDays },
  })
  // key_last_used covers all time: those keys' rows from the daily rollup.
  await replacePartitions(storage, {
    table: 'key_last_used',
    partitions: ['all'],
    keep: '(account_id, key_id) NOT IN {keys:Array(Tuple(String, String))}',
    rebuilt: `SELECT account_id, key_id, min(first_used_at), max(last_used_at), sum(requests)
              FROM key_usage_daily WHERE (account_id, key_id) IN {keys:Array(Tuple(String, String))} GROUP BY account_id, key_id`,
    params: { keys },
  })
  return off.length
}

/**
 * Rewrites some partitions of a rollup without a moment in which they are empty or half-done: a staging table of
 * the same structure gets the partitions' rows that `keep` selects plus the `rebuilt` ones, then each partition is
 * swapped in whole (REPLACE PARTITION is atomic per partition). A failure before a swap leaves that partition as it
 * was; the staging table is dropped at the next attempt.
 */
async function replacePartitions(
  storage: Storage,
  o: { table: string; partitions: string[]; keep: string; rebuilt: string; params: Record<string, unknown> },
): Promise<void> {
  const { client } = storage
  for (const id of o.partitions) if (!/^[0-9a-z]+$/.test(id)) throw new Error(`unexpected partition id ${JSON.stringify(id)} of ${o.table}`)
  if (!/^[a-z0-9_]+$/.test(o.table)) throw new Error(`unexpected table name ${JSON.stringify(o.table)}`)
  const staging = `${o.table}_repair`
  await client.command({ query: 'DROP TABLE IF EXISTS {staging:Identifier}', query_params: { staging } })
  // CREATE ... AS takes no identifier parameter: the names are this module's own constants (checked above).
  await client.command({ query: `CREATE TABLE ${staging} AS ${o.table}` })
  try {
    await client.command({
      query: `INSERT INTO {staging:Identifier} SELECT * FROM {table:Identifier} WHERE _partition_id IN {partitions:Array(String)} AND ${o.keep}`,
      query_params: { ...o.params, staging, table: o.table, partitions: o.partitions },
      clickhouse_settings: STAGING_INSERT,
    })
    await client.command({ query: `INSERT INTO {staging:Identifier} ${o.rebuilt}`, query_params: { ...o.params, staging }, clickhouse_settings: STAGING_INSERT })
    for (const id of o.partitions) {
      // No query parameters in this statement: the partition id and the names are checked above.
      await client.command({ query: `ALTER TABLE ${o.table} REPLACE PARTITION ID '${id}' FROM ${staging}` })
    }
  } finally {
    await client.command({ query: 'DROP TABLE IF EXISTS {staging:Identifier}', query_params: { staging } }).catch(() => undefined)
  }
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
  const [view] = await queryRows<{ q: string }>(client, "SELECT as_select AS q FROM system.tables WHERE database = currentDatabase() AND name = 'key_ratelimits_5m_mv'")
  await replacePartitions(storage, {
    table: 'key_ratelimits_5m',
    partitions: [...new Set(off.map((o) => o.bucket.slice(0, 7).replace('-', '')))],
    keep: `NOT ${inBuckets}`,
    rebuilt: `SELECT * FROM (${view!.q}) WHERE ${inBuckets}`,
    params: { buckets },
  })
  return off.length
}
