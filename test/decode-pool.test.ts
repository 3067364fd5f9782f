// Decoding on worker threads (ingest/decode-pool.ts) gives what decoding inline gives, message for message: the
// same rows (ids, times, lines or values) and the same rejections with the same reasons and details, in the order
// sent, however the messages lie in memory (one file buffer, separate buffers, Kafka-like records with headers
// between). A worker that dies fails only what it held.
import { afterAll, describe, expect, it } from 'vitest'
import { existsSync } from 'node:fs'
import { usageEvent } from '../contract/synthetic.ts'
import { auth, keyNamed, lifecycle, ratelimited, usage } from '../contract/builders.ts'
import { createHash } from 'node:crypto'
import { encodeLines } from '../clickhouse/lines.ts'
import { DecodePool } from '../ingest/decode-pool.ts'
import { decodeToRow, type DecodedRow } from '../ingest/decode.ts'
import { contractDir, contractExamples } from './helpers.ts'

const NOW = Date.now()
const k = keyNamed('pool')
const pools: DecodePool[] = []
afterAll(async () => {
  for (const p of pools) await p.close()
})

function lines(): string[] {
  const valid = [
    ...(existsSync(contractDir) ? contractExamples().map((e) => e.line) : []),
    ...Array.from({ length: 600 }, (_, i) => JSON.stringify(usageEvent(i, { keys: 50, from: NOW - 3_600_000, to: NOW - 60_000 }))),
    JSON.stringify(usage(k, new Date(NOW - 5_000).toISOString(), { origin: 'https://shop.example', country: null, asn: null })),
    JSON.stringify(ratelimited(k, new Date(NOW - 5_000).toISOString())),
    JSON.stringify(auth('acct_pool', 'login.failed', new Date(NOW - 5_000).toISOString())),
    JSON.stringify(lifecycle(k, 'created', new Date(NOW - 5_000).toISOString())),
  ]
  const invalid = [
    '{not json',
    '[]',
    JSON.stringify({ type: 'key.unknown', event_id: 'x' }),
    JSON.stringify({ ...usageEvent(1), status: 'two hundred' }),
    JSON.stringify({ ...usageEvent(2), occurred_at: new Date(NOW + 3_600_000).toISOString() }),
    JSON.stringify({ ...usageEvent(3), occurred_at: '1970-01-01T00:00:00Z' }),
    JSON.stringify({ ...usageEvent(4), occurred_at: '2026-11-30T23:59:60+01:00' }),
    'x'.repeat(70_000),
  ]
  // Invalid ones spread among the valid, so a shift by one would show.
  const out = [...valid]
  invalid.forEach((line, i) => out.splice(1 + i * 37, 0, line))
  return out
}

const asBytes = (s: string) => new TextEncoder().encode(s)

/** The three ways messages reach the pipeline: one read buffer (a file), one buffer each, records with headers between. */
function layouts(all: string[]): { file: Uint8Array[]; separate: Uint8Array[]; records: Uint8Array[] } {
  const file = Buffer.from(all.join('\n'))
  const fileViews: Uint8Array[] = []
  let at = 0
  for (const l of all) {
    const n = Buffer.byteLength(l)
    fileViews.push(file.subarray(at, at + n))
    at += n + 1
  }
  const header = Buffer.alloc(40, 0xff)
  const records = Buffer.concat(all.flatMap((l) => [header, Buffer.from(l)]))
  const recordViews: Uint8Array[] = []
  at = 0
  for (const l of all) {
    at += header.length
    const n = Buffer.byteLength(l)
    recordViews.push(records.subarray(at, at + n))
    at += n
  }
  const invalidUtf8 = Uint8Array.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d])
  return { file: fileViews, separate: [...all.map(asBytes), invalidUtf8], records: recordViews }
}

function comparable(d: DecodedRow): unknown {
  return d.ok ? { ok: true, type: d.type, eventId: d.row.eventId, at: d.row.occurredAtMs, line: d.row.line, values: d.row.values } : d
}

describe('DecodePool', () => {
  it('decodes every message as inline decoding does, in any memory layout', async () => {
    const pool = new DecodePool(2)
    pools.push(pool)
    const all = lines()
    for (const [layout, raws] of Object.entries(layouts(all))) {
      const inline = raws.map((r) => decodeToRow(r, NOW))
      const pooled = await pool.decode(raws, NOW)
      expect(pooled.length, layout).toBe(raws.length)
      expect(pooled.map(comparable), layout).toEqual(inline.map(comparable))
      expect(inline.filter((d) => !d.ok).length, layout).toBeGreaterThanOrEqual(8)
      // With the topic's type too: a message of another type is wrong_topic, as inline.
      expect((await pool.decode(raws, NOW, 'key.usage')).map(comparable), layout).toEqual(raws.map((r) => comparable(decodeToRow(r, NOW, 'key.usage'))))
    }
  })

  it("hands the valid usage rows back as their insert body: the writer's body and token for the same rows", async () => {
    const pool = new DecodePool(1)
    pools.push(pool)
    const raws = layouts(lines()).records
    const { rows, usageBody } = await pool.decodeBatch(raws, NOW)
    const usageRows = rows.flatMap((d) => (d.ok && d.type === 'key.usage' ? [d.row] : []))
    expect(usageRows.length).toBeGreaterThan(600)
    expect(usageBody?.rows).toBe(usageRows.length)
    // What the writer makes of rows that arrive (ingest/writer.ts: encodeLines, then SHA-256 of the body).
    const { body } = encodeLines(usageRows.map((r) => r.line!))
    expect(usageBody!.body.equals(body)).toBe(true)
    expect(usageBody!.digest).toBe(createHash('sha256').update(body).digest('hex'))
    // Each row's line is read from the body, and is the line inline decoding builds.
    const inline = raws.map((r) => decodeToRow(r, NOW)).flatMap((d) => (d.ok && d.type === 'key.usage' ? [d.row.line] : []))
    expect(usageRows.map((r) => r.line)).toEqual(inline)
  })

  it('answers batches in the order they were sent, whichever worker finishes first', async () => {
    const pool = new DecodePool(2)
    pools.push(pool)
    const big = layouts(lines()).separate
    const small = big.slice(0, 300)
    const order: string[] = []
    await Promise.all([
      pool.decode([...big, ...big, ...big], NOW).then(() => order.push('first, large')),
      pool.decode(small, NOW).then(() => order.push('second, small')),
    ])
    expect(order).toEqual(['first, large', 'second, small'])
  })

  it('fails only the batches of a worker that dies; later batches are still decoded', async () => {
    const pool = new DecodePool(1)
    pools.push(pool)
    const raws = layouts(lines()).separate
    const held = pool.decode(raws, NOW)
    await (pool as unknown as { slots: { worker: { terminate(): Promise<number> } }[] }).slots[0]!.worker.terminate()
    await expect(held).rejects.toThrow(/decode worker exited/)
    expect(pool.worthIt(raws.length)).toBe(false) // no worker left: the pipeline decodes inline
    expect((await pool.decode(raws, NOW)).map(comparable)).toEqual(raws.map((r) => comparable(decodeToRow(r, NOW))))
  })
})
