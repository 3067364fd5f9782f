// A secret or restricted key presented by a browser or a mobile app: it is shipped to clients, so it is public.
import { defineDetector } from './detector.ts'

interface Row {
  account_id: string
  key_id: string
  key_kind: string
  mode: string
  client_side_requests: number
  requests: number
  first_hour: string
  last_used_at: string
}

export default defineDetector({
  id: 'leak.secret_key_client_side',
  title: 'Secret key used from a browser or mobile app',
  severity: 'high',
  schedule: '* * * * *',
  lookback: '24 hours of hourly rollups',
  params: { lookback_seconds: 86_400 },
  // client_side counts requests with an Origin, a client-side SDK or a browser user agent (003_usage_rollups.sql).
  // Publishable keys belong in clients and never fire.
  query: `
    SELECT account_id, key_id, anyLast(key_kind) AS key_kind, anyLast(mode) AS mode,
           sum(client_side) AS client_side_requests, sum(requests) AS requests,
           toString(minIf(hour, client_side > 0)) AS first_hour, toString(max(last_used_at)) AS last_used_at
    FROM key_usage_hourly
    WHERE hour >= toStartOfHour({at:DateTime64(3, 'UTC')} - toIntervalSecond({lookback_seconds:UInt32}))
      AND hour <= {at:DateTime64(3, 'UTC')}
    GROUP BY account_id, key_id
    HAVING client_side_requests > 0 AND key_kind IN ('secret', 'restricted')`,
  toFinding: (r: Row) => ({
    detector: 'leak.secret_key_client_side',
    severity: 'high',
    account_id: r.account_id,
    key_id: r.key_id,
    title: `${r.mode} ${r.key_kind} key used from a browser or mobile app (${r.client_side_requests} requests)`,
    evidence: { client_side_requests: Number(r.client_side_requests), requests: Number(r.requests), first_hour: r.first_hour, last_used_at: r.last_used_at },
    dedupKey: `leak.secret_key_client_side:${r.account_id}:${r.key_id}`,
  }),
  runbook: 'Treat the key as public: move the calls to a server, rotate the key, and use a publishable key in the client.',
})
