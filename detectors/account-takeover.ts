// A dashboard login from a country the user has not logged in from in 30 days, right after a run of failed
// logins or OTPs, or right before a sensitive action: someone else holds the password (and maybe the phone).
// The user's countries come from the daily login rollup; the recent hours are read from the auth and lifecycle events.
import { defineDetector } from './detector.ts'

interface Row {
  account_id: string
  user_id: string
  country: string
  ip: string
  login_at: string
  failures_before: number
  sensitive: string[]
  known_countries: string[]
}

export default defineDetector({
  id: 'auth.account_takeover',
  title: 'Dashboard account takeover',
  severity: 'critical',
  schedule: '* * * * *',
  lookback: 'logins of the last 2 hours; the user’s countries of the 30 days before (daily rollup)',
  params: { lookback_seconds: 7_200, baseline_days: 30, window_seconds: 3_600, min_failures: 5 },
  query: `
    WITH {at:DateTime64(3, 'UTC')} AS at_, at_ - toIntervalSecond({lookback_seconds:UInt32}) AS since,
    -- Candidates from the rollup alone: users who logged in since since from a country not in their 30 days.
    -- (One pass: a country whose first login day in the 30 days is since's day or later, last logged in from after since.)
    candidates AS (
        SELECT account_id, user_id AS uid
        FROM user_logins_daily
        WHERE day >= toDate(since) - toIntervalDay({baseline_days:UInt32}) AND day <= toDate(at_) AND logins > 0 AND country != ''
        GROUP BY account_id, user_id, country
        HAVING min(day) >= toDate(since) AND max(last_login_at) > since
    ),
    -- Their recent events only: the account filter lets the engine skip the other accounts' parts of the table.
    ev AS (
        SELECT account_id, assumeNotNull(user_id) AS uid, action, occurred_at, ifNull(country, '') AS c, ip, key_id
        FROM auth_events
        WHERE account_id IN (SELECT account_id FROM candidates) AND user_id IS NOT NULL
          AND occurred_at >= least(toStartOfDay(since), since - toIntervalSecond({window_seconds:UInt32})) AND occurred_at <= at_
    ),
    logins AS (
        SELECT account_id, uid, c AS country, min(occurred_at) AS login_at, argMin(ip, occurred_at) AS ip
        FROM ev WHERE action = 'login.succeeded' AND occurred_at > since AND c != ''
        GROUP BY account_id, uid, country
    ),
    -- The user's countries: the daily rollup before since's day, and since's day up to each login from the events.
    known AS (
        SELECT account_id, user_id AS uid, groupUniqArrayIf(country, country != '') AS countries
        FROM user_logins_daily
        WHERE day >= toDate(since) - toIntervalDay({baseline_days:UInt32}) AND day < toDate(since) AND logins > 0
          AND (account_id, user_id) IN (SELECT account_id, uid FROM logins)
        GROUP BY account_id, uid
    ),
    live_keys AS (SELECT DISTINCT key_id FROM key_lifecycle WHERE account_id IN (SELECT account_id FROM candidates) AND mode = 'live' AND occurred_at <= at_),
    -- What the user did around the login: failures before it, sensitive actions after it, earlier logins.
    marks AS (
        SELECT account_id, uid, occurred_at,
               multiIf(action IN ('login.failed', 'mfa.failed'), 'failure',
                       action = 'login.succeeded', concat('login:', c),
                       action IN ('password.changed', 'member.invited', 'member.removed', 'member.role_changed'), action,
                       action = 'apikey.revealed' AND key_id IN (SELECT key_id FROM live_keys), action,
                       '') AS what
        FROM ev
        WHERE what != ''
        UNION ALL
        SELECT account_id, assumeNotNull(actor_id) AS uid, occurred_at, concat('key.', action) AS what FROM key_lifecycle
        WHERE account_id IN (SELECT account_id FROM candidates) AND actor_type = 'user' AND actor_id IS NOT NULL AND action IN ('created', 'rotated', 'rolled_back', 'revoked', 'reset')
          AND occurred_at > since AND occurred_at <= at_
    )
    SELECT l.account_id AS account_id, l.uid AS user_id, l.country AS country, l.ip AS ip, toString(l.login_at) AS login_at,
           countIf(m.what = 'failure' AND m.occurred_at >= l.login_at - toIntervalSecond({window_seconds:UInt32}) AND m.occurred_at < l.login_at) AS failures_before,
           groupUniqArrayIf(m.what, m.what != 'failure' AND NOT startsWith(m.what, 'login:')
               AND m.occurred_at > l.login_at AND m.occurred_at <= l.login_at + toIntervalSecond({window_seconds:UInt32})) AS sensitive,
           countIf(m.what = concat('login:', l.country) AND m.occurred_at < l.login_at) AS earlier_logins_from_there,
           any(k.countries) AS known_countries
    FROM logins AS l
    INNER JOIN known AS k ON k.account_id = l.account_id AND k.uid = l.uid
    LEFT JOIN marks AS m ON m.account_id = l.account_id AND m.uid = l.uid
    WHERE NOT has(k.countries, l.country)
    GROUP BY l.account_id, l.uid, l.country, l.ip, l.login_at
    HAVING earlier_logins_from_there = 0 AND (failures_before >= {min_failures:UInt32} OR length(sensitive) > 0)`,
  toFinding: (r: Row) => ({
    detector: 'auth.account_takeover',
    severity: 'critical',
    account_id: r.account_id,
    user_id: r.user_id,
    ip: r.ip,
    title: `${r.user_id} logged in from ${r.country}, new for them, ${Number(r.failures_before) > 0 ? `after ${r.failures_before} failures` : ''}${Number(r.failures_before) > 0 && r.sensitive.length ? ' and ' : ''}${r.sensitive.length ? `then ${[...r.sensitive].sort().join(', ')}` : ''}`,
    evidence: { country: r.country, ip: r.ip, login_at: r.login_at, failures_before: Number(r.failures_before), sensitive_actions: [...r.sensitive].sort(), known_countries: [...r.known_countries].sort() },
    dedupKey: `auth.account_takeover:${r.account_id}:${r.user_id}:${r.country}`,
  }),
  runbook: 'Call the user on a known number: if it was not them, revoke their sessions, reset the password and MFA, and revert what they did (keys revealed or changed, members).',
})
