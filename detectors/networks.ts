// Shared SQL of the network detectors (key.new_network, key.dormant_reactivated): where a key was used from, per
// network (country, ASN), read from the rollups of migration 020, never from raw events.
// Both expect CTEs `since` (the start of the recent window) and `recent` (the keys to look at).

/** Accepted use of live secret and restricted keys per network since `since`, from the hourly rollup. */
export const RECENT_NETWORKS = `
    SELECT account_id, key_id, country, asn, sum(requests) AS requests, sum(accepted) AS accepted, sum(writes) AS writes,
           sum(money_requests) AS money_requests, sumMap(amount_minor) AS money, min(first_seen_at) AS first_seen,
           max(last_seen_at) AS last_seen, uniqMerge(ips) AS ips
    FROM key_networks_hourly
    WHERE hour >= toStartOfHour(since) AND hour <= {at:DateTime64(3, 'UTC')}
      AND mode = 'live' AND key_kind IN ('secret', 'restricted')
    GROUP BY account_id, key_id, country, asn
    HAVING accepted > 0`

/**
 * The networks of the keys in `recent` before `since`, back to `days` days: whole days from the daily rollup, and the
 * hours of since's own day from the hourly one. Only networks that had requests accepted count as known.
 */
export function networksBefore(days: string): string {
  return `
    SELECT account_id, key_id, country, asn, sum(requests) AS requests, sum(accepted) AS accepted,
           min(first_seen_at) AS first_seen, max(last_seen_at) AS last_seen
    FROM (
        SELECT account_id, key_id, country, asn, requests, accepted, first_seen_at, last_seen_at
        FROM key_networks_daily
        WHERE day >= toDate(since) - toIntervalDay(${days}) AND day < toDate(since)
          AND (account_id, key_id) IN (SELECT account_id, key_id FROM recent)
        UNION ALL
        SELECT account_id, key_id, country, asn, requests, accepted, first_seen_at, last_seen_at
        FROM key_networks_hourly
        WHERE hour >= toStartOfDay(since) AND hour < toStartOfHour(since)
          AND (account_id, key_id) IN (SELECT account_id, key_id FROM recent)
    )
    GROUP BY account_id, key_id, country, asn`
}

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
