// The response API: a person's revoke or reset, the actions list, a key's exposure report, and the kill switch.
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { z } from 'zod'
import type { ClickHouseClient } from '../clickhouse/client.ts'
import type { ActionStore } from '../response/actions.ts'
import { ResponseError, type ResponseEngine } from '../response/engine.ts'
import { ExposureError, exposureCsv, exposureReport } from '../response/exposure.ts'
import { ApiError } from './errors.ts'

export interface ResponseApiDeps {
  response: ResponseEngine
  actions: ActionStore
  client: ClickHouseClient
  /** Who is calling, for the action record: `token:<name>` once the API has auth. */
  actorOf: (request: FastifyRequest) => string
}

const keyId = z.string().regex(/^key_[A-Za-z0-9]{4,64}$/, 'must be a key id (key_…)')
const instant = z.iso.datetime({ offset: true, message: 'must be an RFC 3339 date-time, e.g. 2026-11-24T10:00:00Z' })

const manualBody = z.strictObject({
  reason: z.string().trim().min(1, 'is required: say why the key is revoked').max(500),
  incident: z.boolean().default(false),
  force: z.boolean().default(false),
  finding_id: z.string().max(128).optional(),
})

const actionsQuery = z.strictObject({
  account: z.string().max(128).optional(),
  key: keyId.optional(),
  status: z.enum(['dry_run', 'paused', 'blocked', 'skipped', 'refused', 'requested', 'confirmed', 'failed', 'not_effective']).optional(),
  since: instant.optional(),
  limit: z.coerce.number().int().min(1).max(10_000).default(1000),
})

const exposureQuery = z.strictObject({ from: instant.optional(), to: instant.optional(), format: z.enum(['json', 'csv']).default('json') })

const switchBody = z.strictObject({ reason: z.string().trim().min(1, 'is required').max(500) })

/** Parses request input; a 400 names the field and what it expects. */
export function parseInput<S extends z.ZodType>(schema: S, value: unknown, where: string): z.infer<S> {
  const parsed = schema.safeParse(value ?? {})
  if (parsed.success) return parsed.data
  const issue = parsed.error.issues[0]!
  const field = issue.path.length ? `${where}.${issue.path.join('.')}` : where
  throw new ApiError(400, 'invalid_input', `${field}: ${issue.message}`)
}

export async function responseRoutes(app: FastifyInstance, deps: ResponseApiDeps): Promise<void> {
  const manual = (command: 'revoke' | 'reset') => async (request: FastifyRequest<{ Params: { id: string } }>) => {
    const id = parseInput(keyId, request.params.id, 'path.id')
    const body = parseInput(manualBody, request.body, 'body')
    try {
      const action = await deps.response.manual({ command, key_id: id, actor: deps.actorOf(request), ...body })
      return { action }
    } catch (err) {
      if (err instanceof ResponseError) throw new ApiError(err.status, err.code, err.message)
      throw err
    }
  }
  app.post('/v1/keys/:id/revoke', manual('revoke'))
  app.post('/v1/keys/:id/reset', manual('reset'))

  app.get('/v1/actions', async (request) => {
    const q = parseInput(actionsQuery, request.query, 'query')
    const actions = await deps.actions.list({ account_id: q.account, key_id: q.key, status: q.status, since: q.since ? new Date(q.since) : undefined, limit: q.limit })
    return { actions }
  })

  app.get('/v1/actions/:id', async (request: FastifyRequest<{ Params: { id: string } }>) => {
    const action = await deps.actions.get(parseInput(z.string().regex(/^act_[a-f0-9]{24}$/, 'must be an action id (act_…)'), request.params.id, 'path.id'))
    if (!action) throw new ApiError(404, 'not_found', `no action ${request.params.id}`)
    return { action }
  })

  app.get('/v1/keys/:id/exposure', async (request: FastifyRequest<{ Params: { id: string } }>, reply) => {
    const id = parseInput(keyId, request.params.id, 'path.id')
    const q = parseInput(exposureQuery, request.query, 'query')
    try {
      const report = await exposureReport(deps.client, id, { from: q.from ? new Date(q.from) : undefined, to: q.to ? new Date(q.to) : undefined })
      if (q.format === 'csv') {
        return reply
          .header('content-type', 'text/csv; charset=utf-8')
          .header('content-disposition', `attachment; filename="exposure-${report.key.key_id}.csv"`)
          .send(exposureCsv(report))
      }
      return report
    } catch (err) {
      if (err instanceof ExposureError) throw new ApiError(err.status, err.status === 404 ? 'not_found' : 'invalid_input', err.message)
      throw err
    }
  })

  app.get('/v1/response', async () => deps.response.state())
  const toggle = (paused: boolean) => async (request: FastifyRequest) => {
    const body = parseInput(switchBody, request.body, 'body')
    await deps.response.setPaused(paused, deps.actorOf(request), body.reason)
    return deps.response.state()
  }
  // The kill switch: automatic actions stop (decided and recorded as paused) until resumed; manual ones still go.
  app.post('/v1/response/pause', toggle(true))
  app.post('/v1/response/resume', toggle(false))
}
