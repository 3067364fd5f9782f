// A burst of 429s on a key that is usually quiet: a stolen key being hammered, or a runaway client.
import { defineDetector } from './detector.ts'

interface Row {
  account_id: string
  key_id: string
  recent: number
  baseline_total: number
  baseline_per_window: number
  ips: number
}

export default defineDetector({
  id: 'abuse.ratelimit_spike',
  title: '429 storm on a normally quiet key',
  severity: 'high',
  schedule: '* * * * *',
  lookback: '15 minutes against the 7 days before, from 5-minute rollups',
  params: { window_seconds: 900, baseline_seconds: 7 * 86_400, min_429s: 50, min_ratio: 10 },
  // A key that always runs at its limit has a high baseline and does not fire.
  query: `
    WITH toStartOfFiveMinutes({at:DateTime64(3, 'UTC')}) AS now_bucket,
         now_bucket - toIntervalSecond({window_seconds:UInt32}) AS window_start,
         window_start - toIntervalSecond({baseline_seconds:UInt32}) AS baseline_start
    SELECT account_id, key_id,
           sumIf(events, bucket >= window_start) AS recent,
           sumIf(events, bucket < window_start) AS baseline_total,
           baseline_total / ({baseline_seconds:UInt32} / {window_seconds:UInt32}) AS baseline_per_window,
           uniqMergeIf(ips, bucket >= window_start) AS ips
    FROM key_ratelimits_5m
    WHERE bucket >= baseline_start AND bucket <= now_bucket
    GROUP BY account_id, key_id
    HAVING recent >= {min_429s:UInt32} AND recent >= {min_ratio:UInt32} * baseline_per_window`,
  toFinding: (r: Row, p) => ({
    detector: 'abuse.ratelimit_spike',
    severity: 'high',
    account_id: r.account_id,
    key_id: r.key_id,
    title: `${r.recent} rate-limited requests in ${p.window_seconds / 60} min (usual: ${Number(r.baseline_per_window).toFixed(1)})`,
    evidence: {
      recent_429s: Number(r.recent),
      baseline_per_window: Number(Number(r.baseline_per_window).toFixed(2)),
      baseline_429s: Number(r.baseline_total),
      distinct_ips: Number(r.ips),
      window_minutes: p.window_seconds / 60,
    },
    dedupKey: `abuse.ratelimit_spike:${r.account_id}:${r.key_id}`,
  }),
  runbook: 'Check the key’s traffic by IP: unknown IPs mean a stolen key (revoke it); a known client means a runaway job (throttle it).',
})
