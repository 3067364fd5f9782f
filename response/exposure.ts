// The exposure report: what a key did while it was exposed, so the incident can be judged (refunds, disclosures,
// customer notices). The window runs from the earliest evidence of exposure (a report's exposed_since, the first
// anomaly finding on the key, else a look-back before the first report) until its revocation plus the platform's
// cache grace, unless the caller gives one; what came after is counted apart. Every money-moving request of the
// window is listed.
import { queryRows, type ClickHouseClient } from '../clickhouse/client.ts'
import { chTime } from '../clickhouse/time.ts'
import { KeywatchError, kindOfStatus } from '../core/errors.ts'

export interface ExposureWindow {
  from: string
  to: string
  /** Why the window starts and ends where it does. */
  basis: string
}

export interface ExposureReport {
  key: { account_id: string; key_id: string; key_prefix: string; key_kind: string; mode: string; status: string; created_at: string | null; revoked_at: string | null }
  window: ExposureWindow
  totals: { requests: number; accepted: number; refused: number; write_requests: number; accepted_writes: number; distinct_ips: number; distinct_countries: number; distinct_asns: number; first_use: string | null; last_use: string | null }
  by_endpoint_status: { method: string; endpoint: string; status: number; requests: number }[]
  ips: { ip: string; country: string; asn: number; requests: number; accepted: number; first: string; last: string }[]
  countries: { country: string; requests: number; accepted: number }[]
  asns: { asn: number; requests: number; accepted: number }[]
  writes: { method: string; endpoint: string; requests: number; accepted: number }[]
  money: { currency: string; amount_minor: number; payments: number }[]
  /** Every request of the window that carried an amount (accepted or not), oldest first. */
  transactions: { request_id: string; occurred_at: string; method: string; endpoint: string; status: number; amount_minor: number; currency: string; ip: string; asn: number; country: string }[]
  /** More money-moving requests than the report lists (MAX_TRANSACTIONS): narrow the window. */
  transactions_truncated: boolean
  /** Requests after the window (after revocation: what the platform's caches or a failed revocation let through). */
  after_window: { requests: number; accepted: number }
}

export class ExposureError extends KeywatchError {
  constructor(
    readonly status: 400 | 404,
    message: string,
  ) {
    super(kindOfStatus(status), status === 404 ? 'not_found' : 'invalid_input', message)
    this.name = 'ExposureError'
  }
}

/**
 * Findings that say nothing about when the key became exposed: hygiene (stale, rotation, expiry), the leak report
 * itself (it marks when the exposure was found, not when it began) and keywatch's own. Every other finding on the
 * key (the behavioural detectors included, whatever is added later) is evidence of misuse.
 */
const NOT_EVIDENCE = ['key.stale', 'key.rotation_overdue', 'key.rotation_due_soon', 'key.rotation_stalled', 'key.expiring_in_use', 'leak.public_report', 'leak.unmatched_report']
const WRITE_METHODS = ['POST', 'PUT', 'PATCH', 'DELETE']
const MAX_TRANSACTIONS = 100_000

export interface ExposureOptions {
  /** Platform caches accept a revoked key this long: the window runs on to the revocation plus this. */
  cacheGraceSeconds?: number
  /** With a leak report but no earlier evidence, the window starts this many days before the first report. */
  lookbackDays?: number
}

export async function exposureReport(client: ClickHouseClient, keyId: string, window: { from?: Date; to?: Date } = {}, now = new Date(), opts: ExposureOptions = {}): Promise<ExposureReport> {
  const [key] = await queryRows<ExposureReport['key']>(
    client,
    `SELECT account_id, key_id, key_prefix, key_kind, mode, status,
            if(created_at IS NULL, NULL, toString(created_at)) AS created_at, if(revoked_at IS NULL, NULL, toString(revoked_at)) AS revoked_at
     FROM key_inventory_at(at = {now:DateTime64(3, 'UTC')}) WHERE key_id = {key:String} LIMIT 1`,
    { key: keyId, now: chTime(now.getTime()) },
  )
  if (!key) throw new ExposureError(404, `no key ${keyId} in the inventory`)
  const w = await defaultWindow(client, key, window, now, { cacheGraceSeconds: opts.cacheGraceSeconds ?? 300, lookbackDays: opts.lookbackDays ?? 30 })
  // An empty window is an answer (nothing happened in it); only a window given backwards is a mistake.
  if (Date.parse(w.from) > Date.parse(w.to)) throw new ExposureError(400, `from ${w.from} is after to ${w.to}`)
  const params = { account: key.account_id, key: key.key_id, from: chTime(Date.parse(w.from)), to: chTime(Date.parse(w.to)), writes: WRITE_METHODS }
  const range = `FROM key_usage WHERE account_id = {account:String} AND key_id = {key:String}
    AND occurred_at >= {from:DateTime64(3, 'UTC')} AND occurred_at < {to:DateTime64(3, 'UTC')}`
  const q = <T>(sql: string) => queryRows<T>(client, sql, params)

  const [totals, byEndpoint, ips, countries, asns, writes, money, after, transactions] = await Promise.all([
    q<ExposureReport['totals']>(`SELECT count() AS requests, countIf(status < 400) AS accepted, countIf(status >= 400) AS refused,
        countIf(method IN {writes:Array(String)}) AS write_requests, countIf(method IN {writes:Array(String)} AND status < 400) AS accepted_writes,
        uniqExact(ip) AS distinct_ips, uniqExactIf(country, country != '') AS distinct_countries, uniqExactIf(asn, asn != 0) AS distinct_asns,
        if(count() = 0, NULL, toString(min(occurred_at))) AS first_use, if(count() = 0, NULL, toString(max(occurred_at))) AS last_use ${range}`),
    q<ExposureReport['by_endpoint_status'][number]>(`SELECT method, endpoint, status, count() AS requests ${range} GROUP BY method, endpoint, status ORDER BY requests DESC, endpoint, status LIMIT 1000`),
    // An address can geolocate to more than one network over a window: name the one most of its requests came from
    // (ties broken by name), never an arbitrary one.
    q<ExposureReport['ips'][number]>(`SELECT ip, argMax(c, (n, c)) AS country, argMax(a, (n, c, a)) AS asn,
        sum(n) AS requests, sum(ok) AS accepted, toString(min(f)) AS first, toString(max(l)) AS last
        FROM (SELECT ip, country AS c, asn AS a, count() AS n, countIf(status < 400) AS ok, min(occurred_at) AS f, max(occurred_at) AS l ${range} GROUP BY ip, c, a)
        GROUP BY ip ORDER BY requests DESC, ip LIMIT 1000`),
    q<ExposureReport['countries'][number]>(`SELECT country, count() AS requests, countIf(status < 400) AS accepted ${range} GROUP BY country ORDER BY requests DESC, country`),
    q<ExposureReport['asns'][number]>(`SELECT asn, count() AS requests, countIf(status < 400) AS accepted ${range} GROUP BY asn ORDER BY requests DESC, asn LIMIT 1000`),
    q<ExposureReport['writes'][number]>(`SELECT method, endpoint, count() AS requests, countIf(status < 400) AS accepted ${range} AND method IN {writes:Array(String)}
        GROUP BY method, endpoint ORDER BY requests DESC, endpoint`),
    // Not `AS amount_minor`: the alias would shadow the column in WHERE.
    q<{ currency: string; total_minor: number; payments: number }>(`SELECT currency, sum(amount_minor) AS total_minor, count() AS payments ${range}
        AND status < 400 AND amount_minor > 0 GROUP BY currency ORDER BY total_minor DESC, currency`),
    q<ExposureReport['after_window']>(`SELECT count() AS requests, countIf(status < 400) AS accepted FROM key_usage
        WHERE account_id = {account:String} AND key_id = {key:String} AND occurred_at >= {to:DateTime64(3, 'UTC')}`),
    queryRows<ExposureReport['transactions'][number]>(
      client,
      // Selected from a subquery: an alias `occurred_at` would shadow the column in WHERE.
      `SELECT request_id, toString(t) AS occurred_at, method, endpoint, status, amount_minor, currency, ip, asn, country
       FROM (SELECT occurred_at AS t, request_id, method, endpoint, status, amount_minor, currency, ip, asn, country ${range}
         AND amount_minor > 0 ORDER BY occurred_at, request_id LIMIT {max:UInt32})`,
      { ...params, max: MAX_TRANSACTIONS + 1 },
    ),
  ])
  return {
    key,
    window: w,
    totals: totals[0]!,
    by_endpoint_status: byEndpoint,
    ips,
    countries,
    asns,
    writes,
    money: money.map((m) => ({ currency: m.currency, amount_minor: m.total_minor, payments: m.payments })),
    after_window: after[0] ?? { requests: 0, accepted: 0 },
    transactions: transactions.slice(0, MAX_TRANSACTIONS),
    transactions_truncated: transactions.length > MAX_TRANSACTIONS,
  }
}

/**
 * From the earliest evidence of exposure: a report's exposed_since, the first anomaly finding on the key, else the
 * look-back before the first leak report (or before the end, with no report); to the revocation plus the cache grace.
 */
async function defaultWindow(client: ClickHouseClient, key: ExposureReport['key'], given: { from?: Date; to?: Date }, now: Date, opts: Required<ExposureOptions>): Promise<ExposureWindow> {
  const [evidence] = await queryRows<{ leak: string | null; exposed: string | null; anomaly: string | null; anomaly_detector: string }>(
    client,
    `WITH reports AS (
         SELECT occurred_at, exposed_since FROM leak_reports WHERE token_sha256 IN (
           SELECT secret_sha256 FROM key_lifecycle WHERE account_id = {account:String} AND key_id = {key:String} AND secret_sha256 IS NOT NULL))
     SELECT
       (SELECT if(count() = 0, NULL, toString(min(occurred_at))) FROM reports) AS leak,
       (SELECT if(countIf(exposed_since IS NOT NULL) = 0, NULL, toString(minIf(exposed_since, exposed_since IS NOT NULL))) FROM reports) AS exposed,
       (SELECT if(count() = 0, NULL, toString(min(first_seen_at))) FROM findings FINAL
         WHERE account_id = {account:String} AND key_id = {key:String} AND detector NOT IN {not_evidence:Array(String)} AND NOT startsWith(detector, 'response.')) AS anomaly,
       (SELECT argMin(detector, first_seen_at) FROM findings FINAL
         WHERE account_id = {account:String} AND key_id = {key:String} AND detector NOT IN {not_evidence:Array(String)} AND NOT startsWith(detector, 'response.')) AS anomaly_detector`,
    { account: key.account_id, key: key.key_id, not_evidence: NOT_EVIDENCE },
  )
  const graceMs = opts.cacheGraceSeconds * 1000
  const to = given.to ?? (key.revoked_at ? new Date(msOf(key.revoked_at) + graceMs) : now)
  const lookbackMs = opts.lookbackDays * 86_400_000
  const created = key.created_at ? msOf(key.created_at) : 0
  let from = given.from
  let basis: string
  const candidates: { at: number; why: string }[] = []
  if (evidence?.exposed) candidates.push({ at: msOf(evidence.exposed), why: "from the report's exposed_since" })
  if (evidence?.anomaly) candidates.push({ at: msOf(evidence.anomaly), why: `from the first anomaly finding (${evidence.anomaly_detector})` })
  if (from) basis = 'as requested'
  else if (candidates.length) {
    const first = candidates.reduce((a, b) => (b.at < a.at ? b : a))
    from = new Date(Math.max(first.at, created))
    basis = first.why
  } else if (evidence?.leak) {
    from = new Date(Math.max(msOf(evidence.leak) - lookbackMs, created))
    basis = `from ${opts.lookbackDays} days before the first leak report (nothing says when the exposure began)`
  } else {
    from = new Date(Math.max(to.getTime() - lookbackMs, created))
    basis = `no leak report or anomaly finding: the ${opts.lookbackDays} days before the end`
  }
  if (!given.to) basis += key.revoked_at ? `, until the revocation plus the ${opts.cacheGraceSeconds} s cache grace` : ', until now (the key is not revoked)'
  // Evidence later than the end (a report after the revocation) leaves an empty window, never a reversed one.
  if (!given.from && from.getTime() > to.getTime()) from = to
  return { from: new Date(from).toISOString(), to: to.toISOString(), basis }
}

const CSV_COLUMNS = ['section', 'method', 'endpoint', 'status', 'ip', 'country', 'asn', 'currency', 'requests', 'accepted', 'amount_minor', 'first', 'last', 'request_id'] as const

/** One table an auditor can pivot: a row per figure, the `section` column saying which part of the report it is. */
export function exposureCsv(r: ExposureReport): string {
  type Row = Partial<Record<(typeof CSV_COLUMNS)[number], string | number | null>>
  const rows: Row[] = [
    { section: 'window', first: r.window.from, last: r.window.to },
    { section: 'totals', requests: r.totals.requests, accepted: r.totals.accepted, first: r.totals.first_use, last: r.totals.last_use },
    { section: 'writes_total', requests: r.totals.write_requests, accepted: r.totals.accepted_writes },
    { section: 'after_window', requests: r.after_window.requests, accepted: r.after_window.accepted },
    ...r.by_endpoint_status.map((e) => ({ section: 'endpoint_status', method: e.method, endpoint: e.endpoint, status: e.status, requests: e.requests })),
    ...r.writes.map((e) => ({ section: 'write', method: e.method, endpoint: e.endpoint, requests: e.requests, accepted: e.accepted })),
    ...r.ips.map((e) => ({ section: 'ip', ip: e.ip, country: e.country, asn: e.asn, requests: e.requests, accepted: e.accepted, first: e.first, last: e.last })),
    ...r.countries.map((e) => ({ section: 'country', country: e.country, requests: e.requests, accepted: e.accepted })),
    ...r.asns.map((e) => ({ section: 'asn', asn: e.asn, requests: e.requests, accepted: e.accepted })),
    ...r.money.map((e) => ({ section: 'money', currency: e.currency, amount_minor: e.amount_minor, requests: e.payments })),
    // One row per money-moving request: its time in `first`.
    ...r.transactions.map((t) => ({ section: 'transaction', request_id: t.request_id, first: t.occurred_at, method: t.method, endpoint: t.endpoint, status: t.status, amount_minor: t.amount_minor, currency: t.currency, ip: t.ip, asn: t.asn, country: t.country })),
  ]
  return [csvLine([...CSV_COLUMNS]), ...rows.map((row) => csvLine(CSV_COLUMNS.map((c) => row[c] ?? '')))].join('\r\n') + '\r\n'
}

/** RFC 4180, and a cell that a spreadsheet would run as a formula is prefixed with a quote. */
function csvLine(cells: (string | number | null)[]): string {
  return cells
    .map((c) => {
      let s = c === null ? '' : String(c)
      if (/^[=+\-@\t\r]/.test(s) && typeof c === 'string') s = `'${s}`
      return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s
    })
    .join(',')
}

function msOf(chDateTime: string): number {
  return Date.parse(chDateTime.replace(' ', 'T') + 'Z')
}
