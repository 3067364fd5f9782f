// What a compliance export holds. `security-log`: the auth events (logins, MFA, members), the key lifecycle (who
// created, rotated, revoked which key), the leak reports (hashed) and keywatch's own audit trail, in one
// time-ordered table. `key-usage`: every API request made with a key, in storage order (account, key, time), which
// streams without a sort. `findings`: each finding of the range with its status history. `actions`: every revoke and
// reset keywatch decided, sent, held for approval or was refused, with who approved it. `incidents`: every finding
// grouped into an incident, with the incident it is in (incidents/store.ts).
// Only rows received up to the export's snapshot are read, so its row count and its file agree.
import { z } from 'zod'

export const DATASETS = ['security-log', 'key-usage', 'findings', 'actions', 'incidents'] as const
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
    -- Never the token: its hash's first 12 characters and its display prefix.
    SELECT occurred_at, 'leak_report', toString(event_id), account_id, source, 'leak.reported', ifNull(url, ''), ifNull(token_prefix, ''),
           '', '', 'ok', concat('token_sha256=', left(token_sha256, 12), '…', if(exposed_since IS NULL, '', concat(' exposed_since=', toString(exposed_since))))
    FROM leak_reports WHERE ${WINDOW}
    UNION ALL
    -- keywatch's own records carry the account they concern (detail.account_id); older ones get it from the key
    -- they name, so an account's export holds what keywatch did on its keys.
    SELECT a.at, 'keywatch', toString(a.seq),
           if(JSONExtractString(a.detail, 'account_id') != '', JSONExtractString(a.detail, 'account_id'), k.account_id),
           a.actor, a.action, a.target, JSONExtractString(a.detail, 'key_prefix'), JSONExtractString(a.detail, 'ip'), '', a.outcome, a.detail
    FROM audit_trail AS a
    LEFT JOIN (SELECT key_id, any(account_id) AS account_id FROM key_lifecycle
               WHERE key_id IN (SELECT target FROM audit_trail WHERE at >= {from:DateTime64(3, 'UTC')} AND at < {to:DateTime64(3, 'UTC')})
               GROUP BY key_id) AS k ON k.key_id = a.target
    WHERE a.at >= {from:DateTime64(3, 'UTC')} AND a.at < {to:DateTime64(3, 'UTC')} AND a.at <= {snapshot:DateTime64(3, 'UTC')}
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

/** Every finding of every incident: one row per finding, in the order they were raised, with the incident it is in. */
const INCIDENTS = `
SELECT m.at AS at, m.incident_id AS incident_id, m.account_id AS account_id, i.opened_at AS incident_opened_at, i.title AS incident_title,
       m.finding_id AS finding_id, m.detector AS detector, m.severity AS severity, m.title AS title, m.subject AS subject, m.linked_by AS linked_by
FROM (SELECT * FROM incident_findings FINAL
      WHERE at >= {from:DateTime64(3, 'UTC')} AND at < {to:DateTime64(3, 'UTC')} AND added_at <= {snapshot:DateTime64(3, 'UTC')}
        AND ({account:String} = '' OR account_id = {account:String})) AS m
LEFT JOIN (SELECT incident_id, opened_at, title FROM incidents FINAL) AS i ON m.incident_id = i.incident_id
ORDER BY at, incident_id, finding_id`
/** Findings seen in the range (first seen before its end, last seen after its start), each with its status history. */
const FINDINGS = `
SELECT f.first_seen_at AS first_seen_at, f.last_seen_at AS last_seen_at, f.finding_id AS finding_id, f.detector AS detector, f.severity AS severity,
       f.account_id AS account_id, f.key_id AS key_id, f.user_id AS user_id, f.ip AS ip, f.title AS title, f.occurrences AS occurrences,
       f.status AS status, f.status_changed_at AS status_changed_at, f.status_changed_by AS status_changed_by, f.status_reason AS status_reason,
       f.evidence AS evidence, ifNull(h.history, '[]') AS status_history
FROM (SELECT * FROM findings FINAL
      WHERE first_seen_at < {to:DateTime64(3, 'UTC')} AND last_seen_at >= {from:DateTime64(3, 'UTC')} AND first_seen_at <= {snapshot:DateTime64(3, 'UTC')}
        AND ({account:String} = '' OR account_id = {account:String})) AS f
LEFT JOIN (
    SELECT finding_id, toJSONString(arraySort(x -> x.1, groupArray((toString(at), from_status, to_status, actor, reason)))) AS history
    FROM finding_changes WHERE at <= {snapshot:DateTime64(3, 'UTC')} GROUP BY finding_id
) AS h ON h.finding_id = f.finding_id
ORDER BY first_seen_at, finding_id`

/** Actions requested in the range, in their latest state. */
const ACTIONS = `
SELECT requested_at, action_id, toString(command_id) AS command_id, command, account_id, key_id, key_prefix, finding_id, policy, requested_by,
       reason, incident, forced, transport, status, status_detail, confirmed_at, confirmed_by, effective_at, expires_at, decided_by, decided_at,
       decision_reason, updated_at
FROM actions FINAL
WHERE requested_at >= {from:DateTime64(3, 'UTC')} AND requested_at < {to:DateTime64(3, 'UTC')} AND requested_at <= {snapshot:DateTime64(3, 'UTC')}
  AND ({account:String} = '' OR account_id = {account:String})
ORDER BY requested_at, action_id`

const TEXT_COLUMNS: Record<Dataset, string[]> = {
  findings: ['finding_id', 'detector', 'account_id', 'key_id', 'user_id', 'ip', 'title', 'status_changed_by', 'status_reason', 'evidence', 'status_history'],
  actions: ['action_id', 'command_id', 'account_id', 'key_id', 'key_prefix', 'finding_id', 'policy', 'requested_by', 'reason', 'status_detail', 'decided_by', 'decision_reason'],
  'security-log': ['source', 'event_id', 'account_id', 'actor', 'action', 'target', 'key_prefix', 'ip', 'country', 'outcome', 'detail'],
  incidents: ['incident_id', 'account_id', 'incident_title', 'finding_id', 'detector', 'severity', 'title', 'subject', 'linked_by'],
  'key-usage': ['event_id', 'account_id', 'key_id', 'key_prefix', 'key_kind', 'mode', 'request_id', 'method', 'endpoint', 'scope', 'error_code', 'ip', 'country', 'user_agent', 'origin', 'sdk', 'client_env', 'currency'],
}

/**
 * The SELECT of a dataset. In CSV, a text cell that a spreadsheet would run as a formula (= + - @, tab, CR) gets a
 * leading quote: an export must not become an attack on the auditor's machine.
 */
export function datasetQuery(dataset: Dataset, format: ExportFormat): string {
  const base = { 'security-log': SECURITY_LOG, 'key-usage': KEY_USAGE, findings: FINDINGS, actions: ACTIONS, incidents: INCIDENTS }[dataset]
  if (format !== 'csv') return base
  const cols = TEXT_COLUMNS[dataset]
  return `SELECT * REPLACE (${cols.map((c) => `if(match(${c}, '^[=+\\\\-@\\\\t\\\\r]'), concat('''', ${c}), ${c}) AS ${c}`).join(', ')}) FROM (${base})`
}

/** Filters that a dataset does not have are refused, not silently ignored. */
export function unsupportedFilter(dataset: Dataset, filter: ExportFilter): string | undefined {
  if (dataset === 'key-usage' && filter.actor) return 'actor: key-usage has no actor (filter the security-log)'
  if (dataset === 'key-usage' && filter.action) return 'action: key-usage has no action (filter the security-log)'
  if (dataset === 'incidents' && (filter.actor || filter.action)) return `${filter.actor ? 'actor' : 'action'}: incidents have no ${filter.actor ? 'actor' : 'action'} (filter by account)`
  if ((dataset === 'findings' || dataset === 'actions') && (filter.actor || filter.action)) return `${filter.actor ? 'actor' : 'action'}: ${dataset} is filtered by account only (filter the security-log)`
  return undefined
}
