// A Kafka partition batch as the pipeline holds it while its rows are stored (issue 12). kafkajs gives a message as
// an object with a value, a key and an offset string; kept for seconds by the window of batches in flight, each
// message also had its wrapper and origin here: about 300 B of objects per message, a third of the JS heap at the
// peak. This keeps the values and nothing else per message: keys copied into one buffer, their places and the
// offsets in typed arrays. A message object is built again only for a rejection.
//
// Once decoded, a batch's values are needed again only for the rare event the engine refuses or a conflicting
// duplicate (their original bytes go to the dead-letter topic and ingest_errors), yet they are held until the batch
// is stored: views into kafkajs's fetch response, which they keep alive whole. `pack()` compresses them where they
// lie into one zstd frame, on libuv's pool (off the JS thread), and lets the response go: 4 MB of usage events
// become 0.3-1 MB for about 0.5 µs of CPU per message. (A plain copy cost 1.4 µs of JS and 0.8 of GC per event, as
// the external memory of every batch's copy, which V8 answers with more full collections.) A packed message is
// unpacked, its whole batch at once, only when one is asked for.
import { promisify } from 'node:util'
import * as zlib from 'node:zlib'
import type { InboundMessage, MessageBatch } from './pipeline.ts'

export interface FetchedMessage {
  key: Buffer | null
  value: Buffer | null
  offset: string
}

const EMPTY = Buffer.alloc(0)

// zstd came with Node 22.15; on an older runtime a batch keeps its values as they came.
const zstdCompress = typeof zlib.zstdCompress === 'function' ? promisify(zlib.zstdCompress) : undefined
// Output in 256 KiB pieces: at the default 16 KiB the JS thread spent 0.37 µs a message on the callbacks, here 0.17.
const ZSTD_FAST = { chunkSize: 256 * 1024, params: { [zlib.constants.ZSTD_c_compressionLevel ?? 100]: 1 } }

export class KafkaMessages implements MessageBatch {
  readonly length: number
  /** The values as kafkajs gave them, until packed. */
  private values: Buffer[] | undefined
  /** Once packed: one zstd frame holding the values, and where each starts and ends in it. */
  private packed: { frame: Buffer; spans: Float64Array } | undefined
  /** The packed values again, while a rejected message is being asked for. */
  private unpacked: Buffer | undefined
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
    const values = (this.values = new Array<Buffer>(n))
    this.keys = Buffer.allocUnsafe(keyBytes)
    this.keySpans = new Int32Array(n * 2)
    const exact = n === 0 || Number.isSafeInteger(Number(fetched[n - 1]!.offset)) // offsets grow within a batch
    const offsets = exact ? new Float64Array(n) : new Array<string>(n)
    let k = 0
    for (let i = 0; i < n; i++) {
      const m = fetched[i]!
      values[i] = m.value ?? EMPTY
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
    if (this.values) return this.values[index]!
    const { frame, spans } = this.packed!
    this.unpacked ??= zlib.zstdDecompressSync(frame)
    return this.unpacked.subarray(spans[2 * index]!, spans[2 * index + 1]!)
  }

  message(index: number): InboundMessage {
    const start = this.keySpans[2 * index]!
    const length = this.keySpans[2 * index + 1]!
    const key = length < 0 ? null : this.keys.subarray(start, start + length)
    return { raw: this.raw(index), origin: { source: 'kafka', topic: this.topic, partition: this.partition, offset: String(this.offsets[index]), key } }
  }

  /**
   * The pipeline has decoded every message: compress the values and let kafkajs's response go. Until the frame is
   * made the values stay as they are, so a message asked for meanwhile is there either way. Resolves when packed.
   */
  async pack(): Promise<void> {
    const values = this.values
    if (!zstdCompress || !values || this.length === 0) return
    // kafkajs's values lie in order in one response, with record headers between them: that span is compressed as
    // it is, where it lies. Values from elsewhere (a test's, another client's) are joined into one buffer first.
    const spans = new Float64Array(2 * values.length)
    const first = values[0]!
    let inPlace = true
    for (let i = 0, at = first.byteOffset; i < values.length && inPlace; i++) {
      const v = values[i]!
      inPlace = v.buffer === first.buffer && v.byteOffset >= at
      at = v.byteOffset + v.byteLength
    }
    let source: Buffer
    if (inPlace) {
      const last = values[values.length - 1]!
      source = Buffer.from(first.buffer, first.byteOffset, last.byteOffset + last.byteLength - first.byteOffset)
      for (let i = 0; i < values.length; i++) {
        spans[2 * i] = values[i]!.byteOffset - first.byteOffset
        spans[2 * i + 1] = spans[2 * i]! + values[i]!.byteLength
      }
    } else {
      source = Buffer.concat(values)
      for (let i = 0, at = 0; i < values.length; i++) {
        spans[2 * i] = at
        spans[2 * i + 1] = at += values[i]!.byteLength
      }
    }
    const frame = await zstdCompress(source, ZSTD_FAST)
    this.values = undefined
    this.unpacked = undefined
    this.packed = { frame, spans }
  }
}
