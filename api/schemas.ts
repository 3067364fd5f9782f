// The API's request schemas in one place: zod validates them, types the handlers and becomes the OpenAPI document.
import { z } from 'zod'

export const keyId = z.string().regex(/^key_[A-Za-z0-9]{4,64}$/, 'must be a key id (key_…)')
export const accountId = z.string().regex(/^acct_[A-Za-z0-9]{4,64}$/, 'must be an account id (acct_…)')
export const instant = z.iso.datetime({ offset: true, message: 'must be an RFC 3339 date-time, e.g. 2026-11-24T10:00:00Z' })
export const reason = z.string().trim().min(1, 'is required: say why').max(500)
export const limit = (max = 10_000, fallback = 1000) => z.coerce.number().int().min(1).max(max).default(fallback)
export const flag = z.enum(['true', 'false']).transform((v) => v === 'true')

export const keyParams = z.strictObject({ id: keyId })
export const findingParams = z.strictObject({ id: z.string().regex(/^fnd_[a-f0-9]{24}$/, 'must be a finding id (fnd_…)') })
export const actionParams = z.strictObject({ id: z.string().regex(/^act_[a-f0-9]{24}$/, 'must be an action id (act_…)') })

export const errorBody = z.object({ error: z.object({ code: z.string(), message: z.string() }) })

export const ACTION_STATUSES = ['dry_run', 'paused', 'blocked', 'skipped', 'refused', 'requested', 'confirmed', 'failed', 'not_effective', 'awaiting_approval', 'rejected', 'expired'] as const
export const FINDING_STATUSES = ['open', 'acknowledged', 'resolved', 'suppressed'] as const
export { SEVERITIES } from '../core/severity.ts'
