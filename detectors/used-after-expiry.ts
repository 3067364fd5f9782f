// A key accepted well after it expired (its expires_at, its expired event or its rotation grace deadline): the
// platform is not enforcing expiry. Refused presentations after expiry are the platform doing its job: not this.
// Reads the hourly network rollup, whose last accepted time per hour says whether any acceptance came too late.
import { defineDetector } from './detector.ts'

interface Row {
  account_id: string
  key_id: string
  key_prefix: string
  reason: 'expires_at' | 'expired_event' | 'grace_deadline'
  expired_at: string
  last_accepted_at: string
  accepted_hours: number
  accepted_in_those_hours: number
}

export default defineDetector({
  id: 'key.used_after_expiry',
  title: 'Expired key still accepted',
  severity: 'high',
  schedule: '* * * * *',
  lookback: '1 day of the hourly network rollup, for keys past their expiry',
  // Platform caches may accept an expired key for up to 5 minutes, as after a revocation.
  params: { lookback_seconds: 86_400, cache_grace_seconds: 300 },
  query: `
    WITH {at:DateTime64(3, 'UTC')} AS at_, toDateTime64('2200-01-01 00:00:00', 3, 'UTC') AS never,
    expired AS (
        SELECT account_id, key_id, key_prefix,
               least(ifNull(expires_at, never), ifNull(expired_at, never), ifNull(rotation_grace_deadline, never)) AS ended_at,
               multiIf(ended_at = ifNull(expires_at, never), 'expires_at', ended_at = ifNull(rotation_grace_deadline, never), 'grace_deadline', 'expired_event') AS reason
        FROM key_inventory_at(at = {at:DateTime64(3, 'UTC')})
        WHERE status = 'expired' AND ended_at < at_ - toIntervalSecond({cache_grace_seconds:UInt32})
    )
    SELECT e.account_id AS account_id, e.key_id AS key_id, any(e.key_prefix) AS key_prefix, any(e.reason) AS reason,
           toString(any(e.ended_at)) AS expired_at, toString(max(h.last_accepted)) AS last_accepted_at,
           count() AS accepted_hours, sum(h.accepted) AS accepted_in_those_hours
    FROM expired AS e
    INNER JOIN (
        SELECT account_id, key_id, hour, sum(accepted) AS accepted, max(last_accepted_at) AS last_accepted
        FROM key_networks_hourly
        WHERE hour >= toStartOfHour(at_ - toIntervalSecond({lookback_seconds:UInt32})) AND hour <= at_
          AND (account_id, key_id) IN (SELECT account_id, key_id FROM expired)
        GROUP BY account_id, key_id, hour
    ) AS h ON h.account_id = e.account_id AND h.key_id = e.key_id
    WHERE h.accepted > 0 AND h.last_accepted > e.ended_at + toIntervalSecond({cache_grace_seconds:UInt32}) AND h.last_accepted <= at_
    GROUP BY e.account_id, e.key_id`,
  toFinding: (r: Row) => ({
    detector: 'key.used_after_expiry',
    severity: 'high',
    account_id: r.account_id,
    key_id: r.key_id,
    title: `${r.key_prefix} was accepted after it expired (${{ expires_at: 'its expiry date', expired_event: 'its expiry', grace_deadline: 'its rotation deadline' }[r.reason]}, ${r.expired_at.slice(0, 16)})`,
    evidence: {
      reason: r.reason,
      expired_at: r.expired_at,
      last_accepted_at: r.last_accepted_at,
      hours_with_late_acceptance: Number(r.accepted_hours),
      accepted_in_those_hours: Number(r.accepted_in_those_hours),
    },
    dedupKey: `key.used_after_expiry:${r.account_id}:${r.key_id}`,
  }),
  runbook: 'The platform is not enforcing expiry for this key: escalate to the key service and revoke the key explicitly.',
})
