// The breaks an outside review found (issue 15), each as the reviewer did it, on the real engine, through the API
// and the CLI as they are used: each test failed before the hardening and passes after it.
import { generateKeyPairSync, randomUUID, sign } from 'node:crypto'
import { readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { deflateSync, gzipSync } from 'node:zlib'
import type { FastifyInstance } from 'fastify'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildApi } from '../api/server.ts'
import { recordHash, type AuditRecord } from '../audit/trail.ts'
import { apiDepsOf, type Runtime } from '../app/runtime.ts'
import { queryRows } from '../clickhouse/client.ts'
import { ago, lifecycle, sha256, usage } from '../detectors/fixtures/events.ts'
import { exportToFile, fingerprint, signedBytes, type Manifest } from '../exports/export.ts'
import { bearer, count, openTestRuntime, runCli, tempDir } from './helpers.ts'
import { waitFor } from './kafka/admin.ts'

const dir = tempDir('keywatch-breaks-')
const env = { KEYWATCH_DATA_DIR: join(dir, 'data'), AUDIT_ANCHOR_FILE: join(dir, 'anchors', 'audit-anchors.ndjson'), SLACK_SIGNING_SECRET: 'breaks_slack_signing_secret' }
const github = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
const KEY_ID = 'a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9'
const logLines: string[] = []
const log = pino({ level: 'info' }, new Writable({ write: (chunk, _e, done) => (logLines.push(String(chunk)), done()) }))

let rt: Runtime
let api: FastifyInstance
const open = async () => {
  rt = await openTestRuntime(env)
  api = await buildApi(apiDepsOf(rt, { log, githubKeys: [{ key_identifier: KEY_ID, key: github.publicKey.export({ type: 'spki', format: 'pem' }).toString(), is_current: true }] }))
}
const close = async () => {
  await api.close()
  await rt.close()
}
beforeAll(open)
afterAll(close)

const records = () => queryRows<AuditRecord>(rt.storage.client, 'SELECT seq, toString(at) AS at, actor, action, target, request_id, outcome, detail, prev_hash, hash FROM audit_trail ORDER BY seq')
const mutate = (sql: string, params: Record<string, unknown> = {}) => rt.storage.client.command({ query: sql, query_params: params, clickhouse_settings: { mutations_sync: '2' } as never })
const note = (i: number) => rt.audit.record({ actor: 'token:ops', action: 'finding.acknowledge', target: `fnd_${i}`, request_id: `req-${i}`, outcome: 'ok' })

describe('1. the audit trail cannot be rewritten or cut unseen', () => {
  it('rewrite with recomputed hashes and TRUNCATE audit_checkpoints: verify-audit exits 1 naming the missing checkpoints', async () => {
    for (let i = 0; i < 30; i++) {
      await note(i)
      if (i % 10 === 9) await rt.audit.checkpoint()
    }
    // Rewrite records 5-30, recomputing every hash, then drop the checkpoints.
    const rows = await records()
    let prev = rows[4]!.prev_hash
    for (const r of rows.slice(4)) {
      const forged = { ...r, seq: Number(r.seq), actor: 'token:mallory', prev_hash: prev }
      const hash = recordHash(forged)
      await mutate('ALTER TABLE audit_trail UPDATE actor = {a:String}, prev_hash = {p:String}, hash = {h:String} WHERE seq = {s:UInt64}', { a: forged.actor, p: prev, h: hash, s: forged.seq })
      prev = hash
    }
    await rt.storage.client.command({ query: 'TRUNCATE TABLE audit_checkpoints' })
    await close()
    const r = await runCli(['verify-audit'], env)
    await open()
    expect(r.code, r.stdout + r.stderr).toBe(1)
    expect(r.stdout).toMatch(/^BROKEN at record \d+ \(changed\): records up to \d+ were rewritten: the anchor file/)
    expect(r.stdout).toContain('3 signed checkpoints recorded in')
    expect(r.stdout).toContain('are missing from audit_checkpoints (records 10, 20, 30)')
  }, 240_000) // the CLI, on a busy machine

  it('the last records deleted with the checkpoints beyond them: verify-audit exits 1 naming the missing records', async () => {
    // A fresh trail for this case.
    await rt.storage.client.command({ query: 'TRUNCATE TABLE audit_trail' })
    await rt.storage.client.command({ query: 'TRUNCATE TABLE audit_checkpoints' })
    rmSync(env.AUDIT_ANCHOR_FILE, { force: true })
    await close()
    await open()
    for (let i = 0; i < 30; i++) {
      await note(i)
      if (i % 10 === 9) await rt.audit.checkpoint()
    }
    await mutate('ALTER TABLE audit_trail DELETE WHERE seq > 20')
    await mutate('ALTER TABLE audit_checkpoints DELETE WHERE seq > 20')
    await close()
    const r = await runCli(['verify-audit'], env)
    await open()
    expect(r.code, r.stdout + r.stderr).toBe(1)
    expect(r.stdout).toMatch(/^BROKEN at record 21 \(deleted\): records 21-30 are missing: the trail ends at record 20, but the anchor file/)
  }, 240_000)

  it('an export manifest\'s audit head anchors the trail too, with the anchor file lost', async () => {
    await rt.storage.client.command({ query: 'TRUNCATE TABLE audit_trail' })
    await rt.storage.client.command({ query: 'TRUNCATE TABLE audit_checkpoints' })
    rmSync(env.AUDIT_ANCHOR_FILE, { force: true })
    await close()
    await open()
    for (let i = 0; i < 12; i++) await note(i)
    const m = await exportToFile(rt.storage, { dataset: 'security-log', format: 'csv', filter: { from: '2026-01-01T00:00:00Z', to: '2030-01-01T00:00:00Z' }, actor: 'cli:test' }, join(rt.config.exports.dir, 'anchored.csv'), rt.exportSigningKey(), rt.version)
    expect(m.audit_head?.seq).toBe(12)
    await mutate('ALTER TABLE audit_trail DELETE WHERE seq > 6')
    await mutate('ALTER TABLE audit_checkpoints DELETE WHERE 1')
    rmSync(env.AUDIT_ANCHOR_FILE, { force: true })
    const result = await rt.audit.verify()
    expect(result).toMatchObject({ ok: false, seq: 7, problem: 'deleted', message: `records 7-12 are missing: the trail ends at record 6, but the manifest of ${m.export_id} recorded record 12` })
  })
})

describe('2. GitHub replays are judged by what was sent', () => {
  const N = BigInt('0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551')
  /** The same ECDSA signature as (r, n - s), DER-encoded. */
  const malleate = (der: Buffer) => {
    const rLen = der[3]!
    const r = der.subarray(4, 4 + rLen)
    const s = BigInt(`0x${der.subarray(6 + rLen).toString('hex')}`)
    let hex = (N - s).toString(16)
    if (hex.length % 2) hex = `0${hex}`
    let sBytes = Buffer.from(hex, 'hex')
    if (sBytes[0]! & 0x80) sBytes = Buffer.concat([Buffer.from([0]), sBytes])
    const body = Buffer.concat([Buffer.from([0x02, r.length]), r, Buffer.from([0x02, sBytes.length]), sBytes])
    return Buffer.concat([Buffer.from([0x30, body.length]), body])
  }

  it('answers 401 to the same delivery with its signature re-encoded or malleated, and stores nothing again', async () => {
    const body = JSON.stringify([{ token: `sk_live_${randomUUID().replaceAll('-', '')}`, type: 'paykore_secret_key', url: 'https://github.com/x/y/blob/1/a.js', source: 'content' }])
    const der = sign('sha256', Buffer.from(body), github.privateKey)
    const b64 = der.toString('base64')
    const post = (signature: string) => api.inject({ method: 'POST', url: '/v1/leaks/github', payload: body, headers: { 'content-type': 'application/json', 'github-public-key-identifier': KEY_ID, 'github-public-key-signature': signature } })
    expect((await post(b64)).statusCode).toBe(200)
    const stored = await count(rt.storage, 'SELECT count() AS n FROM leak_reports')
    const variants = {
      unpadded: b64.replace(/=+$/, ''),
      urlSafe: b64.replaceAll('+', '-').replaceAll('/', '_'),
      junk: `${b64.slice(0, 10)}!*${b64.slice(10)}`,
      malleated: malleate(der).toString('base64'),
    }
    for (const [name, signature] of Object.entries(variants)) {
      const res = await post(signature)
      expect(res.statusCode, `${name}: ${res.body}`).toBe(401)
      expect(res.json().error.code, name).toMatch(/^(replayed|bad_signature)$/)
    }
    expect(await count(rt.storage, 'SELECT count() AS n FROM leak_reports')).toBe(stored)
  })
})

describe('3. anonymous traffic is bounded and does not fill the audit trail', () => {
  it('limits tokenless calls by IP before auth, aggregates the denied ones, and names IP and token in every record', async () => {
    const limited = await buildApi(apiDepsOf(rt, { log, rateLimitPerMinute: 50 }))
    const before = await count(rt.storage, 'SELECT count() AS n FROM audit_trail')
    const statuses: number[] = []
    for (let i = 0; i < 300; i++) statuses.push((await limited.inject({ method: 'POST', url: '/v1/response/pause', payload: { reason: 'x' }, remoteAddress: '203.0.113.9' })).statusCode)
    expect(statuses.filter((s) => s === 401)).toHaveLength(50)
    expect(statuses.filter((s) => s === 429)).toHaveLength(250)
    // Another IP still gets in.
    const admin = await bearer(rt, 'admin', 'breaks-admin')
    expect((await limited.inject({ method: 'POST', url: '/v1/response/pause', payload: { reason: 'maintenance' }, headers: admin, remoteAddress: '198.51.100.7' })).statusCode).toBe(200)
    await limited.close() // flushes the counts
    const added = (await records()).slice(before).map((r) => ({ ...r, detail: JSON.parse(r.detail) as Record<string, unknown> }))
    expect(added.length).toBeLessThanOrEqual(3) // one count per IP, route and minute (a minute may turn), and the admin's call
    const denied = added.filter((r) => r.action === 'auth.anonymous_denied')
    expect(denied.reduce((n, r) => n + Number(r.detail.count), 0)).toBe(300)
    expect(denied[0]).toMatchObject({ actor: 'anonymous', target: 'POST /v1/response/pause', outcome: 'denied', detail: { ip: '203.0.113.9' } })
    expect(added.find((r) => r.action === 'response.pause')).toMatchObject({ actor: 'token:breaks-admin', detail: { ip: '198.51.100.7', token: 'breaks-admin' } })
    await rt.response.setPaused(false, 'test', 'undo')
  })
})

describe('4. a leaked secret is redacted after unescaping', () => {
  it('keeps no secret of an invalid-JSON leak report with escapes in key and value', async () => {
    const secret = `sk_live_51HxZZ${randomUUID().replaceAll('-', '')}`
    const escaped = secret.replaceAll('_', '\\u005f')
    const raw = `{"type":"leak.reported","tok\\u0065n":"${escaped}","source":"github"`
    const { rejections } = await rt.pipeline.ingest([{ raw: Buffer.from(raw), origin: { source: 'http' } }])
    expect(rejections.map((r) => r.reason)).toEqual(['invalid_json'])
    const [row] = await queryRows<{ raw_base64: string }>(rt.storage.client, "SELECT raw_base64 FROM ingest_errors WHERE reason = 'invalid_json' ORDER BY received_at DESC LIMIT 1")
    const kept = Buffer.from(row!.raw_base64, 'base64').toString('utf8')
    const unescaped = kept.replace(/\\u([0-9a-fA-F]{4})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16)))
    expect(unescaped).not.toContain(secret.slice(12))
  })
})

describe('5. one error shape and no stack', () => {
  it('answers POST /v1/slack/interactions with application/json and any signature with 401, logging no stack', async () => {
    logLines.length = 0
    const res = await api.inject({ method: 'POST', url: '/v1/slack/interactions', payload: { type: 'block_actions' }, headers: { 'x-slack-request-timestamp': String(Math.floor(Date.now() / 1000)), 'x-slack-signature': 'v0=' + 'a'.repeat(64) } })
    expect(res.statusCode).toBe(401)
    expect(res.json()).toEqual({ error: { code: 'bad_signature', message: expect.any(String) } })
    expect(logLines.join('')).not.toMatch(/\n\s+at /)
    expect(logLines.join('')).not.toContain('"stack"')
  })
})

describe('6. what platforms send', () => {
  const event = () => usage({ account_id: 'acct_Breaks001', key_id: 'key_Breaks001', key_prefix: 'sk_live_Brk1', key_kind: 'secret', mode: 'live' }, ago(new Date().toISOString(), { minutes: 5 }))

  it('takes gzip and deflate bodies and media types in any case', async () => {
    const ingest = await bearer(rt, 'ingest', 'breaks-ingest')
    const lines = [event(), event()].map((e) => JSON.stringify(e)).join('\n') + '\n'
    const gz = await api.inject({ method: 'POST', url: '/v1/events', payload: gzipSync(lines), headers: { ...ingest, 'content-type': 'application/x-ndjson', 'content-encoding': 'gzip' } })
    expect(gz.statusCode, gz.body).toBe(200)
    expect(gz.json()).toMatchObject({ accepted: 2, rejected: 0 })
    const deflated = await api.inject({ method: 'POST', url: '/v1/events', payload: deflateSync(JSON.stringify(event()) + '\n'), headers: { ...ingest, 'content-type': 'application/x-ndjson', 'content-encoding': 'deflate' } })
    expect(deflated.json()).toMatchObject({ accepted: 1, rejected: 0 })
    const upper = await api.inject({ method: 'POST', url: '/v1/events', payload: JSON.stringify(event()) + '\n', headers: { ...ingest, 'content-type': 'APPLICATION/X-NDJSON' } })
    expect(upper.statusCode, upper.body).toBe(200)
    expect(upper.json()).toMatchObject({ accepted: 1 })
  })

  it('takes GitHub\'s older partner payload without source', async () => {
    const body = JSON.stringify([{ token: `sk_live_${randomUUID().replaceAll('-', '')}`, type: 'paykore_secret_key', url: 'https://github.com/x/y' }])
    const res = await api.inject({ method: 'POST', url: '/v1/leaks/github', payload: body, headers: { 'content-type': 'application/json', 'github-public-key-identifier': KEY_ID, 'github-public-key-signature': sign('sha256', Buffer.from(body), github.privateKey).toString('base64') } })
    expect(res.statusCode, res.body).toBe(200)
    expect(res.json()).toEqual([expect.objectContaining({ label: 'false_positive' })])
  })

  it('answers 413 above the documented /v1/events body limit (16 MiB)', async () => {
    const ingest = await bearer(rt, 'ingest', 'breaks-ingest-big')
    const res = await api.inject({ method: 'POST', url: '/v1/events', payload: Buffer.alloc(17 * 1024 * 1024, 0x0a), headers: { ...ingest, 'content-type': 'application/x-ndjson' } })
    expect(res.statusCode).toBe(413)
    expect(res.json()).toEqual({ error: { code: 'payload_too_large', message: expect.stringContaining('16 MiB') } })
  })
})

describe('7. verify-export never says OK without a trusted key', () => {
  it('exits 2 for a changed file whose manifest was re-signed with an attacker\'s key', async () => {
    const out = join(dir, 'log.csv')
    const m = await exportToFile(rt.storage, { dataset: 'security-log', format: 'csv', filter: { from: '2026-01-01T00:00:00Z', to: '2030-01-01T00:00:00Z' }, actor: 'cli:test' }, out, rt.exportSigningKey(), rt.version)
    writeFileSync(out, readFileSync(out, 'utf8') + '"2026-11-24 10:00:00.000","auth","x","acct_X","mallory","login.succeeded","","","","","ok",""\n')
    const mallory = generateKeyPairSync('ed25519')
    const file = readFileSync(out)
    const { signature: _s, ...rest } = m
    const forged: Omit<Manifest, 'signature'> = { ...rest, bytes: file.length, rows: m.rows + 1, sha256: (await import('node:crypto')).createHash('sha256').update(file).digest('hex') }
    const publicKey = mallory.publicKey
    const manifest: Manifest = {
      ...forged,
      signature: { algorithm: 'Ed25519', public_key: publicKey.export({ type: 'spki', format: 'pem' }).toString(), key_fingerprint: fingerprint(publicKey), value: sign(null, signedBytes(forged), mallory.privateKey).toString('base64') },
    }
    writeFileSync(`${out}.manifest.json`, JSON.stringify(manifest))
    const r = await runCli(['verify-export', out, `${out}.manifest.json`], {})
    expect(r.code, r.stdout).toBe(2)
    expect(r.stdout).not.toMatch(/^OK/m)
    expect(r.stdout).toContain('CANNOT TELL who signed')
  }, 240_000)
})

describe('8. headers', () => {
  it('sends a CSP with base-uri and form-action, nosniff and no referrer', async () => {
    const page = await api.inject({ method: 'GET', url: '/' })
    expect(page.headers['content-security-policy']).toContain("base-uri 'none'")
    expect(page.headers['content-security-policy']).toContain("form-action 'self'")
    for (const url of ['/', '/v1/whoami', '/healthz']) {
      const res = await api.inject({ method: 'GET', url })
      expect(res.headers['x-content-type-options'], url).toBe('nosniff')
      expect(res.headers['referrer-policy'], url).toBe('no-referrer')
    }
  })
})

describe('9. sensitive actions need a current code', () => {
  it('refuses resume, an admin token and a forced revoke to a bearer token alone, with 401 step_up_required, audited', async () => {
    const admin = await bearer(rt, 'admin', 'breaks-no-otp')
    const key = { account_id: 'acct_Breaks001', key_id: 'key_BreaksForce1' }
    await rt.pipeline.ingest([{ raw: Buffer.from(JSON.stringify(lifecycle(key, 'created', ago(new Date().toISOString(), { days: 3 }), { secret_sha256: sha256('force') }))), origin: { source: 'file' } }])
    const calls = [
      { method: 'POST' as const, url: '/v1/response/resume', payload: { reason: 'back on' } },
      { method: 'POST' as const, url: '/v1/tokens', payload: { role: 'admin', name: 'breaks-escalate' } },
      { method: 'POST' as const, url: `/v1/keys/${key.key_id}/revoke`, payload: { reason: 'gone', force: true } },
    ]
    for (const call of calls) {
      const res = await api.inject({ ...call, headers: admin })
      expect(res.statusCode, `${call.url}: ${res.body}`).toBe(401)
      expect(res.json().error.code, call.url).toBe('step_up_required')
    }
    // The audit hook writes its record once the response is sent (onResponse), so the last one can trail inject().
    const denied = await waitFor('the three denied records', async () => {
      const mine = (await records()).filter((r) => r.actor === 'token:breaks-no-otp')
      return mine.length >= calls.length && mine
    }, 10_000)
    expect(denied.map((r) => [r.action, r.outcome])).toEqual([
      ['response.resume', 'denied'],
      ['token.create', 'denied'],
      ['key.revoke', 'denied'],
    ])
    expect(await count(rt.storage, "SELECT count() AS n FROM actions FINAL WHERE key_id = {k:String}", { k: key.key_id })).toBe(0)
  })
})
