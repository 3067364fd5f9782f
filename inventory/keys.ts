// The key inventory's owner: every read of key_inventory joined with key_last_used (one row per key as of now,
// with its usage and the policy clocks), a key's usage series and its lifecycle timeline, for the API, the alert
// digests and the dashboard. The clocks are the key.stale and key.rotation_* detectors' own parameters, overrides
// (DETECTOR_PARAMS) included, so a key listed as stale or overdue is one those detectors flag.
import { queryRows, type ClickHouseClient } from '../clickhouse/client.ts'
import { DETECTORS } from '../detectors/index.ts'

/** Days after which a key is stale, due for rotation, and due soon (before it is due). */
export interface InventoryClocks {
  staleDays: number
  rotationDays: number
  dueSoonDays: number
}

/** The clocks of the key.stale, key.rotation_overdue and key.rotation_due_soon detectors, with their overrides. */
export function inventoryClocks(overrides: Record<string, Record<string, number>> = {}): InventoryClocks {
  const param = (id: string, name: string) => {
    const d = DETECTORS.find((x) => x.id === id)
    const value = overrides[id]?.[name] ?? (d?.params as Record<string, number> | undefined)?.[name]
    if (typeof value !== 'number') throw new Error(`detector ${id} has no parameter ${name}`)
    return value
  }
  const rotationDays = param('key.rotation_overdue', 'from_days')
  return { staleDays: param('key.stale', 'stale_days'), rotationDays, dueSoonDays: Math.max(0, rotationDays - param('key.rotation_due_soon', 'from_days')) }
}

const clockParams = (c: InventoryClocks) => ({ stale_days: c.staleDays, rotation_days: c.rotationDays, due_soon_days: c.dueSoonDays })

/** One row per key, as of now, with its usage and the policy clocks; filtered by the caller's WHERE on these names. */
const INVENTORY = `
SELECT i.account_id AS account_id, i.key_id AS key_id, i.key_prefix AS key_prefix, i.key_kind AS key_kind, i.mode AS mode,
       i.label AS label, i.status AS status, i.auto_generated AS auto_generated,
       i.created_at AS created, i.secret_set_at AS secret_set, i.expires_at AS expires, i.revoked_at AS revoked,
       i.scopes AS scopes_json, i.rotation_grace_deadline AS grace_deadline, i.deleted_at AS deleted,
       nullIf(u.last_used, toDateTime64(0, 3, 'UTC')) AS last_used, u.requests AS requests,
       i.status IN ('active', 'rotating') AND (i.expires_at IS NULL OR i.expires_at > now64(3)) AND i.created_at IS NOT NULL
         AND greatest(i.created_at, u.last_used) <= now64(3) - toIntervalDay({stale_days:UInt32}) AS is_stale,
       i.status = 'active' AND i.mode = 'live' AND i.key_kind IN ('secret', 'restricted') AND (i.expires_at IS NULL OR i.expires_at > now64(3)) AS on_rotation_clock,
       if(on_rotation_clock, i.secret_set_at + toIntervalDay({rotation_days:UInt32}), NULL) AS rotation_due
FROM key_inventory AS i
LEFT JOIN (SELECT account_id, key_id, max(last_used_at) AS last_used, sum(requests) AS requests FROM key_last_used GROUP BY account_id, key_id) AS u
  ON u.account_id = i.account_id AND u.key_id = i.key_id`

const FORMAT = `account_id, key_id, key_prefix, key_kind, mode, label, status, auto_generated,
  toString(created) AS created_at, toString(secret_set) AS secret_set_at, if(expires IS NULL, NULL, toString(expires)) AS expires_at,
  if(revoked IS NULL, NULL, toString(revoked)) AS revoked_at, if(deleted IS NULL, NULL, toString(deleted)) AS deleted_at,
  scopes_json, if(grace_deadline IS NULL, NULL, toString(grace_deadline)) AS rotation_grace_deadline, if(last_used IS NULL, NULL, toString(last_used)) AS last_used_at,
  requests, dateDiff('day', created, now64(3)) AS age_days, if(rotation_due IS NULL, NULL, toString(rotation_due)) AS rotation_due_at,
  is_stale AS stale, rotation_due IS NOT NULL AND rotation_due <= now64(3) AS rotation_overdue,
  rotation_due IS NOT NULL AND rotation_due > now64(3) AND rotation_due <= now64(3) + toIntervalDay({due_soon_days:UInt32}) AS rotation_due_soon`

export interface KeyRow {
  account_id: string
  key_id: string
  key_prefix: string
  key_kind: string
  mode: string
  label: string | null
  status: string
  auto_generated: boolean
  created_at: string
  secret_set_at: string
  expires_at: string | null
  revoked_at: string | null
  /** When a rollback deleted this key (a rotation's replacement). */
  deleted_at: string | null
  /** null: full access; undefined when no created or scopes_changed event was seen. */
  scopes?: { scope: string; access: ('read' | 'write')[] }[] | null
  /** While rotating: the moment the old key stops being valid. */
  rotation_grace_deadline: string | null
  last_used_at: string | null
  requests: number
  age_days: number
  rotation_due_at: string | null
  stale: boolean
  rotation_overdue: boolean
  rotation_due_soon: boolean
}

export interface InventoryFilter {
  account?: string
  status?: 'active' | 'rotating' | 'revoked' | 'expired' | 'deleted'
  kind?: 'secret' | 'publishable' | 'restricted'
  mode?: 'live' | 'test'
  stale?: boolean
  overdue?: boolean
  due_soon?: boolean
  limit: number
  offset: number
}

async function listKeys(client: ClickHouseClient, clocks: InventoryClocks, q: InventoryFilter): Promise<{ keys: KeyRow[]; total: number }> {
  const where = `WHERE ({account:String} = '' OR account_id = {account:String}) AND ({status:String} = '' OR status = {status:String})
      AND ({kind:String} = '' OR key_kind = {kind:String}) AND ({mode:String} = '' OR mode = {mode:String})
      AND ({stale:Int8} = -1 OR stale = {stale:Int8}) AND ({overdue:Int8} = -1 OR rotation_overdue = {overdue:Int8})
      AND ({due_soon:Int8} = -1 OR rotation_due_soon = {due_soon:Int8})`
  const tri = (v: boolean | undefined) => (v === undefined ? -1 : v ? 1 : 0)
  const params = { ...clockParams(clocks), account: q.account ?? '', status: q.status ?? '', kind: q.kind ?? '', mode: q.mode ?? '', stale: tri(q.stale), overdue: tri(q.overdue), due_soon: tri(q.due_soon), limit: q.limit, offset: q.offset }
  const rows = await queryRows<KeyRow & { total: number }>(
    client,
    `SELECT *, count() OVER () AS total FROM (SELECT ${FORMAT} FROM (${INVENTORY})) ${where} ORDER BY account_id, key_id LIMIT {limit:UInt32} OFFSET {offset:UInt32}`,
    params,
  )
  return { keys: rows.map(({ total: _t, ...k }) => normalize(k)), total: Number(rows[0]?.total ?? 0) }
}

function normalize({ scopes_json, ...k }: KeyRow & { scopes_json?: string | null }): KeyRow {
  // The inventory keeps the contract's scopes as JSON text: 'null' is full access, NULL is not known.
  const scopes = scopes_json == null ? undefined : (JSON.parse(scopes_json) as KeyRow['scopes'])
  return { ...k, ...(scopes !== undefined ? { scopes } : {}), auto_generated: Boolean(k.auto_generated), stale: Boolean(k.stale), rotation_overdue: Boolean(k.rotation_overdue), rotation_due_soon: Boolean(k.rotation_due_soon), requests: Number(k.requests ?? 0) }
}

export interface UsagePoint {
  t: string
  requests: number
  accepted: number
  rate_limited: number
  writes: number
  client_side: number
  ips: number
  countries: number
}

export class KeyInventory {
  constructor(
    private readonly client: ClickHouseClient,
    readonly clocks: InventoryClocks = inventoryClocks(),
  ) {}

  list(filter: InventoryFilter): Promise<{ keys: KeyRow[]; total: number }> {
    return listKeys(this.client, this.clocks, filter)
  }

  async get(keyId: string): Promise<KeyRow | undefined> {
    const [key] = await queryRows<KeyRow>(this.client, `SELECT ${FORMAT} FROM (${INVENTORY}) WHERE key_id = {id:String} LIMIT 1`, { ...clockParams(this.clocks), id: keyId })
    return key && normalize(key)
  }

  /** Requests per hour or per day in [from, to), from the usage rollups. */
  usage(key: { account_id: string; key_id: string }, interval: 'hour' | 'day', from: Date, to: Date): Promise<UsagePoint[]> {
    const p = { account: key.account_id, id: key.key_id, from: from.toISOString().slice(0, 19).replace('T', ' '), to: to.toISOString().slice(0, 19).replace('T', ' ') }
    return interval === 'hour'
      ? queryRows(
          this.client,
          `SELECT toString(hour) AS t, sum(requests) AS requests, sum(accepted) AS accepted, sum(rate_limited) AS rate_limited, sum(write_requests) AS writes,
                  sum(client_side) AS client_side, uniqMerge(ips) AS ips, uniqMerge(countries) AS countries
           FROM key_usage_hourly WHERE account_id = {account:String} AND key_id = {id:String}
             AND hour >= toStartOfHour(toDateTime({from:String}, 'UTC')) AND hour < {to:String}
           GROUP BY hour ORDER BY hour`,
          p,
        )
      : queryRows(
          this.client,
          `SELECT toString(day) AS t, sum(requests) AS requests, sum(accepted) AS accepted, sum(rate_limited) AS rate_limited, sum(write_requests) AS writes,
                  sum(client_side) AS client_side, uniqMerge(ips) AS ips, uniqMerge(countries) AS countries
           FROM key_usage_daily WHERE account_id = {account:String} AND key_id = {id:String}
             AND day >= toDate(toDateTime({from:String}, 'UTC')) AND day <= toDate(toDateTime({to:String}, 'UTC'))
           GROUP BY day ORDER BY day`,
          p,
        )
  }

  /** The key's lifecycle events, oldest first. */
  lifecycle(key: { account_id: string; key_id: string }): Promise<{ at: string; action: string; actor_type: string; actor_id: string | null; replacement_key_id: string | null; reason: string | null }[]> {
    return queryRows(
      this.client,
      `SELECT toString(occurred_at) AS at, action, actor_type, actor_id, replacement_key_id, reason FROM key_lifecycle
       WHERE account_id = {account:String} AND key_id = {id:String} ORDER BY occurred_at`,
      { account: key.account_id, id: key.key_id },
    )
  }
}
