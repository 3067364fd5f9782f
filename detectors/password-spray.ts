// Failed logins on many users of one account from several IPs, each IP staying under the per-IP brute-force bar:
// one password tried against every member. A day of scattered typos never packs into 15 minutes like this.
import { defineDetector } from './detector.ts'

interface Row {
  account_id: string
  users: number
  ips: number
  failures: number
  max_per_ip: number
  first: string
  last: string
}

export default defineDetector({
  id: 'auth.password_spray',
  title: 'Password spray on an account',
  severity: 'high',
  schedule: '* * * * *',
  lookback: '15 minutes of auth events',
  // below_per_ip: auth.mfa_bruteforce's min_login_failures; IPs at or over it are that detector's finding.
  params: { window_seconds: 900, min_users: 10, min_ips: 5, below_per_ip: 20 },
  query: `
    WITH {at:DateTime64(3, 'UTC')} - toIntervalSecond({window_seconds:UInt32}) AS since
    SELECT account_id, length(groupUniqArrayArray(users_of_ip)) AS users, count() AS ips, sum(per_ip) AS failures, max(per_ip) AS max_per_ip,
           toString(min(first_of_ip)) AS first, toString(max(last_of_ip)) AS last
    FROM (
        SELECT account_id, ip, count() AS per_ip, groupUniqArray(ifNull(user_id, lower(actor_email))) AS users_of_ip,
               min(occurred_at) AS first_of_ip, max(occurred_at) AS last_of_ip
        FROM auth_events
        WHERE action = 'login.failed' AND occurred_at > since AND occurred_at <= {at:DateTime64(3, 'UTC')}
        GROUP BY account_id, ip
        HAVING per_ip < {below_per_ip:UInt32}
    )
    GROUP BY account_id
    HAVING users >= {min_users:UInt32} AND ips >= {min_ips:UInt32}`,
  toFinding: (r: Row, p) => ({
    detector: 'auth.password_spray',
    severity: 'high',
    account_id: r.account_id,
    title: `Failed logins on ${r.users} users from ${r.ips} IPs in ${p.window_seconds / 60} min`,
    evidence: { distinct_users: Number(r.users), distinct_ips: Number(r.ips), login_failures: Number(r.failures), max_per_ip: Number(r.max_per_ip), first: r.first, last: r.last },
    dedupKey: `auth.password_spray:${r.account_id}`,
  }),
  runbook: 'Someone is trying one password on every member: require MFA for all members, block the IPs, and check for a successful login among them.',
})
