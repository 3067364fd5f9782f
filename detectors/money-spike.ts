// A key moving ten times the money it usually moves in an hour: a stolen key cashing out, or a bug paying out.
// A key that is always busy, or an ordinary busy hour, does not reach the bar. Reads the usage rollups only.
import { defineDetector } from './detector.ts'

interface Row {
  account_id: string
  key_id: string
  currency: string
  recent_minor: number
  baseline_minor: number
  hourly_average_minor: number
  baseline_requests: number
}

export default defineDetector({
  id: 'key.money_spike',
  title: 'Money moved far above the key’s usual',
  severity: 'high',
  schedule: '*/5 * * * *',
  lookback: 'the last hour against the 7 days before, from the hourly and daily usage rollups',
  // floor_minor: in minor units of any currency (50,000 = 500.00); the ratio is per currency.
  params: { baseline_days: 7, min_ratio: 10, floor_minor: 50_000 },
  // "The last hour" is the hour bucket before the current one and the current one (up to two hours of money).
  query: `
    WITH {at:DateTime64(3, 'UTC')} AS at_,
    recent AS (
        SELECT account_id, key_id, currency, sum(minor) AS recent_minor
        FROM (
            SELECT account_id, key_id, amount_minor
            FROM key_usage_hourly
            WHERE hour >= toStartOfHour(at_ - toIntervalHour(1)) AND hour <= at_ AND mode = 'live'
        )
        ARRAY JOIN mapKeys(amount_minor) AS currency, mapValues(amount_minor) AS minor
        GROUP BY account_id, key_id, currency
        HAVING recent_minor >= {floor_minor:UInt32}
    ),
    baseline AS (
        SELECT account_id, key_id, sum(requests) AS requests, sumMap(amount_minor) AS money
        FROM key_usage_daily
        WHERE day >= toDate(at_) - toIntervalDay({baseline_days:UInt32}) AND day < toDate(at_)
          AND (account_id, key_id) IN (SELECT account_id, key_id FROM recent)
        GROUP BY account_id, key_id
    )
    SELECT r.account_id AS account_id, r.key_id AS key_id, r.currency AS currency, r.recent_minor AS recent_minor,
           b.money[r.currency] AS baseline_minor, baseline_minor / ({baseline_days:UInt32} * 24) AS hourly_average_minor,
           b.requests AS baseline_requests
    FROM recent AS r
    INNER JOIN baseline AS b ON b.account_id = r.account_id AND b.key_id = r.key_id
    WHERE b.requests > 0 AND r.recent_minor >= {min_ratio:UInt32} * hourly_average_minor`,
  toFinding: (r: Row) => {
    const avg = Number(r.hourly_average_minor)
    const ratio = avg > 0 ? Math.round(Number(r.recent_minor) / avg) : null
    return {
      detector: 'key.money_spike',
      severity: 'high',
      account_id: r.account_id,
      key_id: r.key_id,
      title: `${r.key_id} moved ${Number(r.recent_minor) / 100} ${r.currency} in the last hour (${ratio === null ? 'none moved in the 7 days before' : `${ratio}× its hourly average`})`,
      evidence: {
        currency: r.currency,
        recent_minor: Number(r.recent_minor),
        hourly_average_minor: Math.round(avg),
        ratio,
        baseline_minor: Number(r.baseline_minor),
        baseline_requests: Number(r.baseline_requests),
      },
      dedupKey: `key.money_spike:${r.account_id}:${r.key_id}:${r.currency}`,
    }
  },
  runbook: 'Check the payouts and charges the key made in the last hour with the merchant; if they do not recognise them, reset the key and hold the payouts.',
})
