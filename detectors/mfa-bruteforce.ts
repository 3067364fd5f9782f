// Many failed MFA codes for one user, or many failed logins from one IP: credential attacks on the dashboard.
import { defineDetector } from './detector.ts'

interface Row {
  subject: 'user' | 'ip'
  account_id: string
  user_id: string
  ip: string
  failures: number
  ips: number
  users: number
  first: string
  last: string
}

export default defineDetector({
  id: 'auth.mfa_bruteforce',
  title: 'MFA or login brute force',
  severity: 'high',
  schedule: '* * * * *',
  lookback: '15 minutes of auth events',
  params: { window_seconds: 900, min_mfa_failures: 10, min_login_failures: 20 },
  query: `
    WITH {at:DateTime64(3, 'UTC')} - toIntervalSecond({window_seconds:UInt32}) AS since
    SELECT 'user' AS subject, account_id, user_id, '' AS ip, count() AS failures, uniqExact(ip) AS ips, 1 AS users,
           toString(min(occurred_at)) AS first, toString(max(occurred_at)) AS last
    FROM auth_events
    WHERE action = 'mfa.failed' AND user_id IS NOT NULL AND occurred_at > since AND occurred_at <= {at:DateTime64(3, 'UTC')}
    GROUP BY account_id, user_id
    HAVING failures >= {min_mfa_failures:UInt32}
    UNION ALL
    SELECT 'ip' AS subject, any(auth_events.account_id) AS account_id, '' AS user_id, ip, count() AS failures, 1 AS ips,
           uniqExact(ifNull(user_id, actor_email)) AS users, toString(min(occurred_at)) AS first, toString(max(occurred_at)) AS last
    FROM auth_events
    WHERE action = 'login.failed' AND occurred_at > since AND occurred_at <= {at:DateTime64(3, 'UTC')}
    GROUP BY ip
    HAVING failures >= {min_login_failures:UInt32}`,
  toFinding: (r: Row, p) =>
    r.subject === 'user'
      ? {
          detector: 'auth.mfa_bruteforce',
          severity: 'high',
          account_id: r.account_id,
          user_id: r.user_id,
          title: `${r.failures} failed MFA codes for ${r.user_id} in ${p.window_seconds / 60} min`,
          evidence: { mfa_failures: Number(r.failures), distinct_ips: Number(r.ips), first: r.first, last: r.last },
          dedupKey: `auth.mfa_bruteforce:user:${r.account_id}:${r.user_id}`,
        }
      : {
          detector: 'auth.mfa_bruteforce',
          severity: 'high',
          account_id: r.account_id,
          ip: r.ip,
          title: `${r.failures} failed logins from ${r.ip} in ${p.window_seconds / 60} min`,
          evidence: { login_failures: Number(r.failures), distinct_users: Number(r.users), first: r.first, last: r.last },
          dedupKey: `auth.mfa_bruteforce:ip:${r.ip}`,
        },
  runbook: 'The password is known if MFA is failing: lock the user’s sessions and reset the password; block an attacking IP.',
})
