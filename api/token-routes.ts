// API tokens, for admins: create (the token is in this answer and nowhere else, ever), list, revoke.
import type { FastifyInstance } from 'fastify'
import type { ZodTypeProvider } from 'fastify-type-provider-zod'
import { z } from 'zod'
import { principalOf } from './auth.ts'
import { ROLES, type TokenStore } from './tokens.ts'

export async function tokenRoutes(app: FastifyInstance, deps: { tokens: TokenStore }): Promise<void> {
  const r = app.withTypeProvider<ZodTypeProvider>()

  r.get('/v1/tokens', { config: { permission: 'admin' }, schema: { tags: ['tokens'], summary: 'API tokens (never their secrets)' } }, async () => ({ tokens: await deps.tokens.list() }))

  r.post(
    '/v1/tokens',
    { config: { permission: 'admin', audit: 'token.create' }, schema: { tags: ['tokens'], summary: 'Create a token: it is shown once', body: z.strictObject({ role: z.enum(ROLES), name: z.string().min(1).max(64) }) } },
    async (request, reply) => {
      const created = await deps.tokens.create(request.body.role, request.body.name, principalOf(request).actor)
      request.auditDetail = { role: created.info.role, name: created.info.name, token_id: created.info.token_id }
      return reply.status(201).send(created)
    },
  )

  r.delete(
    '/v1/tokens/:id',
    { config: { permission: 'admin', audit: 'token.revoke' }, schema: { tags: ['tokens'], summary: 'Revoke a token (by id or name)', params: z.strictObject({ id: z.string().min(1).max(64) }) } },
    async (request) => ({ token: await deps.tokens.revoke(request.params.id, principalOf(request).actor) }),
  )
}
