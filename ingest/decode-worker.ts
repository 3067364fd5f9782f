// A decode worker (ingest/decode-pool.ts): the pipeline's steps one and two, the same functions as inline, on
// messages sent as one buffer. The valid usage events, nearly all of the traffic, come back as the insert body the
// writer sends (their lines joined, with the digest that is its deduplication token) and their ids and times in
// typed arrays: a few transferred buffers instead of an object per row for the main thread to rebuild. Everything
// else comes back message by message, its row or its rejection.
import { createHash } from 'node:crypto'
import { parentPort } from 'node:worker_threads'
import type { InboundType } from '../contract/events.ts'
import { encodeLines } from '../clickhouse/lines.ts'
import { decodeToRow, type DecodedRow } from './decode.ts'

export interface DecodeRequest {
  id: number
  bytes: Uint8Array
  /** Where each message starts and ends in `bytes`. */
  starts: Uint32Array
  ends: Uint32Array
  now: number
  expectedType?: InboundType
}

/** A row as [type, event id, occurred_at ms, line or values]; a rejection as it is. */
export type WireDecoded = [InboundType, string, number, string | Record<string, unknown>] | { reason: string; detail: string; eventId?: string; eventType?: string }

/** The valid key.usage messages of a batch, in order: the body of their insert, and each one's place in it. */
export interface WireUsage {
  /** Their lines, each ending in '\n'; `ends[j]` is where line j's bytes end. */
  body: Uint8Array
  ends: Uint32Array
  /** SHA-256 of the body, hex: what the writer makes of rows that arrive (its insert's deduplication token). */
  digest: string
  /** Their event ids back to back, `idEnds[j]` where id j ends. */
  ids: string
  idEnds: Uint32Array
  occurredAtMs: Float64Array
  /** Each one's index in the batch. */
  index: Uint32Array
}

export interface DecodeAnswer {
  id: number
  usage?: WireUsage
  /** Every other message, by its index in the batch. */
  others: [number, WireDecoded][]
}

function toWire(d: DecodedRow): WireDecoded {
  return d.ok ? [d.type, d.row.eventId, d.row.occurredAtMs, d.row.line ?? d.row.values] : { reason: d.reason, detail: d.detail, eventId: d.eventId, eventType: d.eventType }
}

/** One request's answer, and the buffers it can hand over rather than copy. */
function answer(req: DecodeRequest): { answer: DecodeAnswer; transfer: ArrayBuffer[] } {
  const others: [number, WireDecoded][] = []
  const lines: string[] = []
  const ids: string[] = []
  const times: number[] = []
  const index: number[] = []
  for (let i = 0; i < req.ends.length; i++) {
    const d = decodeToRow(req.bytes.subarray(req.starts[i], req.ends[i]), req.now, req.expectedType)
    if (d.ok && d.type === 'key.usage' && d.row.line !== undefined) {
      lines.push(d.row.line)
      ids.push(d.row.eventId)
      times.push(d.row.occurredAtMs)
      index.push(i)
    } else others.push([i, toWire(d)])
  }
  if (lines.length === 0) return { answer: { id: req.id, others }, transfer: [] }
  const { body, ends } = encodeLines(lines)
  const idEnds = new Uint32Array(ids.length)
  for (let j = 0, at = 0; j < ids.length; j++) idEnds[j] = at += ids[j]!.length
  const usage: WireUsage = {
    body,
    ends,
    digest: createHash('sha256').update(body).digest('hex'),
    ids: ids.join(''),
    idEnds,
    occurredAtMs: Float64Array.from(times),
    index: Uint32Array.from(index),
  }
  return { answer: { id: req.id, usage, others }, transfer: [body.buffer as ArrayBuffer, ends.buffer as ArrayBuffer, idEnds.buffer as ArrayBuffer, usage.occurredAtMs.buffer as ArrayBuffer, usage.index.buffer as ArrayBuffer] }
}

parentPort?.on('message', (req: DecodeRequest) => {
  const { answer: out, transfer } = answer(req)
  parentPort!.postMessage(out, transfer)
})
