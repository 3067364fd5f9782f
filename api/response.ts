// The response API: a person's revoke or reset, the actions list, a key's exposure report, and the kill switch.
import type { FastifyInstance } from 'fastify'
import type { ZodTypeProvider } from 'fastify-type-provider-zod'
import { z } from 'zod'
import type { ClickHouseClient } from '../clickhouse/client.ts'
import type { ActionStore } from '../response/actions.ts'
import { ResponseError, type ResponseEngine } from '../response/engine.ts'
import { exposureCsv, exposureReport } from '../response/exposure.ts'
import { principalOf } from './auth.ts'
import { ApiError } from './errors.ts'
import { ACTION_STATUSES, actionParams, instant, keyParams, limit, reason } from './schemas.ts'

export interface ResponseApiDeps {
  response: ResponseEngine
  actions: ActionStore
  client: ClickHouseClient
}

const manualBody = z.strictObject({
  reason,
  incident: z.boolean().default(false).describe('the key is being abused: revoke it even though it is in use'),
  force: z.boolean().default(false).describe('revoke it even though it is in use, knowing it is an outage'),
  finding_id: z.string().max(128).optional(),
})

export async function responseRoutes(app: FastifyInstance, deps: ResponseApiDeps): Promise<void> {
  const r = app.withTypeProvider<ZodTypeProvider>()

  for (const command of ['revoke', 'reset'] as const) {
    r.post(
      `/v1/keys/:id/${command}`,
      {
        // Forcing a revoke of a key in use is an outage by choice: it needs a current code (step-up).
        config: { permission: 'respond', audit: `key.${command}`, stepUp: (request) => (request.body as { force?: boolean } | undefined)?.force === true },
        schema: { tags: ['response'], summary: command === 'revoke' ? 'Revoke a key now' : "Reset a key's secret", params: keyParams, body: manualBody },
      },
      async (request) => {
        try {
          const action = await deps.response.manual({ command, key_id: request.params.id, actor: principalOf(request).actor, ...request.body })
          request.auditDetail = { account_id: action.account_id, key_prefix: action.key_prefix, action_id: action.action_id, status: action.status }
          return { action }
        } catch (err) {
          // A refusal is audited against the account of the key it concerns; the error handler answers it.
          if (err instanceof ResponseError && err.action) request.auditDetail = { account_id: err.action.account_id, key_prefix: err.action.key_prefix, action_id: err.action.action_id }
          throw err
        }
      },
    )
  }

  r.get(
    '/v1/actions',
    {
      config: { permission: 'read' },
      schema: {
        tags: ['response'],
        summary: 'What keywatch did or decided about keys, newest first',
        querystring: z.strictObject({ account: z.string().max(128).optional(), key: keyParams.shape.id.optional(), status: z.enum(ACTION_STATUSES).optional(), since: instant.optional(), limit: limit() }),
      },
    },
    async (request) => {
      const q = request.query
      return { actions: await deps.actions.list({ account_id: q.account, key_id: q.key, status: q.status, since: q.since ? new Date(q.since) : undefined, limit: q.limit }) }
    },
  )

  r.get('/v1/actions/:id', { config: { permission: 'read' }, schema: { tags: ['response'], summary: 'One action', params: actionParams } }, async (request) => {
    const action = await deps.actions.get(request.params.id)
    if (!action) throw new ApiError(404, 'not_found', `no action ${request.params.id}`)
    return { action }
  })

  // A person approves or rejects an automatic action a guard rail (or its policy rule) held back. Approving sends it:
  // a step-up second factor is asked where that hook is installed.
  for (const decision of ['approve', 'reject'] as const) {
    r.post(
      `/v1/actions/:id/${decision}`,
      {
        config: { permission: 'respond', audit: `action.${decision}`, ...(decision === 'approve' ? { stepUp: true } : {}) },
        schema: { tags: ['response'], summary: decision === 'approve' ? 'Approve an action awaiting approval (it is sent at once)' : 'Reject an action awaiting approval', params: actionParams, body: z.strictObject({ reason }) },
      },
      async (request) => {
        request.auditDetail = { reason: request.body.reason }
        try {
          const action = await deps.response.decideApproval({ actionId: request.params.id, decision, by: principalOf(request).actor, reason: request.body.reason })
          request.auditDetail = { reason: request.body.reason, account_id: action.account_id, key_prefix: action.key_prefix, status: action.status }
          return { action }
        } catch (err) {
          if (err instanceof ResponseError && err.action) request.auditDetail = { reason: request.body.reason, account_id: err.action.account_id, key_prefix: err.action.key_prefix }
          if (err instanceof ResponseError) throw new ApiError(err.status, err.code, err.message)
          throw err
        }
      },
    )
  }

  r.get(
    '/v1/keys/:id/exposure',
    {
      config: { permission: 'read' },
      schema: {
        tags: ['response'],
        summary: 'What a key did while exposed (from the earliest evidence of exposure until its revocation plus the cache grace, unless from/to), with every money-moving request',
        params: keyParams,
        querystring: z.strictObject({ from: instant.optional(), to: instant.optional(), format: z.enum(['json', 'csv']).default('json') }),
      },
    },
    async (request, reply) => {
      const q = request.query
      const policy = deps.response.policy
      const report = await exposureReport(deps.client, request.params.id, { from: q.from ? new Date(q.from) : undefined, to: q.to ? new Date(q.to) : undefined }, new Date(), { cacheGraceSeconds: policy.cache_grace_seconds, lookbackDays: policy.exposure_lookback_days })
      if (q.format === 'json') return report
      return reply.header('content-type', 'text/csv; charset=utf-8').header('content-disposition', `attachment; filename="exposure-${report.key.key_id}.csv"`).send(exposureCsv(report))
    },
  )

  r.get('/v1/response', { config: { permission: 'read' }, schema: { tags: ['response'], summary: 'Policy mode, kill switch and guard rails' } }, async () => deps.response.state())
  // The kill switch: pausing is always safe, so a responder may pull it; turning automation back on is an admin's call.
  for (const [what, paused, permission] of [['pause', true, 'respond'], ['resume', false, 'admin']] as const) {
    r.post(
      `/v1/response/${what}`,
      { config: { permission, audit: `response.${what}`, stepUp: !paused }, schema: { tags: ['response'], summary: `${what === 'pause' ? 'Pause' : 'Resume'} automatic response`, body: z.strictObject({ reason }) } },
      async (request) => {
        await deps.response.setPaused(paused, principalOf(request).actor, request.body.reason)
        return deps.response.state()
      },
    )
  }
}
