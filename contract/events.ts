// zod mirror of ../shared/contract/*.schema.json (draft 2020-12), the normative event contract.
// Unknown extra fields are allowed (producers evolve first) and dropped on parse.
import { isIP } from 'node:net'
import { z } from 'zod'

const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/
// RFC 3339 date-time as the schemas' `occurred_at` pattern spells it.
const OCCURRED_AT = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$/
// JSON Schema's `format: date-time` (RFC 3339 §5.6), which is looser about fractions and case.
const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/
const DAYS_IN_MONTH = [0, 31, 0, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]

// toISOString's form, what producers nearly always send: checked digit by digit, without the regex's captures.
const CANONICAL_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/

/** Days of a month of the proleptic Gregorian calendar (RFC 3339's): year 0000 is a leap year, 1900 is not. */
function daysInMonth(year: number, month: number): number {
  if (month !== 2) return DAYS_IN_MONTH[month]!
  return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28
}

function twoDigits(s: string, at: number): number {
  return (s.charCodeAt(at) - 48) * 10 + s.charCodeAt(at + 1) - 48
}

/** True when the calendar fields are real (no Feb 30, hour 25, offset +24:00). */
export function isRealDateTime(s: string): boolean {
  if (s.length === 24 && CANONICAL_UTC.test(s)) {
    const year = twoDigits(s, 0) * 100 + twoDigits(s, 2)
    const month = twoDigits(s, 5)
    const day = twoDigits(s, 8)
    if (month < 1 || month > 12 || day < 1 || twoDigits(s, 11) > 23 || twoDigits(s, 14) > 59 || twoDigits(s, 17) > 60) return false
    return day <= daysInMonth(year, month)
  }
  const m = RFC3339.exec(s)
  if (!m) return false
  const [, y, mo, d, h, mi, sec, , off] = m
  const year = Number(y), month = Number(mo), day = Number(d)
  if (month < 1 || month > 12 || day < 1) return false
  if (day > daysInMonth(year, month) || Number(h) > 23 || Number(mi) > 59 || Number(sec) > 60) return false
  if (off && off.length === 6 && (Number(off.slice(1, 3)) > 23 || Number(off.slice(4, 6)) > 59)) return false
  return true
}

const uuid = z.string().regex(UUID, 'must be a UUID')
const dateTime = z.string().refine(isRealDateTime, 'must be an RFC 3339 date-time')
const occurredAt = z.string().regex(OCCURRED_AT, 'must be RFC 3339 UTC, e.g. 2026-11-22T14:03:05.123Z').refine(isRealDateTime, 'is not a real date-time')
const accountId = z.string().regex(/^acct_[A-Za-z0-9]{4,64}$/, 'must look like acct_…')
const keyId = z.string().regex(/^key_[A-Za-z0-9]{4,64}$/, 'must look like key_…')
const keyPrefix = z.string().regex(/^(sk|pk|rk)_(live|test)_[A-Za-z0-9]{4}$/, 'must look like sk_live_4eC3')
const keyKind = z.enum(['secret', 'publishable', 'restricted'])
const mode = z.enum(['live', 'test'])
const ip = z.string().max(45).refine((s) => isIP(s) !== 0, 'must be an IPv4 or IPv6 address')
const country = z.string().regex(/^[A-Z]{2}$/, 'must be an ISO 3166 alpha-2 code')
const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'must be lower-case hex SHA-256')
const memberRole = z.enum(['owner', 'admin', 'developer', 'viewer'])
const scopes = z
  .array(
    z.object({
      scope: z.string().regex(/^[a-z][a-z0-9_.-]{0,63}$/),
      access: z
        .array(z.enum(['read', 'write']))
        .min(1)
        .refine((a) => new Set(a).size === a.length, 'must not repeat an access'),
    }),
  )
  .max(64)
  .nullable()

const common = {
  event_id: uuid,
  schema_version: z.literal(1),
  occurred_at: occurredAt,
  account_id: accountId,
}

export const keyUsageSchema = z.object({
  ...common,
  type: z.literal('key.usage'),
  key_id: keyId.nullable(),
  key_prefix: keyPrefix.nullable(),
  key_kind: keyKind.nullable(),
  mode: mode.nullable(),
  request_id: z.string().min(1).max(128),
  method: z.enum(['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS']),
  endpoint: z.string().min(1).max(256),
  scope: z.string().max(64).nullable().optional(),
  status: z.number().int().min(100).max(599),
  error_code: z.string().max(64).nullable().optional(),
  ip,
  country: country.nullable().optional(),
  asn: z.number().int().min(0).max(4294967295).nullable().optional(),
  user_agent: z.string().max(1024),
  origin: z.string().max(512).nullable().optional(),
  sdk: z.string().max(128).nullable().optional(),
  client_env: z.enum(['production', 'staging', 'development', 'ci']).nullable().optional(),
  latency_ms: z.number().min(0).max(3600000),
  amount_minor: z.number().int().min(0).nullable().optional(),
  currency: z.string().regex(/^[A-Z]{3}$/, 'must be an ISO 4217 code').nullable().optional(),
})

export const keyRatelimitedSchema = z.object({
  ...common,
  type: z.literal('key.ratelimited'),
  key_id: keyId,
  key_prefix: keyPrefix,
  key_kind: keyKind,
  mode,
  request_id: z.string().min(1).max(128),
  endpoint: z.string().min(1).max(256),
  ip,
  limit: z.number().int().min(1),
  window_seconds: z.number().int().min(1).max(86400),
  observed: z.number().int().min(0),
  retry_after_seconds: z.number().int().min(0).optional(),
})

export const authEventSchema = z.object({
  ...common,
  type: z.literal('auth.event'),
  user_id: z.string().regex(/^usr_[A-Za-z0-9]{4,64}$/, 'must look like usr_…').nullable(),
  actor_email: z.string().max(320).nullable().optional(),
  action: z.enum([
    'login.succeeded',
    'login.failed',
    'mfa.challenge_sent',
    'mfa.succeeded',
    'mfa.failed',
    'password.changed',
    'password.reset_requested',
    'session.revoked',
    'member.invited',
    'member.removed',
    'member.role_changed',
    'apikey.revealed',
  ]),
  ip,
  country: country.nullable().optional(),
  user_agent: z.string().max(1024),
  session_id: z.string().max(128).nullable().optional(),
  reason: z.string().max(128).nullable().optional(),
  target_user_id: z.string().max(128).nullable().optional(),
  key_id: keyId.nullable().optional(),
  /** member.invited / member.role_changed: the role given; member.role_changed: the role before. */
  role: memberRole.nullable().optional(),
  previous_role: memberRole.nullable().optional(),
})

const lifecycleActions = ['created', 'rotated', 'rolled_back', 'reset', 'revoked', 'expired', 'scopes_changed'] as const

export const keyLifecycleSchema = z
  .object({
    ...common,
    type: z.literal('key.lifecycle'),
    key_id: keyId,
    key_prefix: keyPrefix,
    key_kind: keyKind,
    mode,
    action: z.enum(lifecycleActions),
    actor: z.object({
      type: z.enum(['user', 'system', 'monitor']),
      id: z.string().max(128).nullable(),
      // The acting member's role at that moment, and whether they passed an OTP step-up (user actors only).
      role: memberRole.nullable().optional(),
      step_up: z.enum(['otp', 'none']).nullable().optional(),
    }),
    label: z.string().max(200).nullable().optional(),
    scopes: scopes.optional(),
    expires_at: dateTime.nullable().optional(),
    auto_generated: z.boolean().optional(),
    secret_sha256: sha256Hex.optional(),
    replacement_key_id: keyId.optional(),
    old_key_expires_at: dateTime.optional(),
    reason: z.string().max(500).nullable().optional(),
  })
  .superRefine((e, ctx) => {
    // The schema's allOf/if/then: each action's own required fields (present; null allowed where the type allows).
    const required: Record<(typeof lifecycleActions)[number], string[]> = {
      created: ['label', 'scopes', 'expires_at', 'auto_generated'],
      rotated: ['replacement_key_id', 'old_key_expires_at'],
      rolled_back: ['replacement_key_id'],
      reset: ['secret_sha256'],
      revoked: [],
      expired: [],
      scopes_changed: ['scopes'],
    }
    for (const field of required[e.action]) {
      if ((e as Record<string, unknown>)[field] === undefined) {
        ctx.addIssue({ code: 'custom', path: [field], message: `is required when action is ${e.action}` })
      }
    }
  })

export const leakReportedSchema = z
  .object({
    ...common,
    type: z.literal('leak.reported'),
    token: z.string().min(8).max(512).optional(),
    token_sha256: sha256Hex.optional(),
    token_type: z.string().max(128).optional(),
    source: z.string().max(64),
    url: z.string().max(2048).nullable().optional(),
    /** When the secret first became public, if the reporter knows: the exposure window starts here. */
    exposed_since: dateTime.nullable().optional(),
  })
  .superRefine((e, ctx) => {
    // oneOf: exactly one of token / token_sha256.
    if ((e.token === undefined) === (e.token_sha256 === undefined)) {
      ctx.addIssue({ code: 'custom', path: ['token'], message: 'exactly one of token or token_sha256 is required' })
    }
  })

export const keyCommandSchema = z.object({
  ...common,
  type: z.literal('key.command'),
  command_id: uuid,
  command: z.enum(['revoke', 'reset']),
  key_id: keyId,
  reason: z.string().max(500),
  finding_id: z.string().max(128).nullable().optional(),
  requested_by: z.string().max(128),
})

export type KeyUsage = z.infer<typeof keyUsageSchema>
export type KeyRatelimited = z.infer<typeof keyRatelimitedSchema>
export type AuthEvent = z.infer<typeof authEventSchema>
export type KeyLifecycle = z.infer<typeof keyLifecycleSchema>
export type LeakReported = z.infer<typeof leakReportedSchema>
export type KeyCommand = z.infer<typeof keyCommandSchema>

/** The five event types the platform publishes to keywatch. */
export const inboundSchemas = {
  'key.usage': keyUsageSchema,
  'key.ratelimited': keyRatelimitedSchema,
  'auth.event': authEventSchema,
  'key.lifecycle': keyLifecycleSchema,
  'leak.reported': leakReportedSchema,
} as const

export type InboundType = keyof typeof inboundSchemas
export type InboundEvent = KeyUsage | KeyRatelimited | AuthEvent | KeyLifecycle | LeakReported

export const MAX_MESSAGE_BYTES = 64 * 1024
export const MAX_FUTURE_SKEW_MS = 5 * 60 * 1000
