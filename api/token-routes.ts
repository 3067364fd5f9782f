// API tokens, for admins: create (the token is in this answer and nowhere else, ever), list, revoke.
import type { FastifyInstance } from 'fastify'
import type { ZodTypeProvider } from 'fastify-type-provider-zod'
import { z } from 'zod'
import { principalOf } from './auth.ts'
import { ApiError } from './errors.ts'
import type { StepUp } from './step-up.ts'
import { ROLES, type TokenStore } from './tokens.ts'

export async function tokenRoutes(app: FastifyInstance, deps: { tokens: TokenStore; stepUp?: StepUp }): Promise<void> {
  const r = app.withTypeProvider<ZodTypeProvider>()

  r.get('/v1/tokens', { config: { permission: 'admin' }, schema: { tags: ['tokens'], summary: 'API tokens (never their secrets)' } }, async () => ({ tokens: await deps.tokens.list() }))

  r.post(
    '/v1/tokens',
    {
      // Creating an admin token needs a current code (step-up).
      config: { permission: 'admin', audit: 'token.create', stepUp: (request) => (request.body as { role?: string } | undefined)?.role === 'admin' },
      schema: {
        tags: ['tokens'],
        summary: 'Create a token: it is shown once (with totp: its authenticator enrolment, shown once too)',
        body: z.strictObject({ role: z.enum(ROLES), name: z.string().min(1).max(64), totp: z.boolean().default(false).describe('enrol an authenticator (TOTP) for step-up') }),
      },
    },
    async (request, reply) => {
      const actor = principalOf(request).actor
      if (request.body.totp && !deps.stepUp) throw new ApiError(400, 'invalid_input', 'body.totp: step-up is off here (STEP_UP=off)')
      const created = await deps.tokens.create(request.body.role, request.body.name, actor)
      const totp = request.body.totp ? await deps.stepUp!.enroll({ token_id: created.info.token_id, name: created.info.name }, actor) : undefined
      request.auditDetail = { role: created.info.role, name: created.info.name, token_id: created.info.token_id, totp: Boolean(totp) }
      return reply.status(201).send({ ...created, ...(totp ? { totp } : {}) })
    },
  )

  r.delete(
    '/v1/tokens/:id',
    {
      // Revoking an admin token needs a current code (step-up).
      config: {
        permission: 'admin',
        audit: 'token.revoke',
        stepUp: async (request) => {
          const id = (request.params as { id: string }).id
          return (await deps.tokens.list()).some((t) => !t.revoked_at && (t.token_id === id || t.name === id) && t.role === 'admin')
        },
      },
      schema: { tags: ['tokens'], summary: 'Revoke a token (by id or name)', params: z.strictObject({ id: z.string().min(1).max(64) }) },
    },
    async (request) => ({ token: await deps.tokens.revoke(request.params.id, principalOf(request).actor) }),
  )
}
