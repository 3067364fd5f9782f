// Storage.insertRows, the ingest hot path's insert, on the embedded engine: one block per call, deduplicated by its
// token in the raw table and every view, errors with the engine's message, no file left behind.
import { readdirSync } from 'node:fs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { bodyInsert, encodeLines, type Storage } from '../clickhouse/client.ts'
import { auth, keyNamed, lifecycle } from '../contract/builders.ts'
import type { AuthEvent, KeyLifecycle } from '../contract/events.ts'
import { usageEvent } from '../contract/synthetic.ts'
import { LINE_OF, toRow } from '../ingest/rows.ts'
import { count, openTestStorage, tempDir } from './helpers.ts'

let storage: Storage
beforeAll(async () => {
  storage = await openTestStorage(tempDir())
})
afterAll(async () => {
  await storage?.close()
})

const now = Date.now()
const rows = (from: number, n: number) => Array.from({ length: n }, (_, i) => toRow('key.usage', usageEvent(from + i, { to: now - 60_000 })).values)
const spoolFiles = () => readdirSync('/dev/shm').filter((d) => d.startsWith(`keywatch-insert-${process.pid}-`)).flatMap((d) => readdirSync(`/dev/shm/${d}`))

describe('insertRows (embedded)', () => {
  it('stores a batch once, in the raw table and every rollup, however often it is sent with its token', async () => {
    const batch = rows(0, 5_000)
    const settings = { insert_deduplication_token: 'batch-a', deduplicate_blocks_in_dependent_materialized_views: 1 }
    await storage.insertRows('key_usage', batch, settings)
    await storage.insertRows('key_usage', batch, settings) // a retry of an insert that did land
    expect(await count(storage, 'SELECT count() AS n FROM key_usage')).toBe(5_000)
    expect(await count(storage, 'SELECT count() AS n FROM event_ids')).toBe(5_000)
    expect(await count(storage, 'SELECT sum(requests) AS n FROM key_usage_hourly')).toBe(5_000)
    expect(await count(storage, 'SELECT sum(requests) AS n FROM key_usage_daily')).toBe(5_000)
    expect(await count(storage, 'SELECT sum(requests) AS n FROM key_last_used')).toBe(5_000)
    // Another token is another batch, stored as such; a small one (sent inline) is deduplicated the same way.
    const small = rows(5_000, 10)
    await storage.insertRows('key_usage', small, { ...settings, insert_deduplication_token: 'batch-b' })
    await storage.insertRows('key_usage', small, { ...settings, insert_deduplication_token: 'batch-b' })
    expect(await count(storage, 'SELECT count() AS n FROM key_usage')).toBe(5_010)
    expect(await count(storage, 'SELECT sum(requests) AS n FROM key_usage_hourly')).toBe(5_010)
    expect(spoolFiles()).toEqual([])
  })

  it('keeps values exactly as the rows carry them', async () => {
    const [row] = rows(10_000, 1)
    row!.user_agent = 'quote " backslash \\ tab \t line\nunicode é ☃'
    await storage.insertRows('key_usage', [row!], { insert_deduplication_token: 'one-row' })
    const [stored] = await (
      await storage.client.query({ query: 'SELECT user_agent, toString(occurred_at) AS at, latency_ms FROM key_usage WHERE event_id = {id:UUID}', query_params: { id: row!.event_id }, format: 'JSONEachRow' })
    ).json<{ user_agent: string; at: string; latency_ms: number }>()
    expect(stored).toEqual({ user_agent: row!.user_agent, at: row!.occurred_at, latency_ms: row!.latency_ms })
  })

  it('stores nulls, booleans, JSON text and optional times of the other tables through the file path', async () => {
    const at = (i: number) => new Date(now - 3_600_000 + i).toISOString()
    const k = keyNamed('filepath')
    const lifecycleRows = Array.from({ length: 6_000 }, (_, i) =>
      toRow('key.lifecycle', lifecycle(k, 'created', at(i), i % 2 ? { label: null, auto_generated: true, expires_at: at(i + 86_400_000), scopes: [{ scope: 'payments', access: ['read'] }] } : {}) as KeyLifecycle),
    )
    await storage.insertRows('key_lifecycle', lifecycleRows.map((r) => r.values), { insert_deduplication_token: 'lifecycle' })
    const authRows = Array.from({ length: 6_000 }, (_, i) => toRow('auth.event', auth('acct_filepath', 'login.failed', at(i), { user_id: i % 3 ? 'usr_abcd' : null, country: null }) as AuthEvent))
    await storage.insertRows('auth_events', authRows.map((r) => r.values), { insert_deduplication_token: 'auth' })
    expect(await count(storage, 'SELECT count() AS n FROM key_lifecycle')).toBe(6_000)
    expect(await count(storage, 'SELECT countIf(auto_generated) AS n FROM key_lifecycle')).toBe(3_000)
    expect(await count(storage, 'SELECT countIf(label IS NULL AND expires_at IS NOT NULL) AS n FROM key_lifecycle')).toBe(3_000)
    expect(await count(storage, "SELECT countIf(scopes = '[{\"scope\":\"payments\",\"access\":[\"read\"]}]') AS n FROM key_lifecycle")).toBe(3_000)
    expect(await count(storage, 'SELECT countIf(user_id IS NULL AND country IS NULL) AS n FROM auth_events')).toBe(2_000)
    expect(await count(storage, "SELECT countIf(type = 'auth.event') AS n FROM event_ids")).toBe(6_000)
  })

  it("fails with the engine's message when a row does not fit its column, and stores nothing of the batch", async () => {
    const batch = rows(20_000, 6_000)
    batch[5_000]!.status = 'not a number'
    const before = await count(storage, 'SELECT count() AS n FROM key_usage')
    await expect(storage.insertRows('key_usage', batch, { insert_deduplication_token: 'bad' })).rejects.toThrow(/status|parse|UInt16/i)
    expect(await count(storage, 'SELECT count() AS n FROM key_usage')).toBe(before)
    expect(spoolFiles()).toEqual([])
  })

  it('stores usage rows built as lines exactly, through the file, inline, and the server path', async () => {
    const { columns, format } = LINE_OF.key_usage!
    // Every character TabSeparated escapes, and \N (its NULL), in the free-text fields.
    const oddOne = (i: number) => ({ ...usageEvent(i, { to: now - 60_000 }), user_agent: 'quote " backslash \\ tab \t newline \n return \r null \\N é ☃', endpoint: '/v1/\\N', request_id: 'req\\', key_id: null, asn: null, origin: null })
    // One odd row in each path: first of the file's 5,000, of the 10 inline, of the 990 through the server path.
    const odd = [oddOne(30_000), oddOne(35_000), oddOne(35_010)]
    const made = Array.from({ length: 6_000 }, (_, i) => toRow('key.usage', i === 0 ? odd[0]! : i === 5_000 ? odd[1]! : i === 5_010 ? odd[2]! : usageEvent(30_000 + i, { to: now - 60_000 })))
    const before = await count(storage, 'SELECT count() AS n FROM key_usage')
    await storage.insertLines('key_usage', columns, made.slice(0, 5_000).map((r) => r.line!), { insert_deduplication_token: 'lines-file' }, format)
    await storage.insertLines('key_usage', columns, made.slice(5_000, 5_010).map((r) => r.line!), { insert_deduplication_token: 'lines-inline' }, format)
    // A server gets the lines as the body of an INSERT; the embedded client speaks the same protocol.
    await bodyInsert(storage.client)('key_usage', columns, made.slice(5_010).map((r) => r.line!), { insert_deduplication_token: 'lines-body' }, format)
    expect(await count(storage, 'SELECT count() AS n FROM key_usage')).toBe(before + 6_000)
    for (const [i, e] of [0, 5_000, 5_010].map((i, j) => [i, odd[j]!] as const)) {
      const [stored] = await (
        await storage.client.query({ query: 'SELECT user_agent, endpoint, request_id, key_id, asn, origin, toString(occurred_at) AS at FROM key_usage WHERE event_id = {id:UUID}', query_params: { id: made[i]!.eventId }, format: 'JSONEachRow' })
      ).json<Record<string, unknown>>()
      expect(stored).toEqual({ user_agent: e.user_agent, endpoint: e.endpoint, request_id: e.request_id, key_id: '', asn: 0, origin: '', at: made[i]!.values.occurred_at })
      expect(made[i]!.values).toMatchObject({ event_id: e.event_id, account_id: e.account_id, user_agent: e.user_agent, endpoint: e.endpoint, status: e.status, latency_ms: e.latency_ms, asn: 0, client_side: 0 })
    }
  })

  it('stores a body given as its pieces (the bodies made as rows arrived) exactly, through the file and the server path', async () => {
    const { columns, format } = LINE_OF.key_usage!
    const made = Array.from({ length: 12_000 }, (_, i) => toRow('key.usage', usageEvent(50_000 + i, { to: now - 60_000 })))
    // Uneven pieces, as batches of different sizes make them; more than one writev call's worth of pieces.
    const piecesOf = (rs: typeof made) => {
      const out: Buffer[] = []
      for (let i = 0, n = 1; i < rs.length; i += n, n = (n * 7) % 97 + 1) out.push(encodeLines(rs.slice(i, i + n).map((r) => r.line!)).body)
      return out
    }
    const viaFile = piecesOf(made.slice(0, 10_000))
    expect(viaFile.length).toBeGreaterThan(64)
    const before = await count(storage, 'SELECT count() AS n FROM key_usage')
    await storage.insertLines('key_usage', columns, viaFile, { insert_deduplication_token: 'pieces-file' }, format)
    await bodyInsert(storage.client)('key_usage', columns, piecesOf(made.slice(10_000)), { insert_deduplication_token: 'pieces-body' }, format)
    expect(await count(storage, 'SELECT count() AS n FROM key_usage')).toBe(before + 12_000)
    const stored = await (
      await storage.client.query({ query: 'SELECT toString(event_id) AS id, request_id FROM key_usage WHERE event_id IN {ids:Array(UUID)} ORDER BY request_id', query_params: { ids: made.map((r) => r.eventId) }, format: 'JSONEachRow' })
    ).json<{ id: string; request_id: string }>()
    expect(stored.map((r) => r.id).sort()).toEqual(made.map((r) => r.eventId).sort())
    expect(spoolFiles()).toEqual([])
  })
})
