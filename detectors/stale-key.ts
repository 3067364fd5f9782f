// An active key nobody uses: attack surface with no purpose.
import { defineDetector } from './detector.ts'

interface Row {
  account_id: string
  key_id: string
  key_prefix: string
  created_at: string
  last_used_at: string | null
  days_unused: number
}

export default defineDetector({
  id: 'key.stale',
  title: 'Stale key',
  severity: 'low',
  schedule: '0 * * * *',
  lookback: 'all of the daily rollups',
  params: { stale_days: 90 },
  // Revoked and expired keys are not stale: only active (or rotating) ones whose expiry has not passed.
  query: `
    SELECT i.account_id AS account_id, i.key_id AS key_id, i.key_prefix AS key_prefix, toString(i.created_at) AS created_at,
           if(u.last_used_at = toDateTime64(0, 3, 'UTC'), NULL, toString(u.last_used_at)) AS last_used_at,
           dateDiff('day', greatest(i.created_at, u.last_used_at), {at:DateTime64(3, 'UTC')}) AS days_unused
    FROM key_inventory_at(at = {at:DateTime64(3, 'UTC')}) AS i
    LEFT JOIN (
        SELECT account_id, key_id, least(max(last_used_at), {at:DateTime64(3, 'UTC')}) AS last_used_at
        FROM key_usage_daily
        WHERE day <= toDate({at:DateTime64(3, 'UTC')})
        GROUP BY account_id, key_id
    ) AS u ON u.account_id = i.account_id AND u.key_id = i.key_id
    WHERE i.status IN ('active', 'rotating')
      AND (i.expires_at IS NULL OR i.expires_at > {at:DateTime64(3, 'UTC')})
      AND i.created_at IS NOT NULL
      AND greatest(i.created_at, u.last_used_at) <= {at:DateTime64(3, 'UTC')} - toIntervalDay({stale_days:UInt32})`,
  toFinding: (r: Row) => ({
    detector: 'key.stale',
    severity: 'low',
    account_id: r.account_id,
    key_id: r.key_id,
    title: r.last_used_at ? `${r.key_prefix} unused for ${r.days_unused} days` : `${r.key_prefix} never used in ${r.days_unused} days`,
    evidence: { days_unused: Number(r.days_unused), last_used_at: r.last_used_at, created_at: r.created_at },
    dedupKey: `key.stale:${r.account_id}:${r.key_id}`,
  }),
  runbook: 'Ask the key’s owner whether anything still needs it; if not, revoke it.',
})
