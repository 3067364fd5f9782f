// NDJSON through the shared pipeline on the real engine: field mapping, leaked tokens hashed and redacted,
// redeliveries stored once (rollups too), bad lines recorded with their reason and bytes while good ones land,
// the key inventory folded from out-of-order lifecycle events, and the usage rollups.
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
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex')
const DAY = 86_400_000

beforeAll(async () => {
  storage = await openTestStorage(tempDir())
  writer = new EventWriter(storage, { maxRows: 1_000, maxWaitMs: 10, maxInflight: 2 })
  pipeline = new IngestPipeline(storage.client, writer)
})
afterAll(async () => {
  await writer?.drain()
  await storage?.close()
})

const ingest = (text: string | Buffer, linesPerChunk?: number) =>
  ingestNdjson(Readable.from([Buffer.isBuffer(text) ? text : Buffer.from(text)]), pipeline, { source: 'file', linesPerChunk })
const lines = (events: unknown[]) => events.map((e) => JSON.stringify(e)).join('\n') + '\n'
const rows = <T = Record<string, unknown>>(sql: string, params: Record<string, unknown> = {}) => queryRows<T>(storage.client, sql, params)
const one = async <T = Record<string, unknown>>(sql: string, params: Record<string, unknown> = {}) => {
  const r = await rows<T>(sql, params)
  expect(r, sql).toHaveLength(1)
  return r[0]!
}

/** Every row of every table of the database as JSON text: what a leaked secret must never be part of. */
async function everyStoredRow(): Promise<string> {
  const tables = await rows<{ name: string }>("SELECT name FROM system.tables WHERE database = currentDatabase() AND engine LIKE '%MergeTree'")
  expect(tables.map((t) => t.name)).toEqual(expect.arrayContaining(['leak_reports', 'ingest_errors', 'event_ids']))
  let text = ''
  for (const { name } of tables) {
    const rs = await storage.client.query({ query: 'SELECT * FROM {t:Identifier}', query_params: { t: name }, format: 'JSONEachRow' })
    text += await rs.text()
  }
  return text
}

describe('contract examples through the pipeline', () => {
  it('stores every example in its table', async () => {
    const report = await ingest(examples.map((e) => e.line).join('\n') + '\n')
    expect(report).toMatchObject({ accepted: examples.length, duplicates: 0, rejected: 0, lines: examples.length, errors: [] })
    const n = (t: string) => examples.filter((e) => e.type === t).length
    expect(n('key.usage')).toBeGreaterThan(0)
    expect(await count(storage, 'SELECT count() AS n FROM key_usage')).toBe(n('key.usage'))
    expect(await count(storage, 'SELECT count() AS n FROM key_ratelimits')).toBe(n('key.ratelimited'))
    expect(await count(storage, 'SELECT count() AS n FROM auth_events')).toBe(n('auth.event'))
    expect(await count(storage, 'SELECT count() AS n FROM key_lifecycle')).toBe(n('key.lifecycle'))
    expect(await count(storage, 'SELECT count() AS n FROM leak_reports')).toBe(n('leak.reported'))
    expect(await count(storage, 'SELECT count() AS n FROM event_ids')).toBe(examples.length)
    expect(await count(storage, 'SELECT count() AS n FROM ingest_errors')).toBe(0)
  })

  it('maps the fields of each type', async () => {
    expect(
      await one(
        `SELECT account_id, key_id, key_prefix, key_kind, mode, request_id, method, endpoint, scope, status, error_code, ip, country, asn,
                user_agent, origin, sdk, client_env, latency_ms, amount_minor, currency, client_side, mode_mismatch, toString(occurred_at) AS at
         FROM key_usage WHERE event_id = 'e19abd00-c2ec-4f94-90d4-f8894dcc7837'`,
      ),
    ).toEqual({
      account_id: 'acct_7Hq2LmX9',
      key_id: 'key_01JProdApi02',
      key_prefix: 'sk_live_4eC3',
      key_kind: 'secret',
      mode: 'live',
      request_id: 'req_a1',
      method: 'POST',
      endpoint: '/v1/payments',
      scope: 'payments',
      status: 200,
      error_code: '',
      ip: '203.0.113.10',
      country: 'PH',
      asn: 64500,
      user_agent: 'paykore-node/3.2.1 node/22.11.0',
      origin: '',
      sdk: 'paykore-node/3.2.1',
      client_env: 'production',
      latency_ms: 84.2,
      amount_minor: 250000,
      currency: 'PHP',
      client_side: 0,
      mode_mismatch: 0,
      at: '2026-11-22 14:03:05.123',
    })
    // A browser call (Origin set) with no money: client_side, amount 0 and currency ''.
    expect(await one("SELECT origin, client_side, amount_minor, currency, sdk FROM key_usage WHERE event_id = 'ef9aea9c-2088-4557-9f66-f3db4da2be98'")).toEqual({
      origin: 'https://shop.example.com',
      client_side: 1,
      amount_minor: 0,
      currency: '',
      sdk: '',
    })
    // A request with an unknown key (INVALID_KEY): stored, with key_id '' (the hot table has no NULLs).
    expect(
      await one("SELECT key_id, key_prefix, key_kind, mode, scope, status, error_code, country, asn FROM key_usage WHERE event_id = '32496664-e077-4683-9e11-69f223154194'"),
    ).toEqual({ key_id: '', key_prefix: 'sk_live_ZZZZ', key_kind: '', mode: '', scope: '', status: 401, error_code: 'INVALID_KEY', country: '', asn: 0 })
    // ...and it is not a key: no rollup row for key ''.
    expect(await count(storage, "SELECT count() AS n FROM key_usage_hourly WHERE key_id = ''")).toBe(0)

    expect(await one("SELECT key_id, limit, window_seconds, observed, retry_after_seconds, ip FROM key_ratelimits WHERE event_id = 'db7de18a-5bbb-4f5f-ac53-4304b7e0dab4'")).toEqual({
      key_id: 'key_01JProdApi02',
      limit: 100,
      window_seconds: 1,
      observed: 131,
      retry_after_seconds: 1,
      ip: '198.51.100.77',
    })
    expect(await one("SELECT user_id, actor_email, action, country, session_id, reason, key_id FROM auth_events WHERE event_id = '18b73860-60d2-4d05-9ebf-8778e4e0e75a'")).toEqual({
      user_id: null,
      actor_email: 'admin@merchant.example',
      action: 'login.failed',
      country: 'RU',
      session_id: null,
      reason: 'wrong_password',
      key_id: null,
    })
    expect(await one("SELECT key_id FROM auth_events WHERE event_id = '9797d5e2-8424-4da7-8cdc-f2d8231c3c39'")).toEqual({ key_id: 'key_01JProdApi02' })

    const created = await one(
      `SELECT action, actor_type, actor_id, label, scopes, toString(expires_at) AS expires_at, auto_generated, secret_sha256
       FROM key_lifecycle WHERE event_id = '14b43fab-224b-4e6c-973c-f2302281bf05'`,
    )
    expect({ ...created, scopes: JSON.parse(String(created.scopes)) }).toEqual({
      action: 'created',
      actor_type: 'user',
      actor_id: 'usr_Ana01',
      label: 'api-server-production-v2',
      scopes: [
        { scope: 'payments', access: ['read', 'write'] },
        { scope: 'refunds', access: ['read'] },
      ],
      expires_at: null,
      auto_generated: false,
      secret_sha256: '78a08441f4314f0a2833cfe58c62e555a162264206982cda39f6804f5048f570',
    })
    // scopes: the JSON 'null' is full access (the auto-generated key); SQL NULL is "this event says nothing of scopes".
    expect(await one("SELECT scopes, auto_generated, actor_type, actor_id FROM key_lifecycle WHERE event_id = '3db0b278-25fc-4f7e-899f-0a67408b8e68'")).toEqual({
      scopes: 'null',
      auto_generated: true,
      actor_type: 'system',
      actor_id: null,
    })
    expect(await one("SELECT scopes, reason, actor_type FROM key_lifecycle WHERE event_id = 'daddccfa-0ef1-4c98-945c-a89c31b3521f'")).toEqual({
      scopes: null,
      reason: 'found in public repository',
      actor_type: 'monitor',
    })
    expect(
      await one("SELECT replacement_key_id, toString(old_key_expires_at) AS grace FROM key_lifecycle WHERE event_id = '85c33123-67be-4dc5-8bec-cc90b317dfcb'"),
    ).toEqual({ replacement_key_id: 'key_01JProdApi02', grace: '2026-08-17 11:22:02.001' })

    // A leak report that came hashed is stored as it came.
    expect(await one("SELECT token_sha256, token_prefix, token_type, source, url FROM leak_reports WHERE event_id = '4707bed1-648a-422e-b336-fbd45d5f4b1a'")).toEqual({
      token_sha256: '3749772030c088038a6763657126757b781993d44302815de415fc55de3508a8',
      token_prefix: null,
      token_type: 'paykore_restricted_key',
      source: 'internal',
      url: null,
    })
  })
})

describe('leaked tokens', () => {
  it('hashes a raw token on arrival and stores it nowhere', async () => {
    expect(await one("SELECT token_sha256, token_prefix, token_type, source, url FROM leak_reports WHERE event_id = '6bcd5deb-f78c-474c-866e-d8808685be4c'")).toEqual({
      token_sha256: sha256(LEAKED),
      token_prefix: 'sk_live_4eC3',
      token_type: 'paykore_secret_key',
      source: 'github',
      url: 'https://github.com/example/shop/blob/0a1b2c/config.js',
    })
    const dump = async (table: string) => (await storage.client.query({ query: 'SELECT * FROM {t:Identifier}', query_params: { t: table }, format: 'JSONEachRow' })).text()
    const leakReports = await dump('leak_reports')
    expect(leakReports).toContain(sha256(LEAKED)) // the dump is real
    expect(leakReports).not.toContain(LEAKED)
    expect(leakReports).not.toContain(LEAKED.slice(12)) // nor the part after the display prefix
    expect(await dump('ingest_errors')).not.toContain(LEAKED.slice(12))
    expect(await everyStoredRow()).not.toContain(LEAKED.slice(12))
  })

  it('keeps rejected leak reports in ingest_errors with the token redacted', async () => {
    const secret = () => 'sk_live_' + randomUUID().replaceAll('-', '')
    const leak = (token: string, extra: Record<string, unknown> = {}) => ({
      event_id: randomUUID(),
      type: 'leak.reported',
      schema_version: 1,
      occurred_at: new Date(Date.now() - 60_000).toISOString(),
      account_id: 'acct_7Hq2LmX9',
      token,
      token_type: 'paykore_secret_key',
      source: 'github',
      url: null,
      ...extra,
    })
    const noSource = secret()
    const future = secret()
    const huge = secret()
    const broken = secret()
    const bad = [
      { reason: 'schema_violation', secret: noSource, line: JSON.stringify((({ source: _s, ...rest }) => rest)(leak(noSource))) },
      { reason: 'future_timestamp', secret: future, line: JSON.stringify(leak(future, { occurred_at: new Date(Date.now() + 3_600_000).toISOString() })) },
      { reason: 'too_large', secret: huge, line: JSON.stringify(leak(huge, { padding: 'x'.repeat(70_000) })) },
      // Not JSON at all: still no secret kept.
      { reason: 'invalid_json', secret: broken, line: JSON.stringify(leak(broken)).slice(0, -12) },
    ]
    const report = await ingest(bad.map((b) => b.line).join('\n') + '\n')
    expect(report).toMatchObject({ accepted: 0, rejected: 4, rejectedByReason: { schema_violation: 1, future_timestamp: 1, too_large: 1, invalid_json: 1 } })
    // What the CLI prints of the rejections does not show the secrets either.
    const printed = JSON.stringify(report.errors)
    for (const b of bad) expect(printed).not.toContain(b.secret)

    const stored = await rows<{ line: string; reason: string; raw_base64: string; detail: string; raw_size: number }>(
      'SELECT line, reason, raw_base64, detail, raw_size FROM ingest_errors', // nothing else was rejected so far
    )
    expect(stored).toHaveLength(bad.length)
    for (const [i, b] of bad.entries()) {
      const row = stored.find((r) => r.reason === b.reason && Number(r.line) === i + 1)
      expect(row, b.reason).toBeDefined()
      const kept = Buffer.from(row!.raw_base64, 'base64').toString('utf8')
      expect(kept.length, `${b.reason}: raw bytes are kept`).toBeGreaterThan(100)
      expect(kept, b.reason).not.toContain(b.secret)
      expect(kept, b.reason).not.toContain(b.secret.slice(12))
      expect(row!.detail, b.reason).not.toContain(b.secret.slice(12))
      expect(row!.raw_size).toBe(Buffer.byteLength(b.line)) // the size of what came, not of what was kept
      if (b.reason !== 'invalid_json') expect(kept, b.reason).toContain(sha256(b.secret)) // still matchable to its key
      else expect(kept).toContain(b.secret.slice(0, 12)) // the display prefix stays readable
    }
    const everything = await everyStoredRow()
    for (const b of bad) expect(everything, b.reason).not.toContain(b.secret.slice(12))
  })
})

describe('deduplication', () => {
  /** Everything a redelivery must not change. */
  const snapshot = async (keys: string[]) =>
    rows(
      `SELECT
         (SELECT count() FROM key_usage) AS usage_rows,
         (SELECT count() FROM event_ids) AS event_ids,
         (SELECT count() FROM key_lifecycle) AS lifecycle_rows,
         (SELECT count() FROM leak_reports) AS leak_rows,
         (SELECT count() FROM auth_events) AS auth_rows,
         (SELECT count() FROM key_ratelimits) AS ratelimit_rows,
         (SELECT sum(events) FROM key_ratelimits_5m) AS ratelimit_5m,
         (SELECT sum(requests) FROM key_usage_hourly WHERE key_id IN {keys:Array(String)}) AS hourly_requests,
         (SELECT sum(accepted) FROM key_usage_hourly WHERE key_id IN {keys:Array(String)}) AS hourly_accepted,
         (SELECT sumMap(amount_minor) FROM key_usage_hourly WHERE key_id IN {keys:Array(String)}) AS hourly_amount,
         (SELECT sum(requests) FROM key_usage_daily WHERE key_id IN {keys:Array(String)}) AS daily_requests,
         (SELECT sum(requests) FROM key_last_used WHERE key_id IN {keys:Array(String)}) AS last_used_requests,
         (SELECT toString(max(last_used_at)) FROM key_last_used WHERE key_id IN {keys:Array(String)}) AS last_used_at`,
      { keys },
    )

  it('stores a file ingested twice once, and the rollups count it once', async () => {
    const now = Date.now()
    const events = Array.from({ length: 3_000 }, (_, i) => usageEvent(i, { keys: 20, accounts: 5, from: now - 7_200_000, to: now - 60_000 }))
    const text = lines(events)
    const keys = [...new Set(events.map((e) => e.key_id!))]
    const usageBefore = await count(storage, 'SELECT count() AS n FROM key_usage')
    const first = await ingest(text, 700)
    expect(first).toMatchObject({ accepted: 3_000, duplicates: 0, rejected: 0 })
    expect(await count(storage, 'SELECT count() AS n FROM key_usage')).toBe(usageBefore + 3_000)
    const [after1] = await snapshot(keys)
    expect(after1).toMatchObject({ hourly_requests: 3_000, daily_requests: 3_000, last_used_requests: 3_000 })

    const second = await ingest(text, 700)
    expect(second).toMatchObject({ accepted: 0, duplicates: 3_000, rejected: 0 })
    expect((await snapshot(keys))[0]).toEqual(after1)
  })

  it('stores a redelivery of every example type once', async () => {
    const exampleKeys = ['key_01JProdApi02', 'key_01JStaging1']
    const [before] = await snapshot(exampleKeys)
    expect(before).toMatchObject({ hourly_requests: 3, hourly_amount: { PHP: 250000 }, ratelimit_5m: 1 })
    const again = await ingest(examples.map((e) => e.line).join('\n'))
    expect(again).toMatchObject({ accepted: 0, duplicates: examples.length, rejected: 0 })
    expect((await snapshot(exampleKeys))[0]).toEqual(before)
  })

  it('counts the same event twice in one file as one accepted and one duplicate', async () => {
    const e = { ...usageEvent(10_001), key_id: 'key_TwiceInFile1' }
    const report = await ingest(lines([e, e]))
    expect(report).toMatchObject({ accepted: 1, duplicates: 1, rejected: 0 })
    expect(await count(storage, 'SELECT count() AS n FROM key_usage WHERE event_id = {id:UUID}', { id: e.event_id })).toBe(1)
    expect(await count(storage, "SELECT sum(requests) AS n FROM key_usage_hourly WHERE key_id = 'key_TwiceInFile1'")).toBe(1)
    // The same id in upper case is the same event.
    const upper = await ingest(lines([{ ...e, event_id: e.event_id.toUpperCase() }]))
    expect(upper).toMatchObject({ accepted: 0, duplicates: 1 })
    expect(await count(storage, "SELECT sum(requests) AS n FROM key_usage_hourly WHERE key_id = 'key_TwiceInFile1'")).toBe(1)
  })

  it('deduplicates across batches that are in flight at the same time', async () => {
    const events = Array.from({ length: 2_500 }, (_, i) => ({ ...usageEvent(20_000 + i), key_id: `key_InFlight${i % 7}` }))
    // Overlapping halves written concurrently: the second batch looks up while the first is inserting.
    const a = lines(events.slice(0, 1_500))
    const b = lines(events.slice(1_000))
    const [ra, rb] = await Promise.all([ingest(a, 250), ingest(b, 250)])
    expect(ra.accepted + rb.accepted).toBe(2_500)
    expect(ra.duplicates + rb.duplicates).toBe(500)
    expect(await count(storage, 'SELECT count() AS n FROM key_usage WHERE event_id IN {ids:Array(UUID)}', { ids: events.map((e) => e.event_id) })).toBe(2_500)
    expect(await count(storage, "SELECT sum(requests) AS n FROM key_usage_hourly WHERE key_id LIKE 'key_InFlight%'")).toBe(2_500)
  })
})

describe('bad input among good', () => {
  it('stores every good line and records every bad one with reason, line and original bytes', async () => {
    const now = Date.now()
    const good = Array.from({ length: 6 }, (_, i) => ({ ...usageEvent(30_000 + i), key_id: 'key_BadAmongGood' }))
    good[5] = { ...good[5]!, occurred_at: new Date(now + 4 * 60_000).toISOString() } // 4 minutes ahead: within the allowed skew
    const g = good.map((e) => JSON.stringify(e))
    const bad = {
      invalid_json: '{"type": "key.usage", oops',
      schema_violation: JSON.stringify({ ...usageEvent(30_100), status: 'ok' }),
      too_large: JSON.stringify({ ...usageEvent(30_101), padding: 'a'.repeat(70_000) }),
      future_timestamp: JSON.stringify({ ...usageEvent(30_102), occurred_at: new Date(now + 10 * 60_000).toISOString() }),
      unknown_type: JSON.stringify({ ...usageEvent(30_103), type: 'key.deleted' }),
    }
    // line: 1 blank, 2 good, 3 bad, 4 good (CRLF), 5 bad (CRLF), 6 blank (CRLF), 7 good, 8 bad, 9 bad, 10 good, 11 bad, 12 good, 13 good (no final newline)
    const text = ['', g[0], bad.invalid_json, g[1] + '\r', bad.schema_violation + '\r', '\r', g[2], bad.too_large, bad.future_timestamp, g[3], bad.unknown_type, g[4], g[5]].join('\n')
    const lineOf = { invalid_json: 3, schema_violation: 5, too_large: 8, future_timestamp: 9, unknown_type: 11 }
    const startedAt = new Date().toISOString().replace('T', ' ').replace('Z', '') // received_at of this file's rejections is later
    const report = await ingest(text)
    expect(report).toMatchObject({ accepted: 6, duplicates: 0, rejected: 5, lines: 13 })
    expect(report.rejectedByReason).toEqual({ invalid_json: 1, schema_violation: 1, too_large: 1, future_timestamp: 1, unknown_type: 1 })
    expect(report.errors.map((e) => [e.line, e.reason]).sort((a, b) => Number(a[0]) - Number(b[0]))).toEqual(
      Object.entries(lineOf).map(([reason, line]) => [line, reason]),
    )
    expect(report.errors.find((e) => e.reason === 'schema_violation')!.detail).toContain('status')
    expect(report.errors.find((e) => e.reason === 'unknown_type')!.detail).toContain('key.deleted')

    const stored = await rows<{ source: string; reason: string; line: string; raw_base64: string; raw_size: number; event_id: string | null; event_type: string | null; detail: string }>(
      "SELECT source, reason, line, raw_base64, raw_size, event_id, event_type, detail FROM ingest_errors WHERE received_at >= {since:DateTime64(3, 'UTC')} AND event_type IS DISTINCT FROM 'leak.reported'",
      { since: startedAt },
    )
    expect(stored).toHaveLength(5) // the blank lines are not rejections
    for (const [reason, original] of Object.entries(bad)) {
      const row = stored.find((r) => r.reason === reason)
      expect(row, reason).toBeDefined()
      expect(row!.source).toBe('file')
      expect(Number(row!.line), reason).toBe(lineOf[reason as keyof typeof lineOf])
      expect(Buffer.from(row!.raw_base64, 'base64').toString('utf8'), reason).toBe(original)
      expect(row!.raw_size, reason).toBe(Buffer.byteLength(original))
    }
    const schemaRow = stored.find((r) => r.reason === 'schema_violation')!
    expect(schemaRow).toMatchObject({ event_id: JSON.parse(bad.schema_violation).event_id, event_type: 'key.usage' })
    expect(schemaRow.detail).toContain('status')
    expect(stored.find((r) => r.reason === 'future_timestamp')!.event_id).toBe(JSON.parse(bad.future_timestamp).event_id)

    expect(await count(storage, 'SELECT count() AS n FROM key_usage WHERE event_id IN {ids:Array(UUID)}', { ids: good.map((e) => e.event_id) })).toBe(6)
    const badIds = [bad.schema_violation, bad.too_large, bad.future_timestamp, bad.unknown_type].map((l) => JSON.parse(l).event_id as string)
    expect(await count(storage, 'SELECT count() AS n FROM event_ids WHERE event_id IN {ids:Array(UUID)}', { ids: badIds })).toBe(0)
  })

  it('reads lines split across reads, multi-byte characters included, and survives a line far over the limit', async () => {
    const agent = 'Zürich-Äpp/1.0 (日本語; 😀)'
    const events = Array.from({ length: 300 }, (_, i) => ({ ...usageEvent(32_000 + i), key_id: 'key_SplitReads1', user_agent: `${agent} #${i}` }))
    const huge = JSON.stringify({ ...usageEvent(32_999), padding: 'z'.repeat(300_000) }) // over 4x the limit: kept only in part
    const body = Buffer.from([...events.slice(0, 150).map((e) => JSON.stringify(e)), huge, ...events.slice(150).map((e) => JSON.stringify(e))].join('\r\n') + '\r\n')
    // Pieces of 1 to 4,099 bytes: lines, CRLFs and UTF-8 sequences are cut anywhere.
    const pieces: Buffer[] = []
    for (let at = 0, n = 1; at < body.byteLength; at += n, n = (n * 7 + 3) % 4_099 || 1) pieces.push(body.subarray(at, at + n))
    expect(pieces.length).toBeGreaterThan(100)
    const report = await ingestNdjson(Readable.from(pieces), pipeline, { source: 'file', linesPerChunk: 64 })
    expect(report).toMatchObject({ lines: 301, accepted: 300, rejected: 1, rejectedByReason: { too_large: 1 } })
    expect(report.errors).toEqual([expect.objectContaining({ line: 151, reason: 'too_large' })])
    const stored = await rows<{ request_id: string; user_agent: string }>("SELECT request_id, user_agent FROM key_usage WHERE key_id = 'key_SplitReads1'")
    expect(stored).toHaveLength(300)
    const byRequest = new Map(stored.map((r) => [r.request_id, r.user_agent]))
    for (const e of events) expect(byRequest.get(e.request_id)).toBe(e.user_agent)
  })

  it('takes an event of exactly 64 KiB and rejects one a byte longer', async () => {
    const sized = (bytes: number) => {
      const e = { ...usageEvent(31_000 + bytes), padding: '' }
      e.padding = 'p'.repeat(bytes - Buffer.byteLength(JSON.stringify(e)))
      const line = JSON.stringify(e)
      expect(Buffer.byteLength(line)).toBe(bytes)
      return line
    }
    const report = await ingest([sized(65_536), sized(65_537)].join('\r\n') + '\r\n')
    expect(report).toMatchObject({ accepted: 1, rejected: 1, rejectedByReason: { too_large: 1 } })
    expect(report.errors).toEqual([expect.objectContaining({ line: 2, reason: 'too_large' })])
  })
})

describe('key inventory', () => {
  const now = Date.now()
  const day = (n: number) => new Date(now + n * DAY).toISOString()
  const chDay = (n: number) => day(n).replace('T', ' ').replace('Z', '')
  const sha = (s: string) => sha256(`secret-${s}`)
  const ev = (keyId: string, daysAgo: number, fields: Record<string, unknown>) => ({
    event_id: randomUUID(),
    type: 'key.lifecycle',
    schema_version: 1,
    occurred_at: day(-daysAgo),
    account_id: 'acct_Inventory1',
    key_id: keyId,
    key_prefix: 'sk_live_Ab12',
    key_kind: 'secret',
    mode: 'live',
    actor: { type: 'user', id: 'usr_Ana01' },
    ...fields,
  })
  const readOnly = [{ scope: 'payments', access: ['read'] }]
  const created = (keyId: string, daysAgo: number, secret: string, extra: Record<string, unknown> = {}) =>
    ev(keyId, daysAgo, { action: 'created', label: `label of ${keyId}`, scopes: readOnly, expires_at: null, auto_generated: false, secret_sha256: sha(secret), ...extra })

  // Per key, in the order they happened; they are delivered in a different order below.
  const history = {
    key_InvReset01: [
      created('key_InvReset01', 60, 'a'),
      ev('key_InvReset01', 30, { action: 'reset', secret_sha256: sha('b') }),
      ev('key_InvReset01', 20, { action: 'scopes_changed', scopes: null }),
    ],
    key_InvRotate1: [
      created('key_InvRotate1', 90, 'c', { scopes: [{ scope: 'refunds', access: ['read', 'write'] }] }),
      ev('key_InvRotate1', 1, { action: 'rotated', replacement_key_id: 'key_InvRotNew1', old_key_expires_at: day(6) }),
    ],
    key_InvRotNew1: [created('key_InvRotNew1', 1, 'd')],
    key_InvRollbk1: [
      created('key_InvRollbk1', 90, 'e', { auto_generated: true, actor: { type: 'system', id: null } }),
      ev('key_InvRollbk1', 10, { action: 'rotated', replacement_key_id: 'key_InvRbNew01', old_key_expires_at: day(-3) }),
      ev('key_InvRollbk1', 9, { action: 'rolled_back', replacement_key_id: 'key_InvRbNew01' }),
    ],
    key_InvRerotat: [
      created('key_InvRerotat', 90, 'f'),
      ev('key_InvRerotat', 20, { action: 'rotated', replacement_key_id: 'key_InvRrNew01', old_key_expires_at: day(-13) }),
      ev('key_InvRerotat', 19, { action: 'rolled_back', replacement_key_id: 'key_InvRrNew01' }),
      ev('key_InvRerotat', 2, { action: 'rotated', replacement_key_id: 'key_InvRrNew02', old_key_expires_at: day(5) }),
    ],
    key_InvRevoke1: [
      created('key_InvRevoke1', 40, 'g'),
      ev('key_InvRevoke1', 5, { action: 'reset', secret_sha256: sha('h') }),
      ev('key_InvRevoke1', 2, { action: 'revoked', reason: 'leaked', actor: { type: 'monitor', id: 'auto:leak.public_report' } }),
    ],
    key_InvExpire1: [created('key_InvExpire1', 40, 'i', { expires_at: day(-3) }), ev('key_InvExpire1', 3, { action: 'expired', actor: { type: 'system', id: null } })],
    key_InvScopes1: [
      created('key_InvScopes1', 50, 'j'),
      ev('key_InvScopes1', 40, { action: 'scopes_changed', scopes: [{ scope: 'payments', access: ['read', 'write'] }] }),
      ev('key_InvScopes1', 30, { action: 'scopes_changed', scopes: [{ scope: 'payments', access: ['read', 'write'] }, { scope: 'customers', access: ['read'] }] }),
    ],
  }

  type Inventory = Record<string, unknown> & { key_id: string; scopes: string | null }
  // scopes: the stored JSON parsed (so 'null', full access, reads as null), and scopes_json as stored.
  const inventory = async (at?: string) => {
    const source = at ? "key_inventory_at(at = {at:DateTime64(3, 'UTC')})" : 'key_inventory'
    const list = await rows<Inventory>(
      `SELECT key_id, status, label, secret_sha256, toString(secret_set_at) AS secret_set_at, toString(created_at) AS created_at,
              toString(last_reset_at) AS last_reset_at, scopes, auto_generated, replacement_key_id,
              toString(rotation_grace_deadline) AS rotation_grace_deadline, toString(expires_at) AS expires_at,
              toString(revoked_at) AS revoked_at, toString(expired_at) AS expired_at
       FROM ${source} WHERE account_id = 'acct_Inventory1' ORDER BY key_id`,
      at ? { at: at.replace('T', ' ').replace('Z', '') } : {},
    )
    return Object.fromEntries(list.map((r) => [r.key_id, { ...r, scopes_json: r.scopes, scopes: r.scopes === null ? null : JSON.parse(r.scopes) }]))
  }

  it('folds lifecycle events arriving out of order into each key\'s state', async () => {
    const all = Object.values(history).flat()
    // Latest first, over three separate files: the later events of a key are stored before its creation.
    const newestFirst = [...all].sort((a, b) => b.occurred_at.localeCompare(a.occurred_at))
    for (const part of [newestFirst.slice(0, 7), newestFirst.slice(7, 14), newestFirst.slice(14)]) {
      expect(await ingest(lines(part))).toMatchObject({ accepted: part.length, rejected: 0 })
    }
    const inv = await inventory()
    expect(Object.keys(inv).sort()).toEqual(Object.keys(history).sort())

    expect(inv.key_InvReset01).toMatchObject({
      status: 'active',
      label: 'label of key_InvReset01',
      secret_sha256: sha('b'),
      secret_set_at: chDay(-30),
      created_at: chDay(-60),
      last_reset_at: chDay(-30),
      scopes_json: 'null', // scopes_changed to null: full access
      auto_generated: false,
      rotation_grace_deadline: null,
    })
    expect(inv.key_InvRotate1).toMatchObject({
      status: 'rotating',
      secret_sha256: sha('c'),
      secret_set_at: chDay(-90),
      replacement_key_id: 'key_InvRotNew1',
      rotation_grace_deadline: chDay(6),
      scopes: [{ scope: 'refunds', access: ['read', 'write'] }],
    })
    expect(inv.key_InvRotNew1).toMatchObject({ status: 'active', secret_sha256: sha('d'), secret_set_at: chDay(-1), created_at: chDay(-1) })
    expect(inv.key_InvRollbk1).toMatchObject({ status: 'active', auto_generated: true, secret_sha256: sha('e'), last_reset_at: null })
    expect(inv.key_InvRerotat).toMatchObject({ status: 'rotating', replacement_key_id: 'key_InvRrNew02', rotation_grace_deadline: chDay(5) })
    expect(inv.key_InvRevoke1).toMatchObject({ status: 'revoked', secret_sha256: sha('h'), secret_set_at: chDay(-5), revoked_at: chDay(-2) })
    expect(inv.key_InvExpire1).toMatchObject({ status: 'expired', expires_at: chDay(-3), expired_at: chDay(-3), secret_sha256: sha('i') })
    expect(inv.key_InvScopes1).toMatchObject({
      status: 'active',
      scopes: [
        { scope: 'payments', access: ['read', 'write'] },
        { scope: 'customers', access: ['read'] },
      ],
    })
  })

  it('answers as of an earlier moment (backtests)', async () => {
    const inv = await inventory(day(-25))
    expect(inv.key_InvReset01).toMatchObject({ status: 'active', secret_sha256: sha('b'), scopes: readOnly })
    expect(inv.key_InvRerotat).toMatchObject({ status: 'active', replacement_key_id: null })
    expect(inv.key_InvRevoke1).toMatchObject({ status: 'active', secret_sha256: sha('g'), revoked_at: null })
    expect(inv.key_InvScopes1).toMatchObject({ scopes: [{ scope: 'payments', access: ['read', 'write'] }, { scope: 'customers', access: ['read'] }] })
    expect(inv.key_InvRotNew1).toBeUndefined() // not created yet

    // Between its first rotation and the rollback, and after the rollback.
    expect((await inventory(day(-19.5))).key_InvRerotat).toMatchObject({ status: 'rotating', replacement_key_id: 'key_InvRrNew01', rotation_grace_deadline: chDay(-13) })
    expect((await inventory(day(-15))).key_InvRerotat).toMatchObject({ status: 'active', replacement_key_id: 'key_InvRrNew01' })

    const earlier = await inventory(day(-45))
    expect(earlier.key_InvReset01).toMatchObject({ secret_sha256: sha('a'), secret_set_at: chDay(-60), last_reset_at: null, scopes: readOnly })
    expect(earlier.key_InvScopes1).toMatchObject({ scopes: readOnly })
  })
})

describe('usage rollups', () => {
  const at = (hour: number, minute: number, second = 0) => `2026-11-22T${String(hour).padStart(2, '0')}:${String(minute).padStart(2, '0')}:${String(second).padStart(2, '0')}.000Z`
  const base = { ...usageEvent(0), key_id: 'key_RollupKey1', account_id: 'acct_Rollup01', key_prefix: 'sk_live_R011', mode: 'live' as const, client_env: 'production' as const }
  const use = (fields: Partial<ReturnType<typeof usageEvent>>) => ({ ...base, event_id: randomUUID(), request_id: `req_${randomUUID()}`, ...fields })
  const events = [
    use({ occurred_at: at(14, 1), status: 200, method: 'POST', amount_minor: 1_000, currency: 'PHP', ip: '203.0.113.1', country: 'PH', asn: 64500 }),
    use({ occurred_at: at(14, 2), status: 201, method: 'PUT', amount_minor: 500, currency: 'USD', ip: '203.0.113.2', country: 'PH', asn: 64500 }),
    use({ occurred_at: at(14, 3), status: 402, method: 'POST', amount_minor: 9_999, currency: 'PHP', ip: '203.0.113.2', country: 'SG', asn: 64501 }),
    use({ occurred_at: at(14, 4), status: 429, method: 'GET', amount_minor: null, currency: null, ip: '203.0.113.3', origin: 'https://shop.example.com' }),
    use({ occurred_at: at(14, 59, 59), status: 429, method: 'DELETE', amount_minor: null, currency: null, ip: '203.0.113.3', client_env: 'staging' }),
    use({ occurred_at: at(15, 0), status: 200, method: 'GET', amount_minor: 7, currency: 'PHP', ip: '198.51.100.9', sdk: 'paykore-js/1.0.0' }),
  ]
  const ratelimited = (minute: number, ip = '203.0.113.3') => ({
    event_id: randomUUID(),
    type: 'key.ratelimited',
    schema_version: 1,
    occurred_at: at(14, minute),
    account_id: 'acct_Rollup01',
    key_id: 'key_RollupKey1',
    key_prefix: 'sk_live_R011',
    key_kind: 'secret',
    mode: 'live',
    request_id: `req_${randomUUID()}`,
    endpoint: '/v1/balance',
    ip,
    limit: 100,
    window_seconds: 1,
    observed: 150,
  })

  it('keeps requests, statuses, 429s, writes, client-side calls, money, distinct IPs and last use per key and hour', async () => {
    // Two files, so the hour's rows come from two inserts and are merged at read time.
    const rl = [ratelimited(4), ratelimited(6), ratelimited(7, '203.0.113.4'), ratelimited(59)]
    expect(await ingest(lines([...events.slice(0, 3), rl[0]]))).toMatchObject({ accepted: 4 })
    expect(await ingest(lines([...events.slice(3), ...rl.slice(1)]))).toMatchObject({ accepted: 6 })

    const hours = await rows(
      `SELECT toString(hour) AS hour, sum(requests) AS requests, sum(accepted) AS accepted, sum(rate_limited) AS rate_limited,
              sumMap(by_status) AS by_status, sum(write_requests) AS writes, sum(client_side) AS client_side,
              sum(mode_mismatch) AS mode_mismatch, sumMap(amount_minor) AS amount, uniqMerge(ips) AS ips, uniqMerge(countries) AS countries,
              toString(min(first_used_at)) AS first_used, toString(max(last_used_at)) AS last_used
       FROM key_usage_hourly WHERE account_id = 'acct_Rollup01' AND key_id = 'key_RollupKey1' GROUP BY hour ORDER BY hour`,
    )
    expect(hours).toEqual([
      {
        hour: '2026-11-22 14:00:00',
        requests: 5,
        accepted: 2,
        rate_limited: 2,
        by_status: { '200': 1, '201': 1, '402': 1, '429': 2 },
        writes: 4, // POST, PUT, POST, DELETE
        client_side: 1, // the Origin
        mode_mismatch: 1, // a live key from staging
        amount: { PHP: 1000, USD: 500 }, // the declined 402 moved no money
        ips: 3,
        countries: 2,
        first_used: '2026-11-22 14:01:00.000',
        last_used: '2026-11-22 14:59:59.000',
      },
      {
        hour: '2026-11-22 15:00:00',
        requests: 1,
        accepted: 1,
        rate_limited: 0,
        by_status: { '200': 1 },
        writes: 0,
        client_side: 1, // a client-side SDK
        mode_mismatch: 0,
        amount: { PHP: 7 },
        ips: 1,
        countries: 1,
        first_used: '2026-11-22 15:00:00.000',
        last_used: '2026-11-22 15:00:00.000',
      },
    ])
    expect(await one("SELECT sum(requests) AS requests, sumMap(amount_minor) AS amount, uniqMerge(ips) AS ips FROM key_usage_daily WHERE key_id = 'key_RollupKey1'")).toEqual({
      requests: 6,
      amount: { PHP: 1007, USD: 500 },
      ips: 4,
    })
    expect(
      await one("SELECT sum(requests) AS requests, toString(min(first_used_at)) AS first, toString(max(last_used_at)) AS last FROM key_last_used WHERE key_id = 'key_RollupKey1'"),
    ).toEqual({ requests: 6, first: '2026-11-22 14:01:00.000', last: '2026-11-22 15:00:00.000' })

    const buckets = await rows(
      "SELECT toString(bucket) AS bucket, sum(events) AS events, uniqMerge(ips) AS ips FROM key_ratelimits_5m WHERE key_id = 'key_RollupKey1' GROUP BY bucket ORDER BY bucket",
    )
    expect(buckets).toEqual([
      { bucket: '2026-11-22 14:00:00', events: 1, ips: 1 },
      { bucket: '2026-11-22 14:05:00', events: 2, ips: 2 },
      { bucket: '2026-11-22 14:55:00', events: 1, ips: 1 },
    ])
  })
})
