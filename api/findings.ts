// Findings: list and read, and what a responder does with one (acknowledge, resolve, suppress with an expiry).
import type { FastifyInstance } from 'fastify'
import type { ZodTypeProvider } from 'fastify-type-provider-zod'
import { z } from 'zod'
import { type FindingStatus, type FindingStore } from '../detectors/findings.ts'
import { principalOf } from './auth.ts'
import { ApiError } from './errors.ts'
import { FINDING_STATUSES, findingParams, instant, limit, reason, SEVERITIES } from './schemas.ts'

export async function findingRoutes(app: FastifyInstance, deps: { findings: FindingStore }): Promise<void> {
  const r = app.withTypeProvider<ZodTypeProvider>()

  r.get(
    '/v1/findings',
    {
      config: { permission: 'read' },
      schema: {
        tags: ['findings'],
        summary: 'Findings, most recently seen first',
        querystring: z.strictObject({
          status: z.enum(FINDING_STATUSES).optional(),
          severity: z.enum(SEVERITIES).optional(),
          detector: z.string().regex(/^[a-z_.]{1,64}$/, 'must be a detector id').optional(),
          account: z.string().max(128).optional(),
          key: z.string().max(128).optional(),
          limit: limit(),
        }),
      },
    },
    async (request) => {
      const q = request.query
      return { findings: await deps.findings.list({ status: q.status, detector: q.detector, account_id: q.account, key_id: q.key, severity: q.severity, limit: q.limit }) }
    },
  )

  r.get('/v1/findings/:id', { config: { permission: 'read' }, schema: { tags: ['findings'], summary: 'A finding and its status history', params: findingParams } }, async (request) => {
    const [finding] = await deps.findings.list({ limit: 1, finding_id: request.params.id })
    if (!finding) throw new ApiError(404, 'not_found', `no finding ${request.params.id}`)
    return { finding, changes: await deps.findings.changes(finding.finding_id) }
  })

  for (const [verb, status] of [['acknowledge', 'acknowledged'], ['resolve', 'resolved'], ['reopen', 'open']] as const) {
    r.post(
      `/v1/findings/:id/${verb}`,
      { config: { permission: 'respond', audit: `finding.${verb}` }, schema: { tags: ['findings'], summary: `${verb[0]!.toUpperCase()}${verb.slice(1)} a finding`, params: findingParams, body: z.strictObject({ reason }) } },
      async (request) => {
        request.auditDetail = { reason: request.body.reason }
        return { finding: await setStatus(deps.findings, request.params.id, status, principalOf(request).actor, request.body.reason) }
      },
    )
  }

  r.post(
    '/v1/findings/:id/suppress',
    {
      config: { permission: 'respond', audit: 'finding.suppress' },
      schema: {
        tags: ['findings'],
        summary: "Suppress a finding's detector on its subject until an expiry (recorded, not alerted)",
        params: findingParams,
        body: z.strictObject({ reason, expires_at: instant.optional(), hours: z.number().int().min(1).max(24 * 365).optional() }).refine((b) => !(b.expires_at && b.hours), 'give expires_at or hours, not both'),
      },
    },
    async (request) => {
      const [finding] = await deps.findings.list({ limit: 1, finding_id: request.params.id })
      if (!finding) throw new ApiError(404, 'not_found', `no finding ${request.params.id}`)
      const actor = principalOf(request).actor
      const expires = request.body.expires_at ? new Date(request.body.expires_at) : new Date(Date.now() + (request.body.hours ?? 24) * 3_600_000)
      if (expires.getTime() <= Date.now()) throw new ApiError(400, 'invalid_input', 'body.expires_at: must be in the future')
      request.auditDetail = { reason: request.body.reason, expires_at: expires.toISOString() }
      const suppression = await deps.findings.suppress({
        detector: finding.detector,
        account_id: finding.account_id,
        key_id: finding.key_id,
        user_id: finding.user_id,
        ip: finding.ip,
        reason: request.body.reason,
        author: actor,
        expires_at: expires.toISOString(),
      })
      const updated = await setStatus(deps.findings, finding.finding_id, 'suppressed', actor, `suppressed until ${expires.toISOString()}: ${request.body.reason}`)
      return { finding: updated, suppression }
    },
  )
}

async function setStatus(findings: FindingStore, id: string, status: FindingStatus, actor: string, why: string) {
  return findings.setStatus(id, status, actor, why)
}
