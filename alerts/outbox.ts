// The outbox: every alert is written to ClickHouse before it is sent and marked when delivered. One worker per
// destination sends its alerts in the order they were made; a failure (Slack down, 429, SMTP refusing) keeps the
// alert at the head of its queue and retries it with backoff (Slack's Retry-After wins) until it goes, restarts
// included. Only an alert the peer refuses for its own content (Slack's invalid_blocks, a recipient the mail server
// rejects for good) is set aside as `failed`, logged in full at error level, so it cannot hold up every alert behind it.
//
// No alert sent twice by a sender that dies (issue 16): before a new message goes to its peer the row is marked
// `sending` (with who sends it). A `sending` row found at start (its sender died between the call and the record of
// the answer), or an attempt whose outcome is unknown (a timeout, a connection cut after the request left), is looked
// for at the peer first (`lookups`: Slack's channel history, where the message's metadata carries the alert id) and
// only sent again if it is not there. A channel without a lookup (mail) is sent again: at least once, with a stable
// Message-ID receivers deduplicate on.
import { randomUUID } from 'node:crypto'
import { queryRows, type ClickHouseClient } from '../clickhouse/client.ts'
import { chTime } from '../clickhouse/time.ts'

export interface OutboxAlert {
  alert_id: string
  channel: 'slack' | 'email' | 'log'
  destination: string
  kind: 'finding' | 'update' | 'summary' | 'digest' | 'key_change'
  finding_id: string
  severity: string
  payload: string
  /**
   * pending -> delivered, or failed (refused for good). held: over its destination's per-minute cap, waiting to be
   * counted in the minute's summary (kept here so a crash cannot lose it); summarized once the summary is queued.
   * sending: handed to the peer by `claimed_by`, its answer not recorded yet (it may have arrived).
   */
  status: 'pending' | 'sending' | 'delivered' | 'failed' | 'held' | 'summarized'
  attempts: number
  last_error: string
  created_at: string
  next_attempt_at: string
  delivered_at: string | null
  slack_ts: string
  /** The instance that marked it `sending` ('' before). */
  claimed_by: string
}

/**
 * What a transport says about one attempt. `permanent`: this alert will never be accepted as it is (its content or
 * its recipient), as opposed to the peer being down, rate limiting or misconfigured, which retrying outlasts.
 */
export type Delivery = { ok: true; slack_ts?: string } | { ok: false; error: string; retryAfterMs?: number; permanent?: boolean; mayHaveArrived?: boolean }

/**
 * Looks for an alert at its peer (one that may have been sent already): found (with its Slack ts), not there, or
 * the peer could not say (tried again later, never sent blindly while the peer cannot answer).
 */
export type Lookup = (alert: OutboxAlert) => Promise<{ found: true; slack_ts?: string } | { found: false } | { error: string; retryAfterMs?: number }>

/** Sends one alert; the worker owns retries. */
export type Transport = (alert: OutboxAlert) => Promise<Delivery>

/** What a caller says about a new alert; the outbox adds ids, times and state. */
export type NewAlert = Omit<OutboxAlert, 'alert_id' | 'status' | 'attempts' | 'last_error' | 'created_at' | 'next_attempt_at' | 'delivered_at' | 'slack_ts' | 'claimed_by'>

export interface OutboxLogger {
  warn(obj: object, msg?: string): void
  error(obj: object, msg?: string): void
}

const BACKOFF_MS = [1_000, 5_000, 15_000, 60_000, 300_000]
const SELECT = `SELECT alert_id, channel, destination, kind, finding_id, severity, payload, status, attempts, last_error, toString(created_at) AS created_at,
  toString(next_attempt_at) AS next_attempt_at, if(delivered_at IS NULL, NULL, toString(delivered_at)) AS delivered_at, slack_ts, claimed_by`

export interface OutboxOptions {
  /** Who sends (the instance's name in the leadership): written on `sending` rows. */
  owner?: string
  /** Per channel, how to look for an alert that may have reached the peer already (Slack). */
  lookups?: Partial<Record<OutboxAlert['channel'], Lookup>>
}

export class Outbox {
  private readonly queues = new Map<string, OutboxAlert[]>()
  /** Per destination, the worker currently draining it (stop waits for the attempt in flight). */
  private readonly running = new Map<string, Promise<void>>()
  private readonly timers = new Set<NodeJS.Timeout>()
  private lastVersion = 0
  private stopped = false
  private seq = 0
  /** Alerts that may have reached their peer already (a `sending` row, an attempt cut off): looked for before sending. */
  private readonly recheck = new Set<string>()

  constructor(
    private readonly client: ClickHouseClient,
    private readonly transports: Record<OutboxAlert['channel'], Transport>,
    private readonly log: OutboxLogger,
    private readonly now: () => number = Date.now,
    private readonly options: OutboxOptions = {},
  ) {}

  /** Picks up what a previous run left undelivered, in order. */
  async start(): Promise<number> {
    // Started again after a stop (a leader re-elected, issue 16): the table is the truth, not what was queued before.
    this.stopped = false
    this.queues.clear()
    this.recheck.clear()
    const pending = await queryRows<OutboxAlert>(this.client, `${SELECT} FROM (SELECT * FROM alert_outbox FINAL WHERE status IN ('pending', 'sending')) ORDER BY created_at, alert_id`)
    for (const a of pending) if (a.status === 'sending') this.recheck.add(a.alert_id)
    const claimed = pending.filter((a) => a.status === 'sending')
    if (claimed.length) this.log.warn({ alerts: claimed.length, senders: [...new Set(claimed.map((a) => a.claimed_by))] }, 'alerts another sender was handing over when it stopped: looked for at the peer before they are sent again')
    // A restart is a fresh try: a backoff that grew during a long outage does not carry over.
    const due = chTime(this.now())
    for (const a of pending) this.queue(a.channel, a.destination).push({ ...a, attempts: Number(a.attempts), next_attempt_at: due })
    for (const key of this.queues.keys()) this.kick(key)
    return pending.length
  }

  /** Stops delivering; what was delivered is recorded before it resolves. */
  async stop(): Promise<void> {
    this.stopped = true
    for (const t of this.timers) clearTimeout(t)
    this.timers.clear()
    // An attempt in flight finishes and is recorded (else a delivered alert would be sent again after the restart).
    await Promise.allSettled([...this.running.values()])
    await this.flush()
  }

  /** Records alerts (durably) and queues them for delivery. */
  async enqueue(alerts: NewAlert[]): Promise<OutboxAlert[]> {
    return this.commit(this.make(alerts))
  }

  /** New rows for these alerts, not written yet: `commit` writes them (with others) in one insert. */
  make(alerts: NewAlert[], status: 'pending' | 'held' = 'pending'): OutboxAlert[] {
    const at = this.now()
    return alerts.map((a) => ({
      ...a,
      // Ordered ids: the alerts of one call keep their order under ORDER BY created_at, alert_id after a restart.
      alert_id: `alr_${at.toString(36)}_${String(this.seq++).padStart(6, '0')}_${randomUUID().slice(0, 8)}`,
      status,
      attempts: 0,
      last_error: '',
      created_at: chTime(at),
      next_attempt_at: chTime(at),
      delivered_at: null,
      slack_ts: '',
      claimed_by: '',
    }))
  }

  /** Writes rows in one insert (new ones, or new states of held ones), then queues the pending ones for delivery. */
  async commit(rows: OutboxAlert[]): Promise<OutboxAlert[]> {
    if (!rows.length) return []
    await this.write(rows)
    const pending = rows.filter((r) => r.status === 'pending')
    for (const r of pending) this.queue(r.channel, r.destination).push(r)
    for (const r of pending) this.kick(`${r.channel}\u0000${r.destination}`)
    return pending
  }

  /** Alerts held over a cap and not summed up yet (a previous run stopped before the end of their minute). */
  async held(): Promise<OutboxAlert[]> {
    return queryRows<OutboxAlert>(this.client, `${SELECT} FROM (SELECT * FROM alert_outbox FINAL WHERE status = 'held') ORDER BY created_at, alert_id`)
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
    const worker = this.drain(key).then(
      (next) => next,
      (err: unknown) => {
        this.log.error({ destination: key.replace('\u0000', ':'), err: String(err) }, 'alert worker failed')
        return 'retry' as const
      },
    )
    this.running.set(
      key,
      worker.then((next) => {
        this.running.delete(key)
        // An alert queued while this worker was finishing found it still running: it would wait for the next one.
        if (next === 'empty' && this.queues.get(key)?.length) this.kick(key)
        if (next === 'retry') this.after(1_000, key)
      }),
    )
  }

  /** Comes back to a destination later; the worker slot is released meanwhile. */
  private after(ms: number, key: string): void {
    if (this.stopped) return
    const t = setTimeout(() => {
      this.timers.delete(t)
      this.kick(key)
    }, ms)
    this.timers.add(t)
  }

  /** Sends a destination's alerts in order; 'waiting' when the head is not due yet (a timer comes back for it). */
  private async drain(key: string): Promise<'empty' | 'waiting'> {
    const q = this.queues.get(key)!
    while (q.length && !this.stopped) {
      const head = q[0]!
      const wait = Date.parse(head.next_attempt_at.replace(' ', 'T') + 'Z') - this.now()
      if (wait > 0) {
        this.after(wait, key)
        return 'waiting'
      }
      // Sent before, maybe (its sender died with the answer, or the answer was lost): is it at the peer already?
      const lookup = this.options.lookups?.[head.channel]
      if (lookup && this.recheck.has(head.alert_id)) {
        const seen: Awaited<ReturnType<Lookup>> = await lookup(head).catch((err: unknown) => ({ error: (err as Error).message }))
        if ('found' in seen && seen.found) {
          this.recheck.delete(head.alert_id)
          const done: OutboxAlert = { ...head, status: 'delivered', delivered_at: chTime(this.now()), slack_ts: seen.slack_ts ?? head.slack_ts, last_error: '' }
          this.noteDelivered(done)
          q.shift()
          this.onDelivered?.(done)
          this.log.warn({ alert: head.alert_id, channel: head.channel, destination: head.destination, claimed_by: head.claimed_by }, 'alert found at the peer already: recorded as delivered, not sent again')
          continue
        }
        if ('error' in seen) {
          const backoff = seen.retryAfterMs ?? BACKOFF_MS[Math.min(head.attempts, BACKOFF_MS.length - 1)]!
          q[0] = { ...head, last_error: `looking for it at the peer: ${seen.error}`.slice(0, 500), next_attempt_at: chTime(this.now() + backoff) }
          this.log.warn({ alert: head.alert_id, channel: head.channel, destination: head.destination, retry_in_ms: backoff, error: seen.error }, 'could not tell whether an alert was sent already; asking again before sending')
          continue
        }
      }
      this.recheck.delete(head.alert_id) // not there (or no way to ask): sent
      // Marked before the call: whoever finds this row later knows the peer may have it.
      const sending: OutboxAlert = { ...head, status: 'sending', claimed_by: this.options.owner ?? '' }
      try {
        await this.write([sending])
      } catch (err) {
        q[0] = { ...head, next_attempt_at: chTime(this.now() + 1_000) }
        this.log.warn({ alert: head.alert_id, err: String(err) }, 'could not mark the alert as sending; not sent yet')
        continue
      }
      let result: Delivery
      try {
        result = await this.transports[head.channel](sending)
      } catch (err) {
        result = { ok: false, error: (err as Error).message, mayHaveArrived: true }
      }
      if (result.ok) {
        const done: OutboxAlert = { ...sending, status: 'delivered', attempts: head.attempts + 1, delivered_at: chTime(this.now()), slack_ts: result.slack_ts ?? head.slack_ts, last_error: '' }
        this.noteDelivered(done)
        q.shift()
        this.onDelivered?.(done)
        continue
      }
      if (result.permanent) {
        const failed: OutboxAlert = { ...sending, status: 'failed', attempts: head.attempts + 1, last_error: result.error.slice(0, 500) }
        q.shift()
        await this.writeSafely(failed)
        // In full in the log: whoever reads it can still act on the alert.
        this.log.error({ alert: head.alert_id, channel: head.channel, destination: head.destination, kind: head.kind, finding: head.finding_id, error: failed.last_error, payload: head.payload }, 'alert refused for good; set aside so the alerts behind it go')
        continue
      }
      const backoff = result.retryAfterMs ?? BACKOFF_MS[Math.min(head.attempts, BACKOFF_MS.length - 1)]!
      // An answer that never came (a timeout, a cut connection) may hide a delivery: stays `sending`, looked for first.
      if (result.mayHaveArrived) this.recheck.add(head.alert_id)
      const retry: OutboxAlert = { ...head, status: result.mayHaveArrived ? 'sending' : 'pending', claimed_by: sending.claimed_by, attempts: head.attempts + 1, last_error: result.error.slice(0, 500), next_attempt_at: chTime(this.now() + backoff) }
      q[0] = retry
      await this.writeSafely(retry)
      this.log.warn({ alert: head.alert_id, channel: head.channel, destination: head.destination, attempts: retry.attempts, retry_in_ms: backoff, error: retry.last_error }, 'alert not delivered yet')
    }
    return 'empty'
  }

  private delivered: OutboxAlert[] = []
  private deliveredFlush?: Promise<void>

  /**
   * Deliveries are recorded in batches (one insert for whatever was delivered meanwhile): a crash before the write
   * leaves the row `sending`, looked for at the peer by the next sender (at worst a duplicate where the peer cannot
   * be asked, never a loss).
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
