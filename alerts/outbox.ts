// The outbox: every alert is written to ClickHouse before it is sent and marked when delivered. One worker per
// destination sends its alerts in the order they were made; a failure (Slack down, 429, SMTP refusing) keeps the
// alert at the head of its queue and retries it with backoff (Slack's Retry-After wins) until it goes, restarts
// included. Nothing is dropped.
import { randomUUID } from 'node:crypto'
import { queryRows, type ClickHouseClient } from '../clickhouse/client.ts'
import { chTime } from '../ingest/rows.ts'

export interface OutboxAlert {
  alert_id: string
  channel: 'slack' | 'email' | 'log'
  destination: string
  kind: 'finding' | 'update' | 'summary' | 'digest'
  finding_id: string
  severity: string
  payload: string
  status: 'pending' | 'delivered'
  attempts: number
  last_error: string
  created_at: string
  next_attempt_at: string
  delivered_at: string | null
  slack_ts: string
}

/** What a transport says about one attempt. */
export type Delivery = { ok: true; slack_ts?: string } | { ok: false; error: string; retryAfterMs?: number }

/** Sends one alert; the worker owns retries. */
export type Transport = (alert: OutboxAlert) => Promise<Delivery>

export interface OutboxLogger {
  warn(obj: object, msg?: string): void
  error(obj: object, msg?: string): void
}

const BACKOFF_MS = [1_000, 5_000, 15_000, 60_000, 300_000]
const SELECT = `SELECT alert_id, channel, destination, kind, finding_id, severity, payload, status, attempts, last_error, toString(created_at) AS created_at,
  toString(next_attempt_at) AS next_attempt_at, if(delivered_at IS NULL, NULL, toString(delivered_at)) AS delivered_at, slack_ts`

export class Outbox {
  private readonly queues = new Map<string, OutboxAlert[]>()
  private readonly running = new Set<string>()
  private readonly timers = new Set<NodeJS.Timeout>()
  private lastVersion = 0
  private stopped = false
  private seq = 0

  constructor(
    private readonly client: ClickHouseClient,
    private readonly transports: Record<OutboxAlert['channel'], Transport>,
    private readonly log: OutboxLogger,
    private readonly now: () => number = Date.now,
  ) {}

  /** Picks up what a previous run left undelivered, in order. */
  async start(): Promise<number> {
    const pending = await queryRows<OutboxAlert>(this.client, `${SELECT} FROM (SELECT * FROM alert_outbox FINAL WHERE status = 'pending') ORDER BY created_at, alert_id`)
    for (const a of pending) this.queue(a.channel, a.destination).push({ ...a, attempts: Number(a.attempts) })
    for (const key of this.queues.keys()) this.kick(key)
    return pending.length
  }

  /** Stops delivering; what was delivered is recorded before it resolves. */
  async stop(): Promise<void> {
    this.stopped = true
    await this.flush()
    for (const t of this.timers) clearTimeout(t)
    this.timers.clear()
  }

  /** Records alerts (durably) and queues them for delivery. */
  async enqueue(alerts: Omit<OutboxAlert, 'alert_id' | 'status' | 'attempts' | 'last_error' | 'created_at' | 'next_attempt_at' | 'delivered_at' | 'slack_ts'>[]): Promise<OutboxAlert[]> {
    if (!alerts.length) return []
    const at = this.now()
    const rows: OutboxAlert[] = alerts.map((a) => ({
      ...a,
      // Ordered ids: the alerts of one call keep their order under ORDER BY created_at, alert_id after a restart.
      alert_id: `alr_${at.toString(36)}_${String(this.seq++).padStart(6, '0')}_${randomUUID().slice(0, 8)}`,
      status: 'pending',
      attempts: 0,
      last_error: '',
      created_at: chTime(at),
      next_attempt_at: chTime(at),
      delivered_at: null,
      slack_ts: '',
    }))
    await this.write(rows)
    for (const r of rows) this.queue(r.channel, r.destination).push(r)
    for (const r of rows) this.kick(`${r.channel}\u0000${r.destination}`)
    return rows
  }

  /** Alerts already made for these findings (for dedup and for updating their Slack messages). */
  async forFindings(findingIds: string[]): Promise<OutboxAlert[]> {
    if (!findingIds.length) return []
    return queryRows<OutboxAlert>(this.client, `${SELECT} FROM (SELECT * FROM alert_outbox FINAL WHERE finding_id IN {ids:Array(String)}) ORDER BY created_at, alert_id`, { ids: findingIds })
  }

  /** Waits until every queued alert is delivered (tests, shutdown). */
  async idle(timeoutMs = 30_000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs // wall-clock waiting, whatever clock the alerts run on
    while ([...this.queues.values()].some((q) => q.length > 0)) {
      if (Date.now() > deadline) return false
      await new Promise((r) => setTimeout(r, 20))
    }
    await this.flush()
    return true
  }

  pending(): number {
    return [...this.queues.values()].reduce((n, q) => n + q.length, 0)
  }

  private queue(channel: string, destination: string): OutboxAlert[] {
    const key = `${channel}\u0000${destination}`
    let q = this.queues.get(key)
    if (!q) this.queues.set(key, (q = []))
    return q
  }

  /** One worker per destination: head of line first, so a destination's alerts arrive in order. */
  private kick(key: string): void {
    if (this.running.has(key) || this.stopped) return
    this.running.add(key)
    void this.drain(key).finally(() => this.running.delete(key))
  }

  private async drain(key: string): Promise<void> {
    const q = this.queues.get(key)!
    while (q.length && !this.stopped) {
      const head = q[0]!
      const wait = Date.parse(head.next_attempt_at.replace(' ', 'T') + 'Z') - this.now()
      if (wait > 0) {
        // Come back when it is due; the worker slot is released meanwhile.
        const t = setTimeout(() => {
          this.timers.delete(t)
          this.kick(key)
        }, wait)
        this.timers.add(t)
        return
      }
      let result: Delivery
      try {
        result = await this.transports[head.channel](head)
      } catch (err) {
        result = { ok: false, error: (err as Error).message }
      }
      if (result.ok) {
        const done: OutboxAlert = { ...head, status: 'delivered', attempts: head.attempts + 1, delivered_at: chTime(this.now()), slack_ts: result.slack_ts ?? head.slack_ts, last_error: '' }
        this.noteDelivered(done)
        q.shift()
        this.onDelivered?.(done)
        continue
      }
      const backoff = result.retryAfterMs ?? BACKOFF_MS[Math.min(head.attempts, BACKOFF_MS.length - 1)]!
      const retry: OutboxAlert = { ...head, attempts: head.attempts + 1, last_error: result.error.slice(0, 500), next_attempt_at: chTime(this.now() + backoff) }
      q[0] = retry
      await this.writeSafely(retry)
      this.log.warn({ alert: head.alert_id, channel: head.channel, destination: head.destination, attempts: retry.attempts, retry_in_ms: backoff, error: retry.last_error }, 'alert not delivered yet')
    }
  }

  private delivered: OutboxAlert[] = []
  private deliveredFlush?: Promise<void>

  /**
   * Deliveries are recorded in batches (one insert for whatever was delivered meanwhile): a crash before the write
   * means at worst a duplicate after the restart, never a loss.
   */
  private noteDelivered(row: OutboxAlert): void {
    this.delivered.push(row)
    this.deliveredFlush ??= new Promise<void>((r) => setTimeout(r, 50)).then(async () => {
      const rows = this.delivered.splice(0)
      this.deliveredFlush = undefined
      try {
        await this.write(rows)
      } catch (err) {
        this.log.error({ alerts: rows.length, err: String(err) }, 'could not record the alerts delivered')
      }
    })
  }

  /** Waits for the recording of deliveries made so far. */
  async flush(): Promise<void> {
    while (this.deliveredFlush) await this.deliveredFlush
  }

  /** Told of every delivery (the service remembers Slack message timestamps). */
  onDelivered?: (alert: OutboxAlert) => void

  private async writeSafely(row: OutboxAlert): Promise<void> {
    try {
      await this.write([row])
    } catch (err) {
      // The delivery happened; failing to note it means at worst a duplicate after a restart, never a loss.
      this.log.error({ alert: row.alert_id, err: String(err) }, 'could not record the alert state')
    }
  }

  private async write(rows: OutboxAlert[]): Promise<void> {
    await this.client.insert({
      table: 'alert_outbox',
      format: 'JSONEachRow',
      values: rows.map((r) => {
        this.lastVersion = Math.max(this.lastVersion + 1, this.now() * 1000)
        return { ...r, version: this.lastVersion }
      }),
    })
  }
}
