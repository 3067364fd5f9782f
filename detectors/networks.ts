// Shared SQL of the network detectors (key.new_network, key.dormant_reactivated): where a key was used from, per
// network (country, ASN), read from the rollups of migration 020, never from raw events.
// Both expect `since` (the start of the recent window) in a WITH clause.

/**
 * Per key and network (country, ASN), in one read of the rollups: its accepted use since `since` (live secret and
 * restricted keys only: w_accepted, w_writes, w_money_requests, w_money, w_first, w_last, from the hourly rollup)
 * and its history before `since`, back to `days` days (known, k_requests, k_accepted, k_first, k_last: whole days
 * from the daily rollup, the hours of since's own day from the hourly one). `where` narrows the keys read (one IN
 * for both branches). One scan with conditional aggregates, not CTEs joined: the engine inlines a CTE at each use,
 * so a CTE of recent networks read again for the history was computed three or four times.
 */
export function keyNetworks(days: string, where = '1'): string {
  return `
    SELECT account_id, key_id, country, asn,
           sumIf(accepted, in_window AND watched) AS w_accepted, sumIf(writes, in_window AND watched) AS w_writes,
           sumIf(money_requests, in_window AND watched) AS w_money_requests, sumMapIf(amount_minor, in_window AND watched) AS w_money,
           minIf(first_seen_at, in_window AND watched) AS w_first, maxIf(last_seen_at, in_window AND watched) AS w_last,
           countIf(NOT in_window) > 0 AS known, sumIf(requests, NOT in_window) AS k_requests, sumIf(accepted, NOT in_window) AS k_accepted,
           minIf(first_seen_at, NOT in_window) AS k_first, maxIf(last_seen_at, NOT in_window) AS k_last
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
        WHERE day >= toDate(since) - toIntervalDay(${days}) AND day < toDate(since)
    )
    WHERE ${where}
    GROUP BY account_id, key_id, country, asn`
}

/**
 * Per-key columns over keyNetworks' rows: the history's countries and ASNs that had requests accepted, and the
 * window's accepted networks that are in neither (as NetworkTuple), beside the history's networks.
 */
export const NEW_NETWORK_COLUMNS = `
           groupUniqArrayIf(country, known AND k_accepted > 0 AND country != '') AS known_countries,
           groupUniqArrayIf(asn, known AND k_accepted > 0 AND asn != 0) AS known_asns,
           arrayFilter(n -> (n.1 != '' AND NOT has(known_countries, n.1)) OR (n.2 != 0 AND NOT has(known_asns, n.2)),
                       groupArrayIf(tuple(country, asn, w_accepted, w_writes, w_money_requests, w_money, toString(w_first), toString(w_last)), w_accepted > 0)) AS new_networks,
           groupArrayIf(tuple(country, asn, k_requests), known) AS known_networks`

/** A network as the query returns it, positionally: [country, asn, accepted, writes, money_requests, money, first, last]. */
export type NetworkTuple = [string, number | string, number | string, number | string, number | string, Record<string, number | string>, string, string]

export function networkOf(t: NetworkTuple) {
  return {
    country: t[0] || null,
    asn: Number(t[1]) || null,
    accepted: Number(t[2]),
    writes: Number(t[3]),
    money_requests: Number(t[4]),
    money_minor: Object.fromEntries(Object.entries(t[5] ?? {}).map(([c, v]) => [c, Number(v)])),
    first_seen: t[6],
    last_seen: t[7],
  }
}

/** A baseline network: [country, asn, requests]. */
export function knownNetworkOf(t: [string, number | string, number | string]) {
  return { country: t[0] || null, asn: Number(t[1]) || null, requests: Number(t[2]) }
}
