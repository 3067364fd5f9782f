// One IP presenting many unknown keys: someone is guessing keys.
import { defineDetector } from './detector.ts'

interface Row {
  ip: string
  an_account: string
  rejections: number
  accounts: number
  prefixes: number
  first: string
  last: string
}

export default defineDetector({
  id: 'abuse.key_enumeration',
  title: 'Key enumeration from one IP',
  severity: 'medium',
  schedule: '* * * * *',
  lookback: '15 minutes of INVALID_KEY rejections',
  params: { window_seconds: 900, min_rejections: 100 },
  // Unknown keys are stored with key_id '' (the sorting key's second column), so this reads a thin slice.
  query: `
    SELECT ip, any(account_id) AS an_account, count() AS rejections, uniqExact(account_id) AS accounts,
           uniqExact(key_prefix) AS prefixes, toString(min(occurred_at)) AS first, toString(max(occurred_at)) AS last
    FROM key_usage
    WHERE key_id = '' AND error_code = 'INVALID_KEY'
      AND occurred_at > {at:DateTime64(3, 'UTC')} - toIntervalSecond({window_seconds:UInt32})
      AND occurred_at <= {at:DateTime64(3, 'UTC')}
    GROUP BY ip
    HAVING rejections >= {min_rejections:UInt32}`,
  toFinding: (r: Row, p) => ({
    detector: 'abuse.key_enumeration',
    severity: 'medium',
    account_id: r.an_account,
    ip: r.ip,
    title: `${r.rejections} invalid keys from ${r.ip} in ${p.window_seconds / 60} min`,
    evidence: { rejections: Number(r.rejections), accounts: Number(r.accounts), distinct_prefixes: Number(r.prefixes), first: r.first, last: r.last },
    dedupKey: `abuse.key_enumeration:${r.ip}`,
  }),
  runbook: 'Block the IP at the edge; no key was accepted, but check whether any key of the accounts it probed was used from it.',
})
