// NDJSON through the shared pipeline on the real engine: field mapping, leaked tokens hashed, redeliveries stored once
// (rollups too), bad lines recorded with their reason and bytes while good ones land, the key inventory, the rollups.
import { createHash, randomUUID } from 'node:crypto'
import { Readable } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { queryRows, type Storage } from '../clickhouse/client.ts'
import { usageEvent } from '../contract/synthetic.ts'
import { ingestNdjson } from '../ingest/ndjson.ts'
import { IngestPipeline } from '../ingest/pipeline.ts'
import { EventWriter } from '../ingest/writer.ts'
import { contractExamples, count, openTestStorage, tempDir } from './helpers.ts'

let storage: Storage
let writer: EventWriter
let pipeline: IngestPipeline
const examples = contractExamples().filter((e) => e.type !== 'key.command')
const LEAKED = 'sk_live_4eC39HqLyjWDarjtT1zdp7dc' // the contract example's leaked token

beforeAll(async () => {
  storage = await openTestStorage(tempDir())
  writer = new EventWriter(storage, { maxRows: 1_000, maxWaitMs: 10, maxInflight: 2 })
  pipeline = new IngestPipeline(storage.client, writer)
})
afterAll(async () => {
  await writer.drain()
  await storage.close()
})

const ingest = (text: string, linesPerChunk?: number) => ingestNdjson(Readable.from([Buffer.from(text)]), pipeline, { source: 'file', linesPerChunk })
const lines = (events: unknown[]) => events.map((e) => JSON.stringify(e)).join('\n') + '\n'

describe('contract examples through the pipeline', () => {
  it('stores every example in its table, with the fields mapped', async () => {
    const report = await ingest(examples.map((e) => e.line).join('\n'))
    expect(report).toMatchObject({ accepted: examples.length, duplicates: 0, rejected: 0 })
    const n = (t: string) => examples.filter((e) => e.type === t).length
    expect(await count(storage, 'SELECT count() AS n FROM key_usage')).toBe(n('key.usage'))
    expect(await count(storage, 'SELECT count() AS n FROM key_ratelimits')).toBe(n('key.ratelimited'))
    expect(await count(storage, 'SELECT count() AS n FROM auth_events')).toBe(n('auth.event'))
    expect(await count(storage, 'SELECT count() AS n FROM key_lifecycle')).toBe(n('key.lifecycle'))
    expect(await count(storage, 'SELECT count() AS n FROM leak_reports')).toBe(n('leak.reported'))

    const [payment] = await queryRows<Record<string, unknown>>(
      storage.client,
      "SELECT key_id, amount_minor, currency, toString(occurred_at) AS at, status FROM key_usage WHERE event_id = 'e19abd00-c2ec-4f94-90d4-f8894dcc7837'",
    )
    expect(payment).toEqual({ key_id: 'key_01JProdApi02', amount_minor: 250000, currency: 'PHP', at: '2026-11-22 14:03:05.123', status: 200 })
    const [unknownKey] = await queryRows<{ key_id: string; error_code: string }>(
      storage.client,
      "SELECT key_id, error_code FROM key_usage WHERE event_id = '32496664-e077-4683-9e11-69f223154194'",
    )
    expect(unknownKey).toEqual({ key_id: '', error_code: 'INVALID_KEY' })
  })

  it('hashes a leaked token on arrival and stores it nowhere', async () => {
    const [leak] = await queryRows<{ token_sha256: string; token_prefix: string }>(
      storage.client,
      "SELECT token_sha256, token_prefix FROM leak_reports WHERE event_id = '6bcd5deb-f78c-474c-866e-d8808685be4c'",
    )
    expect(leak).toEqual({ token_sha256: createHash('sha256').update(LEAKED).digest('hex'), token_prefix: 'sk_live_4eC3' })
    const everything = await (await storage.client.query({ query: 'SELECT * FROM leak_reports', format: 'JSONEachRow' })).text()
    expect(everything).not.toContain(LEAKED)
  })

  it('keeps a rejected leak report in ingest_errors with its token redacted', async () => {
    const secret = 'sk_live_' + randomUUID().replaceAll('-', '')
    const bad = { event_id: randomUUID(), type: 'leak.reported', schema_version: 1, occurred_at: '2026-11-22T14:05:00.000Z', account_id: 'acct_7Hq2LmX9', token: secret }
    const report = await ingest(lines([bad]))
    expect(report.rejectedByReason).toEqual({ schema_violation: 1 })
    const rows = await queryRows<{ raw_base64: string; detail: string }>(storage.client, 'SELECT raw_base64, detail FROM ingest_errors WHERE event_id = {id:String}', { id: bad.event_id })
    expect(rows).toHaveLength(1)
    const kept = Buffer.from(rows[0]!.raw_base64, 'base64').toString()
    expect(kept).not.toContain(secret)
    expect(kept).toContain(createHash('sha256').update(secret).digest('hex'))
    expect(rows[0]!.detail).toContain('source')
  })
})

describe('deduplication', () => {
  it('stores a file ingested twice once, and the rollups count it once', async () => {
    const now = Date.now()
    const events = Array.from({ length: 3_000 }, (_, i) => usageEvent(i, { keys: 20, from: now - 7_200_000, to: now - 60_000 }))
    const text = lines(events)
    const before = await count(storage, 'SELECT count() AS n FROM key_usage')
    const first = await ingest(text, 700)
    expect(first).toMatchObject({ accepted: 3_000, duplicates: 0, rejected: 0 })
    const second = await ingest(text, 700)
    expect(second).toMatchObject({ accepted: 0, duplicates: 3_000, rejected: 0 })
    expect(await count(storage, 'SELECT count() AS n FROM key_usage')).toBe(before + 3_000)
    const keys = { keys: [...new Set(events.map((e) => e.key_id!))] }
    expect(await count(storage, 'SELECT sum(requests) AS n FROM key_usage_hourly WHERE key_id IN {keys:Array(String)}', keys)).toBe(3_000)
    expect(await count(storage, 'SELECT sum(requests) AS n FROM key_usage_daily WHERE key_id IN {keys:Array(String)}', keys)).toBe(3_000)
    expect(await count(storage, 'SELECT sum(requests) AS n FROM key_last_used WHERE key_id IN {keys:Array(String)}', keys)).toBe(3_000)
  })

  it('counts the same event twice in one file as one accepted and one duplicate', async () => {
    const e = usageEvent(10_001)
    const report = await ingest(lines([e, e]))
    expect(report).toMatchObject({ accepted: 1, duplicates: 1 })
  })

  it('deduplicates across batches that are in flight at the same time', async () => {
    const events = Array.from({ length: 2_500 }, (_, i) => usageEvent(20_000 + i))
    // Overlapping halves written concurrently: the second batch looks up while the first is inserting.
    const a = events.slice(0, 1_500).map((e) => JSON.stringify(e)).join('\n')
    const b = events.slice(1_000).map((e) => JSON.stringify(e)).join('\n')
    const [ra, rb] = await Promise.all([ingest(a, 250), ingest(b, 250)])
    expect(ra.accepted + rb.accepted).toBe(2_500)
    expect(ra.duplicates + rb.duplicates).toBe(500)
    expect(await count(storage, 'SELECT count() AS n FROM key_usage WHERE request_id IN {ids:Array(String)}', { ids: events.map((e) => e.request_id) })).toBe(2_500)
  })
})

describe('bad input among good', () => {
  it('stores every good line and records every bad one with reason, line and original bytes', async () => {
    const now = Date.now()
    const good = Array.from({ length: 5 }, (_, i) => JSON.stringify(usageEvent(30_000 + i)))
    const bad = {
      invalid_json: '{"type": "key.usage", oops',
      schema_violation: JSON.stringify({ ...usageEvent(30_100), status: 'ok' }),
      too_large: JSON.stringify({ ...usageEvent(30_101), user_agent: 'a'.repeat(70_000) }),
      future_timestamp: JSON.stringify({ ...usageEvent(30_102), occurred_at: new Date(now + 600_000).toISOString() }),
      unknown_type: JSON.stringify({ ...usageEvent(30_103), type: 'key.deleted' }),
    }
    // line: 1 good, 2 bad, 3 good, 4 bad, 5 blank, 6 good (CRLF), 7 bad, 8 good, 9 bad, 10 bad, 11 good
    const text = [good[0], bad.invalid_json, good[1], bad.schema_violation, '', good[2] + '\r', bad.too_large, good[3], bad.future_timestamp, bad.unknown_type, good[4]].join('\n')
    const report = await ingest(text)
    expect(report).toMatchObject({ accepted: 5, rejected: 5, lines: 11 })
    expect(report.rejectedByReason).toEqual({ invalid_json: 1, schema_violation: 1, too_large: 1, future_timestamp: 1, unknown_type: 1 })
    expect(report.errors.map((e) => [e.line, e.reason])).toEqual([
      [2, 'invalid_json'],
      [4, 'schema_violation'],
      [7, 'too_large'],
      [9, 'future_timestamp'],
      [10, 'unknown_type'],
    ])
    const stored = await queryRows<{ reason: string; line: string; raw_base64: string; raw_size: number }>(
      storage.client,
      "SELECT reason, line, raw_base64, raw_size FROM ingest_errors WHERE source = 'file'",
    )
    const lineOf = { invalid_json: 2, schema_violation: 4, too_large: 7, future_timestamp: 9, unknown_type: 10 }
    for (const [reason, original] of Object.entries(bad)) {
      const row = stored.find((r) => Buffer.from(r.raw_base64, 'base64').toString() === original)
      expect(row, reason).toBeDefined()
      expect(row!.reason).toBe(reason)
      expect(Number(row!.line)).toBe(lineOf[reason as keyof typeof lineOf])
      expect(row!.raw_size).toBe(Buffer.byteLength(original))
    }
    const ids = good.map((g) => (JSON.parse(g) as { event_id: string }).event_id)
    expect(await count(storage, 'SELECT count() AS n FROM key_usage WHERE toString(event_id) IN {ids:Array(String)}', { ids })).toBe(5)
  })
})

describe('key inventory', () => {
  const key = (id: string) => ({ key_id: id, key_prefix: 'sk_live_Ab12', key_kind: 'secret', mode: 'live' })
  const ev = (at: string, fields: Record<string, unknown>) => ({
    event_id: randomUUID(),
    type: 'key.lifecycle',
    schema_version: 1,
    occurred_at: at,
    account_id: 'acct_Inventory1',
    actor: { type: 'user', id: 'usr_Ana01' },
    ...fields,
  })
  const createdFields = (sha: string) => ({ action: 'created', label: 'api', scopes: [{ scope: 'payments', access: ['read'] }], expires_at: null, auto_generated: false, secret_sha256: sha })
  const sha = (s: string) => createHash('sha256').update(s).digest('hex')

  it('folds out-of-order lifecycle events into each key\'s current state', async () => {
    const events = [
      // key_InvReset1: created, then reset (arrives first), then scopes changed
      ev('2026-10-01T10:00:00.000Z', { ...key('key_InvReset1'), action: 'reset', secret_sha256: sha('second') }),
      ev('2026-09-01T10:00:00.000Z', { ...key('key_InvReset1'), ...createdFields(sha('first')) }),
      ev('2026-10-02T10:00:00.000Z', { ...key('key_InvReset1'), action: 'scopes_changed', scopes: null }),
      // key_InvRotate: created, rotated with a grace deadline
      ev('2026-09-01T10:00:00.000Z', { ...key('key_InvRotate'), ...createdFields(sha('r')) }),
      ev('2026-11-20T10:00:00.000Z', { ...key('key_InvRotate'), action: 'rotated', replacement_key_id: 'key_InvRotNew', old_key_expires_at: '2026-11-27T10:00:00.000Z' }),
      // key_InvRollbk: rotated then rolled back
      ev('2026-09-01T10:00:00.000Z', { ...key('key_InvRollbk'), ...createdFields(sha('b')), auto_generated: true }),
      ev('2026-11-20T10:00:00.000Z', { ...key('key_InvRollbk'), action: 'rotated', replacement_key_id: 'key_InvRbNew1', old_key_expires_at: '2026-11-27T10:00:00.000Z' }),
      ev('2026-11-21T10:00:00.000Z', { ...key('key_InvRollbk'), action: 'rolled_back', replacement_key_id: 'key_InvRbNew1' }),
      // key_InvRevokd: revoked (arrives before its creation)
      ev('2026-11-01T10:00:00.000Z', { ...key('key_InvRevokd'), action: 'revoked', reason: 'leak' }),
      ev('2026-09-01T10:00:00.000Z', { ...key('key_InvRevokd'), ...createdFields(sha('v')) }),
      // key_InvExpird: expired
      ev('2026-09-01T10:00:00.000Z', { ...key('key_InvExpird'), ...createdFields(sha('e')), expires_at: '2026-10-01T00:00:00.000Z' }),
      ev('2026-10-01T00:00:01.000Z', { ...key('key_InvExpird'), action: 'expired' }),
    ]
    expect((await ingest(lines(events))).accepted).toBe(events.length)
    const rows = await queryRows<Record<string, unknown>>(
      storage.client,
      `SELECT key_id, status, secret_sha256, toString(secret_set_at) AS secret_set_at, toString(created_at) AS created_at,
              toString(last_reset_at) AS last_reset_at, scopes, auto_generated, replacement_key_id,
              toString(rotation_grace_deadline) AS grace, toString(expires_at) AS expires_at
       FROM key_inventory WHERE account_id = 'acct_Inventory1' ORDER BY key_id`,
    )
    const byKey = Object.fromEntries(rows.map((r) => [r.key_id, r]))
    expect(byKey.key_InvReset1).toMatchObject({
      status: 'active',
      secret_sha256: sha('second'),
      secret_set_at: '2026-10-01 10:00:00.000',
      created_at: '2026-09-01 10:00:00.000',
      last_reset_at: '2026-10-01 10:00:00.000',
      scopes: 'null',
    })
    expect(byKey.key_InvRotate).toMatchObject({ status: 'rotating', replacement_key_id: 'key_InvRotNew', grace: '2026-11-27 10:00:00.000' })
    expect(byKey.key_InvRollbk).toMatchObject({ status: 'active', auto_generated: true })
    expect(byKey.key_InvRevokd).toMatchObject({ status: 'revoked', secret_sha256: sha('v') })
    expect(byKey.key_InvExpird).toMatchObject({ status: 'expired', expires_at: '2026-10-01 00:00:00.000' })
    expect(byKey.key_InvReset1!.scopes).toBe('null')
    expect(JSON.parse(String(byKey.key_InvRotate!.scopes))).toEqual([{ scope: 'payments', access: ['read'] }])
  })
})

describe('usage rollups', () => {
  it('keeps requests, statuses, 429s, writes, client-side calls, money and distinct IPs per key and hour', async () => {
    const base = { ...usageEvent(0), key_id: 'key_RollupKey1', account_id: 'acct_Rollup01', occurred_at: '2026-11-22T14:10:00.000Z' }
    const at = (minute: number) => `2026-11-22T14:${String(minute).padStart(2, '0')}:00.000Z`
    const events = [
      { ...base, event_id: randomUUID(), occurred_at: at(1), status: 200, method: 'POST', amount_minor: 1_000, currency: 'PHP', ip: '203.0.113.1' },
      { ...base, event_id: randomUUID(), occurred_at: at(2), status: 200, method: 'POST', amount_minor: 500, currency: 'USD', ip: '203.0.113.2' },
      { ...base, event_id: randomUUID(), occurred_at: at(3), status: 402, method: 'POST', amount_minor: 9_999, currency: 'PHP', ip: '203.0.113.2' },
      { ...base, event_id: randomUUID(), occurred_at: at(4), status: 429, method: 'GET', amount_minor: null, currency: null, ip: '203.0.113.3', origin: 'https://shop.example.com' },
      { ...base, event_id: randomUUID(), occurred_at: at(59), status: 429, method: 'GET', amount_minor: null, currency: null, ip: '203.0.113.3' },
    ]
    const rl = (minute: number) => ({
      event_id: randomUUID(), type: 'key.ratelimited', schema_version: 1, occurred_at: at(minute), account_id: 'acct_Rollup01',
      key_id: 'key_RollupKey1', key_prefix: 'sk_live_0000', key_kind: 'secret', mode: 'live', request_id: 'r', endpoint: '/v1/balance',
      ip: '203.0.113.3', limit: 100, window_seconds: 1, observed: 150,
    })
    expect((await ingest(lines([...events, rl(4), rl(6), rl(59)]))).accepted).toBe(8)
    const [h] = await queryRows<Record<string, unknown>>(
      storage.client,
      `SELECT sum(requests) AS requests, sum(accepted) AS accepted, sum(rate_limited) AS rate_limited, sumMap(by_status) AS by_status,
              sum(write_requests) AS writes, sum(client_side) AS client_side, sumMap(amount_minor) AS amount, uniqMerge(ips) AS ips,
              toString(max(last_used_at)) AS last_used
       FROM key_usage_hourly WHERE key_id = 'key_RollupKey1'`,
    )
    expect(h).toEqual({
      requests: 5,
      accepted: 2,
      rate_limited: 2,
      by_status: { '200': 2, '402': 1, '429': 2 },
      writes: 3,
      client_side: 1,
      amount: { PHP: 1000, USD: 500 },
      ips: 3,
      last_used: '2026-11-22 14:59:00.000',
    })
    const buckets = await queryRows<{ bucket: string; events: number }>(
      storage.client,
      "SELECT toString(bucket) AS bucket, sum(events) AS events FROM key_ratelimits_5m WHERE key_id = 'key_RollupKey1' GROUP BY bucket ORDER BY bucket",
    )
    expect(buckets).toEqual([
      { bucket: '2026-11-22 14:00:00', events: 1 },
      { bucket: '2026-11-22 14:05:00', events: 1 },
      { bucket: '2026-11-22 14:55:00', events: 1 },
    ])
  })
})
