// The API as its users meet it, on the real engine: who may call what (the role x endpoint matrix), tokens kept
// only as hashes, every filter safe against SQL injection (400 or no rows, never a query error), 400s that name the
// field, the key inventory's filters, findings handled by a responder, the OpenAPI document, metrics and the rate limit.
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildApi } from '../api/server.ts'
import { hashToken, ROLES, type Role } from '../api/tokens.ts'
import { apiDepsOf, type Runtime } from '../app/runtime.ts'
import { queryRows } from '../clickhouse/client.ts'
import { ago, lifecycle, sha256, usage } from '../detectors/fixtures/events.ts'
import { DETECTORS } from '../detectors/index.ts'
import { bearer, count, openTestRuntime } from './helpers.ts'

let rt: Runtime
let api: FastifyInstance
const auth: Partial<Record<Role, { authorization: string }>> = {}
const now = new Date().toISOString()

const k = (name: string, extra: { key_kind?: 'secret' | 'publishable' | 'restricted'; mode?: 'live' | 'test'; account?: string } = {}) => ({
  account_id: extra.account ?? 'acct_ApiShop01',
  key_id: `key_${name}`,
  key_prefix: `${extra.key_kind === 'publishable' ? 'pk' : 'sk'}_${extra.mode ?? 'live'}_${name.slice(0, 4)}`,
  key_kind: extra.key_kind ?? 'secret',
  mode: extra.mode ?? 'live',
})
const fresh = k('Fresh001')
const stale = k('Stale001')
const overdue = k('Overdue1')
const dueSoon = k('DueSoon1')
const testKey = k('TestKey1', { mode: 'test' })
const other = k('Other001', { account: 'acct_ApiOther1' })

beforeAll(async () => {
  // Roles and permissions here; step-up (a TOTP code on top) has its own tests (test/step-up.test.ts).
  rt = await openTestRuntime({ STEP_UP: 'off' })
  const events = [
    lifecycle(fresh, 'created', ago(now, { days: 10 }), { secret_sha256: sha256('a') }),
    usage(fresh, ago(now, { hours: 1 }), { status: 200 }),
    usage(fresh, ago(now, { hours: 1 }), { status: 429, error_code: 'RATE_LIMIT_EXCEEDED' }),
    lifecycle(stale, 'created', ago(now, { days: 200 }), { secret_sha256: sha256('b') }),
    usage(stale, ago(now, { days: 120 })),
    lifecycle(overdue, 'created', ago(now, { days: 120 }), { secret_sha256: sha256('c') }),
    usage(overdue, ago(now, { hours: 2 })),
    lifecycle(dueSoon, 'created', ago(now, { days: 80 }), { secret_sha256: sha256('d') }),
    usage(dueSoon, ago(now, { hours: 3 })),
    lifecycle(testKey, 'created', ago(now, { days: 300 }), { secret_sha256: sha256('e') }),
    usage(testKey, ago(now, { hours: 3 })),
    lifecycle(other, 'created', ago(now, { days: 5 }), { secret_sha256: sha256('f') }),
  ]
  const { rejections } = await rt.pipeline.ingest(events.map((e) => ({ raw: Buffer.from(JSON.stringify(e)), origin: { source: 'file' as const } })))
  expect(rejections).toEqual([])
  await rt.detection.runAll(new Date(), ['key.stale', 'key.rotation_overdue'])
  api = await buildApi(apiDepsOf(rt))
  for (const role of ROLES) auth[role] = await bearer(rt, role, `t-${role}`)
})

afterAll(async () => {
  await api?.close()
  await rt?.close()
})

const get = (url: string, role?: Role) => api.inject({ method: 'GET', url, headers: role ? auth[role] : {} })
const post = (url: string, payload: unknown, role?: Role) => api.inject({ method: 'POST', url, payload: payload as object, headers: role ? auth[role] : {} })

describe('who may call what', () => {
  // [method, url, body, roles that may]
  const matrix: [string, string, unknown, Role[]][] = [
    ['GET', '/v1/keys', undefined, ['viewer', 'auditor', 'responder', 'admin']],
    ['GET', `/v1/keys/${fresh.key_id}`, undefined, ['viewer', 'auditor', 'responder', 'admin']],
    ['GET', `/v1/keys/${fresh.key_id}/exposure`, undefined, ['viewer', 'auditor', 'responder', 'admin']],
    ['GET', '/v1/findings', undefined, ['viewer', 'auditor', 'responder', 'admin']],
    ['GET', '/v1/actions', undefined, ['viewer', 'auditor', 'responder', 'admin']],
    ['GET', '/v1/detectors', undefined, ['viewer', 'auditor', 'responder', 'admin']],
    ['GET', '/v1/response', undefined, ['viewer', 'auditor', 'responder', 'admin']],
    ['GET', '/metrics', undefined, ['viewer', 'auditor', 'responder', 'admin']],
    ['GET', '/v1/stats/overview', undefined, ['viewer', 'auditor', 'responder', 'admin']],
    ['GET', '/v1/whoami', undefined, ['viewer', 'auditor', 'responder', 'admin']],
    ['GET', `/v1/exports/security-log?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z`, undefined, ['auditor', 'admin']],
    ['GET', '/v1/audit/verify', undefined, ['auditor', 'admin']],
    ['POST', '/v1/detectors/key.stale/run', undefined, ['responder', 'admin']],
    ['POST', `/v1/keys/${testKey.key_id}/revoke`, { reason: 'matrix' }, ['responder', 'admin']],
    ['POST', '/v1/response/pause', { reason: 'matrix' }, ['responder', 'admin']],
    ['POST', '/v1/response/resume', { reason: 'matrix' }, ['admin']],
    ['GET', '/v1/tokens', undefined, ['admin']],
    ['POST', '/v1/tokens', { role: 'viewer', name: 'from-matrix' }, ['admin']],
    ['POST', '/v1/leaks', { not: 'a report' }, ['ingest', 'admin']],
  ]
  for (const [method, url, body, allowed] of matrix) {
    it(`${method} ${url}`, async () => {
      const call = (role?: Role) => api.inject({ method: method as 'GET' | 'POST', url, headers: role ? auth[role] : {}, ...(body ? { payload: body as object } : {}) })
      expect((await call()).statusCode, 'without a token').toBe(401)
      for (const role of ROLES) {
        const res = await call(role)
        if (allowed.includes(role)) {
          expect([401, 403], `${role}: ${res.body}`).not.toContain(res.statusCode)
          expect(res.statusCode, `${role}: ${res.body}`).toBeLessThan(500)
        }
        else expect(res.statusCode, `${role} must be refused`).toBe(403)
      }
    })
  }

  it('leaves health, readiness and the documentation open', async () => {
    for (const url of ['/healthz', '/readyz', '/docs/json']) expect((await get(url)).statusCode, url).toBe(200)
  })
})

describe('tokens', () => {
  it('are stored as hashes only, and a revoked token stops working', async () => {
    const created = await post('/v1/tokens', { role: 'viewer', name: 'soon-revoked' }, 'admin')
    expect(created.statusCode).toBe(201)
    const { token, info } = created.json() as { token: string; info: { token_id: string } }
    expect(token).toMatch(/^kw_[A-Za-z0-9]{32}$/)
    const stored = await (await rt.storage.client.query({ query: 'SELECT * FROM api_tokens', format: 'JSONEachRow' })).text()
    expect(stored).not.toContain(token)
    expect(stored).toContain(hashToken(token))
    expect((await api.inject({ method: 'GET', url: '/v1/keys', headers: { authorization: `Bearer ${token}` } })).statusCode).toBe(200)
    expect((await api.inject({ method: 'DELETE', url: `/v1/tokens/${info.token_id}`, headers: auth.admin })).statusCode).toBe(200)
    expect((await api.inject({ method: 'GET', url: '/v1/keys', headers: { authorization: `Bearer ${token}` } })).statusCode).toBe(401)
    const listed = await get('/v1/tokens', 'admin')
    expect(listed.body).not.toContain(token)
    expect(listed.body).not.toContain(hashToken(token))
  })
})

describe('input', () => {
  const attacks = ["' OR 1=1 --", "acct_x') OR ('1'='1", "x'; DROP TABLE key_usage; --", '\\', '%00', "{status:String}", 'ü'.repeat(200)]
  const filters: [string, string[]][] = [
    ['/v1/keys', ['account', 'status', 'kind', 'mode', 'stale', 'overdue', 'due_soon', 'limit', 'offset']],
    ['/v1/findings', ['status', 'severity', 'detector', 'account', 'key', 'limit']],
    ['/v1/actions', ['account', 'key', 'status', 'since', 'limit']],
    [`/v1/keys/${fresh.key_id}`, ['from', 'to', 'interval']],
    [`/v1/keys/${fresh.key_id}/exposure`, ['from', 'to', 'format']],
  ]

  it('answers SQL injection in every filter with 400 or no rows, never a query error', async () => {
    for (const [path, names] of filters) {
      for (const name of names) {
        for (const attack of attacks) {
          const res = await get(`${path}?${name}=${encodeURIComponent(attack)}`, 'viewer')
          expect([200, 400], `${path}?${name}=${attack}: ${res.body}`).toContain(res.statusCode)
          if (res.statusCode === 200) {
            const body = res.json() as Record<string, unknown>
            for (const list of ['keys', 'findings', 'actions']) if (Array.isArray(body[list])) expect(body[list], `${path}?${name}`).toEqual([])
          } else expect(res.json().error.message, `${path}?${name}`).toMatch(new RegExp(`^query\\.${name}: `))
        }
      }
    }
    for (const attack of ["key_x' OR 1=1", 'fnd_../../etc']) {
      expect((await get(`/v1/keys/${encodeURIComponent(attack)}`, 'viewer')).statusCode).toBe(400)
      expect((await post(`/v1/findings/${encodeURIComponent(attack)}/acknowledge`, { reason: 'x' }, 'responder')).statusCode).toBe(400)
    }
    expect(await count(rt.storage, 'SELECT count() AS n FROM key_usage')).toBeGreaterThan(0)
  })

  it('names the field and what is wrong with it', async () => {
    expect((await get('/v1/keys?limit=0', 'viewer')).json().error.message).toMatch(/^query\.limit: /)
    expect((await get('/v1/keys?colour=red', 'viewer')).json().error.message).toMatch(/colour/)
    expect((await post('/v1/tokens', { role: 'superuser', name: 'x' }, 'admin')).json().error.message).toMatch(/^body\.role: /)
    expect((await post(`/v1/keys/${fresh.key_id}/revoke`, {}, 'responder')).json().error.message).toMatch(/^body\.reason: /)
    const notJson = await api.inject({ method: 'POST', url: '/v1/response/pause', headers: { ...auth.responder, 'content-type': 'application/json' }, payload: '{"reason":' })
    expect(notJson.statusCode).toBe(400)
    expect(notJson.json().error.code).toBeDefined()
  })
})

describe('the key inventory', () => {
  const ids = async (query: string) => ((await get(`/v1/keys?${query}`, 'viewer')).json() as { keys: { key_id: string }[] }).keys.map((x) => x.key_id)

  it('lists keys with their clocks, and filters stale, overdue, due soon, mode, kind and account', async () => {
    const all = (await get('/v1/keys', 'viewer')).json() as { keys: Record<string, unknown>[]; total: number }
    expect(all.total).toBe(6)
    expect(all.keys.find((x) => x.key_id === fresh.key_id)).toMatchObject({ status: 'active', requests: 2, age_days: 10, stale: false, rotation_overdue: false })
    expect(await ids('stale=true')).toEqual([stale.key_id])
    expect(await ids('overdue=true')).toEqual(expect.arrayContaining([overdue.key_id, stale.key_id]))
    expect(await ids('overdue=true')).not.toContain(testKey.key_id) // test keys are off the rotation clock
    expect(await ids('due_soon=true')).toEqual([dueSoon.key_id])
    expect(await ids('mode=test')).toEqual([testKey.key_id])
    expect(await ids('account=acct_ApiOther1')).toEqual([other.key_id])
    expect(await ids('limit=2&offset=4')).toHaveLength(2)
  })

  it("shows a key's usage series, lifecycle and findings", async () => {
    const res = await get(`/v1/keys/${fresh.key_id}`, 'viewer')
    expect(res.statusCode).toBe(200)
    const body = res.json() as { key: { key_prefix: string }; usage: { series: { requests: number; rate_limited: number }[] }; lifecycle: { action: string }[] }
    expect(body.key.key_prefix).toBe('sk_live_Fres')
    expect(body.usage.series.reduce((n, p) => n + Number(p.requests), 0)).toBe(2)
    expect(body.usage.series.reduce((n, p) => n + Number(p.rate_limited), 0)).toBe(1)
    expect(body.lifecycle.map((l) => l.action)).toEqual(['created'])
    const staleKey = (await get(`/v1/keys/${stale.key_id}`, 'viewer')).json() as { findings: { detector: string }[] }
    expect(staleKey.findings.map((f) => f.detector)).toContain('key.stale')
    expect((await get('/v1/keys/key_Nobody01', 'viewer')).statusCode).toBe(404)
  })
})

describe('findings', () => {
  it('a responder acknowledges, suppresses and resolves; each change is kept with who and why', async () => {
    const [finding] = ((await get(`/v1/findings?detector=key.stale&key=${stale.key_id}`, 'viewer')).json() as { findings: { finding_id: string }[] }).findings
    expect(finding).toBeDefined()
    const id = finding!.finding_id
    expect((await post(`/v1/findings/${id}/acknowledge`, { reason: 'asking the owner' }, 'viewer')).statusCode).toBe(403)
    const acked = await post(`/v1/findings/${id}/acknowledge`, { reason: 'asking the owner' }, 'responder')
    expect(acked.json().finding).toMatchObject({ status: 'acknowledged', status_changed_by: 'token:t-responder' })
    const suppressed = await post(`/v1/findings/${id}/suppress`, { reason: 'owner is on leave', hours: 48 }, 'responder')
    expect(suppressed.statusCode).toBe(200)
    expect(suppressed.json().finding.status).toBe('suppressed')
    expect((await post(`/v1/findings/${id}/suppress`, { reason: 'x', expires_at: '2001-01-01T00:00:00Z' }, 'responder')).statusCode).toBe(400)
    await post(`/v1/findings/${id}/resolve`, { reason: 'key revoked by its owner' }, 'responder')
    const detail = (await get(`/v1/findings/${id}`, 'viewer')).json() as { finding: { status: string }; changes: { to_status: string; actor: string }[] }
    expect(detail.finding.status).toBe('resolved')
    expect(detail.changes.map((c) => c.to_status)).toEqual(['open', 'acknowledged', 'suppressed', 'resolved'])
    expect(detail.changes.slice(1).every((c) => c.actor === 'token:t-responder')).toBe(true)
  })

  it('lists the detectors with their last run', async () => {
    const body = (await get('/v1/detectors', 'viewer')).json() as { detectors: { id: string; last_run: { findings: number } | null }[] }
    expect(body.detectors).toHaveLength(DETECTORS.length)
    expect(body.detectors.find((d) => d.id === 'key.stale')!.last_run).not.toBeNull()
  })
})

describe('the OpenAPI document, metrics and the rate limit', () => {
  it('documents every /v1 route with its schema and the bearer scheme', async () => {
    const doc = (await get('/docs/json')).json() as { paths: Record<string, Record<string, { parameters?: { name: string }[] }>>; components: { securitySchemes: object } }
    for (const path of ['/v1/keys', '/v1/keys/{id}', '/v1/findings', '/v1/findings/{id}/suppress', '/v1/actions', '/v1/tokens', '/v1/detectors/{id}/run', '/v1/leaks/github']) expect(doc.paths, path).toHaveProperty([path])
    expect(doc.paths['/v1/keys']!.get!.parameters!.map((p) => p.name)).toEqual(expect.arrayContaining(['stale', 'overdue', 'mode', 'account']))
    expect(doc.components.securitySchemes).toHaveProperty('bearer')
  })

  it('serves Prometheus metrics', async () => {
    const res = await get('/metrics', 'viewer')
    expect(res.headers['content-type']).toContain('text/plain')
    expect(res.body).toMatch(/keywatch_events_total\{result="accepted"\} 12/)
    expect(res.body).toContain('keywatch_detector_run_seconds_bucket{le="0.01",detector="key.stale"')
  })

  it('limits requests per token and answers 429 in the error shape', async () => {
    const limited = await buildApi(apiDepsOf(rt, { rateLimitPerMinute: 3 }))
    try {
      const statuses: number[] = []
      for (let i = 0; i < 4; i++) statuses.push((await limited.inject({ method: 'GET', url: '/v1/response', headers: auth.viewer })).statusCode)
      expect(statuses).toEqual([200, 200, 200, 429])
      const res = await limited.inject({ method: 'GET', url: '/v1/response', headers: auth.viewer })
      expect(res.json()).toEqual({ error: { code: 'rate_limited', message: expect.stringContaining('3 requests a minute') } })
      // Another token has its own allowance.
      expect((await limited.inject({ method: 'GET', url: '/v1/response', headers: auth.auditor })).statusCode).toBe(200)
    } finally {
      await limited.close()
    }
  })
})

it('keeps the revoke the matrix asked for on record with its actor', async () => {
  const rows = await queryRows<{ requested_by: string; status: string }>(rt.storage.client, "SELECT requested_by, status FROM actions FINAL WHERE key_id = {k:String}", { k: testKey.key_id })
  expect(rows.map((r) => r.requested_by)).toContain('token:t-responder')
})
