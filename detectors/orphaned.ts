// A key still active after the member who created it left the team (seed 002: revoke keys "created by someone who
// has since left your team"). High while it is still used: it lives in a deployment nobody owns.
import { defineDetector } from './detector.ts'

interface Row {
  account_id: string
  key_id: string
  key_prefix: string
  creator: string
  created_at: string
  removed_at: string
  last_used_at: string | null
  requests_since_removal: number
}

export default defineDetector({
  id: 'key.orphaned',
  title: 'Key of a member who left',
  severity: 'medium',
  schedule: '0 * * * *',
  lookback: 'the key inventory, the key creators and membership changes rollups, 7 days of daily usage rollups',
  params: { used_window_days: 7 },
  query: `
    WITH {at:DateTime64(3, 'UTC')} AS at_,
    -- Who created each key (the creators rollup: members only) and the membership changes kept apart from the
    -- logins: neither read scans key_lifecycle or auth_events.
    creators AS (
        SELECT account_id, key_id, argMinMerge(creator) AS creator, min(created_at) AS created_at
        FROM key_creators
        GROUP BY account_id, key_id
        HAVING created_at <= at_
    ),
    -- The last removal of each member, unless they were invited back afterwards.
    removed AS (
        SELECT account_id, member, maxIf(occurred_at, action = 'member.removed') AS removed_at
        FROM member_changes
        WHERE occurred_at <= at_
        GROUP BY account_id, member
        HAVING removed_at > toDateTime64(0, 3, 'UTC') AND removed_at >= maxIf(occurred_at, action = 'member.invited')
    ),
    orphans AS (
        SELECT i.account_id AS account_id, i.key_id AS key_id, i.key_prefix AS key_prefix, c.creator AS creator,
               c.created_at AS created_at, r.removed_at AS removed_at
        FROM key_inventory_at(at = {at:DateTime64(3, 'UTC')}) AS i
        INNER JOIN creators AS c ON c.account_id = i.account_id AND c.key_id = i.key_id
        INNER JOIN removed AS r ON r.account_id = c.account_id AND r.member = c.creator
        WHERE i.status IN ('active', 'rotating') AND r.removed_at > c.created_at
    )
    SELECT o.account_id AS account_id, o.key_id AS key_id, o.key_prefix AS key_prefix, o.creator AS creator,
           toString(o.created_at) AS created_at, toString(o.removed_at) AS removed_at,
           if(max(u.last_used_at) > o.removed_at, toString(max(u.last_used_at)), NULL) AS last_used_at,
           sumIf(u.requests, u.last_used_at > o.removed_at) AS requests_since_removal
    FROM orphans AS o
    LEFT JOIN (
        SELECT account_id, key_id, day, sum(requests) AS requests, max(last_used_at) AS last_used_at
        FROM key_usage_daily
        WHERE day >= toDate(at_) - toIntervalDay({used_window_days:UInt32}) AND day <= toDate(at_)
          AND (account_id, key_id) IN (SELECT account_id, key_id FROM orphans)
        GROUP BY account_id, key_id, day
    ) AS u ON u.account_id = o.account_id AND u.key_id = o.key_id
    GROUP BY o.account_id, o.key_id, o.key_prefix, o.creator, o.created_at, o.removed_at`,
  toFinding: (r: Row) => ({
    detector: 'key.orphaned',
    severity: r.last_used_at ? 'high' : 'medium',
    account_id: r.account_id,
    key_id: r.key_id,
    title: r.last_used_at
      ? `${r.key_prefix} was created by ${r.creator}, who left on ${r.removed_at.slice(0, 10)}, and is still in use`
      : `${r.key_prefix} was created by ${r.creator}, who left on ${r.removed_at.slice(0, 10)}`,
    evidence: { creator: r.creator, created_at: r.created_at, creator_removed_at: r.removed_at, last_used_at: r.last_used_at, requests_since_removal_7d: Number(r.requests_since_removal) },
    dedupKey: `key.orphaned:${r.account_id}:${r.key_id}`,
  }),
  runbook: 'Find who owns the deployments using it now; issue them a key of their own and revoke this one.',
})
