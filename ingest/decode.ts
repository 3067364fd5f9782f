// Step one of every way in (Kafka, file, HTTP): raw bytes -> a valid contract event, or a rejection saying why.
import { z } from 'zod'
import { inboundSchemas, MAX_FUTURE_SKEW_MS, MAX_MESSAGE_BYTES, type InboundEvent, type InboundType } from '../contract/events.ts'
import { compileFastCheck, type FastCheck } from './fast-check.ts'
import { RETENTION_DAYS, TABLE_OF, toRow, type Row } from './rows.ts'
import { parseTimestamp } from '../clickhouse/time.ts'

/**
 * Why a message was not stored. Decoding says the first six and `outside_retention`; the writer says
 * `storage_rejected` (the engine refused that one event for good, with its message) and `conflicting_duplicate`
 * (an event_id stored before with other contents: the first stored version stays).
 */
export type RejectReason =
  | 'too_large'
  | 'invalid_json'
  | 'unknown_type'
  | 'schema_violation'
  | 'future_timestamp'
  | 'wrong_topic'
  | 'outside_retention'
  | 'storage_rejected'
  | 'conflicting_duplicate'

export type Rejected = { ok: false; reason: RejectReason; detail: string; eventId?: string; eventType?: string }

export type Decoded = { ok: true; type: InboundType; event: InboundEvent; occurredAtMs: number } | Rejected

/** Steps one and two together: what the pipeline needs of a message, wherever it is decoded (here or in a worker). */
export type DecodedRow = { ok: true; type: InboundType; row: Row } | Rejected

const decoder = new TextDecoder('utf-8', { fatal: true })

// Checks compiled from the zod schemas (ingest/fast-check.ts); types it cannot compile are checked by zod alone.
const fastChecks = Object.fromEntries(Object.entries(inboundSchemas).map(([type, schema]) => [type, compileFastCheck(schema)])) as Record<
  InboundType,
  FastCheck | undefined
>

/**
 * Validates one message against the contract.
 * @param expectedType the type its Kafka topic carries; undefined for mixed input (files, HTTP).
 */
export function decodeEvent(raw: Uint8Array, now: number, expectedType?: InboundType): Decoded {
  if (raw.byteLength > MAX_MESSAGE_BYTES) {
    return { ok: false, reason: 'too_large', detail: `message is ${raw.byteLength} bytes; the contract allows at most ${MAX_MESSAGE_BYTES}` }
  }
  let value: unknown
  try {
    value = JSON.parse(decoder.decode(raw))
  } catch (err) {
    // The parser quotes a piece of the input in its message: drop it, it may be part of a secret.
    const message = (err as Error).message.replace(/,? (?:\.\.\.)?".*"(?:\.\.\.)? is not valid JSON$/s, '')
    return { ok: false, reason: 'invalid_json', detail: `not UTF-8 JSON: ${message}` }
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return { ok: false, reason: 'invalid_json', detail: 'a message must be one JSON object' }
  }
  const record = value as Record<string, unknown>
  const eventId = typeof record.event_id === 'string' ? record.event_id.slice(0, 64) : undefined
  const type = record.type
  if (typeof type !== 'string' || !(type in inboundSchemas)) {
    return {
      ok: false,
      reason: 'unknown_type',
      detail: `${type === undefined ? 'type is missing' : `type ${JSON.stringify(type)} is unknown`}; expected one of ${Object.keys(inboundSchemas).join(', ')}`,
      eventId,
    }
  }
  const eventType = type as InboundType
  if (expectedType && eventType !== expectedType) {
    return { ok: false, reason: 'wrong_topic', detail: `a ${eventType} event on the topic of ${expectedType} events`, eventId, eventType }
  }
  // The compiled check accepts exactly what zod accepts; a rejection goes to zod for its full description.
  const fast = fastChecks[eventType]?.(record)
  let event: InboundEvent
  if (fast?.ok) event = fast.value as InboundEvent
  else {
    const parsed = inboundSchemas[eventType].safeParse(record)
    if (!parsed.success) {
      return { ok: false, reason: 'schema_violation', detail: describeIssues(parsed.error), eventId, eventType }
    }
    event = parsed.data as InboundEvent
  }
  const at = parseTimestamp(event.occurred_at)
  const skew = at - now
  if (skew > MAX_FUTURE_SKEW_MS) {
    return {
      ok: false,
      reason: 'future_timestamp',
      detail: `occurred_at ${event.occurred_at} is ${Math.round(skew / 1000)} s in the future (at most ${MAX_FUTURE_SKEW_MS / 1000} s allowed)`,
      eventId,
      eventType,
    }
  }
  const retentionDays = RETENTION_DAYS[TABLE_OF[eventType]]
  if (at < now - retentionDays * 86_400_000) {
    return {
      ok: false,
      reason: 'outside_retention',
      detail: `occurred_at ${event.occurred_at} is older than the ${retentionDays} days ${eventType} events are kept; it would be dropped on arrival`,
      eventId,
      eventType,
    }
  }
  return { ok: true, type: eventType, event, occurredAtMs: at }
}

/** A message as its table's row, or why it is rejected. */
export function decodeToRow(raw: Uint8Array, now: number, expectedType?: InboundType): DecodedRow {
  const d = decodeEvent(raw, now, expectedType)
  return d.ok ? { ok: true, type: d.type, row: toRow(d.type, d.event, d.occurredAtMs) } : d
}

/** "status: Too small: expected number to be >=100; ip: must be an IPv4 or IPv6 address" */
function describeIssues(error: z.ZodError): string {
  return error.issues
    .slice(0, 5)
    .map((i) => `${i.path.length ? i.path.join('.') : '(event)'}: ${i.message}`)
    .join('; ')
}
