// Alerts: findings routed to Slack channels and mail recipients, one alert per finding per 6 hours unless its
// severity rises, at most N a minute per destination (the overflow summed up in one message), through the outbox.
// A finding that changes (acknowledged, revoked, resolved) updates its Slack messages. Digests of key hygiene go to
// each account's recipients daily or weekly.
import { WebClient, type WebAPICallError } from '@slack/web-api'
import cron, { type ScheduledTask } from 'node-cron'
import nodemailer, { type Transporter } from 'nodemailer'
import { listKeys } from '../api/keys.ts'
import type { ClickHouseClient } from '../clickhouse/client.ts'
import { SEVERITY_RANK, type Severity } from '../detectors/detector.ts'
import type { Finding, Recorded } from '../detectors/findings.ts'
import { digestMail, findingMail, slackMessage, slackSummary, type ActionNote, type Mail } from './messages.ts'
import { Outbox, type Delivery, type OutboxAlert, type OutboxLogger } from './outbox.ts'
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
}

interface Payload {
  slack?: { text: string; blocks: object[] }
  mail?: Mail
  /** For an update: which finding's messages to replace. */
  update_of?: string
}

export class AlertService {
  readonly outbox: Outbox
  private readonly slack?: WebClient
  private readonly mailer?: Transporter
  /** Posted Slack messages per finding: channel -> ts (updated in place when the finding changes). */
  private readonly posted = new Map<string, Map<string, string>>()
  /** Per destination, the alerts of the current minute and what spilled over. */
  private readonly minute = new Map<string, { minute: number; sent: number; overflow: string[] }>()
  private readonly summaryTimers = new Set<NodeJS.Timeout>()
  private digestTasks: ScheduledTask[] = []

  constructor(
    private readonly client: ClickHouseClient,
    private readonly config: AlertsConfig,
    private readonly log: AlertsLogger,
    private readonly now: () => number = Date.now,
  ) {
    if (config.slack) {
      // The outbox owns retries (in order, across restarts): the client must not retry or queue behind a 429 itself.
      this.slack = new WebClient(config.slack.token, { slackApiUrl: config.slack.apiUrl, retryConfig: { retries: 0 }, rejectRateLimitedCalls: true, timeout: 10_000 })
    }
    if (config.smtp) this.mailer = nodemailer.createTransport(config.smtp.url)
    this.outbox = new Outbox(client, { slack: (a) => this.sendSlack(a), email: (a) => this.sendMail(a), log: (a) => this.sendLog(a) }, log, now)
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
  }

  async stop(): Promise<void> {
    await this.outbox.stop()
    for (const t of this.summaryTimers) clearTimeout(t)
    for (const t of this.digestTasks) await t.stop()
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
    const out: Parameters<Outbox['enqueue']>[0] = []
    for (const { finding, action } of wanted) {
      for (const d of destinationsFor(this.config.routes, finding, { slack: Boolean(this.slack), email: Boolean(this.mailer) })) {
        // One alert per finding and destination per dedup window, unless the severity rose since the last one.
        const last = earlier.filter((a) => a.finding_id === finding.finding_id && a.channel === d.channel && a.destination === d.destination && a.kind === 'finding').at(-1)
        if (last && msOf(last.created_at) > since && SEVERITY_RANK[finding.severity] <= SEVERITY_RANK[last.severity as Severity]) continue
        if (!this.withinCap(`${d.channel}:${d.destination}`, finding.title)) continue
        out.push({ channel: d.channel, destination: d.destination, kind: 'finding', finding_id: finding.finding_id, severity: finding.severity, payload: JSON.stringify(this.payload(d.channel, finding, action)) })
      }
    }
    return this.outbox.enqueue(out)
  }

  /** A finding changed (acknowledged, suppressed, resolved, or its key was revoked): its Slack messages are updated. */
  async onFindingChanged(finding: Finding, action?: ActionNote): Promise<OutboxAlert[]> {
    if (!this.slack) return []
    const posted = (await this.outbox.forFindings([finding.finding_id])).filter((a) => a.channel === 'slack' && a.kind === 'finding')
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

  /** Builds and queues one account's digest to the given recipients. */
  async sendDigest(accountId: string, recipients: string[], period: 'daily' | 'weekly'): Promise<OutboxAlert[]> {
    const base = { account: accountId, limit: 10_000, offset: 0 }
    const [stale, overdue, dueSoon] = await Promise.all([
      listKeys(this.client, { ...base, stale: true }),
      listKeys(this.client, { ...base, overdue: true }),
      listKeys(this.client, { ...base, due_soon: true }),
    ])
    const mail = digestMail({ account_id: accountId, stale: stale.keys, overdue: overdue.keys, dueSoon: dueSoon.keys }, period, this.config.publicUrl)
    const channel = this.mailer ? ('email' as const) : ('log' as const)
    return this.outbox.enqueue([{ channel, destination: channel === 'email' ? recipients.join(',') : 'digests', kind: 'digest', finding_id: '', severity: 'info', payload: JSON.stringify({ mail } satisfies Payload) }])
  }

  /** Daily digests at 08:00 UTC, weekly ones on Mondays; `*` sends one per account that has keys. */
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
      const accounts = entry.account === '*' ? (await listKeys(this.client, { limit: 10_000, offset: 0 })).keys.map((k) => k.account_id) : [entry.account]
      for (const account of new Set(accounts)) await this.sendDigest(account, entry.email, period)
    }
  }

  private payload(channel: OutboxAlert['channel'], f: Finding, action: ActionNote | undefined): Payload {
    if (channel === 'email') return { mail: findingMail(f, action, this.config.publicUrl) }
    return { slack: slackMessage(f, action, this.config.publicUrl) }
  }

  /** The per-destination cap: past it, a finding is counted into the minute's summary instead of sent. */
  private withinCap(destination: string, title: string): boolean {
    const minute = Math.floor(this.now() / 60_000)
    let m = this.minute.get(destination)
    if (!m || m.minute !== minute) this.minute.set(destination, (m = { minute, sent: 0, overflow: [] }))
    if (m.sent < this.config.maxPerMinute) {
      m.sent++
      return true
    }
    if (m.overflow.length === 0) {
      const state = m
      const t = setTimeout(() => {
        this.summaryTimers.delete(t)
        void this.sendSummary(destination, state).catch((err) => this.log.error({ err: String(err) }, 'could not queue the alert summary'))
      }, (minute + 1) * 60_000 - this.now())
      this.summaryTimers.add(t)
    }
    m.overflow.push(title)
    return false
  }

  /** Sends the held-back count now (tests and shutdown use it; the timer does at the end of the minute). */
  async flushSummaries(): Promise<void> {
    for (const [destination, state] of this.minute) if (state.overflow.length) await this.sendSummary(destination, state)
  }

  private async sendSummary(destination: string, state: { minute: number; overflow: string[] }): Promise<void> {
    if (!state.overflow.length) return
    const titles = state.overflow.splice(0)
    const [channel, ...rest] = destination.split(':')
    const at = new Date(state.minute * 60_000).toISOString().slice(11, 16)
    const summary = slackSummary(rest.join(':'), titles.length, titles, at)
    const payload: Payload = channel === 'email' ? { mail: { subject: `[keywatch] ${summary.text}`, text: `${summary.text}\n\n${titles.join('\n')}`, html: `<p>${summary.text}</p>` } } : { slack: summary }
    await this.outbox.enqueue([{ channel: channel as OutboxAlert['channel'], destination: rest.join(':'), kind: 'summary', finding_id: '', severity: 'info', payload: JSON.stringify(payload) }])
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
      const answer = await this.slack.chat.postMessage({ channel: alert.destination, text: payload.slack!.text, blocks: payload.slack!.blocks as never, unfurl_links: false })
      return { ok: true, slack_ts: answer.ts }
    } catch (err) {
      const e = err as WebAPICallError & { retryAfter?: number; statusCode?: number }
      return { ok: false, error: `slack: ${e.code ?? ''} ${e.message}`.trim(), retryAfterMs: typeof e.retryAfter === 'number' ? e.retryAfter * 1000 : undefined }
    }
  }

  private async sendMail(alert: OutboxAlert): Promise<Delivery> {
    if (!this.mailer || !this.config.smtp) return { ok: false, error: 'SMTP is not configured' }
    const { mail } = JSON.parse(alert.payload) as Payload
    try {
      await this.mailer.sendMail({ from: this.config.smtp.from, to: alert.destination.split(','), subject: mail!.subject, text: mail!.text, html: mail!.html })
      return { ok: true }
    } catch (err) {
      return { ok: false, error: `smtp: ${(err as Error).message}` }
    }
  }

  /** No Slack or mail configured: the alert goes to the log, so it is never silently dropped. */
  private async sendLog(alert: OutboxAlert): Promise<Delivery> {
    const payload = JSON.parse(alert.payload) as Payload
    this.log.warn({ alert: alert.alert_id, kind: alert.kind, finding: alert.finding_id, severity: alert.severity, text: payload.slack?.text ?? payload.mail?.subject }, 'alert')
    return { ok: true }
  }
}

function msOf(chDateTime: string): number {
  return Date.parse(chDateTime.replace(' ', 'T') + 'Z')
}
