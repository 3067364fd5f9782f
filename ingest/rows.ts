// Step two: a valid contract event -> the row of its ClickHouse table (clickhouse/migrations/001_events.sql).
import { createHash } from 'node:crypto'
import type { AuthEvent, InboundEvent, InboundType, KeyLifecycle, KeyRatelimited, KeyUsage, LeakReported } from '../contract/events.ts'
import { chTime, chTimeOf, MAX_STORABLE_MS, MIN_STORABLE_MS, parseTimestamp } from '../clickhouse/time.ts'
import type { LineFormat } from '../clickhouse/client.ts'


export type TableName = 'key_usage' | 'key_ratelimits' | 'auth_events' | 'key_lifecycle' | 'leak_reports'

export const TABLE_OF: Record<InboundType, TableName> = {
  'key.usage': 'key_usage',
  'key.ratelimited': 'key_ratelimits',
  'auth.event': 'auth_events',
  'key.lifecycle': 'key_lifecycle',
  'leak.reported': 'leak_reports',
}

/**
 * How long each table keeps an event (its TTL in clickhouse/migrations/001_events.sql, less a day so nothing is
 * accepted only to expire within hours). An older event is rejected as `outside_retention`, never stored and dropped.
 */
export const RETENTION_DAYS: Record<TableName, number> = {
  key_usage: 399,
  key_ratelimits: 399,
  auth_events: 399,
  key_lifecycle: 5 * 365 - 1,
  leak_reports: 399,
}

/** A row plus what the writer needs to deduplicate it. */
export interface Row {
  eventId: string
  occurredAtMs: number
  values: Record<string, unknown>
  /** The row as its line (`LINE_OF[table]`: columns in its order, in its format), when built that way. */
  readonly line?: string
  /** A row built as a line: keep the line as these bytes of an insert body instead (see UsageRow). */
  keepIn?(body: Buffer, start: number, end: number): void
}

/**
 * key_usage rows, the bulk of the traffic, are built straight into the line the engine reads (issue 12): no object
 * of 25 properties per event, and less memory while a batch waits. `values` is there for the rare reader.
 */
const USAGE_COLUMNS = [
  'event_id', 'occurred_at', 'account_id', 'key_id', 'key_prefix', 'key_kind', 'mode', 'request_id', 'method', 'endpoint', 'scope', 'status',
  'error_code', 'ip', 'country', 'asn', 'user_agent', 'origin', 'sdk', 'client_env', 'latency_ms', 'amount_minor', 'currency', 'client_side', 'mode_mismatch',
] as const

/** Columns whose cells are numbers (the rest are text). */
const USAGE_NUMBERS = new Set(['status', 'asn', 'latency_ms', 'amount_minor', 'client_side', 'mode_mismatch'])

/** The column order and format of `Row.line`, per table whose rows carry one. */
export const LINE_OF: Partial<Record<TableName, { columns: readonly string[]; format: LineFormat }>> = { key_usage: { columns: USAGE_COLUMNS, format: 'TabSeparated' } }

class UsageRow implements Row {
  // The line, as a string of its own until the writer has put it into an insert body, then as bytes of that body
  // (a row waiting for its insert holds its line once, not twice).
  private text: string | undefined
  private body: Buffer | undefined
  private start = 0
  private end = 0

  constructor(
    readonly eventId: string,
    readonly occurredAtMs: number,
    line: string | undefined,
  ) {
    this.text = line
  }

  get line(): string {
    return this.text ?? this.body!.toString('utf8', this.start, this.end)
  }

  /** From now on the line is these bytes of `body`. */
  keepIn(body: Buffer, start: number, end: number): void {
    this.body = body
    this.start = start
    this.end = end
    this.text = undefined
  }

  get values(): Record<string, unknown> {
    const cells = this.line.split('\t')
    return Object.fromEntries(USAGE_COLUMNS.map((c, i) => [c, USAGE_NUMBERS.has(c) ? Number(cells[i]) : unescapeTsv(cells[i]!)]))
  }
}

/** A key_usage row whose line is already these bytes of an insert body (made on a decode worker). */
export function usageRowIn(eventId: string, occurredAtMs: number, body: Buffer, start: number, end: number): Row {
  const row = new UsageRow(eventId, occurredAtMs, undefined)
  row.keepIn(body, start, end)
  return row
}

/** A row again after a trip to a worker thread (structured clone keeps its fields, not its class). */
export function rowFrom(eventId: string, occurredAtMs: number, lineOrValues: string | Record<string, unknown>): Row {
  return typeof lineOrValues === 'string' ? new UsageRow(eventId, occurredAtMs, lineOrValues) : { eventId, occurredAtMs, values: lineOrValues }
}

/** @param occurredAtMs the event's occurred_at in ms, when the caller has parsed it already (decode has). */
export function toRow(type: InboundType, event: InboundEvent, occurredAtMs = parseTimestamp(event.occurred_at)): Row {
  const eventId = event.event_id.toLowerCase()
  const occurredAt = chTimeOf(event.occurred_at, occurredAtMs)
  if (type === 'key.usage') return new UsageRow(eventId, occurredAtMs, usageLine(event as KeyUsage, eventId, occurredAt))
  return { eventId, occurredAtMs, values: ROW_OF[type as Exclude<InboundType, 'key.usage'>](event as never, eventId, occurredAt) }
}

// key_usage has no Nullable columns (see 001_events.sql): null is '' or 0. In USAGE_COLUMNS order, as a
// TabSeparated line. Ids, times, enums and patterned fields cannot hold a tab, newline or backslash (the contract's
// enums and patterns); the free-text ones are escaped.
function usageLine(e: KeyUsage, eventId: string, occurredAt: string): string {
  // Array.join makes one flat string; a template literal of 50 pieces makes a rope that costs five times as much
  // once it is flattened into the insert body and collected.
  return [
    eventId, occurredAt, e.account_id, e.key_id ?? '', e.key_prefix ?? '', e.key_kind ?? '', e.mode ?? '', tsv(e.request_id), e.method, tsv(e.endpoint),
    tsv(e.scope ?? ''), e.status, tsv(e.error_code ?? ''), tsv(e.ip), e.country ?? '', e.asn ?? 0, tsv(e.user_agent), tsv(e.origin ?? ''), tsv(e.sdk ?? ''),
    e.client_env ?? '', e.latency_ms, e.amount_minor ?? 0, e.currency ?? '', isClientSide(e) ? 1 : 0, isModeMismatch(e) ? 1 : 0,
  ].join('\t')
}

const TSV_SPECIAL = /[\t\n\r\\]/
const TSV_ESCAPES: Record<string, string> = { '\t': '\\t', '\n': '\\n', '\r': '\\r', '\\': '\\\\' }
const TSV_UNESCAPES: Record<string, string> = { t: '\t', n: '\n', r: '\r', '\\': '\\' }

/** A text cell of a TabSeparated line: tab, newline, carriage return and backslash escaped (so `\N` stays text). */
function tsv(s: string): string {
  return TSV_SPECIAL.test(s) ? s.replace(/[\t\n\r\\]/g, (c) => TSV_ESCAPES[c]!) : s
}

function unescapeTsv(s: string): string {
  return s.includes('\\') ? s.replace(/\\([tnr\\])/g, (_, c: string) => TSV_UNESCAPES[c]!) : s
}

/** A date-time field other than occurred_at: kept at the nearest time DateTime64(3) can hold (1900 to 2299). */
function chTimeOrNull(rfc3339: string | null | undefined): string | null {
  return rfc3339 == null ? null : chTime(Math.min(MAX_STORABLE_MS, Math.max(MIN_STORABLE_MS, parseTimestamp(rfc3339))))
}

const ROW_OF: { [T in Exclude<InboundType, 'key.usage'>]: (e: never, eventId: string, occurredAt: string) => Record<string, unknown> } = {
  'key.ratelimited': (e: KeyRatelimited, event_id, occurred_at) => ({
    event_id,
    occurred_at,
    account_id: e.account_id,
    key_id: e.key_id,
    key_prefix: e.key_prefix,
    key_kind: e.key_kind,
    mode: e.mode,
    request_id: e.request_id,
    endpoint: e.endpoint,
    ip: e.ip,
    limit: e.limit,
    window_seconds: e.window_seconds,
    observed: e.observed,
    retry_after_seconds: e.retry_after_seconds ?? null,
  }),
  'auth.event': (e: AuthEvent, event_id, occurred_at) => ({
    event_id,
    occurred_at,
    account_id: e.account_id,
    user_id: e.user_id,
    actor_email: e.actor_email ?? null,
    action: e.action,
    ip: e.ip,
    country: e.country ?? null,
    user_agent: e.user_agent,
    session_id: e.session_id ?? null,
    reason: e.reason ?? null,
    target_user_id: e.target_user_id ?? null,
    key_id: e.key_id ?? null,
    role: e.role ?? null,
    previous_role: e.previous_role ?? null,
  }),
  'key.lifecycle': (e: KeyLifecycle, event_id, occurred_at) => ({
    event_id,
    occurred_at,
    account_id: e.account_id,
    key_id: e.key_id,
    key_prefix: e.key_prefix,
    key_kind: e.key_kind,
    mode: e.mode,
    action: e.action,
    actor_type: e.actor.type,
    actor_id: e.actor.id,
    actor_role: e.actor.role ?? null,
    actor_step_up: e.actor.step_up ?? null,
    label: e.label ?? null,
    // NULL: this event says nothing of scopes; the JSON 'null': full access.
    scopes: e.scopes === undefined ? null : JSON.stringify(e.scopes),
    expires_at: chTimeOrNull(e.expires_at),
    auto_generated: e.auto_generated ?? null,
    secret_sha256: e.secret_sha256 ?? null,
    replacement_key_id: e.replacement_key_id ?? null,
    old_key_expires_at: chTimeOrNull(e.old_key_expires_at),
    reason: e.reason ?? null,
  }),
  'leak.reported': (e: LeakReported, event_id, occurred_at) => ({
    event_id,
    occurred_at,
    account_id: e.account_id,
    // The leaked token is hashed here, on arrival, and never stored or passed on.
    token_sha256: e.token !== undefined ? sha256Hex(e.token) : e.token_sha256,
    token_prefix: e.token !== undefined ? displayPrefix(e.token) : null,
    token_type: e.token_type ?? null,
    source: e.source,
    url: e.url ?? null,
    exposed_since: chTimeOrNull(e.exposed_since),
  }),
}

const CLIENT_SDK = /react-native|ios|android|browser|-js\//i
const BROWSER_UA = /^Mozilla\/5\.0 .*(Chrome|Firefox|Safari|Edg|OPR)\//

/** A request made by a browser or a mobile app: an Origin, a client-side SDK, or a mainstream browser's user agent. */
export function isClientSide(e: KeyUsage): boolean {
  return !!e.origin || (!!e.sdk && CLIENT_SDK.test(e.sdk)) || BROWSER_UA.test(e.user_agent)
}

/** A live key in a deployment that says it is not production, or a test key in production. */
export function isModeMismatch(e: KeyUsage): boolean {
  return (e.mode === 'live' && (e.client_env === 'staging' || e.client_env === 'development' || e.client_env === 'ci')) || (e.mode === 'test' && e.client_env === 'production')
}

export function sha256Hex(s: string): string {
  return createHash('sha256').update(s).digest('hex')
}

/** The platform's display form of a key (sk_live_4eC3): kind, mode and four characters; nothing more of a secret. */
export function displayPrefix(token: string): string | null {
  return /^(sk|pk|rk)_(live|test)_[A-Za-z0-9]{4}/.exec(token)?.[0] ?? null
}
