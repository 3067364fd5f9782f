// The key inventory (status, kind, mode, scopes, last used, age, rotation due, expiry, grace deadline; filters for stale, overdue and due
// soon keys, with the same definitions as the key.stale and key.rotation_* detectors) and a key's page of detail.
import type { FastifyInstance } from 'fastify'
import type { ZodTypeProvider } from 'fastify-type-provider-zod'
import { z } from 'zod'
import { queryRows, type ClickHouseClient } from '../clickhouse/client.ts'
import type { FindingStore } from '../detectors/findings.ts'
import type { ActionStore } from '../response/actions.ts'
import { ApiError } from './errors.ts'
import { accountId, flag, instant, keyParams, limit } from './schemas.ts'

const STALE_DAYS = 90
const ROTATION_DAYS = 90
const DUE_SOON_DAYS = 15

/** One row per key, as of now, with its usage and the policy clocks; filtered by the caller's WHERE on these names. */
const INVENTORY = `
SELECT i.account_id AS account_id, i.key_id AS key_id, i.key_prefix AS key_prefix, i.key_kind AS key_kind, i.mode AS mode,
       i.label AS label, i.status AS status, i.auto_generated AS auto_generated,
       i.created_at AS created, i.secret_set_at AS secret_set, i.expires_at AS expires, i.revoked_at AS revoked,
       i.scopes AS scopes_json, i.rotation_grace_deadline AS grace_deadline, i.deleted_at AS deleted,
       nullIf(u.last_used, toDateTime64(0, 3, 'UTC')) AS last_used, u.requests AS requests,
       i.status IN ('active', 'rotating') AND (i.expires_at IS NULL OR i.expires_at > now64(3)) AND i.created_at IS NOT NULL
         AND greatest(i.created_at, u.last_used) <= now64(3) - toIntervalDay(${STALE_DAYS}) AS is_stale,
       i.status = 'active' AND i.mode = 'live' AND i.key_kind IN ('secret', 'restricted') AND (i.expires_at IS NULL OR i.expires_at > now64(3)) AS on_rotation_clock,
       if(on_rotation_clock, i.secret_set_at + toIntervalDay(${ROTATION_DAYS}), NULL) AS rotation_due
FROM key_inventory AS i
LEFT JOIN (SELECT account_id, key_id, max(last_used_at) AS last_used, sum(requests) AS requests FROM key_last_used GROUP BY account_id, key_id) AS u
  ON u.account_id = i.account_id AND u.key_id = i.key_id`

const FORMAT = `account_id, key_id, key_prefix, key_kind, mode, label, status, auto_generated,
  toString(created) AS created_at, toString(secret_set) AS secret_set_at, if(expires IS NULL, NULL, toString(expires)) AS expires_at,
  if(revoked IS NULL, NULL, toString(revoked)) AS revoked_at, if(deleted IS NULL, NULL, toString(deleted)) AS deleted_at,
  scopes_json, if(grace_deadline IS NULL, NULL, toString(grace_deadline)) AS rotation_grace_deadline, if(last_used IS NULL, NULL, toString(last_used)) AS last_used_at,
  requests, dateDiff('day', created, now64(3)) AS age_days, if(rotation_due IS NULL, NULL, toString(rotation_due)) AS rotation_due_at,
  is_stale AS stale, rotation_due IS NOT NULL AND rotation_due <= now64(3) AS rotation_overdue,
  rotation_due IS NOT NULL AND rotation_due > now64(3) AND rotation_due <= now64(3) + toIntervalDay(${DUE_SOON_DAYS}) AS rotation_due_soon`

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

const inventoryQuery = z.strictObject({
  account: accountId.optional(),
  status: z.enum(['active', 'rotating', 'revoked', 'expired', 'deleted']).optional(),
  kind: z.enum(['secret', 'publishable', 'restricted']).optional(),
  mode: z.enum(['live', 'test']).optional(),
  stale: flag.optional(),
  overdue: flag.optional(),
  due_soon: flag.optional(),
  limit: limit(10_000, 500),
  offset: z.coerce.number().int().min(0).default(0),
})

export async function listKeys(client: ClickHouseClient, q: z.output<typeof inventoryQuery>): Promise<{ keys: KeyRow[]; total: number }> {
  const where = `WHERE ({account:String} = '' OR account_id = {account:String}) AND ({status:String} = '' OR status = {status:String})
      AND ({kind:String} = '' OR key_kind = {kind:String}) AND ({mode:String} = '' OR mode = {mode:String})
      AND ({stale:Int8} = -1 OR stale = {stale:Int8}) AND ({overdue:Int8} = -1 OR rotation_overdue = {overdue:Int8})
      AND ({due_soon:Int8} = -1 OR rotation_due_soon = {due_soon:Int8})`
  const tri = (v: boolean | undefined) => (v === undefined ? -1 : v ? 1 : 0)
  const params = { account: q.account ?? '', status: q.status ?? '', kind: q.kind ?? '', mode: q.mode ?? '', stale: tri(q.stale), overdue: tri(q.overdue), due_soon: tri(q.due_soon), limit: q.limit, offset: q.offset }
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

export async function keyRoutes(app: FastifyInstance, deps: { client: ClickHouseClient; findings: FindingStore; actions: ActionStore }): Promise<void> {
  const r = app.withTypeProvider<ZodTypeProvider>()

  r.get('/v1/keys', { config: { permission: 'read' }, schema: { tags: ['keys'], summary: 'The key inventory', querystring: inventoryQuery } }, async (request) => listKeys(deps.client, request.query))

  r.get(
    '/v1/keys/:id',
    {
      config: { permission: 'read' },
      schema: {
        tags: ['keys'],
        summary: "A key: its inventory row, usage series, lifecycle timeline, findings and actions",
        params: keyParams,
        querystring: z.strictObject({ from: instant.optional(), to: instant.optional(), interval: z.enum(['hour', 'day']).default('hour') }),
      },
    },
    async (request) => {
      const id = request.params.id
      const [key] = await queryRows<KeyRow>(deps.client, `SELECT ${FORMAT} FROM (${INVENTORY}) WHERE key_id = {id:String} LIMIT 1`, { id })
      if (!key) throw new ApiError(404, 'not_found', `no key ${id} in the inventory`)
      const to = request.query.to ? new Date(request.query.to) : new Date()
      const from = request.query.from ? new Date(request.query.from) : new Date(to.getTime() - (request.query.interval === 'hour' ? 2 : 30) * 86_400_000)
      if (from >= to) throw new ApiError(400, 'invalid_input', 'query.from: must be before query.to')
      const p = { account: key.account_id, id, from: from.toISOString().slice(0, 19).replace('T', ' '), to: to.toISOString().slice(0, 19).replace('T', ' ') }
      const [usage, lifecycle, findings, actions] = await Promise.all([
        request.query.interval === 'hour'
          ? queryRows(
              deps.client,
              `SELECT toString(hour) AS t, sum(requests) AS requests, sum(accepted) AS accepted, sum(rate_limited) AS rate_limited, sum(write_requests) AS writes,
                      sum(client_side) AS client_side, uniqMerge(ips) AS ips, uniqMerge(countries) AS countries
               FROM key_usage_hourly WHERE account_id = {account:String} AND key_id = {id:String}
                 AND hour >= toStartOfHour(toDateTime({from:String}, 'UTC')) AND hour < {to:String}
               GROUP BY hour ORDER BY hour`,
              p,
            )
          : queryRows(
              deps.client,
              `SELECT toString(day) AS t, sum(requests) AS requests, sum(accepted) AS accepted, sum(rate_limited) AS rate_limited, sum(write_requests) AS writes,
                      sum(client_side) AS client_side, uniqMerge(ips) AS ips, uniqMerge(countries) AS countries
               FROM key_usage_daily WHERE account_id = {account:String} AND key_id = {id:String}
                 AND day >= toDate(toDateTime({from:String}, 'UTC')) AND day <= toDate(toDateTime({to:String}, 'UTC'))
               GROUP BY day ORDER BY day`,
              p,
            ),
        queryRows(
          deps.client,
          `SELECT toString(occurred_at) AS at, action, actor_type, actor_id, replacement_key_id, reason FROM key_lifecycle
           WHERE account_id = {account:String} AND key_id = {id:String} ORDER BY occurred_at`,
          p,
        ),
        deps.findings.list({ key_id: id, account_id: key.account_id, limit: 200 }),
        deps.actions.list({ key_id: id, account_id: key.account_id, limit: 200 }),
      ])
      return { key: normalize(key), usage: { interval: request.query.interval, from: from.toISOString(), to: to.toISOString(), series: usage }, lifecycle, findings, actions }
    },
  )
}
