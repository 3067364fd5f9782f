// The compact form of a Kafka batch (ingest/kafka-messages.ts) gives back each message exactly as kafkajs gave it:
// its bytes, its key (or none), its offset, its topic and partition, whatever the fetch response around them held.
import { describe, expect, it } from 'vitest'
import { KafkaMessages, type FetchedMessage } from '../ingest/kafka-messages.ts'

/** Messages as kafkajs hands them: views into one shared response buffer, with bytes between them. */
function fetchedFrom(parts: { key: string | null; value: string | null; offset: string }[]): FetchedMessage[] {
  const response = Buffer.alloc(parts.reduce((n, p) => n + 7 + Buffer.byteLength(p.key ?? '') + Buffer.byteLength(p.value ?? ''), 0), 0xee)
  let at = 0
  return parts.map((p) => {
    at += 7 // a record's header, which is not the message
    const take = (s: string | null) => {
      if (s === null) return null
      const view = response.subarray(at, at + Buffer.byteLength(s))
      view.write(s)
      at += view.byteLength
      return view
    }
    return { key: take(p.key), value: take(p.value), offset: p.offset }
  })
}

describe('KafkaMessages', () => {
  const parts = [
    { key: 'key_00000001', value: '{"event_id":"a"}', offset: '41' },
    { key: null, value: '{"event_id":"b","note":"ünïcode ✓"}', offset: '42' },
    { key: '', value: null, offset: '44' }, // an empty key is a key; a tombstone has no value
    { key: 'k', value: '', offset: '45' },
  ]

  it('gives each message its own bytes, key and offset, and no more', () => {
    const batch = new KafkaMessages('keys.usage', 2, fetchedFrom(parts))
    expect(batch.length).toBe(4)
    parts.forEach((p, i) => {
      expect(Buffer.from(batch.raw(i)).toString()).toBe(p.value ?? '')
      const m = batch.message(i)
      expect(Buffer.from(m.raw).toString()).toBe(p.value ?? '')
      expect(m.origin).toEqual({ source: 'kafka', topic: 'keys.usage', partition: 2, offset: p.offset, key: p.key === null ? null : Buffer.from(p.key) })
    })
  })

  it('keeps the keys, not the objects kafkajs gave them in', () => {
    const fetched = fetchedFrom(parts)
    const batch = new KafkaMessages('keys.usage', 0, fetched)
    fetched[0]!.key!.fill(0x21) // kafkajs's buffer, reused or not: the batch has its own copy of the key
    expect(batch.message(0).origin.key?.toString()).toBe(parts[0]!.key)
  })

  it('keeps offsets beyond 2^53 exact', () => {
    const big = [
      { key: null, value: 'x', offset: '9007199254740993' },
      { key: null, value: 'y', offset: '9007199254740995' },
    ]
    const batch = new KafkaMessages('t', 0, fetchedFrom(big))
    expect(batch.message(0).origin.offset).toBe('9007199254740993')
    expect(batch.message(1).origin.offset).toBe('9007199254740995')
  })

  it('gives back the same bytes once packed, in place in a response or joined from separate buffers', async () => {
    const many = Array.from({ length: 2_000 }, (_, i) => ({ key: `key_${i}`, value: JSON.stringify({ event_id: `id-${i}`, note: i % 7 ? 'x'.repeat(i % 300) : 'ünïcode ✓' }), offset: String(1_000 + i) }))
    const inPlace = new KafkaMessages('t', 1, fetchedFrom(many))
    const separate = new KafkaMessages('t', 1, many.map((m) => ({ key: Buffer.from(m.key), value: Buffer.from(m.value), offset: m.offset })))
    const withTombstone = new KafkaMessages('t', 1, fetchedFrom(parts))
    const response = fetchedFrom(many)
    const releasing = new KafkaMessages('t', 1, response)
    for (const batch of [inPlace, separate, withTombstone, releasing]) await batch.pack()
    new Uint8Array(response[0]!.value!.buffer).fill(0) // kafkajs's response reused or gone: a packed batch holds its own
    for (const batch of [inPlace, separate, releasing]) {
      many.forEach((m, i) => {
        expect(Buffer.from(batch.raw(i)).toString()).toBe(m.value)
        expect(batch.message(i).origin).toEqual({ source: 'kafka', topic: 't', partition: 1, offset: m.offset, key: Buffer.from(m.key) })
      })
    }
    parts.forEach((p, i) => expect(Buffer.from(withTombstone.raw(i)).toString()).toBe(p.value ?? ''))
    // What is held is the compressed frame, far smaller than the messages.
    const frame = (inPlace as unknown as { packed: { frame: Buffer } }).packed.frame
    expect(frame.byteLength).toBeLessThan(many.reduce((n, m) => n + m.value.length, 0) / 4)
  })

  it('holds an empty batch', () => {
    const batch = new KafkaMessages('t', 0, [])
    expect(batch.length).toBe(0)
  })
})
