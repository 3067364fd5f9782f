// A revoked key, or a rotation's replacement deleted by a rollback, still presented well after: its holder did not
// get the message, or it is stolen.
import { defineDetector } from './detector.ts'

interface Row {
  account_id: string
  key_id: string
  key_prefix: string
  revoked_at: string
  deleted: number
  presented: number
  accepted: number
  ips: number
  first: string
  last: string
}

export default defineDetector({
  id: 'key.used_after_revocation',
  title: 'Revoked key still in use',
  severity: 'high',
  schedule: '* * * * *',
  lookback: '1 day of requests by revoked keys',
  // Platform caches may accept a revoked key for up to 5 minutes: only later requests count.
  params: { lookback_seconds: 86_400, cache_grace_seconds: 300 },
  // The ended keys' own rows only: the IN on (account_id, key_id), the table's key, lets the engine read just their
  // ranges instead of the whole day of every key.
  query: `
    WITH ended AS (
        SELECT account_id, key_id, key_prefix, assumeNotNull(coalesce(revoked_at, deleted_at)) AS ended_at, revoked_at IS NULL AS deleted
        FROM key_inventory_at(at = {at:DateTime64(3, 'UTC')})
        WHERE revoked_at IS NOT NULL OR deleted_at IS NOT NULL
    )
    SELECT u.account_id AS account_id, u.key_id AS key_id, any(r.key_prefix) AS key_prefix, toString(any(r.ended_at)) AS revoked_at,
           any(r.deleted) AS deleted,
           count() AS presented, countIf(u.status < 400) AS accepted, uniqExact(u.ip) AS ips,
           toString(min(u.occurred_at)) AS first, toString(max(u.occurred_at)) AS last
    FROM key_usage AS u
    INNER JOIN ended AS r ON u.account_id = r.account_id AND u.key_id = r.key_id
    WHERE (u.account_id, u.key_id) IN (SELECT account_id, key_id FROM ended)
      AND u.occurred_at > r.ended_at + toIntervalSecond({cache_grace_seconds:UInt32})
      AND u.occurred_at > {at:DateTime64(3, 'UTC')} - toIntervalSecond({lookback_seconds:UInt32})
      AND u.occurred_at <= {at:DateTime64(3, 'UTC')}
    GROUP BY u.account_id, u.key_id`,
  toFinding: (r: Row) => ({
    detector: 'key.used_after_revocation',
    severity: Number(r.accepted) > 0 ? 'high' : 'medium',
    account_id: r.account_id,
    key_id: r.key_id,
    title:
      Number(r.accepted) > 0
        ? `${Number(r.deleted) ? 'Deleted' : 'Revoked'} ${r.key_prefix} was accepted ${r.accepted} times after ${Number(r.deleted) ? 'the rollback deleted it' : 'revocation'}`
        : `${Number(r.deleted) ? 'Deleted' : 'Revoked'} ${r.key_prefix} presented ${r.presented} times after ${Number(r.deleted) ? 'the rollback deleted it' : 'revocation'} (all refused)`,
    evidence: {
      presented: Number(r.presented),
      accepted: Number(r.accepted),
      distinct_ips: Number(r.ips),
      // revoked_at: when it stopped being valid (for a deleted key, the rollback's time)
      revoked_at: r.revoked_at,
      status: Number(r.deleted) ? 'deleted' : 'revoked',
      first: r.first,
      last: r.last,
    },
    dedupKey: `key.used_after_revocation:${r.account_id}:${r.key_id}`,
  }),
  runbook: 'Accepted requests mean the revocation did not take effect: escalate to the key service now. Refused ones: find and fix the caller.',
})
