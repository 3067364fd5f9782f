// Button clicks on alerts: POST /v1/slack/interactions, verified with Slack's signing secret (HMAC-SHA256 over
// "v0:<timestamp>:<raw body>", 5-minute replay window, constant-time compare). Only Slack users mapped to a keywatch
// role that may respond can act; every click, allowed or not, lands in the audit trail.
import { createHmac, timingSafeEqual } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { z } from 'zod'
import { ApiError } from '../api/errors.ts'
import { GRANTS, ROLES, type Role } from '../core/roles.ts'
import type { AuditLog } from '../audit/audit-log.ts'
import type { Finding, FindingStore } from '../detectors/findings.ts'

export interface InteractionDeps {
  signingSecret: string
  /** Slack user id -> keywatch role. */
  userRoles: Record<string, Role>
  findings: FindingStore
  audit: AuditLog
  /** Revokes (or, for an auto-generated key, resets) the finding's key; resolves with what happened. */
  revoke: (finding: Finding, actor: string) => Promise<{ status: string; detail: string }>
  /** Approves or rejects an automatic action awaiting approval (the response engine's decideApproval). */
  decideApproval?: (actionId: string, decision: 'approve' | 'reject', actor: string) => Promise<{ status: string; detail: string; account_id: string; key_prefix: string }>
  now?: () => number
}

const payloadSchema = z.object({
  type: z.literal('block_actions'),
  user: z.object({ id: z.string().min(1) }),
  actions: z
    .array(
      z.union([
        z.object({ action_id: z.enum(['acknowledge', 'snooze', 'revoke']), value: z.string().regex(/^fnd_[a-f0-9]{24}$/) }),
        z.object({ action_id: z.enum(['approve', 'reject']), value: z.string().regex(/^act_[a-f0-9]{24}$/) }),
      ]),
    )
    .min(1),
})

export const userRolesSchema = z.record(z.string().regex(/^[UW][A-Z0-9]{2,20}$/, 'must be a Slack user id'), z.enum(ROLES))

export function verifySlackSignature(secret: string, timestamp: string | undefined, signature: string | undefined, rawBody: Buffer, nowMs: number): string | undefined {
  if (!timestamp || !signature) return 'X-Slack-Request-Timestamp and X-Slack-Signature are required'
  if (!/^\d+$/.test(timestamp) || Math.abs(nowMs / 1000 - Number(timestamp)) > 300) return 'the request is older than 5 minutes (or from the future): replays are refused'
  const expected = Buffer.from(`v0=${createHmac('sha256', secret).update(`v0:${timestamp}:`).update(rawBody).digest('hex')}`)
  const given = Buffer.from(signature)
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return 'the signature does not match'
  return undefined
}

export async function slackInteractionRoutes(app: FastifyInstance, deps: InteractionDeps): Promise<void> {
  // Raw bytes in this scope, whatever the Content-Type says: the signature is over the exact body, and a body that
  // is not Slack's form is refused after the signature, never parsed before it.
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => done(null, body))

  app.post('/v1/slack/interactions', { schema: { tags: ['alerts'], summary: 'Slack button clicks (signed by Slack)', security: [] } }, async (request, reply) => {
    const raw = Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0)
    const problem = verifySlackSignature(deps.signingSecret, request.headers['x-slack-request-timestamp'] as string | undefined, request.headers['x-slack-signature'] as string | undefined, raw, (deps.now ?? Date.now)())
    if (problem) throw new ApiError(401, 'bad_signature', problem)

    const parsed = payloadSchema.safeParse(safeJson(new URLSearchParams(raw.toString('utf8')).get('payload')))
    if (!parsed.success) throw new ApiError(400, 'invalid_input', `payload: ${parsed.error.issues[0]!.path.join('.')} ${parsed.error.issues[0]!.message}`)
    const { user, actions } = parsed.data
    const { action_id, value: findingId } = actions[0]!
    const actor = `slack:${user.id}`
    const audit = (outcome: 'ok' | 'denied' | 'refused' | 'failed', detail: Record<string, unknown> = {}) =>
      deps.audit.record({ actor, action: `slack.${action_id}`, target: findingId, request_id: String(request.id), outcome, detail: { ip: request.ip, ...detail } })

    const role = deps.userRoles[user.id]
    if (!role || !GRANTS[role].includes('respond')) {
      await audit('denied', { role: role ?? null })
      return reply.send({ response_type: 'ephemeral', replace_original: false, text: 'You are not mapped to a keywatch role that may act on alerts. Ask a keywatch admin.' })
    }
    if (action_id === 'approve' || action_id === 'reject') {
      // The value is an action id here. Decided before answering (one engine call, no key service wait for a reject;
      // an approve answers once the command went out): Slack is told the outcome, or why not.
      if (!deps.decideApproval) {
        await audit('refused', { reason: 'approvals are not available here' })
        return reply.send({ response_type: 'ephemeral', replace_original: false, text: 'Approvals are not available on this keywatch.' })
      }
      try {
        const r = await deps.decideApproval(findingId, action_id, actor)
        await audit(r.status === 'failed' ? 'failed' : 'ok', { account_id: r.account_id, key_prefix: r.key_prefix, status: r.status, detail: r.detail })
        return reply.send({ response_type: 'ephemeral', replace_original: false, text: `${action_id === 'approve' ? 'Approved' : 'Rejected'}: action ${findingId} is ${r.status}.` })
      } catch (err) {
        const e = err as Error & { status?: number }
        await audit(e.status && e.status < 500 ? 'refused' : 'failed', { error: e.message })
        return reply.send({ response_type: 'ephemeral', replace_original: false, text: `Not done: ${e.message}` })
      }
    }
    const [finding] = await deps.findings.list({ finding_id: findingId, limit: 1 })
    if (!finding) {
      await audit('refused', { reason: 'no such finding' })
      return reply.send({ response_type: 'ephemeral', replace_original: false, text: `No finding ${findingId}.` })
    }
    if (action_id === 'acknowledge') {
      await deps.findings.setStatus(findingId, 'acknowledged', actor, 'acknowledged in Slack')
      await audit('ok', { account_id: finding.account_id })
      return reply.send({ response_type: 'ephemeral', replace_original: false, text: `Acknowledged: ${finding.title}` })
    }
    if (action_id === 'snooze') {
      const until = new Date((deps.now ?? Date.now)() + 24 * 3_600_000).toISOString()
      await deps.findings.suppress({ detector: finding.detector, account_id: finding.account_id, key_id: finding.key_id, user_id: finding.user_id, ip: finding.ip, reason: 'snoozed 24 h in Slack', author: actor, expires_at: until })
      await deps.findings.setStatus(findingId, 'suppressed', actor, `snoozed in Slack until ${until}`)
      await audit('ok', { account_id: finding.account_id, until })
      return reply.send({ response_type: 'ephemeral', replace_original: false, text: `Snoozed for 24 h: ${finding.title}` })
    }
    // Revoke: answered at once (Slack wants 200 within 3 s); the message is updated when the key service confirms.
    void deps
      .revoke(finding, actor)
      .then((r) => audit(r.status === 'failed' || r.status === 'refused' ? 'failed' : 'ok', { account_id: finding.account_id, status: r.status, detail: r.detail }))
      .catch((err: Error & { status?: number }) => audit(err.status && err.status < 500 ? 'refused' : 'failed', { account_id: finding.account_id, error: err.message }))
    return reply.send({ response_type: 'ephemeral', replace_original: false, text: `Revoking ${String(finding.evidence.key_prefix ?? finding.key_id)}…` })
  })
}

function safeJson(s: string | null): unknown {
  try {
    return s === null ? undefined : JSON.parse(s)
  } catch {
    return undefined
  }
}
