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
  // The candidates are read once: the engine inlines a CTE at each use, so the candidates' networks come from one
  // UNION ALL filtered by one IN (the same set for both branches), and the window and the history are told apart by
  // conditional aggregates instead of joins of CTEs.
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
    -- Per candidate and network: its accepted use in the window (live secret and restricted keys only) and its
    -- history before the window (whole days from the daily rollup, the hours of since's own day from the hourly one).
    networks AS (
        SELECT account_id, key_id, country, asn,
               sumIf(accepted, in_window AND watched) AS w_accepted, sumIf(writes, in_window AND watched) AS w_writes,
               sumIf(money_requests, in_window AND watched) AS w_money_requests, sumMapIf(amount_minor, in_window AND watched) AS w_money,
               minIf(first_seen_at, in_window AND watched) AS w_first, maxIf(last_seen_at, in_window AND watched) AS w_last,
               countIf(NOT in_window) > 0 AS known, sumIf(requests, NOT in_window) AS k_requests, sumIf(accepted, NOT in_window) AS k_accepted,
               maxIf(last_seen_at, NOT in_window) AS k_last
        FROM (
            SELECT account_id, key_id, country, asn, hour >= toStartOfHour(since) AS in_window,
                   mode = 'live' AND key_kind IN ('secret', 'restricted') AS watched,
                   requests, accepted, writes, money_requests, amount_minor, first_seen_at, last_seen_at
            FROM key_networks_hourly
            WHERE hour >= toStartOfDay(since) AND hour <= {at:DateTime64(3, 'UTC')}
            UNION ALL
            SELECT account_id, key_id, country, asn, 0 AS in_window, 0 AS watched,
                   requests, accepted, writes, money_requests, amount_minor, first_seen_at, last_seen_at
            FROM key_networks_daily
            WHERE day >= toDate(since) - toIntervalDay({history_days:UInt32}) AND day < toDate(since)
        )
        WHERE (account_id, key_id) IN (SELECT account_id, key_id FROM woken_keys)
        GROUP BY account_id, key_id, country, asn
    )
    -- Only keys with a history whose last use before the window is dormant_days or more before their first accepted
    -- use in it, and only the window's networks (country or ASN) the history never had accepted.
    SELECT account_id, key_id,
           groupUniqArrayIf(country, known AND k_accepted > 0 AND country != '') AS known_countries,
           groupUniqArrayIf(asn, known AND k_accepted > 0 AND asn != 0) AS known_asns,
           arrayFilter(n -> (n.1 != '' AND NOT has(known_countries, n.1)) OR (n.2 != 0 AND NOT has(known_asns, n.2)),
                       groupArrayIf(tuple(country, asn, w_accepted, w_writes, w_money_requests, w_money, toString(w_first), toString(w_last)), w_accepted > 0)) AS new_networks,
           groupArrayIf(tuple(country, asn, k_requests), known) AS known_networks,
           maxIf(k_last, known) AS last_before, minIf(w_first, w_accepted > 0) AS first_again,
           toString(last_before) AS last_used_before, toString(first_again) AS first_used_again,
           dateDiff('day', last_before, first_again) AS dormant_days, arraySum(n -> n.3, new_networks) AS accepted
    FROM networks
    GROUP BY account_id, key_id
    HAVING countIf(known) > 0 AND countIf(w_accepted > 0) > 0 AND length(new_networks) > 0
       AND last_before <= first_again - toIntervalDay({dormant_days:UInt32})`,
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
