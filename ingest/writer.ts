// Step three: a batching writer per table. Rows wait in a buffer until it is full or old enough, then go to
// ClickHouse as one insert; each caller's promise settles only when the insert covering its rows is acknowledged,
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
  /** Inserts in flight across all tables (one per table at most); further flushes wait their turn. */
  maxInflight: number
  retries?: number
  onFlush?: (table: TableName, stats: { rows: number; stored: number; duplicates: number; ms: number }) => void
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

export class EventWriter {
  private readonly buffers = new Map<TableName, { waiters: Waiter[]; rows: number; timer?: NodeJS.Timeout }>()
  private readonly inflight = new Set<Promise<void>>()
  // One insert at a time per table: batch N+1 looks for duplicates only after batch N is stored.
  private readonly lastInsert = new Map<TableName, Promise<void>>()
  private readonly limiter: Semaphore

  constructor(
    private readonly storage: Storage,
    private readonly options: WriterOptions,
  ) {
    this.limiter = new Semaphore(options.maxInflight)
  }

  /** Queues rows of one table; resolves once they are stored (or found already stored). */
  write(table: TableName, rows: Row[]): Promise<WriteResult> {
    if (rows.length === 0) return Promise.resolve({ stored: 0, duplicates: 0 })
    let buffer = this.buffers.get(table)
    if (!buffer) this.buffers.set(table, (buffer = { waiters: [], rows: 0 }))
    const promise = new Promise<WriteResult>((resolve, reject) => buffer.waiters.push({ rows, resolve, reject }))
    buffer.rows += rows.length
    if (buffer.rows >= this.options.maxRows) this.flush(table)
    else buffer.timer ??= setTimeout(() => this.flush(table), this.options.maxWaitMs)
    return promise
  }

  /** Sends every buffered row now and waits for all inserts in flight. */
  async drain(): Promise<void> {
    for (const table of this.buffers.keys()) this.flush(table)
    while (this.inflight.size) await Promise.allSettled([...this.inflight])
  }

  private flush(table: TableName): void {
    const buffer = this.buffers.get(table)
    if (!buffer || buffer.waiters.length === 0) return
    clearTimeout(buffer.timer)
    this.buffers.set(table, { waiters: [], rows: 0 })
    const previous = this.lastInsert.get(table) ?? Promise.resolve()
    const task: Promise<void> = previous.then(() => this.insertBatch(table, buffer.waiters)).finally(() => {
      this.inflight.delete(task)
      if (this.lastInsert.get(table) === task) this.lastInsert.delete(table)
    })
    this.lastInsert.set(table, task)
    this.inflight.add(task)
  }

  private async insertBatch(table: TableName, waiters: Waiter[]): Promise<void> {
    const release = await this.limiter.acquire()
    const started = performance.now()
    try {
      const rows = waiters.flatMap((w) => w.rows)
      const existing = await this.withRetries(() => this.storedIds(rows))
      // First occurrence wins: a batch may also carry the same event twice.
      const fresh = new Map<string, Row>()
      for (const row of rows) if (!existing.has(row.eventId) && !fresh.has(row.eventId)) fresh.set(row.eventId, row)
      if (fresh.size > 0) {
        const values = [...fresh.values()].map((r) => r.values)
        // Same rows, same token: a retry of an insert that did land is dropped by ClickHouse, in the rollups too.
        const token = createHash('sha256').update([...fresh.keys()].join(',')).digest('hex')
        await this.withRetries(() =>
          this.storage.insertRows(table, values, { insert_deduplication_token: token, deduplicate_blocks_in_dependent_materialized_views: 1 }),
        )
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
      this.options.onFlush?.(table, { rows: rows.length, stored: fresh.size, duplicates: rows.length - fresh.size, ms: performance.now() - started })
    } catch (err) {
      for (const w of waiters) w.reject(err)
    } finally {
      release()
    }
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
