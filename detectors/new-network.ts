// A live secret or restricted key accepted from a network (country or ASN) it has not used in the 30 days before:
// a key stolen from a server and used quietly from the attacker's own network. Reads the network rollups only.
import { defineDetector } from './detector.ts'
import { knownNetworkOf, networkOf, networksBefore, RECENT_NETWORKS, type NetworkTuple } from './networks.ts'

interface Row {
  account_id: string
  key_id: string
  key_kind: string
  new_networks: NetworkTuple[]
  known_networks: [string, number, number][]
  new_accepted: number
  new_writes: number
  new_money_requests: number
  baseline_requests: number
  baseline_days: number
}

export default defineDetector({
  id: 'key.new_network',
  title: 'Key used from a new network',
  severity: 'high',
  schedule: '*/5 * * * *',
  lookback: '24 hours against the 30 days before, from the hourly and daily network rollups',
  // No baseline (under 7 days or 50 requests of history): no finding. A new network needs 5 accepted requests,
  // or one that wrote or moved money.
  params: { window_seconds: 86_400, baseline_days: 30, min_history_days: 7, min_baseline_requests: 50, min_new_requests: 5 },
  query: `
    WITH {at:DateTime64(3, 'UTC')} - toIntervalSecond({window_seconds:UInt32}) AS since,
    recent AS (${RECENT_NETWORKS}),
    known AS (${networksBefore('{baseline_days:UInt32}')}),
    baseline AS (
        SELECT account_id, key_id, sum(requests) AS total_requests, min(first_seen) AS first_seen,
               groupUniqArrayIf(country, accepted > 0 AND country != '') AS countries, groupUniqArrayIf(asn, accepted > 0 AND asn != 0) AS asns,
               groupArray(tuple(country, asn, requests)) AS networks
        FROM known
        GROUP BY account_id, key_id
        HAVING total_requests >= {min_baseline_requests:UInt32} AND first_seen <= since - toIntervalDay({min_history_days:UInt32})
    )
    SELECT r.account_id AS account_id, r.key_id AS key_id,
           groupArray(tuple(r.country, r.asn, r.accepted, r.writes, r.money_requests, r.money, toString(r.first_seen), toString(r.last_seen))) AS new_networks,
           any(b.networks) AS known_networks, sum(r.accepted) AS new_accepted, sum(r.writes) AS new_writes,
           sum(r.money_requests) AS new_money_requests, any(b.total_requests) AS baseline_requests,
           dateDiff('day', any(b.first_seen), since) AS baseline_days
    FROM recent AS r
    INNER JOIN baseline AS b ON b.account_id = r.account_id AND b.key_id = r.key_id
    WHERE (r.country != '' AND NOT has(b.countries, r.country)) OR (r.asn != 0 AND NOT has(b.asns, r.asn))
    GROUP BY r.account_id, r.key_id
    HAVING new_accepted >= {min_new_requests:UInt32} OR new_writes > 0 OR new_money_requests > 0`,
  toFinding: (r: Row) => {
    const networks = r.new_networks.map(networkOf)
    const where = networks.map((n) => `${n.country ?? '??'}/AS${n.asn ?? '?'}`).join(', ')
    return {
      detector: 'key.new_network',
      severity: 'high',
      account_id: r.account_id,
      key_id: r.key_id,
      title: `${r.key_id} accepted ${r.new_accepted} requests from a new network (${where})${Number(r.new_money_requests) > 0 ? ', moving money' : Number(r.new_writes) > 0 ? ', writing' : ''}`,
      evidence: {
        new_networks: networks,
        new_accepted: Number(r.new_accepted),
        new_writes: Number(r.new_writes),
        new_money_requests: Number(r.new_money_requests),
        baseline_networks: r.known_networks.map(knownNetworkOf),
        baseline_requests: Number(r.baseline_requests),
        baseline_days: Number(r.baseline_days),
      },
      dedupKey: `key.new_network:${r.account_id}:${r.key_id}`,
    }
  },
  runbook: 'Ask the key’s owner whether they deployed to that network; if not, the key is stolen: reset it and review its requests from there.',
})
