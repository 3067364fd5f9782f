// Leak intake over HTTP on the real engine: the contract's leak.reported and GitHub's signed partner format. A
// matching report raises leak.public_report at once; forged, unsigned and replayed GitHub payloads get 401 and
// change nothing; no leaked token is stored.
import { createHash, generateKeyPairSync, randomUUID, sign } from 'node:crypto'
import { Readable } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildApi } from '../api/server.ts'
import type { Storage } from '../clickhouse/client.ts'
import type { DetectionEngine } from '../detectors/engine.ts'
import type { FindingStore } from '../detectors/findings.ts'
import { ago, lifecycle, sha256 } from '../detectors/fixtures/events.ts'
import { ingestNdjson } from '../ingest/ndjson.ts'
import { apiDepsOf, type Runtime } from '../app/runtime.ts'
import { bearer, count, openTestRuntime } from './helpers.ts'

const github = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
const stranger = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
const KEY_ID = 'bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c'
const SECRET = `sk_live_${randomUUID().replaceAll('-', '')}`
const key = { account_id: 'acct_GhLeak0001', key_id: 'key_GhLeak0001' }

let rt: Runtime
let storage: Storage
let app: FastifyInstance
let findings: FindingStore
let detection: DetectionEngine
let ingestToken: { authorization: string }

beforeAll(async () => {
  rt = await openTestRuntime()
  ;({ storage, findings, detection } = rt)
  const now = new Date().toISOString()
  await ingestNdjson(Readable.from([Buffer.from(JSON.stringify(lifecycle(key, 'created', ago(now, { days: 3 }), { secret_sha256: sha256(SECRET) })))]), rt.pipeline, { source: 'file' })
  app = await buildApi(apiDepsOf(rt, { githubKeys: [{ key_identifier: KEY_ID, key: github.publicKey.export({ type: 'spki', format: 'pem' }).toString(), is_current: true }] }))
  ingestToken = await bearer(rt, 'ingest')
})
afterAll(async () => {
  await app.close()
  await rt.close()
})

const signed = (body: string, privateKey = github.privateKey) => sign('sha256', Buffer.from(body), privateKey).toString('base64')
const post = (body: string, headers: Record<string, string>) =>
  app.inject({ method: 'POST', url: '/v1/leaks/github', payload: body, headers: { 'content-type': 'application/json', ...headers } })

describe('GitHub secret scanning intake', () => {
  const body = JSON.stringify([
    { token: SECRET, type: 'paykore_secret_key', url: 'https://github.com/example/shop/blob/0a1b2c/config.js', source: 'content' },
    { token: 'sk_live_NotOneOfOurKeys000000', type: 'paykore_secret_key', url: 'https://github.com/x/y', source: 'content' },
  ])

  it('rejects unsigned, forged and unknown-key payloads with 401 and stores nothing', async () => {
    expect((await post(body, {})).statusCode).toBe(401)
    expect((await post(body, { 'github-public-key-identifier': KEY_ID, 'github-public-key-signature': signed(body, stranger.privateKey) })).statusCode).toBe(401)
    expect((await post(body, { 'github-public-key-identifier': 'not-a-key', 'github-public-key-signature': signed(body) })).statusCode).toBe(401)
    const tampered = body.replace('example/shop', 'example/shoq')
    const forged = await post(tampered, { 'github-public-key-identifier': KEY_ID, 'github-public-key-signature': signed(body) })
    expect(forged.statusCode).toBe(401)
    expect(forged.json()).toMatchObject({ error: { code: 'bad_signature' } })
    expect(await count(storage, 'SELECT count() AS n FROM leak_reports')).toBe(0)
  })

  it('labels a signed report, stores only hashes, and raises leak.public_report at once', async () => {
    const r = await post(body, { 'github-public-key-identifier': KEY_ID, 'github-public-key-signature': signed(body) })
    expect(r.statusCode).toBe(200)
    expect(r.json()).toEqual([
      { token_hash: createHash('sha256').update(SECRET).digest('hex'), token_type: 'paykore_secret_key', label: 'true_positive' },
      { token_hash: createHash('sha256').update('sk_live_NotOneOfOurKeys000000').digest('hex'), token_type: 'paykore_secret_key', label: 'false_positive' },
    ])
    expect(await count(storage, 'SELECT count() AS n FROM leak_reports')).toBe(2)
    const everything = await (await storage.client.query({ query: 'SELECT * FROM leak_reports', format: 'JSONEachRow' })).text()
    expect(everything).not.toContain(SECRET)
    await detection.runFresh('leak.public_report') // the run the intake started, or one right after it
    const raised = await findings.list({ detector: 'leak.public_report' })
    expect(raised).toEqual([expect.objectContaining({ key_id: key.key_id, account_id: key.account_id, severity: 'critical', status: 'open' })])
  })

  it('rejects the same signed payload delivered again', async () => {
    const headers = { 'github-public-key-identifier': KEY_ID, 'github-public-key-signature': signed(body) }
    // ECDSA signatures are randomised: a replay is the very same signature bytes.
    const first = await post(JSON.stringify([{ token: 'sk_live_ReplayToken00000001', type: 't', url: null, source: 'content' }]), headers)
    expect(first.statusCode).toBe(401) // not the body this signature covers
    const once = JSON.stringify([{ token: 'sk_live_ReplayToken00000002', type: 't', url: null, source: 'content' }])
    const h = { 'github-public-key-identifier': KEY_ID, 'github-public-key-signature': signed(once) }
    expect((await post(once, h)).statusCode).toBe(200)
    const replay = await post(once, h)
    expect(replay.statusCode).toBe(401)
    expect(replay.json()).toMatchObject({ error: { code: 'replayed' } })
    // Another instance (or this one after a restart) refuses it too: the guard is in ClickHouse.
    const other = await buildApi(apiDepsOf(rt, { githubKeys: [{ key_identifier: KEY_ID, key: github.publicKey.export({ type: 'spki', format: 'pem' }).toString(), is_current: true }] }))
    try {
      const elsewhere = await other.inject({ method: 'POST', url: '/v1/leaks/github', payload: once, headers: { 'content-type': 'application/json', ...h } })
      expect(elsewhere.statusCode).toBe(401)
    } finally {
      await other.close()
    }
  })

  it('answers 400 naming the problem for a signed body that is not a report', async () => {
    const bad = JSON.stringify({ token: 'x' })
    const r = await post(bad, { 'github-public-key-identifier': KEY_ID, 'github-public-key-signature': signed(bad) })
    expect(r.statusCode).toBe(400)
    expect(r.json()).toMatchObject({ error: { code: 'invalid_report' } })
  })
})

describe('POST /v1/leaks', () => {
  it('accepts a contract leak.reported and rejects an invalid one with the reason', async () => {
    const event = { event_id: randomUUID(), type: 'leak.reported', schema_version: 1, occurred_at: new Date().toISOString(), account_id: 'acct_Internal01', token_sha256: sha256('whatever'), source: 'internal', url: null }
    const ok = await app.inject({ method: 'POST', url: '/v1/leaks', payload: JSON.stringify(event), headers: { 'content-type': 'application/json', ...ingestToken } })
    expect(ok.statusCode).toBe(202)
    expect(ok.json()).toEqual({ accepted: 1, duplicate: false })
    const again = await app.inject({ method: 'POST', url: '/v1/leaks', payload: JSON.stringify(event), headers: { 'content-type': 'application/json', ...ingestToken } })
    expect(again.json()).toEqual({ accepted: 0, duplicate: true })
    const bad = await app.inject({ method: 'POST', url: '/v1/leaks', payload: JSON.stringify({ ...event, event_id: randomUUID(), source: undefined }), headers: { 'content-type': 'application/json', ...ingestToken } })
    expect(bad.statusCode).toBe(400)
    expect(bad.json()).toMatchObject({ error: { code: 'schema_violation' } })
    expect(bad.json().error.message).toContain('source')
  })
})
