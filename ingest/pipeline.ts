// The ingest pipeline shared by every way in (Kafka, file, HTTP): decode -> row -> batched write, and for each
// message that fails: a record in ingest_errors (plus, for Kafka, the dead-letter topic). Valid messages around a
// bad one are unaffected.
import type { ClickHouseClient } from '../clickhouse/client.ts'
import type { InboundType } from '../contract/events.ts'
import { decodeToRow, type DecodedRow, type RejectReason } from './decode.ts'
import type { DecodePool } from './decode-pool.ts'
import { chTime } from '../clickhouse/time.ts'
import { redactSecrets } from './redact.ts'
import { TABLE_OF, type Row, type TableName } from './rows.ts'
import type { EventWriter, WriteResult } from './writer.ts'

/** Where a message came from, kept with its rejection. */
export interface Origin {
  source: 'kafka' | 'file' | 'http'
  topic?: string
  partition?: number
  offset?: string
  line?: number
  key?: Buffer | null
}

export interface InboundMessage {
  raw: Uint8Array
  origin: Origin
}

/**
 * The messages of one batch by index: what the pipeline reads of them. A batch waits for its insert for seconds, so
 * Kafka's batches come in a compact form (ingest/kafka-messages.ts) that builds a message only when one is rejected.
 */
export interface MessageBatch {
  readonly length: number
  raw(index: number): Uint8Array
  message(index: number): InboundMessage
  /** Told once every message is decoded: what is held of them until the batch is stored may shrink now. */
  pack?(): Promise<void>
}

function arrayBatch(messages: readonly InboundMessage[]): MessageBatch {
  return { length: messages.length, raw: (i) => messages[i]!.raw, message: (i) => messages[i]! }
}

export interface Rejection {
  message: InboundMessage
  reason: RejectReason
  detail: string
  eventId?: string
  eventType?: string
}

export interface IngestSummary {
  /** Valid events newly stored: what the raw tables gained. */
  accepted: number
  /** Valid events whose event_id was stored before (a redelivery or a file ingested twice); the first stays. */
  duplicates: number
  /** Of the duplicates, those whose contents differ from the stored version (each kept in ingest_errors). */
  conflictingDuplicates: number
  /** Not stored, each with a reason: accepted + duplicates + rejected is every message. */
  rejected: number
  rejectedByReason: Partial<Record<RejectReason, number>>
}

export function emptySummary(): IngestSummary {
  return { accepted: 0, duplicates: 0, conflictingDuplicates: 0, rejected: 0, rejectedByReason: {} }
}

export function addSummary(into: IngestSummary, s: IngestSummary): IngestSummary {
  into.accepted += s.accepted
  into.duplicates += s.duplicates
  into.conflictingDuplicates += s.conflictingDuplicates
  into.rejected += s.rejected
  for (const [reason, n] of Object.entries(s.rejectedByReason) as [RejectReason, number][]) {
    into.rejectedByReason[reason] = (into.rejectedByReason[reason] ?? 0) + n
  }
  return into
}

/** Told after events of a type are newly stored (e.g. to run the leak detector as a report arrives). */
export type StoredListener = (type: InboundType, stored: number) => void

/**
 * Told, synchronously, of each batch's valid rows per table as they are decoded, before they are stored: what must
 * not wait for storage (the response deciding on a leaked key, the secret index it decides from) starts here.
 */
export type DecodedListener = (table: TableName, rows: Row[]) => void

/** Told after every batch, with what became of it (metrics count here). */
export type IngestedListener = (summary: IngestSummary, rejections: Rejection[]) => void

/** What became of a batch: `rejections` are not stored (and go to the dead-letter topic); `conflicts` are duplicates kept in ingest_errors. */
export interface IngestResult {
  summary: IngestSummary
  rejections: Rejection[]
  conflicts: Rejection[]
  /** The earliest and latest occurred_at of the batch's valid events, in ms (undefined when it had none). */
  occurredBetween?: [number, number]
}

export class IngestPipeline {
  private readonly listeners: StoredListener[] = []
  private readonly ingestedListeners: IngestedListener[] = []
  private readonly decodedListeners: DecodedListener[] = []

  constructor(
    private readonly client: ClickHouseClient,
    private readonly writer: EventWriter,
    private readonly now: () => number = Date.now,
    /** Decodes large batches on worker threads (issue 12); without it, or for small batches, decoding is inline. */
    private readonly pool?: DecodePool,
  ) {}

  onStored(listener: StoredListener): void {
    this.listeners.push(listener)
  }

  onDecoded(listener: DecodedListener): void {
    this.decodedListeners.push(listener)
  }

  onIngested(listener: IngestedListener): void {
    this.ingestedListeners.push(listener)
  }

  /**
   * Ingests a batch of messages. Resolves when every valid one is stored (or found stored, or refused by the engine
   * for good and recorded as such) and every rejection recorded; rejects (storing nothing more) when storage fails
   * in a way that retrying may cure, so the caller must not acknowledge the batch.
   */
  async ingest(input: readonly InboundMessage[] | MessageBatch, expectedType?: InboundType, owned?: () => boolean): Promise<IngestResult> {
    const now = this.now()
    const batch = Array.isArray(input) ? arrayBatch(input) : (input as MessageBatch)
    // Each row's message by its index in the batch: a message object is made only for the few that are rejected.
    const byTable = new Map<TableName, { rows: Row[]; indices: number[]; type: InboundType }>()
    const rejections: Rejection[] = []
    let decoded: DecodedRow[]
    /** The insert body of the batch's usage rows, when a worker made it. */
    let usageBody: { body: Buffer; digest: string; rows: number } | undefined
    if (this.pool?.worthIt(batch.length)) {
      const raws: Uint8Array[] = []
      for (let i = 0; i < batch.length; i++) raws.push(batch.raw(i))
      ;({ rows: decoded, usageBody } = await this.pool.decodeBatch(raws, now, expectedType))
    } else {
      decoded = []
      for (let i = 0; i < batch.length; i++) decoded.push(decodeToRow(batch.raw(i), now, expectedType))
    }
    let earliest = Infinity
    let latest = -Infinity
    for (let i = 0; i < batch.length; i++) {
      const d = decoded[i]!
      if (!d.ok) {
        rejections.push({ message: batch.message(i), reason: d.reason, detail: d.detail, eventId: d.eventId, eventType: d.eventType })
        continue
      }
      if (d.row.occurredAtMs < earliest) earliest = d.row.occurredAtMs
      if (d.row.occurredAtMs > latest) latest = d.row.occurredAtMs
      const table = TABLE_OF[d.type]
      let group = byTable.get(table)
      if (!group) byTable.set(table, (group = { rows: [], indices: [], type: d.type }))
      group.rows.push(d.row)
      group.indices.push(i)
    }
    decoded = [] // its wrappers are not kept while the rows are stored
    // Compressed beside the write; a batch that cannot be packed keeps its messages as they came.
    void batch.pack?.().catch(() => undefined)
    const groups = [...byTable.entries()]
    for (const [table, g] of groups) for (const listener of this.decodedListeners) listener(table, g.rows)
    // The worker's body holds exactly the batch's valid usage rows, in the order grouped here.
    const prepared = (table: TableName, rows: Row[]) => (table === 'key_usage' && usageBody?.rows === rows.length ? usageBody : undefined)
    const writes: Promise<WriteResult>[] = groups.map(([table, g]) => this.writer.write(table, g.rows, owned, prepared(table, g.rows)))
    const [results] = await Promise.all([Promise.all(writes), this.recordRejections(rejections)])

    const summary = emptySummary()
    const refused: Rejection[] = []
    const conflicts: Rejection[] = []
    results.forEach((r, i) => {
      const [, g] = groups[i]!
      if (r.stored > 0) for (const listener of this.listeners) listener(g.type, r.stored)
      summary.accepted += r.stored
      summary.duplicates += r.duplicates
      summary.conflictingDuplicates += r.conflicts.length
      const of = (index: number) => ({ message: batch.message(g.indices[index]!), eventId: g.rows[index]!.eventId, eventType: g.type })
      for (const x of r.rejected) refused.push({ ...of(x.index), reason: 'storage_rejected', detail: x.detail })
      for (const x of r.conflicts) conflicts.push({ ...of(x.index), reason: 'conflicting_duplicate', detail: x.detail })
    })
    await this.recordRejections([...refused, ...conflicts])
    rejections.push(...refused)
    summary.rejected = rejections.length
    for (const r of rejections) summary.rejectedByReason[r.reason] = (summary.rejectedByReason[r.reason] ?? 0) + 1
    for (const listener of this.ingestedListeners) listener(summary, rejections)
    return { summary, rejections, conflicts, occurredBetween: latest >= earliest ? [earliest, latest] : undefined }
  }

  private async recordRejections(rejections: Rejection[]): Promise<void> {
    if (rejections.length === 0) return
    const receivedAt = chTime(this.now())
    await this.client.insert({
      table: 'ingest_errors',
      format: 'JSONEachRow',
      values: rejections.map((r) => ({
        received_at: receivedAt,
        source: r.message.origin.source,
        topic: r.message.origin.topic ?? '',
        partition: r.message.origin.partition ?? null,
        offset: r.message.origin.offset ?? null,
        line: r.message.origin.line ?? null,
        message_key: r.message.origin.key ? r.message.origin.key.toString('utf8') : null,
        reason: r.reason,
        detail: r.detail,
        event_id: r.eventId ?? null,
        event_type: r.eventType ?? null,
        raw_size: r.message.raw.byteLength,
        raw_base64: Buffer.from(redactLeakedToken(r.message.raw)).toString('base64'),
      })),
    })
  }
}

/**
 * A rejected message may still carry a secret (a leak report's token, a key pasted into a field): what we keep of it
 * in ClickHouse has every secret replaced, found after unescaping (ingest/redact.ts). (The dead-letter topic keeps
 * the original bytes: it lives beside the topic they came from.)
 */
export const redactLeakedToken = redactSecrets
