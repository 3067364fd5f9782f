// keywatch's own audit trail on the real engine: API calls that change something are recorded with who, what and
// the outcome (denied ones too), and `verify` (and `keywatch verify-audit`) catches a record changed, deleted or
// reordered in the table.
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { buildApi } from '../api/server.ts'
import { apiDepsOf, type Runtime } from '../app/runtime.ts'
import { queryRows } from '../clickhouse/client.ts'
import { generateKeyPairSync, sign } from 'node:crypto'
import { AuditTrail, checkpointBytes, keyFingerprint, recordHash, type AuditRecord } from '../audit/trail.ts'
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
    expect(result).toMatchObject({ ok: false, seq: 6, problem: 'reordered' })
    expect(result.ok || result.message).toMatch(/^record 6 .* is out of place: it was written right after the record now numbered 7$/)
  })

  it('keywatch verify-audit exits 1 naming the first bad record', async () => {
    await api.close()
    await rt.close()
    const r = await runCli(['verify-audit'], { KEYWATCH_DATA_DIR: dataDir })
    expect(r.code).toBe(1)
    expect(r.stdout).toMatch(/^BROKEN at record 6 /)
    rt = await openTestRuntime({ KEYWATCH_DATA_DIR: dataDir })
    api = await buildApi(apiDepsOf(rt))
  }, 180_000) // the CLI, on a busy machine
})

describe('signed checkpoints', () => {
  let trail: AuditTrail
  const signed = () => new AuditTrail(rt.storage.client, Date.now, { signingKey: rt.exportSigningKey, checkpointEveryMs: 1_000 })
  const recordN = async (n: number, from = 0) => {
    for (let i = from; i < from + n; i++) await trail.record({ actor: 'token:ops-admin', action: 'finding.acknowledge', target: `fnd_${i}`, request_id: `req-${i}`, outcome: 'ok' })
  }

  beforeEach(async () => {
    // A fresh trail: the runtime's own is not used from here on.
    await rt.storage.client.command({ query: 'TRUNCATE TABLE audit_trail' })
    await rt.storage.client.command({ query: 'TRUNCATE TABLE audit_checkpoints' })
    trail = signed()
    await recordN(10)
    await trail.checkpoint()
  })

  it('sign the head a moment after an append; records after the last one are counted as unsigned', async () => {
    expect(await trail.verify()).toMatchObject({ ok: true, records: 10, signed_through: 10, unsigned: 0 })
    await recordN(3, 10)
    expect(await trail.verify()).toMatchObject({ ok: true, records: 13, signed_through: 10, unsigned: 3 })
    await new Promise((r) => setTimeout(r, 1_500))
    expect(await trail.verify()).toMatchObject({ ok: true, records: 13, signed_through: 13, unsigned: 0 })
    // A new process (a restart) goes on from the signed head.
    trail = signed()
    await recordN(1, 13)
    await trail.checkpoint()
    expect(await trail.verify()).toMatchObject({ ok: true, records: 14, signed_through: 14 })
  })

  it('catch a record changed with ALTER UPDATE and every hash after it recomputed, which the chain alone does not', async () => {
    const rows = await records()
    let prev = rows[3]!.prev_hash
    for (const r of rows.slice(3)) {
      const forged = { ...r, seq: Number(r.seq), actor: r.seq === 4 ? 'token:someone-else' : r.actor, prev_hash: prev }
      const hash = recordHash(forged)
      await mutate('ALTER TABLE audit_trail UPDATE actor = {actor:String}, prev_hash = {prev:String}, hash = {hash:String} WHERE seq = {seq:UInt64}', { actor: forged.actor, prev, hash, seq: forged.seq })
      prev = hash
    }
    expect(await new AuditTrail(rt.storage.client).verify()).toMatchObject({ ok: true, records: 10 }) // the unsigned chain is fooled
    const result = await trail.verify()
    expect(result).toMatchObject({ ok: false, seq: 1, problem: 'changed' })
    expect(result.ok || result.message).toMatch(/^records 1-10 were rewritten after keywatch signed them at /)
  })

  it('catch the end of the trail cut off, and a checkpoint forged with another key', async () => {
    await mutate('ALTER TABLE audit_trail DELETE WHERE seq >= 8')
    expect(await trail.verify()).toMatchObject({ ok: false, seq: 8, problem: 'deleted', message: expect.stringMatching(/^records 8-10 are missing: the trail ends at record 7, but keywatch signed record 10 at /) })

    await mutate('ALTER TABLE audit_checkpoints DELETE WHERE 1')
    const [head] = (await records()).slice(-1)
    const mallory = generateKeyPairSync('ed25519').privateKey
    const at = '2026-11-25 00:00:00.000'
    const fake = { seq: Number(head!.seq), hash: head!.hash, at, key_fingerprint: keyFingerprint(rt.exportSigningKey()), signature: sign(null, checkpointBytes({ seq: Number(head!.seq), hash: head!.hash, at }), mallory).toString('base64') }
    await rt.storage.client.insert({ table: 'audit_checkpoints', format: 'JSONEachRow', values: [fake] })
    expect(await trail.verify()).toMatchObject({ ok: false, seq: 7, problem: 'forged' })
  })

  it('check anchors kept outside ClickHouse (an export manifest\'s audit head)', async () => {
    const head = await trail.currentHead()
    expect(await trail.verify({ anchors: [{ ...head, source: 'manifest exp_1' }] })).toMatchObject({ ok: true })
    expect(await trail.verify({ anchors: [{ seq: 4, hash: 'f'.repeat(64), source: 'manifest exp_1' }] })).toMatchObject({ ok: false, seq: 4, problem: 'changed', message: expect.stringContaining('manifest exp_1 recorded a different hash for record 4') })
    expect(await trail.verify({ anchors: [{ seq: 12, hash: 'f'.repeat(64), source: 'manifest exp_2' }] })).toMatchObject({ ok: false, seq: 11, problem: 'deleted' })
  })
})
