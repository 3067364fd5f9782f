// A live secret or restricted key accepted from a network (country or ASN) it has not used in the 30 days before:
// a key stolen from a server and used quietly from the attacker's own network. Reads the network rollups only.
import { defineDetector } from './detector.ts'
import { keyNetworks, knownNetworkOf, networkOf, NEW_NETWORK_COLUMNS, type NetworkTuple } from './networks.ts'

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
    WITH {at:DateTime64(3, 'UTC')} - toIntervalSecond({window_seconds:UInt32}) AS since
    -- A baseline: its networks' requests and how long ago its first one was; new networks against it.
    SELECT account_id, key_id, ${NEW_NETWORK_COLUMNS},
           arraySum(n -> n.3, new_networks) AS new_accepted, arraySum(n -> n.4, new_networks) AS new_writes,
           arraySum(n -> n.5, new_networks) AS new_money_requests, sumIf(k_requests, known) AS baseline_requests,
           dateDiff('day', minIf(k_first, known), since) AS baseline_days
    FROM (${keyNetworks('{baseline_days:UInt32}')})
    GROUP BY account_id, key_id
    HAVING countIf(known) > 0 AND baseline_requests >= {min_baseline_requests:UInt32}
       AND minIf(k_first, known) <= since - toIntervalDay({min_history_days:UInt32})
       AND length(new_networks) > 0 AND (new_accepted >= {min_new_requests:UInt32} OR new_writes > 0 OR new_money_requests > 0)`,
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
