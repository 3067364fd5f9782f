// The writer's batching under load (ingest/writer.ts, minRows and maxAgeMs): while a table's insert is in the
// engine its next batch fills, and goes once it holds minRows rows or its first row has waited maxAgeMs, so inserts
// under load are large (the engine's cost per row falls steeply with their size) and no row waits without bound.
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
    const second = await writer.write('key_usage', rows(100)) // far below minRows, with nothing more coming
    const waited = performance.now() - t0
    await first
    expect(second.stored).toBe(100)
    expect(waited).toBeGreaterThanOrEqual(350) // it did wait for more rows...
    expect(waited).toBeLessThan(400 + 3_000) // ...and went at its age, plus one insert
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
