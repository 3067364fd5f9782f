// A Kafka partition batch as the pipeline holds it while its rows are stored (issue 12). kafkajs gives a message as
// an object with a value, a key and an offset string; kept for seconds by the window of batches in flight, each
// message also had its wrapper and origin here: about 300 B of objects per message, a third of the JS heap at the
// peak. This keeps the values (views into the fetch response) and nothing else per message: keys copied into one
// buffer, their places and the offsets in typed arrays. A message object is built again only for a rejection.
// (Copying the values out as well, to let go of each fetch response at once, took 50-100 MB more off the peak but
// cost 1.4 µs of JS and 0.8 of GC per event in bench:ingest --stages, most likely as the external memory of every
// batch's copy, which V8 answers with more full collections.)
import type { InboundMessage, MessageBatch } from './pipeline.ts'

export interface FetchedMessage {
  key: Buffer | null
  value: Buffer | null
  offset: string
}

const EMPTY = Buffer.alloc(0)

export class KafkaMessages implements MessageBatch {
  readonly length: number
  private readonly values: Buffer[]
  private readonly keys: Buffer
  /** Per message: where its key starts in `keys`, and its length (-1: no key). */
  private readonly keySpans: Int32Array
  /** Offsets as numbers (exact below 2^53, which no partition reaches); their strings when one does not fit. */
  private readonly offsets: Float64Array | string[]

  constructor(
    private readonly topic: string,
    private readonly partition: number,
    fetched: readonly FetchedMessage[],
  ) {
    const n = fetched.length
    this.length = n
    let keyBytes = 0
    for (const m of fetched) keyBytes += m.key?.byteLength ?? 0
    this.values = new Array<Buffer>(n)
    this.keys = Buffer.allocUnsafe(keyBytes)
    this.keySpans = new Int32Array(n * 2)
    const exact = n === 0 || Number.isSafeInteger(Number(fetched[n - 1]!.offset)) // offsets grow within a batch
    const offsets = exact ? new Float64Array(n) : new Array<string>(n)
    let k = 0
    for (let i = 0; i < n; i++) {
      const m = fetched[i]!
      this.values[i] = m.value ?? EMPTY
      this.keySpans[2 * i] = k
      if (m.key) {
        this.keys.set(m.key, k)
        this.keySpans[2 * i + 1] = m.key.byteLength
        k += m.key.byteLength
      } else this.keySpans[2 * i + 1] = -1
      offsets[i] = exact ? Number(m.offset) : m.offset
    }
    this.offsets = offsets
  }

  raw(index: number): Uint8Array {
    return this.values[index]!
  }

  message(index: number): InboundMessage {
    const start = this.keySpans[2 * index]!
    const length = this.keySpans[2 * index + 1]!
    const key = length < 0 ? null : this.keys.subarray(start, start + length)
    return { raw: this.values[index]!, origin: { source: 'kafka', topic: this.topic, partition: this.partition, offset: String(this.offsets[index]), key } }
  }
}
