// A rotation whose grace period is longer than the contract's 7 days: the old secret stays valid longer than policy.
import { defineDetector } from './detector.ts'

interface Row {
  account_id: string
  key_id: string
  key_prefix: string
  rotated_at: string
  deadline: string
  grace_seconds: number
}

export default defineDetector({
  id: 'key.rotation_grace_too_long',
  title: 'Rotation grace period longer than 7 days',
  severity: 'low',
  schedule: '0 * * * *',
  lookback: 'the key inventory',
  params: { max_grace_seconds: 7 * 86_400 },
  query: `
    SELECT account_id, key_id, key_prefix, toString(rotated_at) AS rotated_at, toString(rotation_grace_deadline) AS deadline,
           rotation_grace_seconds AS grace_seconds
    FROM key_inventory_at(at = {at:DateTime64(3, 'UTC')})
    WHERE status = 'rotating' AND rotation_grace_seconds > {max_grace_seconds:UInt32}`,
  toFinding: (r: Row, p) => ({
    detector: 'key.rotation_grace_too_long',
    severity: 'low',
    account_id: r.account_id,
    key_id: r.key_id,
    title: `${r.key_prefix} stays valid ${Math.round(Number(r.grace_seconds) / 86_400)} days after its rotation (policy: ${p.max_grace_seconds / 86_400})`,
    evidence: { rotated_at: r.rotated_at, deadline: r.deadline, grace_days: Math.round((Number(r.grace_seconds) / 86_400) * 10) / 10 },
    dedupKey: `key.rotation_grace_too_long:${r.account_id}:${r.key_id}`,
  }),
  runbook: 'Move the callers to the new key and expire the old one early; a grace period is a few days, not weeks.',
})
