// Authentication and authorization in one hook: a route says which permission it needs (`config.permission`); the
// hook finds the bearer token's role, answers 401 or 403, or sets `request.principal` for the handler and the audit.
import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { ApiError } from './errors.ts'
import { GRANTS, type Permission, type Role, type TokenStore } from './tokens.ts'

export interface Principal {
  /** `token:<name>`, or `cli:<user>` for the command line on the instance's own machine. */
  actor: string
  role: Role
  token_id: string
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The permission a route needs; routes without one are open (health, docs, signed webhooks). */
    permission?: Permission
  }
  interface FastifyRequest {
    principal?: Principal
  }
}

export interface AuthOptions {
  tokens: TokenStore
  /**
   * The running instance's token for its own command line, written only to its data directory: whoever can read
   * that directory already holds all the data. It acts as admin, on behalf of the CLI user it names.
   */
  localToken?: string
}

const sha256 = (s: string) => createHash('sha256').update(s).digest()

export function registerAuth(app: FastifyInstance, options: AuthOptions): void {
  const local = options.localToken ? sha256(options.localToken) : undefined
  app.decorateRequest('principal', undefined)
  app.addHook('onRequest', async (request) => {
    const permission = request.routeOptions.config?.permission
    if (!permission) return
    request.principal = await authenticate(request, options.tokens, local)
    if (!GRANTS[request.principal.role].includes(permission)) {
      throw new ApiError(403, 'forbidden', `role ${request.principal.role} may not do this (needs the ${permission} permission)`)
    }
  })
}

async function authenticate(request: FastifyRequest, tokens: TokenStore, local: Buffer | undefined): Promise<Principal> {
  const header = request.headers.authorization
  const m = typeof header === 'string' ? /^Bearer\s+(\S+)$/i.exec(header) : null
  if (!m) throw new ApiError(401, 'unauthorized', 'send an API token: Authorization: Bearer kw_…')
  const token = m[1]!
  if (local && timingSafeEqual(sha256(token), local)) {
    const user = String(request.headers['x-keywatch-cli-user'] ?? 'unknown').replace(/[^A-Za-z0-9._@-]/g, '').slice(0, 64)
    return { actor: `cli:${user || 'unknown'}`, role: 'admin', token_id: 'local' }
  }
  const info = await tokens.verify(token)
  if (!info) throw new ApiError(401, 'unauthorized', 'the API token is not valid, or was revoked')
  return { actor: `token:${info.name}`, role: info.role, token_id: info.token_id }
}

/** The principal of an authenticated route (the hook guarantees it). */
export function principalOf(request: FastifyRequest): Principal {
  if (!request.principal) throw new ApiError(401, 'unauthorized', 'this route needs an API token')
  return request.principal
}
