// Where alerts go: routes by severity, detector and account to Slack channels and mail recipients, and who gets
// which account's digest. Read once at startup from ALERT_ROUTES_FILE (JSON); a wrong field stops startup naming it.
import { readFileSync } from 'node:fs'
import { z } from 'zod'
import type { Finding } from '../detectors/findings.ts'
import { SEVERITIES } from '../core/severity.ts'

const severity = z.enum(SEVERITIES)
const email = z.string().regex(/^[^\s@]+@[^\s@]+$/, 'must be a mail address')

const routeSchema = z.strictObject({
  severities: z.array(severity).default([]),
  detectors: z.array(z.string().min(1)).default([]),
  accounts: z.array(z.string().min(1)).default([]),
  slack: z.string().min(1).optional().describe('a channel name or id'),
  email: z.array(email).default([]),
})

/** Lifecycle changes of live keys an owner is told about (seed 004). */
export const KEY_CHANGES = ['rotated', 'rolled_back', 'revoked', 'reset', 'scopes_changed', 'expired'] as const

const keyChangesSchema = z.strictObject({
  /** An account id, or * for every account. */
  account: z.string().min(1),
  changes: z.array(z.enum(KEY_CHANGES)).default([...KEY_CHANGES]),
  slack: z.string().min(1).optional().describe('a channel name or id'),
  email: z.array(email).default([]),
})

export const routesSchema = z.strictObject({
  routes: z.array(routeSchema).default([]),
  /** Subscriptions to lifecycle changes of live keys, per account, by Slack and mail. */
  key_changes: z.array(keyChangesSchema).optional(),
  digests: z
    .array(z.strictObject({ account: z.string().min(1).describe("an account id, or * for each account"), email: z.array(email).min(1), every: z.enum(['daily', 'weekly']).default('weekly') }))
    .default([]),
})

export type Routes = z.infer<typeof routesSchema>
export type Route = z.infer<typeof routeSchema>

export function readRoutes(path: string): { routes: Routes } | { problems: string[] } {
  let doc: unknown
  try {
    doc = JSON.parse(readFileSync(path, 'utf8'))
  } catch (err) {
    return { problems: [`cannot read a JSON routes file: ${(err as Error).message.slice(0, 200)}`] }
  }
  const parsed = routesSchema.safeParse(doc)
  if (parsed.success) return { routes: parsed.data }
  return { problems: parsed.error.issues.map((i) => `${i.path.join('.') || '(document)'}: ${i.message}`) }
}

/** Without a routes file: critical and high findings to the default Slack channel and mail recipients, if any. */
export function defaultRoutes(slackChannel?: string, mailTo: string[] = []): Routes {
  return { routes: [{ severities: ['critical', 'high'], detectors: [], accounts: [], slack: slackChannel, email: mailTo }], digests: [] }
}

export interface Destination {
  channel: 'slack' | 'email' | 'log'
  destination: string
}

/** Every destination a finding goes to (each once); none configured anywhere: the log, so nothing is dropped. */
export function destinationsFor(routes: Routes, finding: Finding, delivery: { slack: boolean; email: boolean }): Destination[] {
  const out = new Map<string, Destination>()
  for (const r of routes.routes) {
    const matches =
      (r.severities.length === 0 || (r.severities as string[]).includes(finding.severity)) &&
      (r.detectors.length === 0 || r.detectors.includes(finding.detector)) &&
      (r.accounts.length === 0 || r.accounts.includes(finding.account_id))
    if (!matches) continue
    if (r.slack && delivery.slack) out.set(`slack:${r.slack}`, { channel: 'slack', destination: r.slack })
    // One mail per finding per recipient list of a route.
    if (r.email.length && delivery.email && finding.severity === 'critical') out.set(`email:${r.email.join(',')}`, { channel: 'email', destination: r.email.join(',') })
    if ((r.slack && !delivery.slack) || (r.email.length && !delivery.email && finding.severity === 'critical') || (!r.slack && !r.email.length)) out.set('log:alerts', { channel: 'log', destination: 'alerts' })
  }
  return [...out.values()]
}
