// Alert delivery edge cases against real peers on loopback (the Slack Web API stand-in, a real SMTP server) and the
// real engine: what is held over the per-minute cap survives a stop and a crash; a message Slack refuses for good,
// or a recipient the mail server refuses, is set aside (logged) instead of blocking everything behind it; text from
// outside cannot ping a channel or break Block Kit; two runs reporting a finding at once alert once; `*` digests go
// to the accounts with something to report, never with a secret.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AlertService, type AlertsConfig } from '../alerts/service.ts'
import type { Runtime } from '../app/runtime.ts'
import { queryRows } from '../clickhouse/client.ts'
import { ago, lifecycle, sha256, usage } from '../detectors/fixtures/events.ts'
import type { FindingStore, Recorded } from '../detectors/findings.ts'
import { waitFor } from './kafka/admin.ts'
import { openTestRuntime, tempDir } from './helpers.ts'
import { startSlackStandIn, type SlackStandIn } from './stand-ins/slack.ts'
import { startSmtpStandIn, type SmtpStandIn } from './stand-ins/smtp.ts'

let slack: SlackStandIn
let smtp: SmtpStandIn
let rt: Runtime
const services: AlertService[] = []

function baseConfig(channel: string): AlertsConfig {
  return {
    routes: { routes: [{ severities: [], detectors: [], accounts: [], slack: channel, email: [] }], digests: [] },
    slack: { token: 'xoxb-test-token', apiUrl: slack.apiUrl },
    smtp: { url: smtp.url, from: 'keywatch <keywatch@test.example>' },
    publicUrl: 'https://keywatch.example',
    dedupHours: 6,
    maxPerMinute: 10,
  }
}

/** A service of its own on the shared engine: its channel, cap and clock. */
async function service(channel: string, over: Partial<AlertsConfig> = {}, now?: () => number, log = captureLog()): Promise<AlertService> {
  const config: AlertsConfig = {
    routes: { routes: [{ severities: [], detectors: [], accounts: [], slack: channel, email: [] }], digests: [] },
    slack: { token: 'xoxb-test-token', apiUrl: slack.apiUrl },
    smtp: { url: smtp.url, from: 'keywatch <keywatch@test.example>' },
    publicUrl: 'https://keywatch.example',
    dedupHours: 6,
    maxPerMinute: 10,
    ...over,
  }
  const s = new AlertService(rt.storage.client, config, log, now)
  services.push(s)
  await s.start()
  return s
}

function captureLog() {
  const lines: { level: string; obj: Record<string, unknown>; msg?: string }[] = []
  const at = (level: string) => (obj: object, msg?: string) => void lines.push({ level, obj: obj as Record<string, unknown>, msg })
  return { lines, info: at('info'), warn: at('warn'), error: at('error') }
}

type Draft = Omit<Parameters<FindingStore['record']>[0][number], 'dedupKey'>

function record(drafts: Draft[]): Promise<Recorded[]> {
  return rt.findings.record(drafts.map((d) => ({ ...d, dedupKey: `delivery:${randomUUID()}` })), new Date())
}

const bruteForce = (account: string, n: number) =>
  Array.from({ length: n }, (_, i) => ({ detector: 'auth.mfa_bruteforce', severity: 'high' as const, account_id: account, user_id: `usr_${i}`, title: `MFA brute force on usr_${i}`, evidence: { failures: 10 + i } }))

const postedTo = (channel: string) => slack.calls.filter((c) => c.fields.channel === channel).map((c) => c.fields.text!.replace(/ — .*/, ''))

async function outboxRows(where: string, params: Record<string, unknown>) {
  return queryRows<{ kind: string; status: string; attempts: number; last_error: string; payload: string; finding_id: string }>(
    rt.storage.client,
    `SELECT kind, status, attempts, last_error, payload, finding_id FROM (SELECT * FROM alert_outbox FINAL WHERE ${where}) ORDER BY created_at, alert_id`,
    params,
  )
}

beforeAll(async () => {
  ;[slack, smtp] = await Promise.all([startSlackStandIn(), startSmtpStandIn()])
  rt = await openTestRuntime({ KEYWATCH_DATA_DIR: tempDir() })
})

afterAll(async () => {
  for (const s of services) await s.stop().catch(() => undefined)
  await rt?.close()
  await Promise.all([slack?.close(), smtp?.close()])
})

describe('alerts held over the per-minute cap', () => {
  it('are summed up when the service stops before the minute is over, and delivered by the next start', async () => {
    slack.down = true
    const first = await service('C0STOP', { maxPerMinute: 1 })
    try {
      await first.onFindings(await record(bruteForce('acct_Stop0001', 3)))
      await first.stop() // Slack is down and the minute is not over: nothing has gone out yet
    } finally {
      slack.down = false
    }
    const rows = await outboxRows('destination = {d:String}', { d: 'C0STOP' })
    expect(rows.map((r) => [r.kind, r.status])).toEqual([
      ['finding', 'pending'],
      ['finding', 'summarized'],
      ['finding', 'summarized'],
      ['summary', 'pending'],
    ])
    const second = await service('C0STOP', { maxPerMinute: 1 })
    await second.outbox.idle()
    expect(postedTo('C0STOP')).toEqual(['HIGH MFA brute force on usr_0', expect.stringMatching(/^2 more alerts for C0STOP in the minute from \d\d:\d\d UTC/)])
  })

  it('are on disk at once, so a process that dies in the minute leaves them to be summed up by the next one', async () => {
    const minute = Date.parse('2026-11-24T13:00:00.000Z') // the end of the minute is 60 s away: no summary yet
    const dying = await service('C0CRASH', { maxPerMinute: 2 }, () => minute)
    const recorded = await record(bruteForce('acct_Crash001', 5))
    await dying.onFindings(recorded)
    await dying.outbox.idle()
    expect(postedTo('C0CRASH')).toEqual(['HIGH MFA brute force on usr_0', 'HIGH MFA brute force on usr_1'])
    const held = await outboxRows("destination = 'C0CRASH' AND status = 'held'", {})
    expect(held.map((r) => r.finding_id)).toEqual(recorded.slice(2).map((r) => r.finding.finding_id))

    // The next process reads only the table (the dying one's memory is gone with it).
    const next = await service('C0CRASH', { maxPerMinute: 2 })
    await next.outbox.idle()
    const sent = slack.calls.filter((c) => c.fields.channel === 'C0CRASH')
    expect(sent.map((c) => c.fields.text)).toEqual([expect.stringContaining('usr_0'), expect.stringContaining('usr_1'), '3 more alerts for C0CRASH in the minute from 13:00 UTC (over the per-minute cap)'])
    for (const user of ['usr_2', 'usr_3', 'usr_4']) expect(JSON.stringify(sent[2]!.blocks)).toContain(`MFA brute force on ${user}`)
    expect(await outboxRows("destination = 'C0CRASH' AND status = 'held'", {})).toEqual([])
  })
})

describe('a peer refusing an alert', () => {
  it('for good (invalid_blocks): the alert is set aside and logged in full, and the ones behind it go', async () => {
    const log = captureLog()
    const s = await service('C0REFUSE', {}, undefined, log)
    slack.script.push({ status: 200, error: 'invalid_blocks' })
    const recorded = await record([
      { detector: 'key.mode_mismatch', severity: 'high', account_id: 'acct_Refuse01', key_id: 'key_Refuse001', title: 'refused by Slack', evidence: {} },
      { detector: 'key.mode_mismatch', severity: 'high', account_id: 'acct_Refuse01', key_id: 'key_Refuse002', title: 'behind the refused one', evidence: {} },
    ])
    await s.onFindings(recorded)
    await s.outbox.idle()
    expect(slack.refused.map((c) => [c.fields.text!.replace(/ — .*/, ''), c.error])).toContainEqual(['HIGH refused by Slack', 'invalid_blocks'])
    expect(postedTo('C0REFUSE')).toEqual(['HIGH behind the refused one'])
    const rows = await outboxRows('destination = {d:String}', { d: 'C0REFUSE' })
    expect(rows.map((r) => r.status)).toEqual(['failed', 'delivered'])
    expect(rows[0]!.last_error).toContain('invalid_blocks')
    const logged = log.lines.find((l) => l.level === 'error' && l.obj.finding === recorded[0]!.finding.finding_id)
    expect(String(logged?.obj.payload)).toContain('refused by Slack')
  })

  it('for a reason of the channel (channel_not_found): retried, in order, until it goes', async () => {
    const s = await service('C0NOTYET')
    slack.script.push({ status: 200, error: 'channel_not_found' })
    const recorded = await record([
      { detector: 'key.mode_mismatch', severity: 'high', account_id: 'acct_NotYet01', key_id: 'key_NotYet001', title: 'first to a missing channel', evidence: {} },
      { detector: 'key.mode_mismatch', severity: 'high', account_id: 'acct_NotYet01', key_id: 'key_NotYet002', title: 'second to a missing channel', evidence: {} },
    ])
    await s.onFindings(recorded)
    await s.outbox.idle()
    expect(postedTo('C0NOTYET')).toEqual(['HIGH first to a missing channel', 'HIGH second to a missing channel'])
    expect((await outboxRows('destination = {d:String}', { d: 'C0NOTYET' })).map((r) => [r.status, r.attempts])).toEqual([
      ['delivered', 2],
      ['delivered', 1],
    ])
  })

  it('a recipient the mail server refuses for good: that mail is set aside, the others arrive', async () => {
    smtp.refuse.add('gone@merchant.example')
    const log = captureLog()
    const routes = { routes: [{ severities: [], detectors: [], accounts: [], email: ['gone@merchant.example'] }, { severities: [], detectors: [], accounts: [], email: ['oncall@merchant.example'] }], digests: [] }
    const s = await service('unused', { routes, slack: undefined }, undefined, log)
    const titles = ['critical one for mail', 'critical two for mail']
    const recorded = await record(titles.map((title, i) => ({ detector: 'leak.public_report', severity: 'critical' as const, account_id: 'acct_Mail0001', key_id: `key_Mail000${i}`, title, evidence: {} })))
    await s.onFindings(recorded)
    await s.outbox.idle()
    const arrived = smtp.mails.filter((m) => titles.some((t) => m.subject?.includes(t)))
    expect(arrived.map((m) => [m.subject, (m.to as { text: string }).text])).toEqual(titles.map((t) => [`[keywatch critical] ${t}`, 'oncall@merchant.example']))
    const refused = await outboxRows('destination = {d:String}', { d: 'gone@merchant.example' })
    expect(refused.map((r) => [r.status, r.attempts])).toEqual([
      ['failed', 1],
      ['failed', 1],
    ])
    expect(refused[0]!.last_error).toContain('550')
    expect(log.lines.filter((l) => l.level === 'error' && l.obj.destination === 'gone@merchant.example')).toHaveLength(2)
  })
})

describe('a Slack message', () => {
  it('shows text from outside as text: no channel ping, no disguised link, and cut to what Block Kit takes', async () => {
    const s = await service('C0ESCAPE')
    const [f] = await record([
      {
        detector: 'leak.public_report',
        severity: 'high',
        account_id: 'acct_Escape01',
        key_id: 'key_Escape001',
        title: 'found in public <!here>',
        evidence: { url: '<!channel> see <https://evil.example|the fix>', user_agent: 'A'.repeat(5_000), source: 'Tom & Jerry' },
      },
    ])
    await s.onFindings([f!])
    await s.outbox.idle(10_000)
    const [call] = slack.calls.filter((c) => c.fields.channel === 'C0ESCAPE')
    expect(call, `refused: ${JSON.stringify(slack.refused.map((r) => r.error))}`).toBeDefined()
    // A header is plain_text, which Slack shows as typed; everything else is mrkdwn, which Slack interprets.
    const seen = `${call!.fields.text}${JSON.stringify((call!.blocks as { type: string }[]).filter((b) => b.type !== 'header'))}`
    for (const control of ['<!here>', '<!channel>', '<https://evil.example']) expect(seen).not.toContain(control)
    expect(seen).toContain('&lt;!channel&gt; see &lt;https://evil.example|the fix&gt;')
    expect(seen).toContain('Tom &amp; Jerry')
    expect(seen).toContain(`${'A'.repeat(199)}…`)
  })

  it('goes once when two runs report the same finding at the same moment', async () => {
    const s = await service('C0TWICE')
    const draft = { detector: 'abuse.ratelimit_spike', severity: 'high' as const, account_id: 'acct_Twice001', key_id: 'key_Twice001', title: 'reported by two runs', evidence: {}, dedupKey: `twice:${randomUUID()}` }
    await rt.findings.record([draft], new Date())
    const again = await rt.findings.record([draft], new Date()) // fired before: its alerts are looked up
    expect(again[0]!.change).toBe('updated')
    await Promise.all([s.onFindings(again), s.onFindings(again)])
    await s.outbox.idle()
    expect(postedTo('C0TWICE')).toEqual(['HIGH reported by two runs'])
  })
})

describe('digests for every account (*)', () => {
  it('go to each account with stale or overdue keys, about that account only, never with a secret', async () => {
    const now = new Date().toISOString()
    const key = (account: string, id: string) => ({ account_id: account, key_id: `key_${id}`, key_prefix: `sk_live_${id.slice(0, 4)}`, key_kind: 'secret' as const, mode: 'live' as const })
    const pasted = `sk_live_Lbl1${randomUUID().replaceAll('-', '')}` // a secret a person pasted into a label
    const events = [
      lifecycle(key('acct_StarA001', 'StaleA01'), 'created', ago(now, { days: 120 }), { secret_sha256: sha256('a1'), label: `old cron, was ${pasted}` }),
      lifecycle(key('acct_StarB001', 'OverB001'), 'created', ago(now, { days: 95 }), { secret_sha256: sha256('b1') }),
      usage(key('acct_StarB001', 'OverB001'), ago(now, { hours: 2 })),
      lifecycle(key('acct_StarC001', 'FineC001'), 'created', ago(now, { days: 3 }), { secret_sha256: sha256('c1') }),
      usage(key('acct_StarC001', 'FineC001'), ago(now, { hours: 2 })),
    ]
    const { rejections } = await rt.pipeline.ingest(events.map((e) => ({ raw: Buffer.from(JSON.stringify(e)), origin: { source: 'file' as const } })))
    expect(rejections).toEqual([])
    const s = await service('unused')
    const before = smtp.mails.length
    await s.runDigests([{ account: '*', email: ['security@merchant.example'], every: 'daily' }], 'daily')
    await s.outbox.idle()
    const digests = smtp.mails.slice(before).filter((m) => m.subject?.includes('key hygiene'))
    expect(digests.map((m) => m.subject).sort()).toEqual([
      '[keywatch] daily key hygiene for acct_StarA001: 1 stale, 1 overdue, 0 due soon',
      '[keywatch] daily key hygiene for acct_StarB001: 0 stale, 1 overdue, 0 due soon',
    ])
    const [a, b] = [...digests].sort((x, y) => x.subject!.localeCompare(y.subject!))
    expect(a!.text).toContain('key_StaleA01')
    expect(a!.html).toContain('sk_live_Lbl1…')
    expect(`${a!.text}${a!.html}`).not.toMatch(/acct_StarB001|acct_StarC001|key_OverB001|key_FineC001/)
    expect(`${b!.text}${b!.html}`).not.toMatch(/acct_StarA001|acct_StarC001|key_StaleA01|key_FineC001/)
    const everything = JSON.stringify(slack.calls) + JSON.stringify(slack.refused) + smtp.mails.map((m) => `${m.subject}\n${m.text}\n${m.html}`).join('\n')
    expect(everything).not.toContain(pasted)
  })
})

describe('a sender that dies with an alert on the wire (issue 16)', () => {
  const rowsOf = (findingId: string) =>
    queryRows<{ alert_id: string; status: string; slack_ts: string; claimed_by: string }>(rt.storage.client, 'SELECT alert_id, status, slack_ts, claimed_by FROM alert_outbox FINAL WHERE finding_id = {f:String}', { f: findingId })

  it('Slack had it: the next sender finds it in the channel by its metadata and does not post it again', async () => {
    let release!: () => void
    const hung = new Promise<void>((r) => (release = r))
    // The first sender's post reaches Slack; Slack's answer never reaches it (it died): its row stays `sending`.
    slack.beforeAnswer = (call) => (call.fields.channel === 'C0DIED' ? hung : undefined)
    const dying = new AlertService(rt.storage.client, { ...baseConfig('C0DIED') }, captureLog(), Date.now, undefined, 'leader-a')
    await dying.start()
    const [recorded] = await record(bruteForce('acct_Died0001', 1))
    await dying.onFindings([recorded!])
    await waitFor('the post at Slack', async () => postedTo('C0DIED').length === 1 || undefined, 10_000)
    await waitFor('the row marked sending', async () => (await rowsOf(recorded!.finding.finding_id)).find((r) => r.status === 'sending'), 10_000)
    expect((await rowsOf(recorded!.finding.finding_id))[0]).toMatchObject({ status: 'sending', claimed_by: 'leader-a' })

    slack.beforeAnswer = undefined
    const log = captureLog()
    const next = await service('C0DIED', {}, undefined, log)
    await next.outbox.idle()
    const posted = slack.calls.filter((c) => c.method === 'chat.postMessage' && c.fields.channel === 'C0DIED')
    expect(posted).toHaveLength(1) // not sent twice
    expect(JSON.parse(posted[0]!.fields.metadata!)).toMatchObject({ event_type: 'keywatch_alert', event_payload: { alert_id: (await rowsOf(recorded!.finding.finding_id))[0]!.alert_id } })
    expect(slack.reads.filter((r) => r.method === 'conversations.history' && r.fields.channel === 'C0DIED').length).toBeGreaterThanOrEqual(1)
    expect((await rowsOf(recorded!.finding.finding_id))[0]).toMatchObject({ status: 'delivered', slack_ts: posted[0]!.ts })
    expect(log.lines.map((l) => l.msg)).toContain('alert found at the peer already: recorded as delivered, not sent again')
    release()
    await dying.stop()
  })

  it('Slack never got it (the request did not arrive): the next sender looks, does not find it, and posts it once', async () => {
    // A Slack that cannot be reached: the attempt's outcome is unknown, so the row stays `sending`.
    const dying = new AlertService(rt.storage.client, { ...baseConfig('C0LOST'), slack: { token: 'xoxb-test-token', apiUrl: 'http://127.0.0.1:9/api/' } }, captureLog(), Date.now, undefined, 'leader-b')
    await dying.start()
    const [recorded] = await record(bruteForce('acct_Lost0001', 1))
    await dying.onFindings([recorded!])
    await waitFor('an attempt that may have arrived', async () => (await rowsOf(recorded!.finding.finding_id)).find((r) => r.status === 'sending' && r.claimed_by === 'leader-b'), 15_000)
    await dying.stop()
    const next = await service('C0LOST')
    await next.outbox.idle()
    expect(postedTo('C0LOST')).toEqual(['HIGH MFA brute force on usr_0'])
    expect((await rowsOf(recorded!.finding.finding_id))[0]).toMatchObject({ status: 'delivered' })
  })

  it('mail: sent again by the next sender, with the same Message-ID (receivers deduplicate by it)', async () => {
    let release!: () => void
    const hung = new Promise<void>((r) => (release = r))
    const to = `died-${randomUUID().slice(0, 6)}@test.example`
    smtp.beforeAnswer = (mail) => (mail.to && JSON.stringify(mail.to).includes(to) ? hung : undefined)
    const mailRoutes = { routes: [{ severities: [], detectors: [], accounts: [], slack: '', email: [to] }], digests: [] }
    const dying = new AlertService(rt.storage.client, { ...baseConfig(''), slack: undefined, routes: mailRoutes }, captureLog(), Date.now, undefined, 'leader-c')
    await dying.start()
    const [recorded] = await record([{ ...bruteForce('acct_MailDie1', 1)[0]!, severity: 'critical' as const }]) // mail is for critical findings
    await dying.onFindings([recorded!])
    const mailsTo = () => smtp.mails.filter((m) => JSON.stringify(m.to).includes(to))
    await waitFor('the mail at the server', async () => mailsTo().length === 1 || undefined, 10_000)
    smtp.beforeAnswer = undefined
    const next = await service('', { slack: undefined, routes: mailRoutes })
    await next.outbox.idle()
    await waitFor('the mail again', async () => mailsTo().length === 2 || undefined, 10_000)
    const [row] = await rowsOf(recorded!.finding.finding_id)
    expect(new Set(mailsTo().map((m) => m.messageId))).toEqual(new Set([`<${row!.alert_id}@test.example>`]))
    release()
    await dying.stop()
  })
})
