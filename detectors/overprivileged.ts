// A restricted key 90 days old or more holding write access to scopes it has not written to in 90 days (seed 003:
// least privilege). Full-access secret keys are out. Reads the daily per-scope rollup.
import { defineDetector } from './detector.ts'

interface Row {
  account_id: string
  key_id: string
  key_prefix: string
  unused: string[]
  written: string[]
  age_days: number
}

export default defineDetector({
  id: 'key.overprivileged',
  title: 'Restricted key with unused write access',
  severity: 'low',
  schedule: '0 3 * * *',
  lookback: '90 days of the daily per-scope rollup',
  params: { min_age_days: 90, window_days: 90 },
  query: `
    WITH {at:DateTime64(3, 'UTC')} AS at_,
    keys AS (
        SELECT account_id, key_id, key_prefix, dateDiff('day', created_at, at_) AS age_days,
               arrayMap(s -> s.1, arrayFilter(s -> has(s.2, 'write'), JSONExtract(ifNull(scopes, 'null'), 'Array(Tuple(scope String, access Array(String)))'))) AS write_scopes
        FROM key_inventory_at(at = {at:DateTime64(3, 'UTC')})
        WHERE key_kind = 'restricted' AND status IN ('active', 'rotating') AND created_at <= at_ - toIntervalDay({min_age_days:UInt32})
          AND length(write_scopes) > 0
    ),
    written AS (
        SELECT account_id, key_id, groupUniqArray(scope) AS scopes
        FROM key_scopes_daily
        WHERE day > toDate(at_) - toIntervalDay({window_days:UInt32}) AND day <= toDate(at_) AND writes > 0
          AND (account_id, key_id) IN (SELECT account_id, key_id FROM keys)
        GROUP BY account_id, key_id
    )
    SELECT k.account_id AS account_id, k.key_id AS key_id, k.key_prefix AS key_prefix, k.age_days AS age_days,
           arrayFilter(s -> NOT has(w.scopes, s), k.write_scopes) AS unused, w.scopes AS written
    FROM keys AS k
    LEFT JOIN written AS w ON w.account_id = k.account_id AND w.key_id = k.key_id
    WHERE length(unused) > 0`,
  toFinding: (r: Row, p) => ({
    detector: 'key.overprivileged',
    severity: 'low',
    account_id: r.account_id,
    key_id: r.key_id,
    title: `${r.key_prefix} can write to ${[...r.unused].sort().join(', ')} but has not in ${p.window_days} days`,
    evidence: { unused_write_scopes: [...r.unused].sort(), written_scopes: [...(r.written ?? [])].sort(), age_days: Number(r.age_days) },
    dedupKey: `key.overprivileged:${r.account_id}:${r.key_id}`,
  }),
  runbook: 'Drop write access to those scopes (read stays if it is used); a stolen key can then do less.',
})
