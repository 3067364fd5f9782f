import { defineDetector } from './detector.ts'
import { ROTATION_QUERY, type RotationRow } from './rotation.ts'

export default defineDetector({
  id: 'key.rotation_overdue',
  title: 'Key rotation overdue',
  severity: 'medium',
  schedule: '0 * * * *',
  lookback: 'the key inventory',
  // until_days: no upper bound in practice (100 years).
  params: { from_days: 90, until_days: 36_500 },
  query: ROTATION_QUERY,
  toFinding: (r: RotationRow) => ({
    detector: 'key.rotation_overdue',
    severity: 'medium',
    account_id: r.account_id,
    key_id: r.key_id,
    title: `${r.key_prefix} secret is ${r.age_days} days old (policy: 90)`,
    evidence: { age_days: Number(r.age_days), secret_set_at: r.secret_set, key_kind: r.key_kind },
    dedupKey: `key.rotation_overdue:${r.account_id}:${r.key_id}`,
  }),
  runbook: 'Roll the key with a grace period, deploy the new secret, and let the old one expire.',
})
