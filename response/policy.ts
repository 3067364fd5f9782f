// Response policies: which findings make keywatch act on a key by itself, and the guard rails around that.
// Read once at startup from RESPONSE_POLICY_FILE (JSON); without one, the defaults below apply.
import { readFileSync } from 'node:fs'
import { z } from 'zod'
import { SEVERITIES } from '../core/severity.ts'

const severity = z.enum(SEVERITIES)

const ruleSchema = z.strictObject({
  name: z.string().regex(/^[a-z0-9][a-z0-9_.-]{0,63}$/, 'must be a short lower-case name'),
  /** Detector ids; empty: every detector. */
  detectors: z.array(z.string().min(1)).default([]),
  severities: z.array(severity).default([]),
  /** secret | publishable | restricted; empty: every kind. */
  key_kinds: z.array(z.enum(['secret', 'publishable', 'restricted'])).default([]),
  modes: z.array(z.enum(['live', 'test'])).default([]),
  /** revoke (an auto-generated key, which cannot be revoked, is reset instead), reset, or alert only. */
  action: z.enum(['revoke', 'reset', 'alert']),
  /** Ask a person (responder or admin) to approve the action before it goes out: two-person control. */
  approve: z.boolean().default(false),
})

export const policySchema = z.strictObject({
  /** enforce: act; dry_run: decide and record, send nothing; off: decide nothing (the kill switch can also pause at runtime). */
  mode: z.enum(['enforce', 'dry_run', 'off']).default('enforce'),
  // Secret and restricted keys found in public are revoked (reset when auto-generated); a publishable key is public
  // by design: revoking it breaks the merchant's checkout, so it is alert only.
  rules: z.array(ruleSchema).default([
    { name: 'revoke-leaked-keys', detectors: ['leak.public_report'], severities: [], key_kinds: ['secret', 'restricted'], modes: [], action: 'revoke', approve: false },
    { name: 'alert-leaked-publishable-keys', detectors: ['leak.public_report'], severities: [], key_kinds: ['publishable'], modes: [], action: 'alert', approve: false },
  ]),
  guard_rails: z.strictObject({
    /** Automatic revocations and resets per account per rolling hour; past that keywatch stops acting there. */
    max_per_account_per_hour: z.number().int().nonnegative().default(3),
    /** Automatic revocations and resets across all accounts per rolling hour. */
    max_per_hour: z.number().int().nonnegative().default(20),
  }).prefault({}),
  manual: z.strictObject({
    /** A manual revoke of a key used this recently is refused unless marked as an incident or forced. */
    recent_use_minutes: z.number().int().nonnegative().default(15),
  }).prefault({}),
  approvals: z.strictObject({
    /** A pending approval is alerted again this often until someone decides. */
    realert_minutes: z.number().int().positive().default(15),
    /** A pending approval nobody decided on expires (status `expired`, alerted) after this long. */
    expire_after_minutes: z.number().int().positive().default(240),
  }).prefault({}),
  /** The exposure report looks back this far before the first leak report when nothing earlier says when exposure began. */
  exposure_lookback_days: z.number().int().positive().default(30),
  /** Platform caches may accept a revoked key for up to 5 minutes; an accepted request later than this proves the revocation did not bite. */
  cache_grace_seconds: z.number().int().nonnegative().default(300),
})

export type Policy = z.infer<typeof policySchema>
export type PolicyRule = z.infer<typeof ruleSchema>

export const DEFAULT_POLICY: Policy = policySchema.parse({})

/** Parses a policy document; problems name their path, e.g. `rules.0.action: Invalid option`. */
export function parsePolicy(doc: unknown): { policy: Policy } | { problems: string[] } {
  const parsed = policySchema.safeParse(doc)
  if (parsed.success) return { policy: parsed.data }
  return { problems: parsed.error.issues.map((i) => `${i.path.join('.') || '(document)'}: ${i.message}`) }
}

export function readPolicyFile(path: string): { policy: Policy } | { problems: string[] } {
  let doc: unknown
  try {
    doc = JSON.parse(readFileSync(path, 'utf8'))
  } catch (err) {
    return { problems: [`cannot read a JSON policy: ${(err as Error).message.slice(0, 200)}`] }
  }
  return parsePolicy(doc)
}

export interface Subject {
  detector: string
  severity: string
  key_kind: string
  mode: string
}

/** The first rule that matches, in file order. */
export function matchRule(policy: Policy, s: Subject): PolicyRule | undefined {
  return policy.rules.find(
    (r) =>
      (r.detectors.length === 0 || r.detectors.includes(s.detector)) &&
      (r.severities.length === 0 || (r.severities as string[]).includes(s.severity)) &&
      (r.key_kinds.length === 0 || (r.key_kinds as string[]).includes(s.key_kind)) &&
      (r.modes.length === 0 || (r.modes as string[]).includes(s.mode)),
  )
}
