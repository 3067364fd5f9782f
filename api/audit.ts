// keywatch's own audit trail, fed by one hook: every route that reads an export or changes anything declares its
// audit action (`config.audit`), and each call to it, allowed, refused or denied, is recorded with who and why.
import type { FastifyInstance } from 'fastify'
import type { AuditEntry, AuditLog } from '../audit/audit-log.ts'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The audit action of a route that changes something or reads an export, e.g. `finding.acknowledge`. */
    audit?: string
  }
}

export function registerAudit(app: FastifyInstance, audit: AuditLog): void {
  app.addHook('onResponse', async (request, reply) => {
    const action = request.routeOptions.config?.audit
    if (!action) return
    const status = reply.statusCode
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
        detail: { method: request.method, route: request.routeOptions.url, status, ...(request.auditDetail ?? {}) },
      })
    } catch (err) {
      request.log.error({ err, action }, 'could not record the audit entry')
    }
  })
}

declare module 'fastify' {
  interface FastifyRequest {
    /** What a handler adds to its audit record (a reason, a role…); never a secret. */
    auditDetail?: Record<string, unknown>
  }
}
