// keywatch's own audit trail, fed by one hook: every route that reads an export or changes anything declares its
// audit action (`config.audit`), and each call to it, allowed, refused or denied, is recorded with who and why, the
// requester's IP and, for a token, its name. Calls denied for want of a valid token are not recorded one by one
// (anyone can send them, and the trail is evidence, not a traffic log): they are counted per IP, route and minute,
// and each such count becomes one record (`auth.anonymous_denied`) when its minute is over, or at shutdown.
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { AuditEntry, AuditLog } from '../audit/audit-log.ts'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The audit action of a route that changes something or reads an export, e.g. `finding.acknowledge`. */
    audit?: string
  }
}

/** Who asked, for every record: the requester's IP and, for a token, its name and id. */
export function requesterOf(request: FastifyRequest): { ip: string; token?: string; token_id?: string } {
  const p = request.principal
  return { ip: request.ip, ...(p ? { token: p.actor.replace(/^(token|cli):/, ''), token_id: p.token_id } : {}) }
}

export interface AuditHookOptions {
  now?: () => number
}

export function registerAudit(app: FastifyInstance, audit: AuditLog, options: AuditHookOptions = {}): void {
  const now = options.now ?? Date.now
  // (minute, ip, method route) -> denied calls without a valid token
  const denied = new Map<string, { minute: number; ip: string; method: string; route: string; actions: Set<string>; count: number; first_request_id: string }>()
  const flush = async (all: boolean) => {
    const current = Math.floor(now() / 60_000)
    const due = [...denied.entries()].filter(([, d]) => all || d.minute < current)
    for (const [k] of due) denied.delete(k)
    for (const [, d] of due) {
      await audit
        .record({
          actor: 'anonymous',
          action: 'auth.anonymous_denied',
          target: `${d.method} ${d.route}`,
          request_id: d.first_request_id,
          outcome: 'denied',
          detail: { ip: d.ip, count: d.count, minute: new Date(d.minute * 60_000).toISOString(), actions: [...d.actions] },
        })
        .catch((err: unknown) => app.log.error({ err: String(err) }, 'could not record the audit entry'))
    }
  }
  const timer = setInterval(() => void flush(false), 15_000)
  timer.unref()
  app.addHook('onClose', async () => {
    clearInterval(timer)
    await flush(true)
  })

  app.addHook('onResponse', async (request, reply) => {
    const action = request.routeOptions.config?.audit
    if (!action) return
    const status = reply.statusCode
    if (!request.principal && (status === 401 || status === 429)) {
      const minute = Math.floor(now() / 60_000)
      const route = request.routeOptions.url ?? request.url.split('?')[0]!
      const key = `${minute}\u0000${request.ip}\u0000${request.method}\u0000${route}`
      const d = denied.get(key) ?? { minute, ip: request.ip, method: request.method, route, actions: new Set<string>(), count: 0, first_request_id: String(request.id) }
      d.count++
      d.actions.add(action)
      denied.set(key, d)
      if (denied.size > 10_000) void flush(true)
      return
    }
    const params = (request.params ?? {}) as Record<string, string>
    const outcome: AuditEntry['outcome'] = status < 400 ? 'ok' : status === 401 || status === 403 ? 'denied' : status < 500 ? 'refused' : 'failed'
    const query = request.url.includes('?') ? request.url.slice(request.url.indexOf('?') + 1) : ''
    try {
      await audit.record({
        actor: request.principal?.actor ?? 'anonymous',
        action,
        target: params.id ?? query,
        request_id: String(request.id),
        outcome,
        detail: { method: request.method, route: request.routeOptions.url, status, ...requesterOf(request), ...(request.stepUp ? { step_up: request.stepUp } : {}), ...(request.auditDetail ?? {}) },
      })
    } catch (err) {
      request.log.error({ err: String(err), action }, 'could not record the audit entry')
    }
  })
}

declare module 'fastify' {
  interface FastifyRequest {
    /** What a handler adds to its audit record (a reason, a role…); never a secret. */
    auditDetail?: Record<string, unknown>
  }
}
