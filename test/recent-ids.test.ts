// The duplicate decision from the in-memory index of recent ids (issue 12), on the real engine: exact above its
// horizon, the engine asked below it, rebuilt from event_ids, and never fooled by an insert that failed after
// landing.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Storage } from '../clickhouse/client.ts'
import { usageEvent } from '../contract/synthetic.ts'
import { StorageBusyError } from '../clickhouse/errors.ts'
import { RecentIds } from '../ingest/recent-ids.ts'
import { toRow, type Row } from '../ingest/rows.ts'
import { EventWriter } from '../ingest/writer.ts'
import { count, openTestStorage, tempDir } from './helpers.ts'

let storage: Storage
const now = Date.now()
// Event i happens 2 s after event i - 1, the last ones a few minutes ago: the index evicts whole minutes, oldest first.
const rows = new Map<number, Row>()
const row = (i: number): Row => {
  let r = rows.get(i)
  if (!r) {
    const e = { ...usageEvent(i, { keys: 50, accounts: 5 }), event_id: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`, occurred_at: new Date(now - 6 * 3_600_000 + i * 2_000).toISOString() }
    rows.set(i, (r = toRow('key.usage', e as never)))
  }
  return r
}
const range = (from: number, to: number) => Array.from({ length: to - from }, (_, k) => row(from + k))
const stored = () => count(storage, 'SELECT count() AS n FROM key_usage')
const writerWith = (index: RecentIds, s: Storage = storage) => new EventWriter(s, { maxRows: 2_000, maxWaitMs: 5, maxInflight: 2, retries: 1, recentIds: index })

beforeAll(async () => {
  storage = await openTestStorage(tempDir())
})
afterAll(async () => {
  await storage?.close()
})

describe('the recent-id index', () => {
  it('tells apart ids that differ in any one hex digit, and indexes only canonical lowercase UUIDs', async () => {
    const index = new RecentIds(storage.client, 20_000)
    await index.ready()
    const ids = Array.from({ length: 2_000 }, () => randomUUID())
    index.stored('key.usage', ids.map((eventId) => ({ eventId, occurredAtMs: now })))
    for (const id of ids) expect(index.lookup(id, now)).toMatchObject({ stored: true, at: now })
    // every digit of some ids changed in turn: none of those is stored
    for (const id of ids.slice(0, 50)) {
      for (let i = 0; i < 36; i++) {
        if (id[i] === '-') continue
        const other = `${id.slice(0, i)}${id[i] === '0' ? '1' : '0'}${id.slice(i + 1)}`
        expect(index.lookup(other, now), other).toEqual({ stored: false })
      }
    }
    // Not canonical: not indexed, so the engine is asked (undefined), whatever was stored under them.
    const odd = [ids[0]!.toUpperCase(), ids[1]!.replace('-', ''), `${ids[2]!.slice(0, 35)}g`, `${ids[3]!.slice(0, 35)}\u00b0`, `${ids[4]!.slice(0, 35)}\u0130`, `${ids[5]}0`]
    index.stored('key.usage', odd.map((eventId) => ({ eventId, occurredAtMs: now })))
    for (const id of odd) expect(index.lookup(id, now), id).toBeUndefined()
  })

  it('answers from memory above its horizon, sends older events to the engine, and stores each id once', async () => {
    const index = new RecentIds(storage.client, 2_000)
    const writer = writerWith(index)
    const first = await writer.write('key_usage', range(0, 5_000))
    expect(first).toMatchObject({ stored: 5_000, duplicates: 0 })
    // Over capacity: the oldest minutes went, and the horizon moved past them.
    expect(index.size).toBeLessThanOrEqual(2_000)
    expect(index.horizon).toBeGreaterThan(row(0).occurredAtMs)
    expect(index.lookup(row(0).eventId, row(0).occurredAtMs)).toBeUndefined() // below the horizon: ask the engine
    expect(index.lookup(row(4_999).eventId, row(4_999).occurredAtMs)).toMatchObject({ stored: true, type: 'key.usage' })
    expect(index.lookup('00000000-0000-4000-8000-000000000000', now)).toEqual({ stored: false })

    // Every one again, old and recent, plus 1,000 new: only the new ones are stored.
    const again = await writer.write('key_usage', [...range(0, 5_000), ...range(5_000, 6_000)])
    expect(again).toMatchObject({ stored: 1_000, duplicates: 5_000, conflicts: [] })
    expect(await stored()).toBe(6_000)
    await writer.drain()
  })

  it('is rebuilt from event_ids: a fresh process knows the newest ids and finds the rest in the engine', async () => {
    const index = new RecentIds(storage.client, 1_000)
    await index.ready()
    expect(index.size).toBe(999) // the oldest millisecond loaded may be cut off: below the horizon
    expect(index.lookup(row(5_999).eventId, row(5_999).occurredAtMs)).toMatchObject({ stored: true })
    const writer = writerWith(index)
    expect(await writer.write('key_usage', range(0, 6_000))).toMatchObject({ stored: 0, duplicates: 6_000 })
    expect(await stored()).toBe(6_000)
  })

  it('tells a conflicting duplicate (same id, another time) from a repeat', async () => {
    const index = new RecentIds(storage.client, 100_000)
    const writer = writerWith(index)
    const original = row(5_500)
    const moved: Row = { ...original, occurredAtMs: original.occurredAtMs + 1_000, values: { ...original.values } }
    const r = await writer.write('key_usage', [moved])
    expect(r.stored).toBe(0)
    expect(r.conflicts).toHaveLength(1)
    expect(r.conflicts[0]!.detail).toContain('stored before')
  })

  it('asks the engine about rows of an insert that failed after it landed, and does not store them twice', async () => {
    const index = new RecentIds(storage.client, 100_000)
    await index.ready()
    // The engine stores the block, then the answer is lost (a timeout), every time.
    const lossy: Storage = {
      ...storage,
      insertLines: async (...args) => {
        await storage.insertLines(...args)
        throw new StorageBusyError('the answer was lost', undefined)
      },
    }
    const fresh = Array.from({ length: 300 }, (_, k) => row(10_000 + k))
    await expect(writerWith(index, lossy).write('key_usage', fresh)).rejects.toThrow(/answer was lost/)
    expect(await stored()).toBe(6_300)
    expect(index.lookup(fresh[0]!.eventId, fresh[0]!.occurredAtMs)).toBeUndefined() // in doubt
    // The redelivery after the failure: the engine says they are stored.
    expect(await writerWith(index).write('key_usage', fresh)).toMatchObject({ stored: 0, duplicates: 300 })
    expect(await stored()).toBe(6_300)
    expect(index.lookup(fresh[0]!.eventId, fresh[0]!.occurredAtMs)).toMatchObject({ stored: true })
  })
})

describe('batches larger than a slice of the in-memory work', () => {
  // The writer looks ids up and records them in slices of 8,192, with a turn of the event loop between slices (so an
  // API request never waits for a whole batch): batches that overlap and interleave stay exact.
  it('stores each of 35,000 ids once across three overlapping batches of 20,000-30,000 in flight together', async () => {
    const index = new RecentIds(storage.client, 100_000)
    const writer = new EventWriter(storage, { maxRows: 20_000, maxWaitMs: 5, maxInflight: 2, recentIds: index, onFlush: (_, f) => void flushes.push(f.rows) })
    const flushes: number[] = []
    const big = (from: number, to: number) =>
      Array.from({ length: to - from }, (_, k) => {
        const i = from + k
        const e = { ...usageEvent(i, { keys: 50, accounts: 5 }), key_id: `key_Sliced${i % 13}`, event_id: `00000000-0000-4000-9000-${String(i).padStart(12, '0')}`, occurred_at: new Date(now - 50 * 60_000 + k * 40).toISOString() }
        return toRow('key.usage', e as never)
      })
    const byId = new Map<number, Row>()
    const batch = (from: number, to: number) => big(from, to).map((r, k) => byId.get(from + k) ?? (byId.set(from + k, r), r))
    const before = await stored()
    let turns = 0
    const ticker = setInterval(() => turns++, 1)
    const results = await Promise.all([writer.write('key_usage', batch(0, 20_000)), writer.write('key_usage', batch(10_000, 30_000)), writer.write('key_usage', batch(5_000, 35_000))])
    clearInterval(ticker)
    expect(results.reduce((n, r) => n + r.stored, 0)).toBe(35_000)
    expect(results.reduce((n, r) => n + r.duplicates, 0)).toBe(70_000 - 35_000)
    expect(results.flatMap((r) => r.conflicts)).toEqual([])
    expect(await stored()).toBe(before + 35_000)
    expect(await count(storage, "SELECT sum(requests) AS n FROM key_usage_hourly WHERE key_id LIKE 'key_Sliced%'")).toBe(35_000)
    for (const i of [0, 8_191, 8_192, 19_999, 20_000, 34_999]) expect(index.lookup(byId.get(i)!.eventId, byId.get(i)!.occurredAtMs)).toMatchObject({ stored: true })
    expect(turns).toBeGreaterThan(0)
    expect(flushes).toEqual([20_000, 20_000, 30_000]) // three batches, each looked up while the one before it was in flight
    // A redelivery of all of it is all duplicates, from memory.
    expect(await writer.write('key_usage', batch(0, 35_000))).toMatchObject({ stored: 0, duplicates: 35_000 })
    expect(await stored()).toBe(before + 35_000)
  })
})

describe('the recent-id table', () => {
  // Against a plain Map holding the same ids: many collisions (a small table), ids in doubt settled either way,
  // and evictions by minute with backward-shift deletion, over 200,000 random operations.
  it('answers as a Map of the same ids would, through collisions, settles and evictions', () => {
    const capacity = 5_000
    const index = new RecentIds(undefined as never, capacity)
    const model = new Map<string, { at: number; maybe: boolean }>()
    let seed = 7
    const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32)
    const hex = (n: number, width: number) => n.toString(16).padStart(width, '0')
    // Half the ids share their first 96 bits (only the last word differs), like ids from one clock.
    const idOf = (i: number) => (i % 2 ? `00000000-0000-7000-8000-0000${hex(i, 8)}` : `${hex(Math.floor(rand() * 2 ** 32), 8)}-${hex(i & 0xffff, 4)}-4000-8000-${hex(i, 12)}`)
    const ids: { id: string; at: number }[] = []
    let clock = 1_700_000_000_000
    let horizon = index.horizon
    for (let step = 0; step < 200_000; step++) {
      const r = rand()
      if (r < 0.6 || ids.length === 0) {
        clock += Math.floor(rand() * 50)
        const e = { id: idOf(step), at: clock - Math.floor(rand() * 120_000) }
        ids.push(e)
        const doubt = rand() < 0.1
        if (doubt) index.inDoubt([{ eventId: e.id, occurredAtMs: e.at }])
        else index.stored('key.usage', [{ eventId: e.id, occurredAtMs: e.at }])
        if (e.at >= index.horizon || model.has(e.id)) model.set(e.id, { at: e.at, maybe: doubt })
      } else if (r < 0.7) {
        const e = ids[Math.floor(rand() * ids.length)]!
        const landed = rand() < 0.5
        index.settled(landed ? new Map([[e.id, { at: e.at, type: 'key.usage' }]]) : new Map(), [{ eventId: e.id }])
        const m = model.get(e.id)
        if (m?.maybe) landed ? (m.maybe = false) : model.delete(e.id)
      }
      // What eviction dropped is below the horizon, in the model too.
      if (index.horizon !== horizon) for (const [id, m] of model) if (m.at < (horizon = index.horizon)) model.delete(id)
      if (step % 997 === 0) {
        expect(index.size).toBe(model.size)
        for (const e of ids.slice(-3_000)) {
          const m = model.get(e.id)
          const answer = index.lookup(e.id, e.at)
          if (m) expect(answer, e.id).toEqual(m.maybe ? undefined : { stored: true, at: m.at, type: 'key.usage' })
          else expect(answer, e.id).toEqual(e.at >= index.horizon ? { stored: false } : undefined)
        }
      }
    }
    expect(index.size).toBeLessThanOrEqual(capacity)
    expect(index.horizon).toBeGreaterThan(1_700_000_000_000)
  })

  it('keeps the first version of an id within a batch and against a batch in flight, and names each conflict', async () => {
    // (last: the tests above count what the store holds)
    const writer = writerWith(new RecentIds(storage.client, 100_000))
    const base = 7_000
    const first = row(base)
    const changed = toRow('key.usage', { ...usageEvent(base, { keys: 50, accounts: 5 }), event_id: first.eventId, occurred_at: new Date(first.occurredAtMs).toISOString(), status: 503 } as never)
    const moved = toRow('key.usage', { ...usageEvent(base, { keys: 50, accounts: 5 }), event_id: first.eventId, occurred_at: new Date(first.occurredAtMs + 1_000).toISOString() } as never)
    // 2,000 rows (the writer's maxRows): this batch goes at once; the next write's rows make a batch of their own.
    const one = writer.write('key_usage', [...range(base, base + 1_997), changed, row(base + 1), row(base + 1_997)])
    const two = writer.write('key_usage', [moved, row(base + 5), row(base + 2_000), row(base + 2_000)])
    const [r1, r2] = await Promise.all([one, two])
    expect(r1).toMatchObject({ stored: 1_998, duplicates: 2, rejected: [] })
    expect(r1.conflicts).toEqual([{ index: 1_997, detail: expect.stringContaining('same batch with other contents') }])
    expect(r2).toMatchObject({ stored: 1, duplicates: 3, rejected: [] })
    // in flight or stored by then, depending on timing: either way the first version stays
    expect(r2.conflicts).toEqual([{ index: 0, detail: expect.stringMatching(/being stored with occurred_at|stored before/) }])
    const ids = [first.eventId, row(base + 1).eventId, row(base + 5).eventId, row(base + 2_000).eventId]
    expect(await count(storage, 'SELECT count() AS n FROM key_usage WHERE event_id IN {ids:Array(UUID)}', { ids })).toBe(4)
    expect(await count(storage, 'SELECT count() AS n FROM key_usage WHERE event_id = {id:UUID} AND status != 503 AND occurred_at = fromUnixTimestamp64Milli({at:Int64})', { id: first.eventId, at: first.occurredAtMs })).toBe(1)
  })
})
