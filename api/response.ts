// The response API: a person's revoke or reset, the actions list, a key's exposure report, and the kill switch.
import type { FastifyInstance } from 'fastify'
import type { ZodTypeProvider } from 'fastify-type-provider-zod'
import { z } from 'zod'
import type { ClickHouseClient } from '../clickhouse/client.ts'
import type { ActionStore } from '../response/actions.ts'
import { ResponseError, type ResponseEngine } from '../response/engine.ts'
import { ExposureError, exposureCsv, exposureReport } from '../response/exposure.ts'
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
          return { action: await deps.response.manual({ command, key_id: request.params.id, actor: principalOf(request).actor, ...request.body }) }
        } catch (err) {
          if (err instanceof ResponseError) throw new ApiError(err.status, err.code, err.message)
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

  r.get(
    '/v1/keys/:id/exposure',
    {
      config: { permission: 'read' },
      schema: {
        tags: ['response'],
        summary: 'What a key did while exposed (from the first leak report or anomaly until its revocation, unless from/to)',
        params: keyParams,
        querystring: z.strictObject({ from: instant.optional(), to: instant.optional(), format: z.enum(['json', 'csv']).default('json') }),
      },
    },
    async (request, reply) => {
      const q = request.query
      try {
        const report = await exposureReport(deps.client, request.params.id, { from: q.from ? new Date(q.from) : undefined, to: q.to ? new Date(q.to) : undefined })
        if (q.format === 'json') return report
        return reply.header('content-type', 'text/csv; charset=utf-8').header('content-disposition', `attachment; filename="exposure-${report.key.key_id}.csv"`).send(exposureCsv(report))
      } catch (err) {
        if (err instanceof ExposureError) throw new ApiError(err.status, err.status === 404 ? 'not_found' : 'invalid_input', err.message)
        throw err
      }
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
