// A secret found in public whose hash matches the current secret of a key: the key is compromised.
import { defineDetector } from './detector.ts'

export interface LeakRow {
  event_id: string
  account_id: string
  reported_account_id: string
  key_id: string
  key_prefix: string
  key_kind: string
  mode: string
  key_status: string
  auto_generated: boolean
  token_sha256: string
  token_prefix: string | null
  source: string
  url: string | null
  reported_at: string
}

/**
 * Leak reports of the lookback window, each with the key whose secret (current or superseded) it matches. Only the
 * keys the reports name are read (the secret's bloom filter, then the keys' own rows), never the whole inventory.
 * `received_after_ms` narrows a run to reports stored since then (the run made as a report is ingested); 0: all.
 */
export const LEAK_MATCH_QUERY = `
WITH reports AS (
    SELECT event_id, account_id, token_sha256, token_prefix, source, url, occurred_at
    FROM leak_reports
    WHERE occurred_at <= {at:DateTime64(3, 'UTC')}
      -- A report is in the window by when it happened or by when it arrived: one that arrives late (consumer lag, a
      -- scanner stamping its discovery time) is acted on as it arrives; a backtest (at in the past) sees only what
      -- had arrived by then.
      AND (occurred_at > {at:DateTime64(3, 'UTC')} - toIntervalSecond({lookback_seconds:UInt32})
           OR (received_at > {at:DateTime64(3, 'UTC')} - toIntervalSecond({lookback_seconds:UInt32}) AND received_at <= {at:DateTime64(3, 'UTC')}))
      AND received_at > fromUnixTimestamp64Milli(toInt64({received_after_ms:UInt64}), 'UTC')
),
matched_keys AS (
    SELECT DISTINCT account_id, key_id FROM key_lifecycle
    WHERE action IN ('created', 'reset') AND secret_sha256 IN (SELECT token_sha256 FROM reports) AND occurred_at <= {at:DateTime64(3, 'UTC')}
),
secrets AS (
    SELECT account_id, key_id, secret_sha256, key_prefix, key_kind, mode,
           occurred_at = max(occurred_at) OVER (PARTITION BY account_id, key_id) AS is_current
    FROM key_lifecycle
    WHERE (account_id, key_id) IN (SELECT account_id, key_id FROM matched_keys)
      AND action IN ('created', 'reset') AND secret_sha256 IS NOT NULL AND occurred_at <= {at:DateTime64(3, 'UTC')}
)
SELECT toString(l.event_id) AS event_id, l.account_id AS reported_account_id, l.token_sha256 AS token_sha256,
       l.token_prefix AS token_prefix, l.source AS source, l.url AS url, toString(l.occurred_at) AS reported_at,
       s.account_id AS account_id, s.key_id AS key_id, s.key_prefix AS key_prefix, s.key_kind AS key_kind, s.mode AS mode,
       s.is_current AS is_current, inv.status AS key_status, inv.auto_generated AS auto_generated
FROM reports AS l
LEFT JOIN secrets AS s ON s.secret_sha256 = l.token_sha256
LEFT JOIN (
    SELECT account_id, key_id, status, auto_generated FROM key_inventory_at(at = {at:DateTime64(3, 'UTC')})
    WHERE (account_id, key_id) IN (SELECT account_id, key_id FROM matched_keys)
) AS inv ON inv.account_id = s.account_id AND inv.key_id = s.key_id
`

export default defineDetector({
  id: 'leak.public_report',
  title: 'Secret key found in public',
  // Critical for secret and restricted keys; a publishable key is public by design (low, alert only).
  severity: 'critical',
  schedule: '* * * * *',
  lookback: '1 day of leak reports by occurred or received time (and at once as each report is ingested, whatever its date)',
  params: { lookback_seconds: 86_400, received_after_ms: 0 },
  query: `SELECT * FROM (${LEAK_MATCH_QUERY}) WHERE key_id != '' AND is_current`,
  toFinding: (r: LeakRow) => ({
    detector: 'leak.public_report',
    severity: r.key_kind === 'publishable' ? 'low' : 'critical',
    account_id: r.account_id,
    key_id: r.key_id,
    title: `${r.key_prefix} (${r.mode} ${r.key_kind} key) found in public on ${r.source}`,
    evidence: {
      key_prefix: r.key_prefix,
      key_status: r.key_status,
      auto_generated: Boolean(r.auto_generated),
      source: r.source,
      url: r.url,
      reported_at: r.reported_at,
      key_kind: r.key_kind,
      mode: r.mode,
      report_event_id: r.event_id,
      token_sha256: r.token_sha256,
    },
    dedupKey: `leak.public_report:${r.account_id}:${r.key_id}`,
  }),
  runbook: 'Revoke a secret or restricted key now (reset it if it is auto-generated), then read its exposure report for what the leaked key did. A publishable key is public by design: check where it was found, nothing to revoke.',
})
