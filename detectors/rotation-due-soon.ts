import { defineDetector } from './detector.ts'
import { ROTATION_QUERY, type RotationRow } from './rotation.ts'

export default defineDetector({
  id: 'key.rotation_due_soon',
  title: 'Key rotation due soon',
  severity: 'info',
  schedule: '0 * * * *',
  lookback: 'the key inventory',
  params: { from_days: 75, until_days: 90 },
  query: ROTATION_QUERY,
  toFinding: (r: RotationRow, p) => ({
    detector: 'key.rotation_due_soon',
    severity: 'info',
    account_id: r.account_id,
    key_id: r.key_id,
    title: `${r.key_prefix} is due for rotation in ${p.until_days - Number(r.age_days)} days`,
    evidence: { age_days: Number(r.age_days), secret_set_at: r.secret_set, due_in_days: p.until_days - Number(r.age_days) },
    dedupKey: `key.rotation_due_soon:${r.account_id}:${r.key_id}`,
  }),
  runbook: 'Plan the rotation: roll the key with a grace period before day 90.',
})
