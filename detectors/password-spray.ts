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
  lookback: 'the 15 whole minutes before the run, from the failed-logins-per-minute rollup',
  // below_per_ip: auth.mfa_bruteforce's min_login_failures (the engine carries an override of it here); an IP at or
  // over it, counted over every account as that detector does, is that detector's finding. window_seconds is a
  // whole number of minutes: the window is the last whole minutes before the run (a spray still going on at the
  // run is seen by the next one, a minute later), so it never reads a minute only partly past.
  params: { window_seconds: 900, min_users: 10, min_ips: 5, below_per_ip: 20 },
  query: `
    WITH toStartOfMinute({at:DateTime64(3, 'UTC')}) AS until, until - toIntervalSecond({window_seconds:UInt32}) AS since,
    per_ip AS (
        SELECT account_id, ip, sum(failures) AS per_ip, groupUniqArrayIf(subject, subject != '') AS users_of_ip,
               min(first_at) AS first_of_ip, max(last_at) AS last_of_ip
        FROM login_failures_1m
        WHERE minute >= since AND minute < until
        GROUP BY account_id, ip
    ),
    -- An IP's failures over every account, as auth.mfa_bruteforce counts them.
    loud_ips AS (SELECT ip FROM per_ip GROUP BY ip HAVING sum(per_ip) >= {below_per_ip:UInt32})
    SELECT account_id, length(groupUniqArrayArray(users_of_ip)) AS users, count() AS ips, sum(per_ip) AS failures, max(per_ip) AS max_per_ip,
           toString(min(first_of_ip)) AS first, toString(max(last_of_ip)) AS last
    FROM per_ip
    WHERE ip NOT IN (SELECT ip FROM loud_ips)
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
