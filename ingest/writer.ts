// Step three: a batching writer per table. Rows wait in a buffer until it is full, or until the table's current
// batch has looked up its duplicates (group commit: batches grow with the load), or briefly when the table is idle;
// then they go to ClickHouse as one insert; each caller's promise settles only when the insert covering its rows is acknowledged,
// which is what lets the Kafka consumer commit offsets safely. Rows are never dropped: a failed insert is retried
// with the same deduplication token, and when retries run out the callers get the error (and do not commit).
import { createHash } from 'node:crypto'
import { ClickHouseError } from '@clickhouse/client'
import type { Storage } from '../clickhouse/client.ts'
import { chTime, type Row, type TableName } from './rows.ts'

export interface WriteResult {
  stored: number
  duplicates: number
}

export interface WriterOptions {
  maxRows: number
  maxWaitMs: number
  /** Per table, how long an idle table lingers for more rows instead of maxWaitMs (0 for latency-critical ones). */
  lingerMs?: Partial<Record<TableName, number>>
  /** Lookups and inserts running at once across all tables; further ones wait their turn. */
  maxInflight: number
  retries?: number
  onFlush?: (table: TableName, stats: { rows: number; stored: number; duplicates: number; ms: number; lookupMs: number }) => void
}

/** An insert failed after its retries; `retriable` says whether trying the same rows later may work. */
export class StorageWriteError extends Error {
  constructor(
    message: string,
    readonly retriable: boolean,
    options?: ErrorOptions,
  ) {
    super(message, options)
    this.name = 'StorageWriteError'
  }
}

interface Waiter {
  rows: Row[]
  /** Fencing (issue 16): false once the rows' source (a Kafka partition) belongs to another instance. */
  owned?: () => boolean
  resolve: (r: WriteResult) => void
  reject: (e: unknown) => void
}

class Semaphore {
  private active = 0
  private readonly queue: (() => void)[] = []
  constructor(private readonly limit: number) {}
  async acquire(): Promise<() => void> {
    if (this.active >= this.limit) await new Promise<void>((r) => this.queue.push(r))
    this.active++
    return () => {
      this.active--
      this.queue.shift()?.()
    }
  }
}

interface TableState {
  waiters: Waiter[]
  rows: number
  timer?: NodeJS.Timeout
  /** A batch is looking up its duplicates (not yet inserting): new rows wait for it. */
  lookingUp: boolean
  /** Settles when the latest batch knows which of its rows are new. */
  lastLookup: Promise<void>
  /** Settles when the latest batch's insert is acknowledged; rejects if it failed. */
  lastInsert: Promise<void>
  /** Ids of batches handed to ClickHouse but not yet acknowledged. */
  unsettled: Set<string>
  /** Fencing (issue 16): how many batches had rows fenced; a batch looked up before a fence looks up again. */
  fences: number
}

/** Fencing (issue 16): rows not written because their partition was handed over (the new owner writes them). */
export class FencedWriteError extends Error {
  constructor() {
    super('partition handed over to another instance; rows not written here')
    this.name = 'FencedBatchError'
  }
}

export class EventWriter {
  private readonly tables = new Map<TableName, TableState>()
  private readonly inflight = new Set<Promise<void>>()
  private readonly limiter: Semaphore

  constructor(
    private readonly storage: Storage,
    private readonly options: WriterOptions,
  ) {
    this.limiter = new Semaphore(options.maxInflight)
  }

  /** Queues rows of one table; resolves once they are stored (or found already stored). */
  write(table: TableName, rows: Row[], owned?: () => boolean): Promise<WriteResult> {
    if (rows.length === 0) return Promise.resolve({ stored: 0, duplicates: 0 })
    const state = this.state(table)
    const promise = new Promise<WriteResult>((resolve, reject) => state.waiters.push({ rows, owned, resolve, reject }))
    state.rows += rows.length
    if (state.rows >= this.options.maxRows) this.flush(table)
    // Group commit: an idle table lingers briefly for more rows; a busy one sends what piled up once its current
    // batch has looked up its duplicates and moved on to inserting.
    else if (!state.lookingUp) state.timer ??= setTimeout(() => this.flush(table), this.options.lingerMs?.[table] ?? this.options.maxWaitMs)
    return promise
  }

  /** Sends every buffered row now and waits for all inserts in flight. */
  async drain(): Promise<void> {
    for (const table of this.tables.keys()) this.flush(table)
    while (this.inflight.size) await Promise.allSettled([...this.inflight])
  }

  private state(table: TableName): TableState {
    let state = this.tables.get(table)
    if (!state) this.tables.set(table, (state = { waiters: [], rows: 0, lookingUp: false, lastLookup: Promise.resolve(), lastInsert: Promise.resolve(), unsettled: new Set(), fences: 0 }))
    return state
  }

  private flush(table: TableName): void {
    const state = this.state(table)
    clearTimeout(state.timer)
    state.timer = undefined
    if (state.waiters.length === 0) return
    const waiters = state.waiters
    state.waiters = []
    state.rows = 0
    const task = this.insertBatch(table, state, waiters).finally(() => this.inflight.delete(task))
    this.inflight.add(task)
  }

  /**
   * Looks up which rows are stored already while the previous batch of the table is still inserting, then inserts
   * the rest once that batch is acknowledged. Rows of earlier unacknowledged batches count as stored: if one of
   * those batches fails, this one fails too, so nothing is skipped on the strength of an insert that did not land.
   */
  private async insertBatch(table: TableName, state: TableState, waiters: Waiter[]): Promise<void> {
    const all = waiters
    const previous = state.lastInsert
    const previousLookup = state.lastLookup
    let rows = waiters.flatMap((w) => w.rows)
    const fresh = new Map<string, Row>()
    const fencesAtLookup = state.fences // fencing (issue 16)
    const everUnsettled = new Set<string>()
    let markInserted!: () => void
    let markFailed!: (err: unknown) => void
    const inserted = new Promise<void>((resolve, reject) => ((markInserted = resolve), (markFailed = reject)))
    inserted.catch(() => undefined) // observed by the next batch
    let markLookedUp!: () => void
    state.lastLookup = new Promise<void>((resolve) => (markLookedUp = resolve))
    state.lastInsert = inserted
    state.lookingUp = true
    const started = performance.now()
    let lookupMs = 0
    try {
      await previousLookup // the ids of every earlier batch are known (stored, or in `unsettled`)
      const ahead = new Set(state.unsettled)
      const release = await this.limiter.acquire()
      try {
        const existing = await this.withRetries(() => this.storedIds(rows))
        lookupMs = performance.now() - started
        // First occurrence wins: a batch may also carry the same event twice.
        for (const row of rows) {
          if (!existing.has(row.eventId) && !ahead.has(row.eventId) && !fresh.has(row.eventId)) fresh.set(row.eventId, row)
        }
        for (const id of fresh.keys()) state.unsettled.add(id), everUnsettled.add(id)
      } finally {
        release()
        markLookedUp()
        state.lookingUp = false
        this.flush(table) // what piled up during the lookup goes next
      }
      await previous
      const release2 = await this.limiter.acquire()
      try {
        // ---- fencing (issue 16) ----
        // Rows of a partition handed over are not written here: the new owner writes them. A batch that looked up
        // while an earlier one still counted fenced rows as in flight looks up again, so none is skipped on their
        // strength.
        const fenced = waiters.filter((w) => w.owned && !w.owned())
        if (fenced.length) {
          state.fences++
          for (const w of fenced) w.reject(new FencedWriteError())
          waiters = waiters.filter((w) => !fenced.includes(w))
          rows = waiters.flatMap((w) => w.rows)
        }
        if (state.fences !== fencesAtLookup) {
          // Earlier batches are settled; what is still unsettled is claimed by later ones: theirs to write.
          const claimedLater = new Set([...state.unsettled].filter((id) => !everUnsettled.has(id)))
          const existing = await this.withRetries(() => this.storedIds(rows))
          fresh.clear()
          for (const row of rows) if (!existing.has(row.eventId) && !claimedLater.has(row.eventId) && !fresh.has(row.eventId)) fresh.set(row.eventId, row)
          for (const id of fresh.keys()) state.unsettled.add(id), everUnsettled.add(id)
        }
        // ---- end fencing ----
        if (fresh.size > 0) {
          const values = [...fresh.values()].map((r) => r.values)
          // Same rows, same token: a retry of an insert that did land is dropped by ClickHouse, in the rollups too.
          const token = createHash('sha256').update([...fresh.keys()].join(',')).digest('hex')
          let attempt = 0
          await this.withRetries(() => {
            // fencing (issue 16): a retry goes only while every partition of the batch is still ours
            if (attempt++ > 0 && waiters.some((w) => w.owned && !w.owned())) throw new FencedWriteError()
            return this.storage.insertRows(table, values, { insert_deduplication_token: token, deduplicate_blocks_in_dependent_materialized_views: 1 })
          })
        }
      } finally {
        release2()
      }
      markInserted()
    } catch (err) {
      markFailed(err)
      for (const w of all) w.reject(err) // (a fenced waiter was rejected already: no effect)
      return
    } finally {
      for (const id of everUnsettled) state.unsettled.delete(id)
    }
    // Attribute stored vs duplicate rows to each caller.
    const claimed = new Set<string>()
    for (const w of waiters) {
      let stored = 0
      for (const row of w.rows) {
        if (fresh.get(row.eventId) === row && !claimed.has(row.eventId)) {
          claimed.add(row.eventId)
          stored++
        }
      }
      w.resolve({ stored, duplicates: w.rows.length - stored })
    }
    this.options.onFlush?.(table, { rows: rows.length, stored: fresh.size, duplicates: rows.length - fresh.size, ms: performance.now() - started, lookupMs })
  }

  /** Which of these events are stored already. Redeliveries carry their original occurred_at: look in that span only. */
  private async storedIds(rows: Row[]): Promise<Set<string>> {
    let from = Infinity
    let to = -Infinity
    for (const r of rows) {
      if (r.occurredAtMs < from) from = r.occurredAtMs
      if (r.occurredAtMs > to) to = r.occurredAtMs
    }
    const found = new Set<string>()
    const CHUNK = 10_000 // keeps the query parameters well under the server's URL limit
    for (let i = 0; i < rows.length; i += CHUNK) {
      const rs = await this.storage.client.query({
        query: `SELECT toString(event_id) AS id FROM event_ids
                WHERE occurred_at BETWEEN {from:DateTime64(3, 'UTC')} AND {to:DateTime64(3, 'UTC')}
                  AND event_id IN {ids:Array(UUID)}`,
        query_params: { from: chTime(from), to: chTime(to), ids: rows.slice(i, i + CHUNK).map((r) => r.eventId) },
        format: 'JSONCompactEachRow',
      })
      for (const [id] of await rs.json<[string]>()) found.add(id)
    }
    return found
  }

  private async withRetries<T>(op: () => Promise<T>): Promise<T> {
    const attempts = (this.options.retries ?? 5) + 1
    for (let attempt = 1; ; attempt++) {
      try {
        return await op()
      } catch (err) {
        const retriable = isRetriable(err)
        if (!retriable || attempt >= attempts) {
          throw new StorageWriteError(`ClickHouse write failed after ${attempt} attempt(s): ${(err as Error).message}`, retriable, { cause: err })
        }
        await new Promise((r) => setTimeout(r, Math.min(10_000, 200 * 2 ** (attempt - 1))))
      }
    }
  }
}

// Server-side conditions that pass with time (load, merges, memory, network), by ClickHouse error code.
const RETRIABLE_CODES = new Set(['159', '164', '202', '203', '209', '210', '241', '252', '319', '425', '999'])

export function isRetriable(err: unknown): boolean {
  if (err instanceof ClickHouseError) return RETRIABLE_CODES.has(String(err.code))
  const code = (err as { code?: string })?.code
  return typeof code === 'string' && /^(ECONNRESET|ECONNREFUSED|ETIMEDOUT|EPIPE|EAI_AGAIN|UND_ERR_SOCKET|ECONNABORTED)$/.test(code)
}
