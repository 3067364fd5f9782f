// A live key in a non-production deployment (real money from staging), or a test key in production.
import { defineDetector } from './detector.ts'

interface Row {
  account_id: string
  key_id: string
  mode: string
  mismatched: number
  requests: number
  last_used_at: string
}

export default defineDetector({
  id: 'key.mode_mismatch',
  title: 'Key mode does not match the deployment',
  severity: 'medium',
  schedule: '* * * * *',
  lookback: '24 hours of hourly rollups',
  params: { lookback_seconds: 86_400 },
  // mode_mismatch counts live keys from staging/development/ci and test keys from production (003_usage_rollups.sql).
  query: `
    SELECT account_id, key_id, anyLast(mode) AS mode, sum(mode_mismatch) AS mismatched, sum(requests) AS requests,
           toString(max(last_used_at)) AS last_used_at
    FROM key_usage_hourly
    WHERE hour >= toStartOfHour({at:DateTime64(3, 'UTC')} - toIntervalSecond({lookback_seconds:UInt32})) AND hour <= {at:DateTime64(3, 'UTC')}
    GROUP BY account_id, key_id
    HAVING mismatched > 0`,
  toFinding: (r: Row) => ({
    detector: 'key.mode_mismatch',
    severity: 'medium',
    account_id: r.account_id,
    key_id: r.key_id,
    title:
      r.mode === 'live'
        ? `Live key used by a non-production deployment (${r.mismatched} requests)`
        : `Test key used by production (${r.mismatched} requests)`,
    evidence: { mode: r.mode, mismatched_requests: Number(r.mismatched), requests: Number(r.requests), last_used_at: r.last_used_at },
    dedupKey: `key.mode_mismatch:${r.account_id}:${r.key_id}`,
  }),
  runbook: 'Give the deployment a key of its own mode; a live key outside production is a leak waiting to happen.',
})
