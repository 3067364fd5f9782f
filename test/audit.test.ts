// keywatch's own audit trail on the real engine: API calls that change something are recorded with who, what and
// the outcome (denied ones too), and `verify` (and `keywatch verify-audit`) catches a record changed, deleted or
// reordered in the table.
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildApi } from '../api/server.ts'
import { apiDepsOf, type Runtime } from '../cli/runtime.ts'
import { queryRows } from '../clickhouse/client.ts'
import type { AuditRecord } from '../audit/trail.ts'
import { bearer, openTestRuntime, runCli } from './helpers.ts'

let rt: Runtime
let api: FastifyInstance
let dataDir: string

const records = () => queryRows<AuditRecord>(rt.storage.client, 'SELECT seq, toString(at) AS at, actor, action, target, request_id, outcome, detail, prev_hash, hash FROM audit_trail ORDER BY seq')
const mutate = (sql: string, params: Record<string, unknown> = {}) => rt.storage.client.command({ query: sql, query_params: params, clickhouse_settings: { mutations_sync: '2' } as never })
const insert = (rows: AuditRecord[]) => rt.storage.client.insert({ table: 'audit_trail', format: 'JSONEachRow', values: rows })

beforeAll(async () => {
  rt = await openTestRuntime()
  dataDir = rt.config.clickhouse.mode === 'embedded' ? rt.config.clickhouse.dataDir : ''
  api = await buildApi(apiDepsOf(rt))
})

afterAll(async () => {
  await api?.close()
  await rt?.close()
})

describe('the audit trail', () => {
  it('records who changed what through the API, and who was refused', async () => {
    const admin = await bearer(rt, 'admin', 'ops-admin')
    const viewer = await bearer(rt, 'viewer', 'curious-viewer')
    expect((await api.inject({ method: 'POST', url: '/v1/tokens', headers: admin, payload: { role: 'auditor', name: 'external-auditor' } })).statusCode).toBe(201)
    expect((await api.inject({ method: 'POST', url: '/v1/tokens', headers: viewer, payload: { role: 'admin', name: 'escalate' } })).statusCode).toBe(403)
    expect((await api.inject({ method: 'POST', url: '/v1/response/pause', headers: admin, payload: { reason: 'maintenance window' } })).statusCode).toBe(200)
    const rows = await records()
    expect(rows.map((r) => [r.actor, r.action, r.outcome])).toEqual([
      ['token:ops-admin', 'token.create', 'ok'],
      ['token:curious-viewer', 'token.create', 'denied'],
      ['token:ops-admin', 'response.pause', 'ok'],
    ])
    expect(JSON.parse(rows[0]!.detail)).toMatchObject({ role: 'auditor', name: 'external-auditor', status: 201 })
    // The token itself is in no record.
    const created = (await api.inject({ method: 'POST', url: '/v1/tokens', headers: admin, payload: { role: 'viewer', name: 'v2' } })).json() as { token: string }
    expect(JSON.stringify(await records())).not.toContain(created.token)
    expect(await rt.audit.verify()).toMatchObject({ ok: true, records: 4 })
  })

  it('catches a changed record, and is whole again once it is put back', async () => {
    for (let i = 0; i < 4; i++) await rt.audit.record({ actor: 'token:ops-admin', action: 'finding.acknowledge', target: `fnd_${i}`, request_id: `req-${i}`, outcome: 'ok' })
    const before = (await records()).find((r) => Number(r.seq) === 3)!
    await mutate(`ALTER TABLE audit_trail UPDATE actor = 'token:someone-else' WHERE seq = 3`)
    expect(await rt.audit.verify()).toMatchObject({ ok: false, seq: 3, problem: 'changed' })
    await mutate('ALTER TABLE audit_trail UPDATE actor = {actor:String} WHERE seq = 3', { actor: before.actor })
    expect(await rt.audit.verify()).toMatchObject({ ok: true, records: 8 })
  })

  it('catches a deleted record', async () => {
    const gone = (await records()).find((r) => Number(r.seq) === 5)!
    await mutate('ALTER TABLE audit_trail DELETE WHERE seq = 5')
    expect(await rt.audit.verify()).toMatchObject({ ok: false, seq: 5, problem: 'deleted' })
    await insert([gone])
    expect(await rt.audit.verify()).toMatchObject({ ok: true })
  })

  it('catches reordered records', async () => {
    const [six, seven] = (await records()).filter((r) => Number(r.seq) === 6 || Number(r.seq) === 7)
    await mutate('ALTER TABLE audit_trail DELETE WHERE seq IN (6, 7)')
    await insert([{ ...six!, seq: 7 }, { ...seven!, seq: 6 }])
    const result = await rt.audit.verify()
    expect(result).toMatchObject({ ok: false, seq: 6 })
  })

  it('keywatch verify-audit exits 1 naming the first bad record', async () => {
    await api.close()
    await rt.close()
    const r = await runCli(['verify-audit'], { KEYWATCH_DATA_DIR: dataDir })
    expect(r.code).toBe(1)
    expect(r.stdout).toMatch(/^BROKEN at record 6 /)
    rt = await openTestRuntime({ KEYWATCH_DATA_DIR: dataDir })
    api = await buildApi(apiDepsOf(rt))
  })
})
