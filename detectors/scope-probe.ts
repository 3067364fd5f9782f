// A key refused again and again for scope or IP, or on many scopes: a stolen key probing what it may do.
// A job slowly retrying one misconfigured scope does not reach either bar. Reads the per-minute probe rollup.
import { defineDetector } from './detector.ts'

interface Row {
  account_id: string
  key_id: string
  refusals_short: number
  refusals_long: number
  distinct_scopes: number
  scopes: string[]
  error_codes: string[]
  ips: number
  first: string
  last: string
}

export default defineDetector({
  id: 'key.scope_probe',
  title: 'Key probing its permissions',
  severity: 'high',
  schedule: '* * * * *',
  lookback: '1 hour of scope and IP refusals, per-minute rollup',
  params: { short_window_seconds: 900, min_refusals: 20, long_window_seconds: 3_600, min_scopes: 4 },
  query: `
    WITH {at:DateTime64(3, 'UTC')} AS at_
    SELECT account_id, key_id,
           sumIf(refusals, minute >= toStartOfMinute(at_ - toIntervalSecond({short_window_seconds:UInt32}))) AS refusals_short,
           sum(refusals) AS refusals_long,
           uniqExactIf(scope, scope != '') AS distinct_scopes,
           groupUniqArrayIf(scope, scope != '') AS scopes,
           groupUniqArray(error_code) AS error_codes,
           uniqMerge(ips) AS ips,
           toString(min(minute)) AS first, toString(max(minute)) AS last
    FROM key_probes_1m
    WHERE minute >= toStartOfMinute(at_ - toIntervalSecond({long_window_seconds:UInt32})) AND minute <= at_
    GROUP BY account_id, key_id
    HAVING refusals_short >= {min_refusals:UInt32} OR distinct_scopes >= {min_scopes:UInt32}`,
  toFinding: (r: Row, p) => ({
    detector: 'key.scope_probe',
    severity: 'high',
    account_id: r.account_id,
    key_id: r.key_id,
    title:
      Number(r.distinct_scopes) >= p.min_scopes
        ? `${r.key_id} refused on ${r.distinct_scopes} different scopes in ${p.long_window_seconds / 60} min`
        : `${r.key_id} refused ${r.refusals_short} times for scope or IP in ${p.short_window_seconds / 60} min`,
    evidence: {
      refusals_15m: Number(r.refusals_short),
      refusals_1h: Number(r.refusals_long),
      distinct_scopes: Number(r.distinct_scopes),
      scopes: [...r.scopes].sort(),
      error_codes: [...r.error_codes].sort(),
      distinct_ips: Number(r.ips),
      first: r.first,
      last: r.last,
    },
    dedupKey: `key.scope_probe:${r.account_id}:${r.key_id}`,
  }),
  runbook: 'Look at the refused requests’ IPs and endpoints: unknown IPs probing scopes mean a stolen key (reset it); a known client means a misconfiguration.',
})
