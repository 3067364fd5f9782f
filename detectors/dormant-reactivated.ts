// A live key silent for 30 days or more that comes back from a network it never used: a forgotten key found by
// someone else. A periodic job coming back from its own network is not this. Reads the network rollups only.
import { defineDetector } from './detector.ts'
import { keyNetworks, knownNetworkOf, networkOf, NEW_NETWORK_COLUMNS, type NetworkTuple } from './networks.ts'

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
  // The candidates are read once (keyNetworks: one IN for both rollups, no CTE used twice).
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
    -- Per candidate and network: its accepted use in the window and its history before it.
    networks AS (${keyNetworks('{history_days:UInt32}', '(account_id, key_id) IN (SELECT account_id, key_id FROM woken_keys)')})
    -- Only keys with a history whose last use before the window is dormant_days or more before their first accepted
    -- use in it, and only the window's networks (country or ASN) the history never had accepted.
    SELECT account_id, key_id,
           ${NEW_NETWORK_COLUMNS},
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
