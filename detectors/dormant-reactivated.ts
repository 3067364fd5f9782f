// A live key silent for 30 days or more that comes back from a network it never used: a forgotten key found by
// someone else. A periodic job coming back from its own network is not this. Reads the network rollups only.
import { defineDetector } from './detector.ts'
import { knownNetworkOf, networkOf, networksBefore, RECENT_NETWORKS, type NetworkTuple } from './networks.ts'

interface Row {
  account_id: string
  key_id: string
  new_networks: NetworkTuple[]
  known_networks: [string, number, number][]
  last_used_before: string
  first_used_again: string
  dormant_days: number
  accepted: number
}

export default defineDetector({
  id: 'key.dormant_reactivated',
  title: 'Dormant key used again from a new network',
  severity: 'high',
  schedule: '*/5 * * * *',
  lookback: '24 hours against the key’s whole history (400 days), from the network rollups',
  params: { window_seconds: 86_400, dormant_days: 30, history_days: 400 },
  query: `
    WITH {at:DateTime64(3, 'UTC')} - toIntervalSecond({window_seconds:UInt32}) AS since,
    -- Candidates from the daily usage rollup alone: keys used since since's day and on none of the whole days that
    -- end less than dormant_days before any use in the window (such a key cannot be dormant). Few keys, so the
    -- hourly and daily network reads below touch only their ranges of the rollups.
    woken_keys AS (
        SELECT account_id, key_id FROM key_usage_daily
        WHERE day > toDate(since + toIntervalSecond({window_seconds:UInt32}) - toIntervalDay({dormant_days:UInt32}))
          AND day <= toDate({at:DateTime64(3, 'UTC')})
        GROUP BY account_id, key_id
        HAVING countIf(day >= toDate(since)) > 0 AND countIf(day < toDate(since)) = 0
    ),
    recent AS (SELECT * FROM (${RECENT_NETWORKS}) WHERE (account_id, key_id) IN (SELECT account_id, key_id FROM woken_keys)),
    known AS (${networksBefore('{history_days:UInt32}')}),
    history AS (
        SELECT account_id, key_id, max(last_seen) AS last_seen,
               groupUniqArrayIf(country, accepted > 0 AND country != '') AS countries, groupUniqArrayIf(asn, accepted > 0 AND asn != 0) AS asns,
               groupArray(tuple(country, asn, requests)) AS networks
        FROM known
        GROUP BY account_id, key_id
    ),
    -- Only keys whose last use before this window is 30 days or more before their first use in it.
    woken AS (
        SELECT r.account_id AS account_id, r.key_id AS key_id, min(r.first_seen) AS first_again
        FROM recent AS r
        GROUP BY r.account_id, r.key_id
    )
    SELECT r.account_id AS account_id, r.key_id AS key_id,
           groupArray(tuple(r.country, r.asn, r.accepted, r.writes, r.money_requests, r.money, toString(r.first_seen), toString(r.last_seen))) AS new_networks,
           any(h.networks) AS known_networks, toString(any(h.last_seen)) AS last_used_before, toString(any(w.first_again)) AS first_used_again,
           dateDiff('day', any(h.last_seen), any(w.first_again)) AS dormant_days, sum(r.accepted) AS accepted
    FROM recent AS r
    INNER JOIN history AS h ON h.account_id = r.account_id AND h.key_id = r.key_id
    INNER JOIN woken AS w ON w.account_id = r.account_id AND w.key_id = r.key_id
    WHERE h.last_seen <= w.first_again - toIntervalDay({dormant_days:UInt32})
      AND ((r.country != '' AND NOT has(h.countries, r.country)) OR (r.asn != 0 AND NOT has(h.asns, r.asn)))
    GROUP BY r.account_id, r.key_id`,
  toFinding: (r: Row) => {
    const networks = r.new_networks.map(networkOf)
    return {
      detector: 'key.dormant_reactivated',
      severity: 'high',
      account_id: r.account_id,
      key_id: r.key_id,
      title: `${r.key_id} woke up after ${r.dormant_days} days, from a network it never used (${networks.map((n) => `${n.country ?? '??'}/AS${n.asn ?? '?'}`).join(', ')})`,
      evidence: {
        dormant_days: Number(r.dormant_days),
        last_used_before: r.last_used_before,
        first_used_again: r.first_used_again,
        accepted: Number(r.accepted),
        new_networks: networks,
        known_networks: r.known_networks.map(knownNetworkOf),
      },
      dedupKey: `key.dormant_reactivated:${r.account_id}:${r.key_id}:${r.first_used_again.slice(0, 10)}`,
    }
  },
  runbook: 'Nobody should wake a forgotten key from elsewhere: confirm with its owner, and if unknown reset it and review its requests.',
})
