// A Kafka partition batch as the pipeline holds it while its rows are stored (issue 12): every value and key copied
// into one buffer each, with their places in one typed array. kafkajs gives a message as an object with two
// buffers that are views into the whole fetch response (12 MiB, three partitions); kept for seconds by the window
// of batches in flight, these were about 300 B of objects per message and pinned each response until its slowest
// partition was stored. A message object is built again only for the few that are rejected.
import type { InboundMessage, MessageBatch } from './pipeline.ts'

export interface FetchedMessage {
  key: Buffer | null
  value: Buffer | null
  offset: string
}

/** Per message: value start, value end, key start, key length (-1: no key). */
const SPAN = 4

export class KafkaMessages implements MessageBatch {
  readonly length: number
  private readonly values: Buffer
  private readonly keys: Buffer
  private readonly spans: Int32Array
  /** Offsets as numbers (exact below 2^53, which no partition reaches); their strings when one does not fit. */
  private readonly offsets: Float64Array | string[]

  constructor(
    private readonly topic: string,
    private readonly partition: number,
    fetched: readonly FetchedMessage[],
  ) {
    const n = fetched.length
    this.length = n
    let valueBytes = 0
    let keyBytes = 0
    for (const m of fetched) {
      valueBytes += m.value?.byteLength ?? 0
      keyBytes += m.key?.byteLength ?? 0
    }
    this.values = Buffer.allocUnsafeSlow(valueBytes)
    this.keys = Buffer.allocUnsafeSlow(keyBytes)
    this.spans = new Int32Array(n * SPAN)
    const exact = n === 0 || Number.isSafeInteger(Number(fetched[n - 1]!.offset)) // offsets grow within a batch
    const offsets = exact ? new Float64Array(n) : new Array<string>(n)
    let v = 0
    let k = 0
    for (let i = 0; i < n; i++) {
      const m = fetched[i]!
      const s = i * SPAN
      this.spans[s] = v
      if (m.value) v += m.value.copy(this.values, v)
      this.spans[s + 1] = v
      this.spans[s + 2] = k
      if (m.key) {
        this.spans[s + 3] = m.key.copy(this.keys, k)
        k += m.key.byteLength
      } else this.spans[s + 3] = -1
      offsets[i] = exact ? Number(m.offset) : m.offset
    }
    this.offsets = offsets
  }

  raw(index: number): Uint8Array {
    const s = index * SPAN
    return this.values.subarray(this.spans[s], this.spans[s + 1])
  }

  message(index: number): InboundMessage {
    const s = index * SPAN
    const keyLength = this.spans[s + 3]!
    const key = keyLength < 0 ? null : this.keys.subarray(this.spans[s + 2], this.spans[s + 2]! + keyLength)
    return { raw: this.raw(index), origin: { source: 'kafka', topic: this.topic, partition: this.partition, offset: String(this.offsets[index]), key } }
  }
}
