// What a compliance export holds. `security-log`: the auth events (logins, MFA, members), the key lifecycle (who
// created, rotated, revoked which key) and keywatch's own audit trail, in one time-ordered table. `key-usage`: every
// API request made with a key, in storage order (account, key, time), which streams without a sort.
// Only rows received up to the export's snapshot are read, so its row count and its file agree.
import { z } from 'zod'

export const DATASETS = ['security-log', 'key-usage'] as const
export type Dataset = (typeof DATASETS)[number]
export const FORMATS = ['csv', 'ndjson', 'parquet'] as const
export type ExportFormat = (typeof FORMATS)[number]

export const exportFilter = z.strictObject({
  from: z.iso.datetime({ offset: true, message: 'must be an RFC 3339 date-time, e.g. 2026-11-01T00:00:00Z' }),
  to: z.iso.datetime({ offset: true, message: 'must be an RFC 3339 date-time, e.g. 2026-12-01T00:00:00Z' }),
  account: z.string().regex(/^acct_[A-Za-z0-9]{4,64}$/, 'must be an account id (acct_…)').optional(),
  actor: z.string().min(1).max(256).optional(),
  action: z.string().regex(/^[a-z_.]{1,64}$/, 'must be an action such as login.succeeded or revoked').optional(),
})
export type ExportFilter = z.infer<typeof exportFilter>

export const CLICKHOUSE_FORMAT: Record<ExportFormat, string> = { csv: 'CSVWithNames', ndjson: 'JSONEachRow', parquet: 'Parquet' }

const WINDOW = `occurred_at >= {from:DateTime64(3, 'UTC')} AND occurred_at < {to:DateTime64(3, 'UTC')} AND received_at <= {snapshot:DateTime64(3, 'UTC')}`

/** The security log's common columns, each source mapped onto them. */
const SECURITY_LOG = `
SELECT occurred_at, source, event_id, account_id, actor, action, target, key_prefix, ip, country, outcome, detail FROM (
    SELECT occurred_at, 'auth' AS source, toString(event_id) AS event_id, account_id,
           coalesce(actor_email, user_id, '') AS actor, action, coalesce(target_user_id, key_id, user_id, '') AS target, '' AS key_prefix,
           ip, ifNull(country, '') AS country, if(action LIKE '%failed%', 'failed', 'ok') AS outcome, ifNull(reason, '') AS detail
    FROM auth_events WHERE ${WINDOW}
    UNION ALL
    SELECT occurred_at, 'key_lifecycle', toString(event_id), account_id, concat(actor_type, ':', ifNull(actor_id, '')), action, key_id, key_prefix,
           '', '', 'ok', ifNull(reason, ifNull(replacement_key_id, ''))
    FROM key_lifecycle WHERE ${WINDOW}
    UNION ALL
    SELECT at, 'keywatch', toString(seq), '', actor, action, target, '', JSONExtractString(detail, 'ip'), '', outcome, detail
    FROM audit_trail WHERE at >= {from:DateTime64(3, 'UTC')} AND at < {to:DateTime64(3, 'UTC')} AND at <= {snapshot:DateTime64(3, 'UTC')}
)
WHERE ({account:String} = '' OR account_id = {account:String}) AND ({actor:String} = '' OR actor = {actor:String})
  AND ({action:String} = '' OR action = {action:String})
ORDER BY occurred_at, source, event_id`

const KEY_USAGE = `
SELECT occurred_at, toString(event_id) AS event_id, account_id, key_id, key_prefix, key_kind, mode, request_id, method, endpoint, scope, status,
       error_code, ip, country, asn, user_agent, origin, sdk, client_env, latency_ms, amount_minor, currency
FROM key_usage
WHERE ${WINDOW} AND ({account:String} = '' OR account_id = {account:String})
ORDER BY account_id, key_id, occurred_at`

const TEXT_COLUMNS: Record<Dataset, string[]> = {
  'security-log': ['source', 'event_id', 'account_id', 'actor', 'action', 'target', 'key_prefix', 'ip', 'country', 'outcome', 'detail'],
  'key-usage': ['event_id', 'account_id', 'key_id', 'key_prefix', 'key_kind', 'mode', 'request_id', 'method', 'endpoint', 'scope', 'error_code', 'ip', 'country', 'user_agent', 'origin', 'sdk', 'client_env', 'currency'],
}

/**
 * The SELECT of a dataset. In CSV, a text cell that a spreadsheet would run as a formula (= + - @, tab, CR) gets a
 * leading quote: an export must not become an attack on the auditor's machine.
 */
export function datasetQuery(dataset: Dataset, format: ExportFormat): string {
  const base = dataset === 'security-log' ? SECURITY_LOG : KEY_USAGE
  if (format !== 'csv') return base
  const cols = TEXT_COLUMNS[dataset]
  return `SELECT * REPLACE (${cols.map((c) => `if(match(${c}, '^[=+\\\\-@\\\\t\\\\r]'), concat('''', ${c}), ${c}) AS ${c}`).join(', ')}) FROM (${base})`
}

/** Filters that a dataset does not have are refused, not silently ignored. */
export function unsupportedFilter(dataset: Dataset, filter: ExportFilter): string | undefined {
  if (dataset === 'key-usage' && filter.actor) return 'actor: key-usage has no actor (filter the security-log)'
  if (dataset === 'key-usage' && filter.action) return 'action: key-usage has no action (filter the security-log)'
  return undefined
}
