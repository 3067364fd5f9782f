// Compliance exports on the real engine: the security log (auth events, key lifecycle, keywatch's own audit trail)
// and key usage, in CSV, NDJSON and Parquet, filtered, with a signed manifest that verify-export checks offline and
// that catches a tampered file or manifest; over the API for an auditor only, recorded in the audit trail.
import { createHash, generateKeyPairSync } from 'node:crypto'
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildApi } from '../api/server.ts'
import { apiDepsOf, type Runtime } from '../app/runtime.ts'
import { queryRows } from '../clickhouse/client.ts'
import { ago, auth, leak, lifecycle, sha256, usage } from '../detectors/fixtures/events.ts'
import { exportToFile, verifyExport, type Manifest } from '../exports/export.ts'
import { exportPeriod } from '../exports/schedule.ts'
import { bearer, openTestRuntime, runCli, tempDir } from './helpers.ts'
import { waitFor } from './kafka/admin.ts'

let rt: Runtime
let api: FastifyInstance
const out = tempDir('keywatch-exports-')
const now = new Date().toISOString()
const from = ago(now, { days: 2 })
const to = new Date(Date.now() + 60_000).toISOString()
const shop = { account_id: 'acct_Export001', key_id: 'key_Export001', key_prefix: 'sk_live_Exp1' }
const other = { account_id: 'acct_Export002', key_id: 'key_Export002', key_prefix: 'sk_live_Exp2' }

beforeAll(async () => {
  rt = await openTestRuntime({ EXPORT_DIR: join(out, 'server') })
  const events = [
    auth(shop.account_id, 'login.succeeded', ago(now, { hours: 5 }), { actor_email: 'ana@shop.example' }),
    auth(shop.account_id, 'mfa.failed', ago(now, { hours: 4 }), { actor_email: 'ana@shop.example' }),
    auth(other.account_id, 'login.succeeded', ago(now, { hours: 3 }), { actor_email: 'bo@other.example' }),
    auth(shop.account_id, 'login.succeeded', ago(now, { days: 5 })), // outside the range
    lifecycle(shop, 'created', ago(now, { hours: 6 }), { secret_sha256: sha256('s1') }),
    lifecycle(shop, 'revoked', ago(now, { hours: 1 }), { reason: 'leaked' }),
    lifecycle(other, 'created', ago(now, { hours: 6 }), { secret_sha256: sha256('s2') }),
    ...Array.from({ length: 50 }, (_, i) => usage(shop, ago(now, { minutes: 100 + i }), { user_agent: i === 0 ? '=HYPERLINK("http://evil.example","x")' : 'paykore-node/3.2.1' })),
    // A cell with a line break and quotes: a CSV row is not a line.
    ...Array.from({ length: 20 }, (_, i) => usage(other, ago(now, { minutes: 100 + i }), i === 0 ? { user_agent: 'curl/8.0 "probe"\nsecond line' } : {})),
  ]
  const { rejections } = await rt.pipeline.ingest(events.map((e) => ({ raw: Buffer.from(JSON.stringify(e)), origin: { source: 'file' as const } })))
  expect(rejections.map((r) => r.detail)).toEqual([])
  await rt.audit.record({ actor: 'token:ops', action: 'finding.acknowledge', target: 'fnd_1', request_id: 'r1', outcome: 'ok' })
  api = await buildApi(apiDepsOf(rt))
})

afterAll(async () => {
  await api?.close()
  await rt?.close()
})

const exportTo = (file: string, dataset: 'security-log' | 'key-usage' | 'findings' | 'actions', format: 'csv' | 'ndjson' | 'parquet', filter: Record<string, string> = {}) =>
  exportToFile(rt.storage, { dataset, format, filter: { from, to, ...filter }, actor: 'cli:tester' }, join(out, file), rt.exportSigningKey(), rt.version)

describe('the security log', () => {
  it('holds auth events, key lifecycle and the audit trail in time order, as NDJSON', async () => {
    const m = await exportTo('security.ndjson', 'security-log', 'ndjson')
    const rows = readFileSync(join(out, 'security.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, string>)
    expect(m.rows).toBe(rows.length)
    expect(rows.map((r) => `${r.source}:${r.action}`)).toEqual([
      'key_lifecycle:created',
      'key_lifecycle:created',
      'auth:login.succeeded',
      'auth:mfa.failed',
      'auth:login.succeeded',
      'key_lifecycle:revoked',
      'keywatch:finding.acknowledge',
    ])
    const times = rows.map((r) => r.occurred_at!)
    expect([...times].sort()).toEqual(times)
    expect(rows.find((r) => r.action === 'revoked')).toMatchObject({ target: shop.key_id, key_prefix: 'sk_live_Exp1', actor: 'user:usr_Ana01', detail: 'leaked' })
    expect(JSON.stringify(rows)).not.toContain(sha256('s1')) // no secret hashes in the log
  })

  it('filters by account, actor and action', async () => {
    const m = await exportTo('shop.ndjson', 'security-log', 'ndjson', { account: shop.account_id, action: 'login.succeeded' })
    expect(m.rows).toBe(1)
    expect(m.filters).toEqual({ account: shop.account_id, actor: null, action: 'login.succeeded' })
    expect((await exportTo('ana.ndjson', 'security-log', 'ndjson', { actor: 'ana@shop.example' })).rows).toBe(2)
  })
})

describe('key usage', () => {
  it('exports as CSV with a header, a row per request, and formula cells neutralised', async () => {
    const m = await exportTo('usage.csv', 'key-usage', 'csv', { account: shop.account_id })
    const lines = readFileSync(join(out, 'usage.csv'), 'utf8').trim().split('\n')
    expect(lines[0]).toMatch(/^"occurred_at","event_id","account_id","key_id"/)
    expect(lines).toHaveLength(51)
    expect(m.rows).toBe(50)
    const evil = lines.find((l) => l.includes('HYPERLINK'))!
    expect(evil).toContain(`"'=HYPERLINK(`)
    expect(evil).not.toMatch(/,"=HYPERLINK/)
  })

  it('counts CSV rows, not lines, when a cell holds a line break; a removed row is named', async () => {
    const m = await exportTo('other.csv', 'key-usage', 'csv', { account: other.account_id })
    const text = readFileSync(join(out, 'other.csv'), 'utf8')
    expect(text.trim().split('\n')).toHaveLength(22) // header, 20 rows, one of them on two lines
    expect(text).toContain('"curl/8.0 ""probe""\nsecond line"')
    expect(m.rows).toBe(20)
    expect(await verifyExport(join(out, 'other.csv'), join(out, 'other.csv.manifest.json'))).toMatchObject({ ok: true })
    const lines = text.split('\n')
    writeFileSync(join(out, 'other-cut.csv'), [...lines.slice(0, -2), ''].join('\n'))
    expect((await verifyExport(join(out, 'other-cut.csv'), join(out, 'other.csv.manifest.json'))).problems).toEqual([
      expect.stringMatching(/^size: /),
      expect.stringMatching(/^sha256: /),
      'rows: the file has 19 rows, the manifest says 20',
    ])
  })

  it('exports as Parquet that reads back whole', async () => {
    const m = await exportTo('usage.parquet', 'key-usage', 'parquet')
    const [back] = await queryRows<{ n: number; keys: number }>(rt.storage.client, `SELECT count() AS n, uniqExact(key_id) AS keys FROM file({p:String}, 'Parquet')`, { p: join(out, 'usage.parquet') })
    expect(back).toEqual({ n: 70, keys: 2 })
    expect(m.rows).toBe(70)
    expect(readFileSync(join(out, 'usage.parquet')).subarray(0, 4).toString()).toBe('PAR1')
  })

  it('refuses filters it does not have and an empty range', async () => {
    await expect(exportTo('x.csv', 'key-usage', 'csv', { from: now, to: from })).rejects.toThrow(/must be before/)
    const viaApi = await api.inject({ method: 'GET', url: `/v1/exports/key-usage?from=${from}&to=${to}&actor=x`, headers: await bearer(rt, 'auditor') })
    expect(viaApi.statusCode).toBe(400)
    expect(viaApi.json().error.message).toMatch(/^query\.actor: /)
  })

  it('streams 200,000 rows', async () => {
    await rt.storage.client.command({
      query: `INSERT INTO key_usage (event_id, occurred_at, account_id, key_id, key_prefix, key_kind, mode, request_id, method, endpoint, scope, status, ip)
              SELECT generateUUIDv4(), now64(3) - toIntervalSecond(number % 3600), 'acct_Bulk0001', concat('key_Bulk', toString(number % 100)), 'sk_live_Bulk', 'secret', 'live',
                     concat('req_', toString(number)), 'GET', '/v1/payments', 'payments', 200, '10.0.0.1'
              FROM numbers(200000)`,
    })
    const progress: number[] = []
    const m = await exportToFile(rt.storage, { dataset: 'key-usage', format: 'ndjson', filter: { from, to, account: 'acct_Bulk0001' }, actor: 'cli:tester' }, join(out, 'bulk.ndjson'), rt.exportSigningKey(), rt.version, (bytes) => progress.push(bytes))
    expect(m.rows).toBe(200_000)
    expect(progress.at(-1)).toBe(m.bytes)
    expect(await verifyExport(join(out, 'bulk.ndjson'), join(out, 'bulk.ndjson.manifest.json'))).toMatchObject({ ok: true })
  })
})

describe('the manifest', () => {
  let m: Manifest
  beforeAll(async () => {
    m = await exportTo('signed.csv', 'security-log', 'csv')
  })

  it('says what the export is, and verifies', async () => {
    const file = readFileSync(join(out, 'signed.csv'))
    expect(m).toMatchObject({ dataset: 'security-log', format: 'csv', bytes: file.length, sha256: createHash('sha256').update(file).digest('hex'), generated_by: 'cli:tester', signature: { algorithm: 'Ed25519' } })
    expect(m.range).toEqual({ from: new Date(from).toISOString(), to: new Date(to).toISOString() })
    // The audit trail's head, signed in the manifest, anchors the chain outside ClickHouse.
    expect(m.audit_head).toEqual(await rt.audit.currentHead())
    expect(await rt.audit.verify({ anchors: [{ ...m.audit_head!, source: `manifest ${m.export_id}` }] })).toMatchObject({ ok: true })
    const publicKey = readFileSync(rt.config.exports.signingKeyFile.replace(/\.pem$/, '.pub.pem'), 'utf8')
    expect(await verifyExport(join(out, 'signed.csv'), join(out, 'signed.csv.manifest.json'), publicKey)).toMatchObject({ ok: true, trustedKey: true })
  })

  it('catches a changed file, a changed manifest and a stranger’s key; keywatch verify-export exits 1', async () => {
    writeFileSync(join(out, 'tampered.csv'), readFileSync(join(out, 'signed.csv')))
    appendFileSync(join(out, 'tampered.csv'), '"2026-11-24 10:00:00.000","auth","x","acct_Export001","mallory","login.succeeded","","","","","ok",""\n')
    const changedFile = await verifyExport(join(out, 'tampered.csv'), join(out, 'signed.csv.manifest.json'))
    expect(changedFile.ok).toBe(false)
    expect(changedFile.problems.join('\n')).toMatch(/size: .*\n.*sha256: /)

    expect(changedFile.problems.at(-1)).toBe(`rows: the file has ${m.rows + 1} rows, the manifest says ${m.rows}`)

    // Fixing the manifest's hash, size and rows to match breaks its signature.
    const forged = { ...m, rows: m.rows + 1, bytes: readFileSync(join(out, 'tampered.csv')).length, sha256: createHash('sha256').update(readFileSync(join(out, 'tampered.csv'))).digest('hex') }
    writeFileSync(join(out, 'forged.manifest.json'), JSON.stringify(forged))
    expect((await verifyExport(join(out, 'tampered.csv'), join(out, 'forged.manifest.json'))).problems).toEqual([expect.stringMatching(/^signature: does not match/)])

    const stranger = generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }).toString()
    expect((await verifyExport(join(out, 'signed.csv'), join(out, 'signed.csv.manifest.json'), stranger)).problems).toEqual([expect.stringMatching(/^signature: made with key/)])

    writeFileSync(join(out, 'stranger.pem'), stranger)
    const publicKeyFile = rt.config.exports.signingKeyFile.replace(/\.pem$/, '.pub.pem')
    const cli = await runCli(['verify-export', join(out, 'tampered.csv'), join(out, 'signed.csv.manifest.json'), '--public-key', publicKeyFile], {})
    expect(cli.code).toBe(1)
    expect(cli.stdout).toContain('MISMATCH sha256')
    const good = await runCli(['verify-export', join(out, 'signed.csv'), join(out, 'signed.csv.manifest.json'), '--public-key', publicKeyFile], {})
    expect(good.code, good.stdout + good.stderr).toBe(0)
    const pinned = await runCli(['verify-export', join(out, 'signed.csv'), join(out, 'signed.csv.manifest.json')], { EXPORT_PUBLIC_KEY_FILE: publicKeyFile })
    expect(pinned.code, pinned.stdout + pinned.stderr).toBe(0)
    expect((await runCli(['verify-export', join(out, 'signed.csv'), join(out, 'signed.csv.manifest.json'), '--public-key', join(out, 'stranger.pem')], {})).code).toBe(1)
  }, 180_000) // four runs of the CLI
})

describe('scheduled exports', () => {
  it("write the day before and the month before, every dataset, each with a signed manifest", async () => {
    const dir = join(out, 'scheduled')
    const options = { storage: rt.storage, dir, format: 'ndjson' as const, signingKey: rt.exportSigningKey, version: rt.version, log: rt.log }
    const daily = await exportPeriod(options, 'daily', new Date(Date.now() + 86_400_000))
    const today = new Date().toISOString().slice(0, 10)
    expect(daily.map((m) => m.file)).toEqual([`security-log-${today}.ndjson`, `key-usage-${today}.ndjson`, `findings-${today}.ndjson`, `actions-${today}.ndjson`, `incidents-${today}.ndjson`])
    expect(daily.map((m) => m.generated_by)).toEqual(['keywatch', 'keywatch', 'keywatch', 'keywatch', 'keywatch'])
    const [day] = await queryRows<{ n: number }>(rt.storage.client, `SELECT count() AS n FROM key_usage WHERE toDate(occurred_at) = toDate({d:String})`, { d: today })
    expect(daily[1]!.rows).toBe(Number(day!.n))
    for (const m of daily) expect(await verifyExport(join(dir, 'daily', m.file), join(dir, 'daily', `${m.file}.manifest.json`))).toMatchObject({ ok: true })
    const monthly = await exportPeriod(options, 'monthly', new Date(Date.UTC(2027, 0, 15)))
    expect(monthly[0]!.range).toEqual({ from: '2026-12-01T00:00:00.000Z', to: '2027-01-01T00:00:00.000Z' })
  })
})

describe('GET /v1/exports', () => {
  it('streams an export to an auditor, with its digest and a manifest link, and records the read', async () => {
    const auditor = await bearer(rt, 'auditor', 'external-auditor')
    expect((await api.inject({ method: 'GET', url: `/v1/exports/security-log?from=${from}&to=${to}`, headers: await bearer(rt, 'viewer') })).statusCode).toBe(403)
    const res = await api.inject({ method: 'GET', url: `/v1/exports/security-log?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}&format=ndjson`, headers: auditor })
    expect(res.statusCode).toBe(200)
    const id = res.headers['x-keywatch-export-id'] as string
    // Streamed while the engine writes: the digest and the row count come as trailers, and in the manifest.
    expect(res.trailers['repr-digest']).toBe(`sha-256=:${createHash('sha256').update(res.rawPayload).digest('base64')}:`)
    const manifest = (await api.inject({ method: 'GET', url: `/v1/exports/${id}/manifest`, headers: auditor })).json() as Manifest
    expect(manifest).toMatchObject({ export_id: id, rows: Number(res.trailers['x-keywatch-rows']), generated_by: 'token:external-auditor' })
    expect(manifest.sha256).toBe(createHash('sha256').update(res.rawPayload).digest('hex'))
    writeFileSync(join(out, 'api.ndjson'), res.rawPayload)
    writeFileSync(join(out, 'api.manifest.json'), JSON.stringify(manifest))
    const key = (await api.inject({ method: 'GET', url: '/v1/exports/signing-key', headers: auditor })).json() as { public_key: string }
    expect(await verifyExport(join(out, 'api.ndjson'), join(out, 'api.manifest.json'), key.public_key)).toMatchObject({ ok: true })
    const reads = await queryRows<{ actor: string; outcome: string; detail: string }>(rt.storage.client, "SELECT actor, outcome, detail FROM audit_trail WHERE action = 'export.read' ORDER BY seq")
    expect(reads.map((r) => [r.actor.split('-')[0], r.outcome])).toEqual([['token:auditor', 'refused'], ['token:viewer', 'denied'], ['token:external', 'ok']])
    const read = reads[2]
    expect(JSON.parse(read!.detail)).toMatchObject({ export_id: id, dataset: 'security-log', sha256: manifest.sha256 })
  })
})

// Runs last: it adds rows (a leak report, keywatch's action on it) that the exact lists above do not expect.
describe('what keywatch did, for an auditor of one account', () => {
  const leaked = { account_id: 'acct_Export003', key_id: 'key_Export003', key_prefix: 'sk_live_Exp3' }
  const LEAKED_SECRET = 'sk_live_Exp3_the_whole_leaked_secret'

  it("puts keywatch's actions on the account's keys and its leak reports in the security log, and exports findings with their history and actions", async () => {
    await rt.startServices() // the response engine acts on the leak
    const events = [lifecycle(leaked, 'created', ago(now, { hours: 7 }), { secret_sha256: sha256(LEAKED_SECRET) }), leak(leaked.account_id, ago(now, { minutes: 2 }), LEAKED_SECRET)]
    const { rejections } = await rt.pipeline.ingest(events.map((e) => ({ raw: Buffer.from(JSON.stringify(e)), origin: { source: 'file' as const } })))
    expect(rejections).toEqual([])
    // No key service here: keywatch's revoke fails, and says so in its own audit trail.
    await waitFor("keywatch's audit record of its revoke", async () =>
      (await queryRows<{ n: number }>(rt.storage.client, "SELECT count() AS n FROM audit_trail WHERE actor = 'keywatch' AND action = 'key.revoke' AND target = {k:String}", { k: leaked.key_id }))[0]!.n > 0,
    20_000)
    const finding = await waitFor('the leak finding', async () => (await rt.findings.list({ detector: 'leak.public_report', key_id: leaked.key_id }))[0], 20_000)
    await rt.findings.setStatus(finding!.finding_id, 'acknowledged', 'token:ops', 'looking at it')

    const end = new Date(Date.now() + 60_000).toISOString()
    const m = await exportTo('acct3.ndjson', 'security-log', 'ndjson', { account: leaked.account_id, to: end })
    const rows = readFileSync(join(out, 'acct3.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, string>)
    expect(m.rows).toBe(rows.length)
    expect(rows.every((r) => r.account_id === leaked.account_id)).toBe(true)
    // The failed revoke is tried again (at most 3 attempts in all) when its finding fires again: the leak detector's
    // run each minute may fall inside this test, so there may be one attempt or more, each in the log.
    const attempts = rows.length - 2
    expect(attempts).toBeGreaterThanOrEqual(1)
    expect(attempts).toBeLessThanOrEqual(3)
    expect(rows.map((r) => `${r.source}:${r.action}`)).toEqual(['key_lifecycle:created', 'leak_report:leak.reported', ...Array(attempts).fill('keywatch:key.revoke')])
    expect(rows[1]).toMatchObject({ actor: 'github', key_prefix: 'sk_live_Exp3' })
    for (const attempt of rows.slice(2)) expect(attempt).toMatchObject({ actor: 'keywatch', target: leaked.key_id, key_prefix: 'sk_live_Exp3', outcome: 'failed' })
    const text = readFileSync(join(out, 'acct3.ndjson'), 'utf8')
    expect(text).not.toContain(LEAKED_SECRET)
    expect(text).not.toContain(sha256(LEAKED_SECRET)) // at most the hash's first 12 characters

    const f = await exportTo('acct3-findings.ndjson', 'findings', 'ndjson', { account: leaked.account_id, to: end })
    const findings = readFileSync(join(out, 'acct3-findings.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, string>)
    expect(f.rows).toBe(findings.length)
    const exported = findings.find((x) => x.finding_id === finding!.finding_id)!
    expect(exported).toMatchObject({ detector: 'leak.public_report', status: 'acknowledged', status_changed_by: 'token:ops' })
    const history = JSON.parse(exported.status_history!) as string[][]
    expect(history.map((h) => [h[1], h[2], h[3]])).toContainEqual(['open', 'acknowledged', 'token:ops'])

    const a = await exportTo('acct3-actions.csv', 'actions', 'csv', { account: leaked.account_id, to: end })
    const lines = readFileSync(join(out, 'acct3-actions.csv'), 'utf8').trim().split('\n')
    // Every attempt so far (a retry may have come since the security log was exported).
    expect(a.rows).toBeGreaterThanOrEqual(attempts)
    expect(a.rows).toBeLessThanOrEqual(3)
    expect(lines).toHaveLength(a.rows + 1)
    expect(lines[0]).toMatch(/^"requested_at","action_id","command_id","command","account_id"/)
    for (const line of lines.slice(1)) {
      expect(line).toContain('"auto:leak.public_report"')
      expect(line).toContain(`"${leaked.key_id}"`)
    }
    expect(await verifyExport(join(out, 'acct3-actions.csv'), join(out, 'acct3-actions.csv.manifest.json'))).toMatchObject({ ok: true })
    const refused = await api.inject({ method: 'GET', url: `/v1/exports/actions?from=${from}&to=${to}&actor=keywatch`, headers: await bearer(rt, 'auditor') })
    expect(refused.statusCode).toBe(400)
  })
})
