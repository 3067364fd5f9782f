// One key used from more than one declared environment (seed 001: one key per environment, never shared between
// local development, staging and production). Undeclared environments do not count. Reads the daily network rollup.
import { defineDetector } from './detector.ts'

interface Row {
  account_id: string
  key_id: string
  envs: [string, number | string, string][]
}

export default defineDetector({
  id: 'key.env_reuse',
  title: 'Key shared between environments',
  severity: 'medium',
  schedule: '0 * * * *',
  lookback: '7 days of the daily network rollup',
  params: { window_days: 7 },
  query: `
    SELECT account_id, key_id, groupArray(tuple(client_env, requests, toString(last_seen))) AS envs
    FROM (
        SELECT account_id, key_id, client_env, sum(requests) AS requests, max(last_seen_at) AS last_seen
        FROM key_networks_daily
        WHERE day > toDate({at:DateTime64(3, 'UTC')}) - toIntervalDay({window_days:UInt32}) AND day <= toDate({at:DateTime64(3, 'UTC')})
          AND client_env != ''
        GROUP BY account_id, key_id, client_env
    )
    GROUP BY account_id, key_id
    HAVING length(envs) > 1`,
  toFinding: (r: Row, p) => {
    const envs = r.envs.map(([env, requests, last]) => ({ env, requests: Number(requests), last_seen: last })).sort((a, b) => a.env.localeCompare(b.env))
    return {
      detector: 'key.env_reuse',
      severity: 'medium',
      account_id: r.account_id,
      key_id: r.key_id,
      title: `${r.key_id} used from ${envs.map((e) => e.env).join(' and ')} within ${p.window_days} days`,
      evidence: { environments: envs.map((e) => e.env), by_environment: envs },
      dedupKey: `key.env_reuse:${r.account_id}:${r.key_id}`,
    }
  },
  runbook: 'Give each environment its own key (test keys outside production), deploy them, then reset this one: its secret has been in a less protected place.',
})
