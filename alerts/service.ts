// Alerts: findings routed to Slack channels and mail recipients, one alert per finding per 6 hours unless its
// severity rises, at most N a minute per destination (the overflow summed up in one message), through the outbox.
// A finding that changes (acknowledged, revoked, resolved) updates its Slack messages. Digests of key hygiene go to
// each account's recipients daily or weekly.
import { createRequire } from 'node:module'
import type { WebAPICallError, WebClient } from '@slack/web-api'
import cron, { type ScheduledTask } from 'node-cron'
import type { Transporter } from 'nodemailer'
import { KeyInventory } from '../inventory/keys.ts'
import { queryRows, type ClickHouseClient } from '../clickhouse/client.ts'
import { SEVERITY_RANK, type Severity } from '../detectors/detector.ts'
import type { Finding, Recorded } from '../detectors/findings.ts'
import { digestMail, findingMail, keyChangeMail, keyChangeSlack, slackMessage, slackSummary, summaryMail, type ActionNote, type KeyChange, type Mail } from './messages.ts'
import { Outbox, type Delivery, type Lookup, type NewAlert, type OutboxAlert, type OutboxLogger } from './outbox.ts'
import { destinationsFor, type Routes } from './routing.ts'

export interface AlertsConfig {
  routes: Routes
  slack?: { token: string; apiUrl?: string }
  smtp?: { url: string; from: string }
  publicUrl: string
  dedupHours: number
  maxPerMinute: number
}

export interface AlertsLogger extends OutboxLogger {
  info(obj: object, msg?: string): void
}

export interface FindingAlert {
  finding: Finding
  change: Recorded['change']
  alert: boolean
  action?: ActionNote
  /** The incident it belongs to: a later finding of an incident is posted in the thread of the incident's first message. */
  incident?: { incident_id: string; opened: boolean; earlier: string[] }
  /** Alert again even inside the dedup window (a pending approval, every 15 minutes). */
  realert?: boolean
}

interface Payload {
  slack?: { text: string; blocks: object[] }
  mail?: Mail
  /** For an update: which finding's messages to replace. */
  update_of?: string
  /** The finding's title, for a summary that counts this alert in. */
  title?: string
  /** The incident's earlier findings, oldest first: the reply goes in the thread of the first one posted here. */
  thread_of?: string[]
}

const requireModule = createRequire(import.meta.url)

export class AlertService {
  readonly outbox: Outbox
  private readonly slack?: WebClient
  private readonly mailer?: Transporter
  /** Posted Slack messages per finding: channel -> ts (updated in place when the finding changes). */
  private readonly posted = new Map<string, Map<string, string>>()
  /** Per destination, the alerts of the current minute and what spilled over (held in the outbox meanwhile). */
  private readonly minute = new Map<string, MinuteState>()
  /**
   * The last alert per finding and destination made by this process: two runs reporting the same finding at the
   * same moment both read the outbox before either wrote, and would both alert.
   */
  private readonly lastAlerted = new Map<string, { at: number; rank: number }>()
  private readonly summaryTimers = new Set<NodeJS.Timeout>()
  private digestTasks: ScheduledTask[] = []

  constructor(
    private readonly client: ClickHouseClient,
    private readonly config: AlertsConfig,
    private readonly log: AlertsLogger,
    private readonly now: () => number = Date.now,
    /** Whose clocks say which keys the digests list: the detectors' (with DETECTOR_PARAMS). */
    private readonly inventory = new KeyInventory(client),
    /** This instance's name (issue 16): who marked an alert `sending`. */
    owner = '',
  ) {
    // The Slack and mail clients load only where they are configured (0.2 s of every command's start otherwise).
    if (config.slack) {
      const { WebClient } = requireModule('@slack/web-api') as typeof import('@slack/web-api')
      // The outbox owns retries (in order, across restarts): the client must not retry or queue behind a 429 itself.
      this.slack = new WebClient(config.slack.token, { slackApiUrl: config.slack.apiUrl, retryConfig: { retries: 0 }, rejectRateLimitedCalls: true, timeout: 10_000 })
    }
    if (config.smtp) this.mailer = (requireModule('nodemailer') as typeof import('nodemailer')).createTransport(config.smtp.url)
    this.outbox = new Outbox(client, { slack: (a) => this.sendSlack(a), email: (a) => this.sendMail(a), log: (a) => this.sendLog(a) }, log, now, { owner, lookups: { slack: (a) => this.findSlack(a) } })
    this.outbox.onDelivered = (a) => {
      if (a.channel === 'slack' && a.kind === 'finding' && a.slack_ts) this.remember(a.finding_id, a.destination, a.slack_ts)
    }
  }

  /** Whether a changed finding has messages to update (Slack is configured). */
  get updatesMessages(): boolean {
    return Boolean(this.slack)
  }

  async start(): Promise<void> {
    const resumed = await this.outbox.start()
    if (resumed) this.log.info({ alerts: resumed }, 'delivering alerts left pending by the previous run')
    await this.summarizeLeftovers()
  }

  /** Summaries are queued (durably) before the outbox stops: what was held back is counted, not forgotten. */
  async stop(): Promise<void> {
    for (const t of this.summaryTimers) clearTimeout(t)
    this.summaryTimers.clear()
    for (const t of this.digestTasks) await t.stop()
    try {
      await this.flushSummaries()
    } catch (err) {
      this.log.error({ err: String(err) }, 'could not queue the alert summaries; the held alerts are summed up at the next start')
    }
    await this.outbox.stop()
    this.mailer?.close()
  }

  /** After a detector run (or keywatch itself) recorded findings. */
  async onFindings(items: FindingAlert[]): Promise<OutboxAlert[]> {
    const wanted = items.filter((i) => i.alert)
    if (!wanted.length) return []
    // A finding raised just now has no earlier alerts: only the ones that fired before are looked up.
    const seenBefore = wanted.filter((i) => i.change !== 'new').map((i) => i.finding.finding_id)
    const earlier = seenBefore.length ? await this.outbox.forFindings(seenBefore) : []
    const since = this.now() - this.config.dedupHours * 3_600_000
    this.forgetBefore(since)
    const send: NewAlert[] = []
    const noted: string[] = []
    const hold: { alert: NewAlert; title: string; destination: string }[] = []
    for (const { finding, action, incident, realert } of wanted) {
      for (const d of destinationsFor(this.config.routes, finding, { slack: Boolean(this.slack), email: Boolean(this.mailer) })) {
        // One alert per finding and destination per dedup window, unless the severity rose since the last one.
        const dedupKey = `${finding.finding_id}\u0000${d.channel}:${d.destination}`
        const last = this.lastAlertOf(dedupKey, earlier, finding.finding_id, d)
        const rank = SEVERITY_RANK[finding.severity]
        if (!realert && last && last.at > since && rank <= last.rank) continue
        const alert: NewAlert = { channel: d.channel, destination: d.destination, kind: 'finding', finding_id: finding.finding_id, severity: finding.severity, payload: JSON.stringify(this.payload(d.channel, finding, action, incident)) }
        if (this.withinCap(`${d.channel}:${d.destination}`)) {
          this.lastAlerted.set(dedupKey, { at: this.now(), rank })
          noted.push(dedupKey)
          send.push(alert)
        } else {
          hold.push({ alert, title: finding.title, destination: `${d.channel}:${d.destination}` })
        }
      }
    }
    const sendRows = this.outbox.make(send)
    const heldRows = this.outbox.make(hold.map((h) => h.alert), 'held')
    // Held alerts are counted into their minute only once they are on disk with the rest.
    let sent: OutboxAlert[]
    try {
      sent = await this.outbox.commit([...sendRows, ...heldRows])
    } catch (err) {
      for (const k of noted) this.lastAlerted.delete(k) // not recorded, so not alerted: the next run tries again
      throw err
    }
    hold.forEach((h, i) => this.overflow(h.destination, heldRows[i]!, h.title))
    return sent
  }

  /** The newer of what this process alerted and what the outbox holds (another process, before a restart). */
  private lastAlertOf(dedupKey: string, earlier: OutboxAlert[], findingId: string, d: { channel: string; destination: string }): { at: number; rank: number } | undefined {
    const stored = earlier
      .filter((a) => a.finding_id === findingId && a.channel === d.channel && a.destination === d.destination && a.kind === 'finding' && a.status !== 'held' && a.status !== 'summarized')
      .at(-1)
    const fromStore = stored && { at: msOf(stored.created_at), rank: SEVERITY_RANK[stored.severity as Severity] ?? 0 }
    const inMemory = this.lastAlerted.get(dedupKey)
    if (!fromStore) return inMemory
    if (!inMemory) return fromStore
    return inMemory.at >= fromStore.at ? inMemory : fromStore
  }

  private forgetBefore(since: number): void {
    if (this.lastAlerted.size < 10_000) return
    for (const [k, v] of this.lastAlerted) if (v.at <= since) this.lastAlerted.delete(k)
  }

  /** A finding changed (acknowledged, suppressed, resolved, or its key was revoked): its Slack messages are updated. */
  async onFindingChanged(finding: Finding, action?: ActionNote): Promise<OutboxAlert[]> {
    if (!this.slack) return []
    const posted = (await this.outbox.forFindings([finding.finding_id])).filter((a) => a.channel === 'slack' && a.kind === 'finding' && (a.status === 'pending' || a.status === 'sending' || a.status === 'delivered'))
    const channels = [...new Set(posted.map((a) => a.destination))]
    return this.outbox.enqueue(
      channels.map((destination) => ({
        channel: 'slack' as const,
        destination,
        kind: 'update' as const,
        finding_id: finding.finding_id,
        severity: finding.severity,
        payload: JSON.stringify({ slack: slackMessage(finding, action, this.config.publicUrl), update_of: finding.finding_id } satisfies Payload),
      })),
    )
  }

  /**
   * Lifecycle changes of live keys, to the accounts' subscribers (`key_changes` routes), by Slack and mail. One
   * notification per event and destination: a redelivered event (or one ingested twice) is not told again.
   */
  async onKeyChanges(changes: KeyChange[]): Promise<OutboxAlert[]> {
    const subs = this.config.routes.key_changes ?? []
    if (!subs.length) return []
    const wanted: NewAlert[] = []
    for (const c of changes) {
      for (const sub of subs) {
        if ((sub.account !== '*' && sub.account !== c.account_id) || !(sub.changes as string[]).includes(c.action)) continue
        const ref = `lifecycle:${c.event_id}`
        if (sub.slack) wanted.push({ channel: this.slack ? 'slack' : 'log', destination: this.slack ? sub.slack : 'key-changes', kind: 'key_change', finding_id: ref, severity: 'info', payload: JSON.stringify({ slack: keyChangeSlack(c, this.config.publicUrl), title: c.key_prefix } satisfies Payload) })
        if (sub.email.length) wanted.push({ channel: this.mailer ? 'email' : 'log', destination: this.mailer ? sub.email.join(',') : 'key-changes', kind: 'key_change', finding_id: ref, severity: 'info', payload: JSON.stringify({ mail: keyChangeMail(c, this.config.publicUrl), slack: { text: keyChangeSlack(c, this.config.publicUrl).text, blocks: [] } } satisfies Payload) })
      }
    }
    if (!wanted.length) return []
    const sentBefore = await this.outbox.forFindings([...new Set(wanted.map((w) => w.finding_id))])
    const seen = new Set(sentBefore.map((a) => `${a.finding_id}\u0000${a.channel}:${a.destination}`))
    const fresh = wanted.filter((w) => {
      const k = `${w.finding_id}\u0000${w.channel}:${w.destination}`
      if (seen.has(k)) return false
      seen.add(k)
      return true
    })
    return this.outbox.enqueue(fresh)
  }

  /**
   * Builds and queues one account's digest to the given recipients. `skipEmpty`: nothing to report sends nothing
   * (the `*` entries, which would otherwise mail every account's all-clear).
   */
  async sendDigest(accountId: string, recipients: string[], period: 'daily' | 'weekly', opts: { skipEmpty?: boolean } = {}): Promise<OutboxAlert[]> {
    // The same definitions as the key.stale and key.rotation_* detectors: the inventory reads their parameters.
    const base = { account: accountId, limit: 10_000, offset: 0 }
    const [stale, overdue, dueSoon] = await Promise.all([
      this.inventory.list({ ...base, stale: true }),
      this.inventory.list({ ...base, overdue: true }),
      this.inventory.list({ ...base, due_soon: true }),
    ])
    if (opts.skipEmpty && stale.total + overdue.total + dueSoon.total === 0) return []
    for (const [what, list] of [['stale', stale], ['overdue', overdue], ['due soon', dueSoon]] as const) {
      if (list.total > list.keys.length) this.log.warn({ account: accountId, what, listed: list.keys.length, total: list.total }, 'digest lists only the first keys')
    }
    const mail = digestMail({ account_id: accountId, stale: stale.keys, overdue: overdue.keys, dueSoon: dueSoon.keys }, period, this.config.publicUrl)
    const channel = this.mailer ? ('email' as const) : ('log' as const)
    return this.outbox.enqueue([{ channel, destination: channel === 'email' ? recipients.join(',') : 'digests', kind: 'digest', finding_id: '', severity: 'info', payload: JSON.stringify({ mail } satisfies Payload) }])
  }

  /** Daily digests at 08:00 UTC, weekly ones on Mondays; `*` sends one per account that has something to report. */
  scheduleDigests(): void {
    for (const period of ['daily', 'weekly'] as const) {
      const entries = this.config.routes.digests.filter((d) => d.every === period)
      if (!entries.length) continue
      const task = cron.schedule(
        period === 'daily' ? '0 8 * * *' : '0 8 * * 1',
        () =>
          void this.runDigests(entries, period).catch((err) => this.log.error({ err: String(err), period }, 'digests failed')),
        { timezone: 'UTC' },
      )
      this.digestTasks.push(task)
    }
  }

  async runDigests(entries: Routes['digests'], period: 'daily' | 'weekly'): Promise<void> {
    for (const entry of entries) {
      const every = entry.account === '*'
      const accounts = every ? await this.accountsWithKeys() : [entry.account]
      for (const account of accounts) await this.sendDigest(account, entry.email, period, { skipEmpty: every })
    }
  }

  private async accountsWithKeys(): Promise<string[]> {
    const rows = await queryRows<{ account_id: string }>(this.client, 'SELECT DISTINCT account_id FROM key_inventory ORDER BY account_id')
    return rows.map((r) => r.account_id)
  }

  private payload(channel: OutboxAlert['channel'], f: Finding, action: ActionNote | undefined, incident?: FindingAlert['incident']): Payload {
    if (channel === 'email') return { mail: findingMail(f, action, this.config.publicUrl), title: f.title }
    const slack = slackMessage(f, action, this.config.publicUrl)
    if (!incident) return { slack, title: f.title }
    const link = `${this.config.publicUrl.replace(/\/$/, '')}/#/incidents/${incident.incident_id}`
    const note = incident.opened ? `Opens incident <${link}|${incident.incident_id}>` : `Part of incident <${link}|${incident.incident_id}> (${incident.earlier.length + 1} findings)`
    return { slack: { ...slack, blocks: [...slack.blocks, { type: 'context', elements: [{ type: 'mrkdwn', text: note }] }] }, title: f.title, thread_of: incident.earlier.length ? incident.earlier : undefined }
  }

  /** The Slack thread of an incident in this channel: the message of its earliest finding posted there. */
  private async threadOf(findingIds: string[], channel: string): Promise<string | undefined> {
    for (const id of findingIds) {
      const ts = this.posted.get(id)?.get(channel)
      if (ts) return ts
    }
    const posted = (await this.outbox.forFindings(findingIds)).filter((a) => a.kind === 'finding' && a.channel === 'slack' && a.destination === channel && a.slack_ts)
    return findingIds.map((id) => posted.find((a) => a.finding_id === id)?.slack_ts).find(Boolean)
  }

  /** The per-destination cap: true while the destination's minute has room (the slot is taken). */
  private withinCap(destination: string): boolean {
    const minute = Math.floor(this.now() / 60_000)
    let m = this.minute.get(destination)
    if (!m || m.minute !== minute) {
      // A minute that ended with its overflow not summed up yet: summed up now (its timer, due about now, finds it done).
      if (m?.overflow.length) void this.sendSummary(destination, m).catch((err) => this.log.error({ err: String(err) }, 'could not queue the alert summary'))
      this.minute.set(destination, (m = { minute, sent: 0, overflow: [] }))
    }
    if (m.sent >= this.config.maxPerMinute) return false
    m.sent++
    return true
  }

  /** Counts a held alert into its minute's summary, sent at the end of the minute. */
  private overflow(destination: string, row: OutboxAlert, title: string): void {
    const m = this.minute.get(destination)!
    if (m.overflow.length === 0) {
      const t = setTimeout(() => {
        this.summaryTimers.delete(t)
        void this.sendSummary(destination, m).catch((err) => this.log.error({ err: String(err) }, 'could not queue the alert summary'))
      }, Math.max(0, (m.minute + 1) * 60_000 - this.now()))
      this.summaryTimers.add(t)
    }
    m.overflow.push({ row, title })
  }

  /** Sends the held-back count now (tests and shutdown use it; the timer does at the end of the minute). */
  async flushSummaries(): Promise<void> {
    for (const [destination, state] of this.minute) if (state.overflow.length) await this.sendSummary(destination, state)
  }

  /** One summary for a minute's held alerts, written together with their new state (summarized). */
  private async sendSummary(destination: string, state: Pick<MinuteState, 'minute' | 'overflow'>): Promise<void> {
    if (!state.overflow.length) return
    const held = state.overflow.splice(0)
    try {
      await this.outbox.commit([...this.outbox.make([this.summaryAlert(destination, state.minute, held.map((h) => h.title))]), ...held.map((h) => ({ ...h.row, status: 'summarized' as const }))])
    } catch (err) {
      state.overflow.unshift(...held) // still held, on disk and here: the next flush or start counts them
      throw err
    }
  }

  private summaryAlert(destination: string, minute: number, titles: string[]): NewAlert {
    const [channel, ...rest] = destination.split(':')
    const at = new Date(minute * 60_000).toISOString().slice(11, 16)
    const payload: Payload = channel === 'email' ? { mail: summaryMail(titles.length, titles, at) } : { slack: slackSummary(rest.join(':'), titles.length, titles, at) }
    return { channel: channel as OutboxAlert['channel'], destination: rest.join(':'), kind: 'summary', finding_id: '', severity: 'info', payload: JSON.stringify(payload) }
  }

  /** Alerts a previous run held over a cap and stopped before summing up (a crash): summed up now, per minute. */
  private async summarizeLeftovers(): Promise<void> {
    const groups = new Map<string, { destination: string; minute: number; overflow: MinuteState['overflow'] }>()
    for (const row of await this.outbox.held()) {
      const minute = Math.floor(msOf(row.created_at) / 60_000)
      const key = `${row.channel}:${row.destination}\u0000${minute}`
      let g = groups.get(key)
      if (!g) groups.set(key, (g = { destination: `${row.channel}:${row.destination}`, minute, overflow: [] }))
      g.overflow.push({ row, title: titleOf(row) })
    }
    for (const g of groups.values()) await this.sendSummary(g.destination, g)
    if (groups.size) this.log.info({ summaries: groups.size }, 'summed up the alerts the previous run held over the cap')
  }

  private remember(findingId: string, channel: string, ts: string): void {
    let m = this.posted.get(findingId)
    if (!m) this.posted.set(findingId, (m = new Map()))
    m.set(channel, ts)
  }

  private async sendSlack(alert: OutboxAlert): Promise<Delivery> {
    if (!this.slack) return { ok: false, error: 'Slack is not configured' }
    const payload = JSON.parse(alert.payload) as Payload
    try {
      if (alert.kind === 'update') {
        // The original went first (same destination, in order); its ts is known once it was delivered.
        let ts = this.posted.get(alert.finding_id)?.get(alert.destination)
        if (!ts) {
          const original = (await this.outbox.forFindings([alert.finding_id])).find((a) => a.kind === 'finding' && a.destination === alert.destination && a.slack_ts)
          ts = original?.slack_ts
        }
        if (!ts) return { ok: true } // never posted (deduplicated or throttled): nothing to update
        await this.slack.chat.update({ channel: alert.destination, ts, text: payload.slack!.text, blocks: payload.slack!.blocks as never })
        return { ok: true, slack_ts: ts }
      }
      // The channel's queue is in order, so an incident's first message was posted (and its ts known) before this one.
      const thread = payload.thread_of?.length ? await this.threadOf(payload.thread_of, alert.destination) : undefined
      // The alert id rides in the message's metadata: a sender that finds the alert `sending` can look for it (findSlack).
      const metadata = { event_type: SLACK_ALERT_EVENT, event_payload: { alert_id: alert.alert_id } }
      const answer = await this.slack.chat.postMessage({ channel: alert.destination, text: payload.slack!.text, blocks: payload.slack!.blocks as never, unfurl_links: false, metadata, ...(thread ? { thread_ts: thread } : {}) })
      return { ok: true, slack_ts: answer.ts }
    } catch (err) {
      const e = err as WebAPICallError & { retryAfter?: number; statusCode?: number; data?: { error?: string } }
      const slackError = e.data?.error ?? ''
      return {
        ok: false,
        error: `slack: ${e.code ?? ''} ${e.message}`.trim(),
        retryAfterMs: typeof e.retryAfter === 'number' ? e.retryAfter * 1000 : undefined,
        permanent: e.code === 'slack_webapi_platform_error' && SLACK_REFUSES_THIS_MESSAGE.has(slackError),
        // No answer at all (a timeout, a connection cut after the request left): Slack may have posted it.
        mayHaveArrived: e.code === 'slack_webapi_request_error',
      }
    }
  }

  /**
   * Whether an alert that may have been posted already is in its channel (or its incident's thread): the message
   * whose metadata carries its alert id, posted since it was made. Needs the app's history scope
   * (channels:history, groups:history); without it the alert is sent again (at least once) and that is logged.
   */
  private readonly findSlack: Lookup = async (alert) => {
    // An update replaces a message in place: sending it again changes nothing.
    if (!this.slack || alert.kind === 'update') return { found: false }
    const payload = JSON.parse(alert.payload) as Payload
    const thread = payload.thread_of?.length ? await this.threadOf(payload.thread_of, alert.destination) : undefined
    const oldest = String(Math.floor(msOf(alert.created_at) / 1000) - 60) // a minute of slack for Slack's clock
    try {
      let cursor: string | undefined
      for (let page = 0; page < 20; page++) {
        const args = { channel: alert.destination, oldest, include_all_metadata: true, limit: 200, ...(cursor ? { cursor } : {}) }
        const answer = thread ? await this.slack.conversations.replies({ ...args, ts: thread }) : await this.slack.conversations.history(args)
        const messages = (answer.messages ?? []) as { ts?: string; metadata?: { event_type?: string; event_payload?: Record<string, unknown> } }[]
        const mine = messages.find((m) => m.metadata?.event_type === SLACK_ALERT_EVENT && m.metadata.event_payload?.alert_id === alert.alert_id)
        if (mine) return { found: true, slack_ts: mine.ts }
        cursor = answer.response_metadata?.next_cursor || undefined
        if (!cursor) break
      }
      return { found: false }
    } catch (err) {
      const e = err as WebAPICallError & { retryAfter?: number; data?: { error?: string } }
      if (e.code === 'slack_webapi_platform_error') {
        // Slack answered, but will not show the history (a missing scope, the bot not in the channel): at least once.
        this.log.error({ alert: alert.alert_id, channel: alert.destination, error: e.data?.error }, 'cannot look in the Slack channel for an alert that may have been posted; sending it again (give the app channels:history)')
        return { found: false }
      }
      return { error: `slack: ${e.code ?? ''} ${e.message}`.trim(), retryAfterMs: typeof e.retryAfter === 'number' ? e.retryAfter * 1000 : undefined }
    }
  }

  private async sendMail(alert: OutboxAlert): Promise<Delivery> {
    if (!this.mailer || !this.config.smtp) return { ok: false, error: 'SMTP is not configured' }
    const { mail } = JSON.parse(alert.payload) as Payload
    try {
      // One Message-ID per alert, whatever attempt or sender: a mail sent again after a sender died is the same message
      // to receivers that deduplicate by it.
      const messageId = `<${alert.alert_id}@${/@([^>\s]+)/.exec(this.config.smtp.from)?.[1] ?? 'keywatch.invalid'}>`
      const sent = (await this.mailer.sendMail({ from: this.config.smtp.from, to: alert.destination.split(','), subject: mail!.subject, text: mail!.text, html: mail!.html, messageId })) as { rejected?: unknown[] }
      if (sent.rejected?.length) this.log.warn({ alert: alert.alert_id, rejected: sent.rejected.map(String) }, 'the mail server refused some recipients of an alert')
      return { ok: true }
    } catch (err) {
      const e = err as Error & { code?: string; responseCode?: number }
      // Refused for good: every recipient (550-553) or the message itself (554 at DATA). Auth and connection
      // failures are the server's or the configuration's, and retrying outlasts them.
      const refused = (e.code === 'EENVELOPE' || e.code === 'EMESSAGE') && (e.responseCode === undefined || e.responseCode >= 500)
      return { ok: false, error: `smtp: ${e.message}`, permanent: refused }
    }
  }

  /** No Slack or mail configured: the alert goes to the log, so it is never silently dropped. */
  private async sendLog(alert: OutboxAlert): Promise<Delivery> {
    const payload = JSON.parse(alert.payload) as Payload
    this.log.warn({ alert: alert.alert_id, kind: alert.kind, finding: alert.finding_id, severity: alert.severity, text: payload.slack?.text ?? payload.mail?.subject }, 'alert')
    return { ok: true }
  }
}

/** The event_type of the metadata keywatch's Slack messages carry (with the alert id). */
const SLACK_ALERT_EVENT = 'keywatch_alert'

/**
 * Slack errors about one message that no retry changes (a malformed or oversized message, a message that is gone or
 * too old to edit). Errors about the channel or the token (channel_not_found, not_in_channel, invalid_auth) are not
 * here: every alert to that channel waits, in order, until someone fixes the app or the route.
 */
const SLACK_REFUSES_THIS_MESSAGE = new Set(['invalid_blocks', 'invalid_blocks_format', 'msg_too_long', 'no_text', 'invalid_arguments', 'too_many_attachments', 'message_not_found', 'cant_update_message', 'edit_window_closed'])

interface MinuteState {
  minute: number
  sent: number
  overflow: { row: OutboxAlert; title: string }[]
}

function titleOf(row: OutboxAlert): string {
  const p = JSON.parse(row.payload) as Payload
  return p.title ?? p.mail?.subject ?? row.finding_id
}

function msOf(chDateTime: string): number {
  return Date.parse(chDateTime.replace(' ', 'T') + 'Z')
}
