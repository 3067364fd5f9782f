// A live key rotated, rolled back, revoked, reset, re-scoped or created by a member without an OTP step-up, or by
// a member who is not an owner (seed 004: owners rotate and roll back, with an OTP). The platform's actor.role and
// actor.step_up are optional: when it sends neither, there is nothing to judge and no finding.
import { defineDetector } from './detector.ts'

interface Row {
  account_id: string
  key_id: string
  key_prefix: string
  action: string
  actor_id: string
  role: string | null
  step_up: string | null
  changed_at: string
}

export default defineDetector({
  id: 'key.sensitive_change_without_step_up',
  title: 'Sensitive key change without owner step-up',
  severity: 'medium',
  schedule: '* * * * *',
  lookback: '1 day of lifecycle events',
  params: { lookback_seconds: 86_400 },
  // A rotation's new key has its own created event: the rotation is the change, its created event is not a second one.
  query: `
    WITH {at:DateTime64(3, 'UTC')} AS at_, at_ - toIntervalSecond({lookback_seconds:UInt32}) AS since
    SELECT account_id, key_id, key_prefix, action, assumeNotNull(actor_id) AS actor_id, actor_role AS role, actor_step_up AS step_up,
           toString(occurred_at) AS changed_at
    FROM key_lifecycle
    WHERE occurred_at > since AND occurred_at <= at_ AND mode = 'live' AND actor_type = 'user' AND actor_id IS NOT NULL
      AND action IN ('created', 'rotated', 'rolled_back', 'revoked', 'reset', 'scopes_changed')
      AND (actor_step_up = 'none' OR (actor_role IS NOT NULL AND actor_role != 'owner'))
      AND NOT (action = 'created' AND (account_id, key_id) IN (
          SELECT account_id, assumeNotNull(replacement_key_id) FROM key_lifecycle
          WHERE action = 'rotated' AND replacement_key_id IS NOT NULL AND occurred_at > since - toIntervalHour(1) AND occurred_at <= at_))`,
  toFinding: (r: Row) => {
    const why = [r.role && r.role !== 'owner' ? `a ${r.role}` : null, r.step_up === 'none' ? 'without an OTP step-up' : null].filter(Boolean).join(', ')
    return {
      detector: 'key.sensitive_change_without_step_up',
      severity: 'medium',
      account_id: r.account_id,
      key_id: r.key_id,
      user_id: r.actor_id,
      title: `${r.key_prefix} ${r.action.replace('_', ' ')} by ${r.actor_id} (${why})`,
      evidence: { action: r.action, actor_id: r.actor_id, role: r.role, step_up: r.step_up, occurred_at: r.changed_at },
      dedupKey: `key.sensitive_change_without_step_up:${r.account_id}:${r.key_id}:${r.action}:${r.changed_at}`,
    }
  },
  runbook: 'Confirm the change with the member and an owner; if nobody asked for it, treat the member’s session as compromised and undo the change.',
})
