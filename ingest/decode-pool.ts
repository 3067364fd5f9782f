// Decoding on worker threads (issue 12): JSON parsing, the contract check and building each row are most of the
// JS thread's work per event, and they need nothing but the bytes. A pool of workers does them for large batches,
// so the main thread is left with Kafka, the writer and the engine's calls, and both cores work.
// Answers come back in the order batches were sent, as inline decoding gives them: the writer sees rows in the
// same order (the first version of an event id stays), whichever worker finished first.
import { createRequire } from 'node:module'
import { pathToFileURL } from 'node:url'
import { Worker } from 'node:worker_threads'
import type { InboundType } from '../contract/events.ts'
import { decodeToRow, type DecodedRow, type RejectReason } from './decode.ts'
import type { DecodeAnswer, DecodeRequest, WireDecoded } from './decode-worker.ts'
import { rowFrom, usageRowIn, type Row } from './rows.ts'

/**
 * A batch decoded: each message's row or rejection, in order. `usageBody`, when there, is the insert body of its
 * valid key.usage rows, in their order (their lines are kept as its bytes): the writer sends it as it is.
 */
export interface DecodedBatch {
  rows: DecodedRow[]
  usageBody?: { body: Buffer; digest: string; rows: number }
}

/** Fewer messages than this are decoded inline: the trip costs more than it frees (a leak report never waits). */
const MIN_BATCH = 256
/** Bytes between two messages that are copied along rather than starting a new run (a Kafka record's header). */
const RUN_GAP = 256
/**
 * Batches a worker holds at once. The rest wait here as the views they came as: a batch is copied for its worker
 * only when it is sent, so a Kafka window of 36 batches is not 36 copies on the workers' queues (bench:ingest: 1,135
 * MiB peak when every batch was sent at once).
 */
const PER_WORKER = 2

interface Slot {
  worker: Worker
  alive: boolean
  /** Batches sent to this worker and not answered. */
  pending: Map<number, { resolve: (batch: DecodedBatch) => void; reject: (err: unknown) => void }>
}

export class DecodePool {
  private readonly slots: Slot[] = []
  private sequence = 0
  /** Batches waiting for a worker with room, oldest first. */
  private readonly waiting: { raws: Uint8Array[]; now: number; expectedType?: InboundType; resolve: (b: DecodedBatch) => void; reject: (err: unknown) => void }[] = []
  /** Settles when the latest batch's answer is handed over: answers go out in the order batches came in. */
  private lastHandedOver: Promise<unknown> = Promise.resolve()
  private closed = false

  constructor(size: number) {
    // Workers run TypeScript through the same loader as the CLI (tsx), registered before the worker's module loads.
    const tsx = pathToFileURL(createRequire(import.meta.url).resolve('tsx/esm/api')).href
    const workerUrl = new URL('./decode-worker.ts', import.meta.url).href
    const bootstrap = `import(${JSON.stringify(tsx)}).then(({ register }) => { register(); return import(${JSON.stringify(workerUrl)}) })`
    for (let i = 0; i < size; i++) {
      const slot: Slot = { worker: new Worker(bootstrap, { eval: true, name: 'keywatch-decode' }), alive: true, pending: new Map() }
      slot.worker.unref()
      slot.worker.on('message', (msg: DecodeAnswer) => {
        const p = slot.pending.get(msg.id)
        slot.pending.delete(msg.id)
        p?.resolve(fromAnswer(msg))
        this.sendWaiting()
      })
      // A worker that dies fails the batches it held (their messages are not acknowledged, and come again); later
      // batches go to the others, or are decoded inline.
      const fail = (err: Error) => {
        slot.alive = false
        for (const p of slot.pending.values()) p.reject(err)
        slot.pending.clear()
        this.sendWaiting()
      }
      slot.worker.on('error', fail)
      slot.worker.on('exit', (code) => fail(new Error(this.closed ? 'decode pool closed' : `decode worker exited with code ${code}`)))
      this.slots.push(slot)
    }
  }

  /** Whether a batch of this many messages goes to a worker. */
  worthIt(messages: number): boolean {
    return !this.closed && messages >= MIN_BATCH && this.slots.some((s) => s.alive)
  }

  /** The messages decoded, in order, exactly as `decodeToRow` gives them inline. */
  async decode(raws: Uint8Array[], now: number, expectedType?: InboundType): Promise<DecodedRow[]> {
    return (await this.decodeBatch(raws, now, expectedType)).rows
  }

  /** The same, with the insert body of the batch's usage rows made beside them. */
  decodeBatch(raws: Uint8Array[], now: number, expectedType?: InboundType): Promise<DecodedBatch> {
    const answer = new Promise<DecodedBatch>((resolve, reject) => this.waiting.push({ raws, now, expectedType, resolve, reject }))
    this.sendWaiting()
    const inOrder = this.lastHandedOver.then(() => answer)
    this.lastHandedOver = inOrder.catch(() => undefined)
    return inOrder
  }

  /** Sends waiting batches to workers with room; with no worker left, decodes them here. */
  private sendWaiting(): void {
    while (this.waiting.length) {
      let slot: Slot | undefined
      for (const s of this.slots) if (s.alive && (!slot || s.pending.size < slot.pending.size)) slot = s
      if (slot && slot.pending.size >= PER_WORKER) return
      const { raws, now, expectedType, resolve, reject } = this.waiting.shift()!
      if (slot) this.send(slot, raws, now, expectedType).then(resolve, reject)
      else resolve({ rows: raws.map((r) => decodeToRow(r, now, expectedType)) })
    }
  }

  async close(): Promise<void> {
    this.closed = true
    await Promise.all(this.slots.map((s) => s.worker.terminate()))
  }

  private send(slot: Slot, raws: Uint8Array[], now: number, expectedType?: InboundType): Promise<DecodedBatch> {
    // One buffer for the batch, moved to the worker (not copied again). Messages that lie close together in one
    // buffer (a Kafka fetch response, a file's read) are copied as one run, with what lies between them.
    const starts = new Uint32Array(raws.length)
    const ends = new Uint32Array(raws.length)
    const runs: Uint8Array[] = []
    let size = 0
    let run: { buffer: ArrayBufferLike; from: number; to: number; at: number } | undefined
    for (let i = 0; i < raws.length; i++) {
      const r = raws[i]!
      if (!run || r.buffer !== run.buffer || r.byteOffset < run.to || r.byteOffset - run.to > RUN_GAP) {
        if (run) runs.push(new Uint8Array(run.buffer, run.from, run.to - run.from))
        if (run) size += run.to - run.from
        run = { buffer: r.buffer, from: r.byteOffset, to: r.byteOffset, at: size }
      }
      starts[i] = run.at + (r.byteOffset - run.from)
      run.to = r.byteOffset + r.byteLength
      ends[i] = run.at + (run.to - run.from)
    }
    if (run) (runs.push(new Uint8Array(run.buffer, run.from, run.to - run.from)), (size += run.to - run.from))
    const bytes = new Uint8Array(size)
    let at = 0
    for (const r of runs) (bytes.set(r, at), (at += r.byteLength))
    const id = this.sequence++
    const answer = new Promise<DecodedBatch>((resolve, reject) => slot.pending.set(id, { resolve, reject }))
    const request: DecodeRequest = { id, bytes, starts, ends, now, expectedType }
    slot.worker.postMessage(request, [bytes.buffer, starts.buffer, ends.buffer])
    return answer
  }
}

function fromAnswer(a: DecodeAnswer): DecodedBatch {
  const n = a.others.length + (a.usage?.index.length ?? 0)
  const rows = new Array<DecodedRow>(n)
  for (const [i, d] of a.others) rows[i] = fromWire(d)
  const u = a.usage
  if (!u) return { rows }
  const body = Buffer.from(u.body.buffer, u.body.byteOffset, u.body.byteLength)
  for (let j = 0; j < u.index.length; j++) {
    const eventId = u.ids.slice(j === 0 ? 0 : u.idEnds[j - 1], u.idEnds[j])
    const row: Row = usageRowIn(eventId, u.occurredAtMs[j]!, body, j === 0 ? 0 : u.ends[j - 1]! + 1, u.ends[j]!)
    rows[u.index[j]!] = { ok: true, type: 'key.usage', row }
  }
  return { rows, usageBody: { body, digest: u.digest, rows: u.index.length } }
}

function fromWire(d: WireDecoded): DecodedRow {
  if (Array.isArray(d)) return { ok: true, type: d[0], row: rowFrom(d[1], d[2], d[3]) }
  return { ok: false, reason: d.reason as RejectReason, detail: d.detail, eventId: d.eventId, eventType: d.eventType }
}
