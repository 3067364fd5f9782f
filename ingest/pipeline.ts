// The ingest pipeline shared by every way in (Kafka, file, HTTP): decode -> row -> batched write, and for each
// message that fails: a record in ingest_errors (plus, for Kafka, the dead-letter topic). Valid messages around a
// bad one are unaffected.
import type { ClickHouseClient } from '../clickhouse/client.ts'
import type { InboundType } from '../contract/events.ts'
import { decodeEvent, type RejectReason } from './decode.ts'
import { redactSecrets } from './redact.ts'
import { chTime, TABLE_OF, toRow, type Row, type TableName } from './rows.ts'
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

export interface Rejection {
  message: InboundMessage
  reason: RejectReason
  detail: string
  eventId?: string
  eventType?: string
}

export interface IngestSummary {
  /** Valid events newly stored. */
  accepted: number
  /** Valid events that were stored before (a redelivery or a file ingested twice). */
  duplicates: number
  rejected: number
  rejectedByReason: Partial<Record<RejectReason, number>>
}

export function emptySummary(): IngestSummary {
  return { accepted: 0, duplicates: 0, rejected: 0, rejectedByReason: {} }
}

export function addSummary(into: IngestSummary, s: IngestSummary): IngestSummary {
  into.accepted += s.accepted
  into.duplicates += s.duplicates
  into.rejected += s.rejected
  for (const [reason, n] of Object.entries(s.rejectedByReason) as [RejectReason, number][]) {
    into.rejectedByReason[reason] = (into.rejectedByReason[reason] ?? 0) + n
  }
  return into
}

/** Told after events of a type are newly stored (e.g. to run the leak detector as a report arrives). */
export type StoredListener = (type: InboundType, stored: number) => void

/** Told after every batch, with what became of it (metrics count here). */
export type IngestedListener = (summary: IngestSummary, rejections: Rejection[]) => void

export class IngestPipeline {
  private readonly listeners: StoredListener[] = []
  private readonly ingestedListeners: IngestedListener[] = []

  constructor(
    private readonly client: ClickHouseClient,
    private readonly writer: EventWriter,
    private readonly now: () => number = Date.now,
  ) {}

  onStored(listener: StoredListener): void {
    this.listeners.push(listener)
  }

  onIngested(listener: IngestedListener): void {
    this.ingestedListeners.push(listener)
  }

  /**
   * Ingests a batch of messages. Resolves when every valid one is stored and every rejection recorded;
   * rejects (storing nothing more) when storage fails, so the caller must not acknowledge the batch.
   */
  async ingest(messages: InboundMessage[], expectedType?: InboundType): Promise<{ summary: IngestSummary; rejections: Rejection[] }> {
    const now = this.now()
    const byTable = new Map<TableName, Row[]>()
    const typeOfTable = new Map<TableName, InboundType>()
    const rejections: Rejection[] = []
    for (const message of messages) {
      const d = decodeEvent(message.raw, now, expectedType)
      if (!d.ok) {
        rejections.push({ message, reason: d.reason, detail: d.detail, eventId: d.eventId, eventType: d.eventType })
        continue
      }
      const table = TABLE_OF[d.type]
      typeOfTable.set(table, d.type)
      let rows = byTable.get(table)
      if (!rows) byTable.set(table, (rows = []))
      rows.push(toRow(d.type, d.event))
    }
    const tables = [...byTable.keys()]
    const writes: Promise<WriteResult>[] = tables.map((table) => this.writer.write(table, byTable.get(table)!))
    const [results] = await Promise.all([Promise.all(writes), this.recordRejections(rejections)])
    results.forEach((r, i) => {
      if (r.stored > 0) for (const listener of this.listeners) listener(typeOfTable.get(tables[i]!)!, r.stored)
    })

    const summary = emptySummary()
    for (const r of results) {
      summary.accepted += r.stored
      summary.duplicates += r.duplicates
    }
    summary.rejected = rejections.length
    for (const r of rejections) summary.rejectedByReason[r.reason] = (summary.rejectedByReason[r.reason] ?? 0) + 1
    for (const listener of this.ingestedListeners) listener(summary, rejections)
    return { summary, rejections }
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
