// The limit on anonymous traffic, by IP, checked before auth: requests without a token, and requests whose token was
// refused, count against their IP's allowance each minute; past it every request from that IP gets 429 before any
// token lookup or audit work. (Requests with a valid token are limited per token, after auth, in api/server.ts.)
import type { FastifyInstance } from 'fastify'
import { ApiError } from './errors.ts'

export interface AnonymousLimitOptions {
  perMinute: number
  now?: () => number
}

/** Paths that never count (probes from a load balancer or an orchestrator). */
const EXEMPT = new Set(['/healthz', '/readyz'])
const MAX_TRACKED_IPS = 100_000

export function registerAnonymousLimit(app: FastifyInstance, options: AnonymousLimitOptions): void {
  const now = options.now ?? Date.now
  let minute = -1
  let counts = new Map<string, number>()
  const countOf = (ip: string): number => {
    const m = Math.floor(now() / 60_000)
    if (m !== minute || counts.size > MAX_TRACKED_IPS) {
      minute = m
      counts = new Map()
    }
    return counts.get(ip) ?? 0
  }
  const charge = (ip: string) => counts.set(ip, countOf(ip) + 1)

  app.addHook('onRequest', async (request, reply) => {
    if (EXEMPT.has(request.url)) return
    if (countOf(request.ip) >= options.perMinute) {
      const after = 60 - Math.floor((now() / 1000) % 60)
      reply.header('retry-after', String(after))
      throw new ApiError(429, 'rate_limited', `more than ${options.perMinute} requests a minute without a valid token from ${request.ip}: retry in ${after} seconds`)
    }
    if (request.headers.authorization === undefined) charge(request.ip)
  })
  // A token that was refused counts too (the request without a token was charged on arrival).
  app.addHook('onResponse', async (request, reply) => {
    if (request.headers.authorization !== undefined && !request.principal && reply.statusCode === 401) charge(request.ip)
  })
}
