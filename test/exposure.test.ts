// The exposure report of a leaked key on the real engine: the window runs from the earliest evidence of exposure
// (exposed_since, an anomaly finding, else 30 days before the first report) to the revocation plus the cache grace,
// and the figures are what the key did inside it (requests by endpoint and status, IPs, countries, ASNs, writes,
// money by currency, every money-moving request); what came after is counted apart. JSON and CSV.
import { Readable } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildApi } from '../api/server.ts'
import { apiDepsOf, openRuntime, type Runtime } from '../app/runtime.ts'
import { parseConfig } from '../config/config.ts'
import { ago, leak, lifecycle, sha256, usage } from '../detectors/fixtures/events.ts'
import { ingestNdjson } from '../ingest/ndjson.ts'
import type { ExposureReport } from '../response/exposure.ts'
import { bearer, tempDir } from './helpers.ts'

const log = pino({ level: 'silent' })
const now = new Date().toISOString()
const key = { account_id: 'acct_Expose001', key_id: 'key_Expose001', key_prefix: 'sk_live_Ex01', key_kind: 'secret' as const, mode: 'live' as const }
const SECRET = 'sk_live_Ex01_the_whole_secret_string'
const leakedAt = ago(now, { days: 3 })
const revokedAt = ago(now, { days: 1 })
const at = (hoursAfterLeak: number) => new Date(Date.parse(leakedAt) + hoursAfterLeak * 3_600_000).toISOString()
const plus = (iso: string, ms: number) => new Date(Date.parse(iso) + ms).toISOString()
// A key whose reporter knows when it became public, used by an attacker before and after the report.
const early = { account_id: 'acct_Expose002', key_id: 'key_Expose002', key_prefix: 'sk_live_Ex02', key_kind: 'secret' as const, mode: 'live' as const }
const EARLY_SECRET = 'sk_live_Ex02_another_whole_secret'
const earlyReport = ago(now, { days: 2 })
const earlyExposed = ago(now, { days: 6 })
const earlyRevoked = ago(now, { days: 1 })
// A key reported and revoked at the same instant, with nothing else known.
const instant = { account_id: 'acct_Expose003', key_id: 'key_Expose003', key_prefix: 'sk_live_Ex03', key_kind: 'secret' as const, mode: 'live' as const }
const INSTANT_SECRET = 'sk_live_Ex03_yet_another_secret'

let rt: Runtime
let api: FastifyInstance
let viewer: { authorization: string }

beforeAll(async () => {
  rt = await openRuntime(parseConfig({ KEYWATCH_DATA_DIR: tempDir(), LOG_LEVEL: 'silent' }), log)
  const events = [
    lifecycle(key, 'created', ago(now, { days: 40 }), { secret_sha256: sha256(SECRET) }),
    // Before the leak: the merchant's own traffic, outside the window.
    usage(key, ago(leakedAt, { hours: 5 }), { ip: '192.0.2.1', country: 'PH', asn: 9299 }),
    leak(key.account_id, leakedAt, SECRET),
    // Inside the window: the attacker's probing and payments, and the merchant's traffic.
    usage(key, at(1), { ip: '203.0.113.9', country: 'RU', asn: 64500, method: 'GET', endpoint: '/v1/customers', status: 200 }),
    usage(key, at(2), { ip: '203.0.113.9', country: 'RU', asn: 64500, method: 'POST', endpoint: '/v1/payments', status: 200, amount_minor: 150_000, currency: 'USD' }),
    usage(key, at(3), { ip: '203.0.113.9', country: 'RU', asn: 64500, method: 'POST', endpoint: '/v1/payments', status: 200, amount_minor: 99_00, currency: 'EUR' }),
    usage(key, at(4), { ip: '198.51.100.4', country: 'NL', asn: 64501, method: 'POST', endpoint: '/v1/refunds', status: 402, amount_minor: 500, currency: 'USD' }),
    usage(key, at(5), { ip: '192.0.2.1', country: 'PH', asn: 9299, method: 'GET', endpoint: '/v1/payments', status: 200 }),
    lifecycle(key, 'revoked', revokedAt, { actor: { type: 'monitor', id: 'keywatch' } }),
    // After the revocation: refused, and one let through by a cache.
    usage(key, new Date(Date.parse(revokedAt) + 60_000).toISOString(), { ip: '203.0.113.9', status: 200 }),
    usage(key, new Date(Date.parse(revokedAt) + 600_000).toISOString(), { ip: '203.0.113.9', status: 401, error_code: 'API_KEY_REVOKED' }),

    lifecycle(early, 'created', ago(now, { days: 10 }), { secret_sha256: sha256(EARLY_SECRET) }),
    usage(early, ago(now, { days: 8 }), { request_id: 'req_before_exposure', method: 'POST', endpoint: '/v1/payments', amount_minor: 100, currency: 'USD' }),
    usage(early, ago(now, { days: 5 }), { request_id: 'req_before_report', ip: '203.0.113.50', country: 'RU', asn: 64500, method: 'POST', endpoint: '/v1/payments', status: 200, amount_minor: 250_000, currency: 'USD' }),
    leak(early.account_id, earlyReport, EARLY_SECRET, { exposed_since: earlyExposed }),
    usage(early, plus(earlyReport, 3_600_000), { request_id: 'req_after_report', ip: '203.0.113.50', country: 'RU', asn: 64500, method: 'POST', endpoint: '/v1/transfers', status: 200, amount_minor: 75_000, currency: 'EUR' }),
    lifecycle(early, 'revoked', earlyRevoked, { actor: { type: 'monitor', id: 'keywatch' } }),
    // Inside the cache grace: money still moved after the revocation.
    usage(early, plus(earlyRevoked, 120_000), { request_id: 'req_in_cache_grace', ip: '203.0.113.50', country: 'RU', asn: 64500, method: 'POST', endpoint: '/v1/payments', status: 200, amount_minor: 9_999, currency: 'USD' }),
    usage(early, plus(earlyRevoked, 3_600_000), { request_id: 'req_after_window', ip: '203.0.113.50', status: 401, error_code: 'API_KEY_REVOKED', method: 'POST', endpoint: '/v1/payments', amount_minor: 5_000, currency: 'USD' }),

    lifecycle(instant, 'created', ago(now, { days: 3 }), { secret_sha256: sha256(INSTANT_SECRET) }),
    leak(instant.account_id, ago(now, { hours: 1 }), INSTANT_SECRET),
    lifecycle(instant, 'revoked', ago(now, { hours: 1 }), { actor: { type: 'monitor', id: 'keywatch' } }),
  ]
  const report = await ingestNdjson(Readable.from([Buffer.from(events.map((e) => JSON.stringify(e)).join('\n'))]), rt.pipeline, { source: 'file' })
  expect(report.errors).toEqual([])
  api = await buildApi(apiDepsOf(rt))
  viewer = await bearer(rt, 'viewer')
})

afterAll(async () => {
  await api?.close()
  await rt?.close()
})

describe('GET /v1/keys/:id/exposure', () => {
  it('reports what the key did from 30 days before the first leak report until its revocation plus the cache grace', async () => {
    const res = await api.inject({ method: 'GET', url: `/v1/keys/${key.key_id}/exposure`, headers: viewer })
    expect(res.statusCode).toBe(200)
    const r = res.json<ExposureReport>()
    expect(r.key).toMatchObject({ key_prefix: 'sk_live_Ex01', status: 'revoked' })
    expect(r.window).toEqual({
      from: plus(leakedAt, -30 * 86_400_000),
      to: plus(revokedAt, 300_000),
      basis: 'from 30 days before the first leak report (nothing says when the exposure began), until the revocation plus the 300 s cache grace',
    })
    // The merchant's use before the report and the request a cache let through after the revocation are in.
    expect(r.totals).toMatchObject({ requests: 7, accepted: 6, refused: 1, write_requests: 3, accepted_writes: 2, distinct_ips: 3, distinct_countries: 3, distinct_asns: 3 })
    expect(r.totals.first_use).toBe(ago(leakedAt, { hours: 5 }).replace('T', ' ').replace('Z', ''))
    expect(r.money).toEqual([
      { currency: 'USD', amount_minor: 150_000, payments: 1 },
      { currency: 'EUR', amount_minor: 9_900, payments: 1 },
    ])
    expect(r.writes).toEqual([
      { method: 'POST', endpoint: '/v1/payments', requests: 2, accepted: 2 },
      { method: 'POST', endpoint: '/v1/refunds', requests: 1, accepted: 0 },
    ])
    expect(r.by_endpoint_status).toContainEqual({ method: 'POST', endpoint: '/v1/refunds', status: 402, requests: 1 })
    expect(r.ips[0]).toMatchObject({ ip: '203.0.113.9', country: 'RU', asn: 64500, requests: 4, accepted: 4 })
    expect(r.countries.map((c) => c.country)).toEqual(['PH', 'RU', 'NL'])
    expect(r.after_window).toEqual({ requests: 1, accepted: 0 })
    expect(r.transactions.map((t) => [t.endpoint, t.status, t.amount_minor, t.currency, t.ip, t.asn, t.country])).toEqual([
      ['/v1/payments', 200, 150_000, 'USD', '203.0.113.9', 64500, 'RU'],
      ['/v1/payments', 200, 9_900, 'EUR', '203.0.113.9', 64500, 'RU'],
      ['/v1/refunds', 402, 500, 'USD', '198.51.100.4', 64501, 'NL'],
    ])
    expect(res.body).not.toContain(SECRET)
  })

  it("starts at the report's exposed_since and lists the money moved before the report and after the revocation", async () => {
    const res = await api.inject({ method: 'GET', url: `/v1/keys/${early.key_id}/exposure`, headers: viewer })
    expect(res.statusCode).toBe(200)
    const r = res.json<ExposureReport>()
    expect(r.window).toEqual({ from: earlyExposed, to: plus(earlyRevoked, 300_000), basis: "from the report's exposed_since, until the revocation plus the 300 s cache grace" })
    expect(r.transactions.map((t) => [t.request_id, t.endpoint, t.amount_minor, t.currency, t.ip, t.asn, t.country])).toEqual([
      ['req_before_report', '/v1/payments', 250_000, 'USD', '203.0.113.50', 64500, 'RU'],
      ['req_after_report', '/v1/transfers', 75_000, 'EUR', '203.0.113.50', 64500, 'RU'],
      ['req_in_cache_grace', '/v1/payments', 9_999, 'USD', '203.0.113.50', 64500, 'RU'],
    ])
    expect(r.transactions[0]!.occurred_at).toBe(ago(now, { days: 5 }).replace('T', ' ').replace('Z', ''))
    expect(r.money).toEqual([
      { currency: 'USD', amount_minor: 259_999, payments: 2 },
      { currency: 'EUR', amount_minor: 75_000, payments: 1 },
    ])
    expect(r.after_window).toEqual({ requests: 1, accepted: 0 })
    const csv = await api.inject({ method: 'GET', url: `/v1/keys/${early.key_id}/exposure?format=csv`, headers: viewer })
    expect(csv.body.split('\r\n')).toContain(`transaction,POST,/v1/transfers,200,203.0.113.50,RU,64500,EUR,,,75000,${plus(earlyReport, 3_600_000).replace('T', ' ').replace('Z', '')},,req_after_report`)
  })

  it('answers for a key reported and revoked at the same instant, never 400', async () => {
    const res = await api.inject({ method: 'GET', url: `/v1/keys/${instant.key_id}/exposure`, headers: viewer })
    expect(res.statusCode).toBe(200)
    const r = res.json<ExposureReport>()
    expect(r.window.basis).toMatch(/^from 30 days before the first leak report/)
    expect(r.totals.requests).toBe(0)
    expect(r.transactions).toEqual([])
    const same = await api.inject({ method: 'GET', url: `/v1/keys/${instant.key_id}/exposure?from=${encodeURIComponent(at(2))}&to=${encodeURIComponent(at(2))}&format=csv`, headers: viewer })
    expect(same.statusCode).toBe(200)
  })

  it('takes an explicit window, and CSV', async () => {
    const res = await api.inject({ method: 'GET', url: `/v1/keys/${key.key_id}/exposure?from=${encodeURIComponent(at(1.5))}&to=${encodeURIComponent(at(3.5))}&format=csv`, headers: viewer })
    expect(res.statusCode).toBe(200)
    expect(res.headers['content-type']).toContain('text/csv')
    const lines = res.body.trim().split('\r\n')
    expect(lines[0]).toBe('section,method,endpoint,status,ip,country,asn,currency,requests,accepted,amount_minor,first,last,request_id')
    expect(lines[1]).toBe(`window${','.repeat(11)}${at(1.5)},${at(3.5)},`)
    expect(lines.find((l) => l.startsWith('totals,'))).toMatch(/^totals,,,,,,,,2,2,,/)
    expect(lines).toContain('money,,,,,,,USD,1,,150000,,,')
    expect(lines).toContain('money,,,,,,,EUR,1,,9900,,,')
  })

  it('says what is wrong with a bad request', async () => {
    const unknown = await api.inject({ method: 'GET', url: '/v1/keys/key_NoSuchKey9/exposure', headers: viewer })
    expect(unknown.statusCode).toBe(404)
    const badKey = await api.inject({ method: 'GET', url: "/v1/keys/key_x'%20OR%201=1/exposure", headers: viewer })
    expect(badKey.statusCode).toBe(400)
    expect(badKey.json().error.message).toMatch(/^path\.id: /)
    const badFrom = await api.inject({ method: 'GET', url: `/v1/keys/${key.key_id}/exposure?from=yesterday`, headers: viewer })
    expect(badFrom.statusCode).toBe(400)
    expect(badFrom.json().error.message).toMatch(/^query\.from: /)
    const empty = await api.inject({ method: 'GET', url: `/v1/keys/${key.key_id}/exposure?from=${encodeURIComponent(at(3))}&to=${encodeURIComponent(at(2))}`, headers: viewer })
    expect(empty.statusCode).toBe(400)
  })
})
