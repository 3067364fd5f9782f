// A rotation that is not completing: the old key outlives its grace period, or traffic is not moving to the new key.
import { defineDetector } from './detector.ts'

interface Row {
  account_id: string
  key_id: string
  key_prefix: string
  replacement_key_id: string
  rotated_at: string
  deadline: string
  reason: 'used_after_deadline' | 'old_key_still_busy' | 'new_key_unused'
  old_requests_last_hour: number
  new_requests_last_hour: number
  old_last_used_at: string
}

export default defineDetector({
  id: 'key.rotation_stalled',
  title: 'Key rotation stalled',
  severity: 'medium',
  schedule: '* * * * *',
  lookback: 'every rotation not undone; the last 8 days of hourly rollups, and the daily ones since each deadline',
  params: { busy_share_percent: 10, busy_window_seconds: 86_400, new_key_grace_seconds: 3_600, lookback_seconds: 8 * 86_400 },
  // One row per stalled rotation, with the first of the three reasons that holds.
  query: `
    WITH {at:DateTime64(3, 'UTC')} AS at_, toStartOfHour(at_ - toIntervalHour(1)) AS last_hour,
    rotations AS (
        SELECT account_id, key_id, key_prefix, replacement_key_id, rotated_at, rotation_grace_deadline AS deadline
        FROM key_inventory_at(at = {at:DateTime64(3, 'UTC')})
        WHERE rotated_at IS NOT NULL AND (rolled_back_at IS NULL OR rolled_back_at < rotated_at) AND revoked_at IS NULL
          AND rotation_grace_deadline IS NOT NULL
    ),
    -- Use after the deadline, however long ago the deadline was: the daily rollups from the deadline's day on.
    late AS (
        SELECT d.account_id AS account_id, d.key_id AS key_id, max(d.last_used_at) AS last_used
        FROM key_usage_daily AS d
        INNER JOIN rotations AS r ON r.account_id = d.account_id AND r.key_id = d.key_id
        WHERE d.day >= toDate(r.deadline) AND d.last_used_at > r.deadline AND d.last_used_at <= at_
        GROUP BY d.account_id, d.key_id
    )
    SELECT r.account_id AS account_id, r.key_id AS key_id, r.key_prefix AS key_prefix, r.replacement_key_id AS replacement_key_id,
           toString(r.rotated_at) AS rotated_at, toString(r.deadline) AS deadline,
           sumIf(h.requests, h.key_id = r.key_id AND h.hour >= last_hour) AS old_requests_last_hour,
           sumIf(h.requests, h.key_id = r.replacement_key_id AND h.hour >= last_hour) AS new_requests_last_hour,
           greatest(maxIf(h.last_used_at, h.key_id = r.key_id), ifNull(any(l.last_used), toDateTime64(0, 3, 'UTC'))) AS old_last_used,
           toString(old_last_used) AS old_last_used_at,
           multiIf(
               old_last_used > r.deadline, 'used_after_deadline',
               at_ >= r.deadline - toIntervalSecond({busy_window_seconds:UInt32}) AND at_ < r.deadline
                   AND old_requests_last_hour * 100 > {busy_share_percent:UInt32} * (old_requests_last_hour + new_requests_last_hour), 'old_key_still_busy',
               at_ >= r.rotated_at + toIntervalSecond({new_key_grace_seconds:UInt32}) AND at_ < r.deadline
                   AND new_requests_last_hour = 0 AND old_requests_last_hour > 0, 'new_key_unused',
               '') AS reason
    FROM rotations AS r
    LEFT JOIN (
        SELECT account_id, key_id, hour, sum(requests) AS requests, max(last_used_at) AS last_used_at
        FROM key_usage_hourly
        WHERE hour >= toStartOfHour(at_ - toIntervalSecond({lookback_seconds:UInt32})) AND hour <= at_
          AND key_id IN (SELECT key_id FROM rotations UNION ALL SELECT replacement_key_id FROM rotations)
        GROUP BY account_id, key_id, hour
    ) AS h ON h.account_id = r.account_id AND (h.key_id = r.key_id OR h.key_id = r.replacement_key_id)
    LEFT JOIN late AS l ON l.account_id = r.account_id AND l.key_id = r.key_id
    WHERE h.last_used_at <= at_ OR h.key_id = ''
    GROUP BY r.account_id, r.key_id, r.key_prefix, r.replacement_key_id, r.rotated_at, r.deadline
    HAVING reason != ''`,
  toFinding: (r: Row) => ({
    detector: 'key.rotation_stalled',
    severity: 'medium',
    account_id: r.account_id,
    key_id: r.key_id,
    title: {
      used_after_deadline: `${r.key_prefix} still used after its rotation deadline`,
      old_key_still_busy: `${r.key_prefix} still carries ${Math.round((100 * Number(r.old_requests_last_hour)) / Math.max(1, Number(r.old_requests_last_hour) + Number(r.new_requests_last_hour)))}% of traffic before its rotation deadline`,
      new_key_unused: `Replacement of ${r.key_prefix} unused an hour after rotation while the old key is still used`,
    }[r.reason],
    evidence: {
      reason: r.reason,
      replacement_key_id: r.replacement_key_id,
      rotated_at: r.rotated_at,
      deadline: r.deadline,
      old_requests_last_hour: Number(r.old_requests_last_hour),
      new_requests_last_hour: Number(r.new_requests_last_hour),
      old_last_used_at: r.old_last_used_at,
    },
    dedupKey: `key.rotation_stalled:${r.account_id}:${r.key_id}`,
  }),
  runbook: 'Find the deployments still sending the old key (see its IPs), roll them to the new secret, or extend the grace period.',
})
