// The key inventory over HTTP: the list with its filters and a key's page of detail. The SQL and the clocks are
// the inventory's own (inventory/keys.ts).
import type { FastifyInstance } from 'fastify'
import type { ZodTypeProvider } from 'fastify-type-provider-zod'
import { z } from 'zod'
import type { FindingStore } from '../detectors/findings.ts'
import type { KeyInventory } from '../inventory/keys.ts'
import type { ActionStore } from '../response/actions.ts'
import { ApiError } from './errors.ts'
import { accountId, flag, instant, keyParams, limit } from './schemas.ts'

const inventoryQuery = z.strictObject({
  account: accountId.optional(),
  status: z.enum(['active', 'rotating', 'revoked', 'expired', 'deleted']).optional(),
  kind: z.enum(['secret', 'publishable', 'restricted']).optional(),
  mode: z.enum(['live', 'test']).optional(),
  stale: flag.optional(),
  overdue: flag.optional(),
  due_soon: flag.optional(),
  limit: limit(10_000, 500),
  offset: z.coerce.number().int().min(0).default(0),
})

export async function keyRoutes(app: FastifyInstance, deps: { inventory: KeyInventory; findings: FindingStore; actions: ActionStore }): Promise<void> {
  const r = app.withTypeProvider<ZodTypeProvider>()

  r.get('/v1/keys', { config: { permission: 'read' }, schema: { tags: ['keys'], summary: 'The key inventory', querystring: inventoryQuery } }, async (request) => deps.inventory.list(request.query))

  r.get(
    '/v1/keys/:id',
    {
      config: { permission: 'read' },
      schema: {
        tags: ['keys'],
        summary: "A key: its inventory row, usage series, lifecycle timeline, findings and actions",
        params: keyParams,
        querystring: z.strictObject({ from: instant.optional(), to: instant.optional(), interval: z.enum(['hour', 'day']).default('hour') }),
      },
    },
    async (request) => {
      const id = request.params.id
      const key = await deps.inventory.get(id)
      if (!key) throw new ApiError(404, 'not_found', `no key ${id} in the inventory`)
      const to = request.query.to ? new Date(request.query.to) : new Date()
      const from = request.query.from ? new Date(request.query.from) : new Date(to.getTime() - (request.query.interval === 'hour' ? 2 : 30) * 86_400_000)
      if (from >= to) throw new ApiError(400, 'invalid_input', 'query.from: must be before query.to')
      const [usage, lifecycle, findings, actions] = await Promise.all([
        deps.inventory.usage(key, request.query.interval, from, to),
        deps.inventory.lifecycle(key),
        deps.findings.list({ key_id: id, account_id: key.account_id, limit: 200 }),
        deps.actions.list({ key_id: id, account_id: key.account_id, limit: 200 }),
      ])
      return { key, usage: { interval: request.query.interval, from: from.toISOString(), to: to.toISOString(), series: usage }, lifecycle, findings, actions }
    },
  )
}
