// API tokens, for admins: create (the token is in this answer and nowhere else, ever), list, revoke.
import type { FastifyInstance } from 'fastify'
import type { ZodTypeProvider } from 'fastify-type-provider-zod'
import { z } from 'zod'
import { principalOf } from './auth.ts'
import { ApiError } from './errors.ts'
import { ROLES, TokenError, type TokenStore } from './tokens.ts'

export async function tokenRoutes(app: FastifyInstance, deps: { tokens: TokenStore }): Promise<void> {
  const r = app.withTypeProvider<ZodTypeProvider>()
  const wrap = async <T>(work: () => Promise<T>): Promise<T> => {
    try {
      return await work()
    } catch (err) {
      if (err instanceof TokenError) throw new ApiError(err.status, err.status === 404 ? 'not_found' : err.status === 409 ? 'conflict' : 'invalid_input', err.message)
      throw err
    }
  }

  r.get('/v1/tokens', { config: { permission: 'admin' }, schema: { tags: ['tokens'], summary: 'API tokens (never their secrets)' } }, async () => ({ tokens: await deps.tokens.list() }))

  r.post(
    '/v1/tokens',
    { config: { permission: 'admin', audit: 'token.create' }, schema: { tags: ['tokens'], summary: 'Create a token: it is shown once', body: z.strictObject({ role: z.enum(ROLES), name: z.string().min(1).max(64) }) } },
    async (request, reply) => {
      const created = await wrap(() => deps.tokens.create(request.body.role, request.body.name, principalOf(request).actor))
      request.auditDetail = { role: created.info.role, name: created.info.name, token_id: created.info.token_id }
      return reply.status(201).send(created)
    },
  )

  r.delete(
    '/v1/tokens/:id',
    { config: { permission: 'admin', audit: 'token.revoke' }, schema: { tags: ['tokens'], summary: 'Revoke a token (by id or name)', params: z.strictObject({ id: z.string().min(1).max(64) }) } },
    async (request) => ({ token: await wrap(() => deps.tokens.revoke(request.params.id, principalOf(request).actor)) }),
  )
}
