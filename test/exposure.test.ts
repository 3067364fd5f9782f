// The exposure report of a leaked key on the real engine: the window runs from the first leak report to the
// revocation, and the figures are what the key did inside it (requests by endpoint and status, IPs, countries,
// ASNs, writes, money by currency); what came after the revocation is counted apart. JSON and CSV.
import { Readable } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildApi } from '../api/server.ts'
import { apiDepsOf, openRuntime, type Runtime } from '../cli/runtime.ts'
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
  it('reports what the key did from the first leak report until its revocation', async () => {
    const res = await api.inject({ method: 'GET', url: `/v1/keys/${key.key_id}/exposure`, headers: viewer })
    expect(res.statusCode).toBe(200)
    const r = res.json<ExposureReport>()
    expect(r.key).toMatchObject({ key_prefix: 'sk_live_Ex01', status: 'revoked' })
    expect(r.window).toEqual({ from: leakedAt, to: revokedAt, basis: 'from the first leak report, until the revocation' })
    expect(r.totals).toMatchObject({ requests: 5, accepted: 4, refused: 1, write_requests: 3, accepted_writes: 2, distinct_ips: 3, distinct_countries: 3, distinct_asns: 3 })
    expect(r.totals.first_use).toBe(at(1).replace('T', ' ').replace('Z', ''))
    expect(r.money).toEqual([
      { currency: 'USD', amount_minor: 150_000, payments: 1 },
      { currency: 'EUR', amount_minor: 9_900, payments: 1 },
    ])
    expect(r.writes).toEqual([
      { method: 'POST', endpoint: '/v1/payments', requests: 2, accepted: 2 },
      { method: 'POST', endpoint: '/v1/refunds', requests: 1, accepted: 0 },
    ])
    expect(r.by_endpoint_status).toContainEqual({ method: 'POST', endpoint: '/v1/refunds', status: 402, requests: 1 })
    expect(r.ips[0]).toMatchObject({ ip: '203.0.113.9', country: 'RU', asn: 64500, requests: 3, accepted: 3 })
    expect(r.countries.map((c) => c.country)).toEqual(['RU', 'NL', 'PH'])
    expect(r.after_window).toEqual({ requests: 2, accepted: 1 })
    expect(res.body).not.toContain(SECRET)
  })

  it('takes an explicit window, and CSV', async () => {
    const res = await api.inject({ method: 'GET', url: `/v1/keys/${key.key_id}/exposure?from=${encodeURIComponent(at(1.5))}&to=${encodeURIComponent(at(3.5))}&format=csv`, headers: viewer })
    expect(res.statusCode).toBe(200)
    expect(res.headers['content-type']).toContain('text/csv')
    const lines = res.body.trim().split('\r\n')
    expect(lines[0]).toBe('section,method,endpoint,status,ip,country,asn,currency,requests,accepted,amount_minor,first,last')
    expect(lines[1]).toBe(`window${','.repeat(11)}${at(1.5)},${at(3.5)}`)
    expect(lines.find((l) => l.startsWith('totals,'))).toMatch(/^totals,,,,,,,,2,2,,/)
    expect(lines).toContain('money,,,,,,,USD,1,,150000,,')
    expect(lines).toContain('money,,,,,,,EUR,1,,9900,,')
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
