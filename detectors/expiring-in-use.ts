// A key about to expire that is still in use: an outage in the making.
import { defineDetector } from './detector.ts'

interface Row {
  account_id: string
  key_id: string
  key_prefix: string
  expires_at: string
  expires_in_hours: number
  requests_24h: number
}

export default defineDetector({
  id: 'key.expiring_in_use',
  title: 'Key expiring while in use',
  severity: 'low',
  schedule: '0 * * * *',
  lookback: 'keys expiring in 7 days, 24 hours of hourly rollups',
  params: { expiry_window_days: 7, usage_window_seconds: 86_400 },
  query: `
    SELECT i.account_id AS account_id, i.key_id AS key_id, i.key_prefix AS key_prefix, toString(i.expires_at) AS expires_at,
           dateDiff('hour', {at:DateTime64(3, 'UTC')}, i.expires_at) AS expires_in_hours, sum(h.requests) AS requests_24h
    FROM key_inventory_at(at = {at:DateTime64(3, 'UTC')}) AS i
    INNER JOIN key_usage_hourly AS h ON h.account_id = i.account_id AND h.key_id = i.key_id
    WHERE i.status IN ('active', 'rotating')
      AND i.expires_at > {at:DateTime64(3, 'UTC')} AND i.expires_at <= {at:DateTime64(3, 'UTC')} + toIntervalDay({expiry_window_days:UInt32})
      AND h.hour >= toStartOfHour({at:DateTime64(3, 'UTC')} - toIntervalSecond({usage_window_seconds:UInt32})) AND h.hour <= {at:DateTime64(3, 'UTC')}
    GROUP BY i.account_id, i.key_id, i.key_prefix, i.expires_at
    HAVING requests_24h > 0`,
  toFinding: (r: Row) => ({
    detector: 'key.expiring_in_use',
    severity: 'low',
    account_id: r.account_id,
    key_id: r.key_id,
    title: `${r.key_prefix} expires in ${Math.max(1, Math.round(Number(r.expires_in_hours) / 24))} days and served ${r.requests_24h} requests in 24 h`,
    evidence: { expires_at: r.expires_at, expires_in_hours: Number(r.expires_in_hours), requests_24h: Number(r.requests_24h) },
    dedupKey: `key.expiring_in_use:${r.account_id}:${r.key_id}`,
  }),
  runbook: 'Issue a replacement key and move the callers before the expiry, or extend it.',
})
