// The writer's batching under load (ingest/writer.ts, minRows, maxAgeMs and quietMs): while a table's insert is in
// the engine its next batch fills, and goes once it holds minRows rows, its first row has waited maxAgeMs, or no row
// came for quietMs, so inserts under load are large (the engine's cost per row falls steeply with their size), no
// row waits without bound, and a source that holds fewer than minRows rows in flight is not stalled.
// Against the real embedded engine; the same arrivals with minRows 0 (group commit alone) are the control.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Storage } from '../clickhouse/client.ts'
import { usageEvent } from '../contract/synthetic.ts'
import { toRow } from '../ingest/rows.ts'
import { EventWriter } from '../ingest/writer.ts'
import { count, openTestStorage, tempDir } from './helpers.ts'

let storage: Storage
beforeAll(async () => {
  storage = await openTestStorage(tempDir())
})
afterAll(async () => {
  await storage?.close()
})

let next = 0
const rows = (n: number) => Array.from({ length: n }, () => toRow('key.usage', usageEvent(next++, { keys: 50 })))
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** 60 writes of 100 rows, one every 25 ms (several arrive during each insert): the sizes of the inserts made. */
async function arrivals(options: { minRows: number; maxAgeMs: number }): Promise<number[]> {
  const sizes: number[] = []
  const writer = new EventWriter(storage, { maxRows: 100_000, maxWaitMs: 5, maxInflight: 2, ...options, onFlush: (_, s) => void sizes.push(s.rows) })
  const before = await count(storage, 'SELECT count() AS n FROM key_usage')
  const writes: Promise<unknown>[] = []
  for (let i = 0; i < 60; i++) {
    writes.push(writer.write('key_usage', rows(100)))
    await sleep(25)
  }
  const results = await Promise.all(writes)
  expect(results.every((r) => (r as { stored: number }).stored === 100)).toBe(true)
  expect(await count(storage, 'SELECT count() AS n FROM key_usage')).toBe(before + 6_000)
  return sizes
}

describe('EventWriter under load', () => {
  it('sends a busy table its next batch once it holds minRows rows, where group commit alone sends what came in meanwhile', async () => {
    const control = await arrivals({ minRows: 0, maxAgeMs: 2_000 })
    const batched = await arrivals({ minRows: 2_000, maxAgeMs: 5_000 })
    // The first batch goes when the idle table has lingered; every later one but the last waited for 2,000 rows.
    expect(batched.slice(1, -1).every((n) => n >= 2_000), `batches ${batched}`).toBe(true)
    expect(batched.length, `batches ${batched} against ${control}`).toBeLessThan(control.length)
    // The control made smaller inserts: what arrived during each insert (the test would pass without the rule otherwise).
    expect(control.slice(1, -1).some((n) => n < 2_000), `control ${control}`).toBe(true)
  })

  it('never keeps a row longer than maxAgeMs waiting for minRows', async () => {
    const writer = new EventWriter(storage, { maxRows: 100_000, maxWaitMs: 5, maxInflight: 2, minRows: 1_000_000, maxAgeMs: 400 })
    const first = writer.write('key_usage', rows(100)) // an idle table: goes after its linger
    await sleep(30) // lingered, and in the engine now
    const t0 = performance.now()
    const second = writer.write('key_usage', rows(100)).then((r) => ({ ...r, waited: performance.now() - t0 }))
    // Rows keep coming (never quiet for 100 ms), far too few for minRows.
    const more: Promise<unknown>[] = []
    for (let i = 0; i < 40; i++) {
      await sleep(25)
      more.push(writer.write('key_usage', rows(10)))
    }
    const { stored, waited } = await second
    await Promise.all([first, ...more])
    expect(stored).toBe(100)
    expect(waited).toBeGreaterThanOrEqual(350) // it did wait for more rows...
    expect(waited).toBeLessThan(400 + 3_000) // ...and went at its age, plus one insert
  })

  it('does not stall a source whose rows in flight are fewer than minRows: a batch goes once no row came for quietMs', async () => {
    // Like a file ingest or a Kafka partition whose window (here 500 rows) is smaller than minRows: it writes what
    // it may hold, then waits for those rows to be stored before it reads more.
    const sizes: number[] = []
    const writer = new EventWriter(storage, { maxRows: 100_000, maxWaitMs: 5, maxInflight: 2, minRows: 100_000, maxAgeMs: 20_000, quietMs: 100, onFlush: (_, s) => void sizes.push(s.rows) })
    const t0 = performance.now()
    const window: Promise<unknown>[] = []
    for (let chunk = 0; chunk < 30; chunk++) {
      if (window.length >= 5) await window.shift() // room once the oldest chunk is stored
      window.push(writer.write('key_usage', rows(100)))
      await sleep(10) // chunks arrive while an insert is in the engine, and wait behind it
    }
    await Promise.all(window)
    // Waiting out maxAgeMs would have taken 20 s at least once; each batch went after 100 ms of quiet instead.
    expect(performance.now() - t0, `batches ${sizes}`).toBeLessThan(15_000)
    expect(sizes.some((n) => n > 100), `batches ${sizes}`).toBe(true) // batches did gather behind an insert
    expect(sizes.reduce((a, b) => a + b, 0)).toBe(3_000)
  })

  it('sends rows spread over many days (a replay of history) in inserts of about 35,000 rows, without waiting for minRows', async () => {
    const sizes: number[] = []
    const writer = new EventWriter(storage, { maxRows: 100_000, maxWaitMs: 5, maxInflight: 2, minRows: 100_000, maxAgeMs: 20_000, onFlush: (_, s) => void sizes.push(s.rows) })
    const now = Date.now()
    const history = (n: number) => Array.from({ length: n }, () => toRow('key.usage', usageEvent(next++, { keys: 50, from: now - 30 * 86_400_000, to: now - 60_000 })))
    const t0 = performance.now()
    const writes = [writer.write('key_usage', history(5_000))]
    await sleep(20) // the first insert is in the engine; 100,000 rows pile up behind it
    for (let i = 0; i < 20; i++) writes.push(writer.write('key_usage', history(5_000)))
    const results = await Promise.all(writes)
    expect(results.reduce((n, r) => n + r.stored, 0)).toBe(105_000)
    expect(sizes.slice(1).every((n) => n <= 35_000), `batches ${sizes}`).toBe(true)
    expect(sizes.slice(1).some((n) => n > 5_000), `batches ${sizes}`).toBe(true) // they did go together
    expect(performance.now() - t0).toBeLessThan(20_000) // none waited out maxAgeMs for more
  })

  it('does not hold a latency-critical table (linger 0) for minRows', async () => {
    const writer = new EventWriter(storage, { maxRows: 100_000, maxWaitMs: 5, maxInflight: 2, minRows: 1_000_000, maxAgeMs: 10_000, lingerMs: { key_usage: 0 } })
    const first = writer.write('key_usage', rows(100))
    await sleep(30)
    const t0 = performance.now()
    await writer.write('key_usage', rows(100))
    await first
    expect(performance.now() - t0).toBeLessThan(5_000)
  })
})
