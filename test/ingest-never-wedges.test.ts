// Ingest never wedges (issue 11), on the real engine: every time the contract accepts is stored (leap seconds,
// offsets, fraction digits), events older than their table's retention are rejected with a reason of their own, a
// sparse year of history lands at default batch settings, the first stored version of an event_id wins (conflicting
// duplicates counted and kept in ingest_errors), an event the engine refuses is isolated and dead-lettered with the
// engine's message while the rest of its batch is stored, and a repair that fails part-way leaves the rollups as they were.
import { randomUUID } from 'node:crypto'
import { Readable } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { FastifyInstance } from 'fastify'
import { buildApi } from '../api/server.ts'
import { apiDepsOf, type Runtime } from '../app/runtime.ts'
import { queryRows, type Storage } from '../clickhouse/client.ts'
import { recoverViews } from '../clickhouse/recovery.ts'
import { usageEvent } from '../contract/synthetic.ts'
import { ingestNdjson, type NdjsonReport } from '../ingest/ndjson.ts'
import { byPartitionSpan } from '../ingest/writer.ts'
import { parseTimestamp } from '../clickhouse/time.ts'
import { bearer, count, openTestRuntime } from './helpers.ts'

const DAY = 86_400_000
let rt: Runtime
let storage: Storage
let api: FastifyInstance
let auth: { authorization: string }

beforeAll(async () => {
  // Default batch settings: nothing here is tuned to make the input fit.
  rt = await openTestRuntime()
  storage = rt.storage
  api = await buildApi(apiDepsOf(rt))
  auth = await bearer(rt, 'ingest')
})
afterAll(async () => {
  await api?.close()
  await rt?.close()
})

const lines = (events: unknown[]) => events.map((e) => JSON.stringify(e)).join('\n') + '\n'
const ingestFile = (text: string): Promise<NdjsonReport> => ingestNdjson(Readable.from([Buffer.from(text)]), rt.pipeline, { source: 'file' })
const rawRows = () => count(storage, 'SELECT count() AS n FROM key_usage')
const account = () => `acct_${randomUUID().replaceAll('-', '').slice(0, 12)}`

describe('times', () => {
  it('reads every RFC 3339 form the contract allows, leap seconds included', () => {
    expect(parseTimestamp('2016-12-31T23:59:60.000Z')).toBe(Date.UTC(2016, 11, 31, 23, 59, 59, 999))
    expect(parseTimestamp('2026-11-30T10:00:00.123456Z')).toBe(Date.UTC(2026, 10, 30, 10, 0, 0, 123))
    expect(parseTimestamp('2026-11-30T10:00:00.1Z')).toBe(Date.UTC(2026, 10, 30, 10, 0, 0, 100))
    expect(parseTimestamp('2026-11-30T12:30:00+02:30')).toBe(Date.UTC(2026, 10, 30, 10, 0, 0, 0))
    expect(parseTimestamp('2026-11-30T05:00:00-05:00')).toBe(Date.UTC(2026, 10, 30, 10, 0, 0, 0))
    expect(parseTimestamp('0001-01-01T00:00:00Z')).toBe(Date.UTC(2001, 0, 1) - 2000 * 365.2425 * DAY)
    expect(Number.isNaN(parseTimestamp('2026-11-30 10:00:00Z'))).toBe(true)
  })

  it('stores a leap second, offsets and 1-6 fraction digits at the instant they name', async () => {
    const acct = account()
    const day = new Date(Date.now() - 2 * DAY).toISOString().slice(0, 10)
    const forms = [`${day}T23:59:60.000Z`, `${day}T23:59:60Z`, `${day}T12:30:00+02:30`, `${day}T05:00:00.5-05:00`, `${day}T10:00:00.123456Z`, `${day}T10:00:00.12Z`]
    const events = forms.map((occurred_at, i) => ({ ...usageEvent(i), account_id: acct, occurred_at }))
    const report = await ingestFile(lines(events))
    expect(report).toMatchObject({ accepted: 6, rejected: 0, duplicates: 0 })
    const stored = await queryRows<{ t: string }>(storage.client, 'SELECT toString(occurred_at) AS t FROM key_usage WHERE account_id = {a:String} ORDER BY event_id', { a: acct })
    const byId = new Map(events.map((e) => [e.event_id, e.occurred_at]))
    const got = await queryRows<{ id: string; t: string }>(storage.client, 'SELECT toString(event_id) AS id, toString(occurred_at) AS t FROM key_usage WHERE account_id = {a:String}', { a: acct })
    expect(stored).toHaveLength(6)
    const expected: Record<string, string> = {
      [`${day}T23:59:60.000Z`]: `${day} 23:59:59.999`,
      [`${day}T23:59:60Z`]: `${day} 23:59:59.999`,
      [`${day}T12:30:00+02:30`]: `${day} 10:00:00.000`,
      [`${day}T05:00:00.5-05:00`]: `${day} 10:00:00.500`,
      [`${day}T10:00:00.123456Z`]: `${day} 10:00:00.123`,
      [`${day}T10:00:00.12Z`]: `${day} 10:00:00.120`,
    }
    for (const row of got) expect(row.t, byId.get(row.id)).toBe(expected[byId.get(row.id)!])
  })

  it('rejects events older than their table keeps them as outside_retention, and keeps the ones inside', async () => {
    const acct = account()
    const before = await rawRows()
    const old = ['1850-06-01T00:00:00Z', '1970-01-01T00:00:00.000Z', '2020-03-01T12:00:00Z', '0001-01-01T00:00:00Z', new Date(Date.now() - 400 * DAY).toISOString()]
    const inside = new Date(Date.now() - 398 * DAY).toISOString()
    const events = [...old, inside].map((occurred_at, i) => ({ ...usageEvent(i), account_id: acct, occurred_at }))
    // A lifecycle event three years old is inside its five years.
    const lifecycle = {
      event_id: randomUUID(),
      type: 'key.lifecycle',
      schema_version: 1,
      occurred_at: new Date(Date.now() - 3 * 365 * DAY).toISOString(),
      account_id: acct,
      key_id: 'key_Retain0001',
      key_prefix: 'sk_live_Ret1',
      key_kind: 'secret',
      mode: 'live',
      action: 'created',
      actor: { type: 'user', id: 'usr_1' },
      label: null,
      scopes: null,
      auto_generated: false,
      expires_at: '9999-12-31T23:59:60Z',
    }
    const report = await ingestFile(lines([...events, lifecycle]))
    expect(report).toMatchObject({ accepted: 2, rejected: 5, rejectedByReason: { outside_retention: 5 } })
    expect(report.errors[0]!.detail).toMatch(/older than the 399 days key\.usage events are kept/)
    expect(await rawRows()).toBe(before + 1)
    expect(await count(storage, 'SELECT count() AS n FROM key_lifecycle WHERE account_id = {a:String}', { a: acct })).toBe(1)
    // A far date in another field is kept at the nearest time the column holds, not wrapped around.
    expect(await count(storage, "SELECT count() AS n FROM key_lifecycle WHERE account_id = {a:String} AND toYear(expires_at) = 2299", { a: acct })).toBe(1)
    expect(await count(storage, "SELECT count() AS n FROM ingest_errors WHERE reason = 'outside_retention'")).toBe(5)
  })
})

describe('a sparse year of history', () => {
  it('cuts only a batch spread over many days, into inserts of at most 64 days', () => {
    const now = Date.now()
    const recent = Array.from({ length: 100 }, (_, i) => ({ eventId: String(i), occurredAtMs: now - i * 60_000, values: {} }))
    expect(byPartitionSpan(recent)).toHaveLength(1)
    const year = Array.from({ length: 365 }, (_, i) => ({ eventId: String(i), occurredAtMs: now - i * DAY, values: {} }))
    const parts = byPartitionSpan(year)
    expect(parts.length).toBe(6)
    expect(byPartitionSpan(year, 64 * 28)).toHaveLength(1)
    for (const p of parts) expect(new Set(p.map((r) => Math.floor(r.occurredAtMs / DAY))).size).toBeLessThanOrEqual(64)
    expect(parts.flat()).toHaveLength(365)
  })

  it('lands whole at default settings through the file path, rollups included', async () => {
    const now = Date.now()
    // 30 accounts, 330 days, sparse at the start: what made a single insert overrun 100 daily partitions.
    const events = Array.from({ length: 30_000 }, (_, i) => {
      const age = Math.floor(330 * Math.sqrt((i * 7919) % 30_000 / 30_000)) // more events on recent days
      return { ...usageEvent(i, { accounts: 30, keys: 300 }), account_id: `acct_Hist${String(i % 30).padStart(4, '0')}`, occurred_at: new Date(now - (330 - age) * DAY - (i % 3_600_000)).toISOString() }
    })
    const before = await rawRows()
    const hourlyBefore = await count(storage, 'SELECT sum(requests) AS n FROM key_usage_hourly')
    const report = await ingestFile(lines(events))
    expect(report).toMatchObject({ lines: 30_000, accepted: 30_000, rejected: 0, duplicates: 0 })
    expect(await rawRows()).toBe(before + report.accepted)
    expect(await count(storage, 'SELECT sum(requests) AS n FROM key_usage_hourly')).toBe(hourlyBefore + 30_000)
    expect(await count(storage, "SELECT sum(requests) AS n FROM key_usage_daily WHERE account_id LIKE 'acct_Hist%'")).toBe(30_000)
    expect(await count(storage, "SELECT uniqExact(toDate(occurred_at)) AS n FROM key_usage WHERE account_id LIKE 'acct_Hist%'")).toBeGreaterThan(250)
  })
})

describe('identity', () => {
  it('keeps the first stored version of an event_id, counts a differing one apart and keeps it in ingest_errors', async () => {
    const acct = account()
    const first = { ...usageEvent(1), account_id: acct, occurred_at: new Date(Date.now() - DAY).toISOString() }
    expect(await ingestFile(lines([first]))).toMatchObject({ accepted: 1, duplicates: 0 })
    const moved = { ...first, occurred_at: new Date(Date.now() - 3 * DAY).toISOString(), status: 500 }
    const other = { ...usageEvent(2), account_id: acct }
    // With another new event...
    expect(await ingestFile(lines([moved, other]))).toMatchObject({ accepted: 1, duplicates: 1, conflictingDuplicates: 1, rejected: 0 })
    // ...and alone: a duplicate, not accepted-and-dropped.
    expect(await ingestFile(lines([moved]))).toMatchObject({ accepted: 0, duplicates: 1, conflictingDuplicates: 1 })
    // The same again, unchanged: a plain redelivery.
    expect(await ingestFile(lines([first]))).toMatchObject({ accepted: 0, duplicates: 1, conflictingDuplicates: 0 })
    expect(await count(storage, 'SELECT count() AS n FROM key_usage WHERE account_id = {a:String}', { a: acct })).toBe(2)
    expect(await count(storage, 'SELECT count() AS n FROM key_usage WHERE event_id = {id:UUID} AND status = 200', { id: first.event_id })).toBe(1)
    expect(await count(storage, 'SELECT sum(requests) AS n FROM key_usage_daily WHERE account_id = {a:String}', { a: acct })).toBe(2)
    const kept = await queryRows<{ reason: string; detail: string; raw: string }>(
      storage.client,
      "SELECT reason, detail, base64Decode(raw_base64) AS raw FROM ingest_errors WHERE event_id = {id:String} ORDER BY received_at",
      { id: first.event_id },
    )
    expect(kept).toHaveLength(2)
    expect(kept[0]).toMatchObject({ reason: 'conflicting_duplicate', raw: JSON.stringify(moved) })
    expect(kept[0]!.detail).toMatch(/first stored version stays/)
  })

  it('inside one batch: the first line wins, a differing copy is counted apart', async () => {
    const acct = account()
    const a = { ...usageEvent(3), account_id: acct }
    const b = { ...a, status: 404 }
    expect(await ingestFile(lines([a, a, b]))).toMatchObject({ accepted: 1, duplicates: 2, conflictingDuplicates: 1 })
    expect(await count(storage, 'SELECT count() AS n FROM key_usage WHERE account_id = {a:String} AND status = 200', { a: acct })).toBe(1)
  })
})

describe('poison isolation', () => {
  it('dead-letters the one event the engine refuses, with its message and bytes, and stores the rest of its batch and later ones', async () => {
    const acct = account()
    // A refusal the engine itself makes for one event's contents (a constraint stands for any such poison).
    await storage.client.command({ query: "ALTER TABLE key_usage ADD CONSTRAINT IF NOT EXISTS test_poison CHECK request_id != 'req_poison'" })
    try {
      const events = Array.from({ length: 5_000 }, (_, i) => ({ ...usageEvent(i), account_id: acct }))
      events[2_345] = { ...events[2_345]!, request_id: 'req_poison' }
      const before = await rawRows()
      const report = await ingestFile(lines(events))
      expect(report).toMatchObject({ accepted: 4_999, rejected: 1, rejectedByReason: { storage_rejected: 1 } })
      expect(report.errors[0]).toMatchObject({ line: 2_346, reason: 'storage_rejected' })
      expect(report.errors[0]!.detail).toMatch(/test_poison/)
      expect(await rawRows()).toBe(before + 4_999)
      const [dead] = await queryRows<{ raw: string; detail: string }>(
        storage.client,
        "SELECT base64Decode(raw_base64) AS raw, detail FROM ingest_errors WHERE reason = 'storage_rejected' AND event_id = {id:String}",
        { id: events[2_345]!.event_id },
      )
      expect(dead!.raw).toBe(JSON.stringify(events[2_345]))
      expect(dead!.detail).toMatch(/CHECK|constraint/i)
      // The batches behind it are asked of the engine and stored.
      const later = Array.from({ length: 10 }, (_, i) => ({ ...usageEvent(10_000 + i), account_id: acct }))
      expect(await ingestFile(lines(later))).toMatchObject({ accepted: 10, rejected: 0 })
    } finally {
      await storage.client.command({ query: 'ALTER TABLE key_usage DROP CONSTRAINT IF EXISTS test_poison' })
    }
  })

  it('answers a 12,000-line post with a leap second at line 6,001 with 200 and stores all of it', async () => {
    const acct = account()
    const events = Array.from({ length: 12_000 }, (_, i) => ({ ...usageEvent(i), account_id: acct }))
    events[6_000] = { ...events[6_000]!, occurred_at: '2026-06-30T23:59:60.000Z' }
    const before = await rawRows()
    const res = await api.inject({ method: 'POST', url: '/v1/events', headers: { ...auth, 'content-type': 'application/x-ndjson' }, payload: lines(events) })
    expect(res.statusCode).toBe(200)
    expect(res.json()).toMatchObject({ accepted: 12_000, rejected: 0 })
    expect(await rawRows()).toBe(before + 12_000)
  })
})

describe('repair', () => {
  it('a repair that fails part-way leaves the rollups as they were, and the next one completes them', async () => {
    const acct = account()
    const events = Array.from({ length: 600 }, (_, i) => ({ ...usageEvent(i, { keys: 6 }), account_id: acct, key_id: `key_Repair${String(i % 6).padStart(4, '0')}`, occurred_at: new Date(Date.now() - (i % 5) * DAY - 60_000).toISOString() }))
    expect(await ingestFile(lines(events))).toMatchObject({ accepted: 600 })
    const sums = async () => ({
      hourly: await count(storage, 'SELECT sum(requests) AS n FROM key_usage_hourly WHERE account_id = {a:String}', { a: acct }),
      daily: await count(storage, 'SELECT sum(requests) AS n FROM key_usage_daily WHERE account_id = {a:String}', { a: acct }),
      lastUsed: await count(storage, 'SELECT sum(requests) AS n FROM key_last_used WHERE account_id = {a:String}', { a: acct }),
      all: await count(storage, 'SELECT sum(requests) AS n FROM key_usage_daily'),
    })
    // What a kill mid-insert leaves: one key's hourly rows of one day missing.
    const sync = { mutations_sync: '2', lightweight_deletes_sync: '2' } as const
    for (const table of ['key_usage_hourly', 'key_usage_daily']) {
      await storage.client.command({ query: "DELETE FROM {t:Identifier} WHERE account_id = {a:String} AND key_id = 'key_Repair0001'", query_params: { t: table, a: acct }, clickhouse_settings: sync })
    }
    const damaged = await sums()
    expect(damaged).toMatchObject({ hourly: 500, daily: 500, lastUsed: 600 })
    // The engine fails the repair when it swaps in the daily rollup (the hourly one is already swapped).
    const failing: Storage = {
      ...storage,
      client: new Proxy(storage.client, {
        get(target, prop, receiver) {
          if (prop === 'command') {
            return (p: { query: string }) => (/ALTER TABLE key_usage_daily REPLACE PARTITION/.test(p.query) ? Promise.reject(new Error('simulated: engine stopped during the repair')) : target.command(p as never))
          }
          return Reflect.get(target, prop, receiver)
        },
      }),
    }
    await expect(recoverViews(failing)).rejects.toThrow(/simulated/)
    const after = await sums()
    // Nothing was emptied: the daily and last-use rollups are as before, the hourly one repaired.
    expect(after).toEqual({ ...damaged, hourly: 600 })
    expect(await count(storage, 'SELECT count() AS n FROM system.tables WHERE database = currentDatabase() AND name LIKE \'%_repair\'')).toBe(0)
    await recoverViews(storage)
    expect(await sums()).toEqual({ hourly: 600, daily: 600, lastUsed: 600, all: damaged.all + 100 })
  }, 240_000)
})
