// A decode worker (ingest/decode-pool.ts): the pipeline's steps one and two, the same functions as inline, on
// messages sent as one buffer. Each answer lists per message either its row, compactly, or its rejection.
import { parentPort } from 'node:worker_threads'
import type { InboundType } from '../contract/events.ts'
import { decodeToRow } from './decode.ts'

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

parentPort!.on('message', (req: DecodeRequest) => {
  const out: WireDecoded[] = new Array(req.ends.length)
  for (let i = 0; i < req.ends.length; i++) {
    const d = decodeToRow(req.bytes.subarray(req.starts[i], req.ends[i]), req.now, req.expectedType)
    out[i] = d.ok ? [d.type, d.row.eventId, d.row.occurredAtMs, d.row.line ?? d.row.values] : { reason: d.reason, detail: d.detail, eventId: d.eventId, eventType: d.eventType }
  }
  parentPort!.postMessage({ id: req.id, out })
})
