// Incidents: findings on one subject (a key, its users, their account) within a window, with their timeline.
import type { FastifyInstance } from 'fastify'
import type { ZodTypeProvider } from 'fastify-type-provider-zod'
import { z } from 'zod'
import type { IncidentStore } from '../incidents/store.ts'
import { ApiError } from './errors.ts'
import { accountId, keyId, limit } from './schemas.ts'

export async function incidentRoutes(app: FastifyInstance, deps: { incidents?: IncidentStore }): Promise<void> {
  const store = deps.incidents
  if (!store) return
  const r = app.withTypeProvider<ZodTypeProvider>()

  r.get(
    '/v1/incidents',
    {
      config: { permission: 'read' },
      schema: {
        tags: ['incidents'],
        summary: 'Incidents, most recent first',
        querystring: z.strictObject({
          status: z.enum(['open', 'resolved']).optional(),
          account: accountId.optional(),
          key: keyId.optional(),
          user: z.string().regex(/^usr_[A-Za-z0-9]{4,64}$/, 'must be a user id (usr_…)').optional(),
          limit: limit(1000, 200),
        }),
      },
    },
    async (request) => {
      const q = request.query
      return { incidents: await store.list({ status: q.status, account_id: q.account, key_id: q.key, user_id: q.user, limit: q.limit }) }
    },
  )

  r.get(
    '/v1/incidents/:id',
    { config: { permission: 'read' }, schema: { tags: ['incidents'], summary: 'An incident: its findings and its timeline', params: z.strictObject({ id: z.string().regex(/^inc_[a-f0-9]{24}$/, 'must be an incident id (inc_…)') }) } },
    async (request) => {
      const found = await store.get(request.params.id)
      if (!found) throw new ApiError(404, 'not_found', `no incident ${request.params.id}`)
      return { incident: found.incident, findings: found.members, timeline: found.timeline }
    },
  )
}
