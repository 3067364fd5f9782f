// Alerts against real peers on loopback: an HTTP server standing in for Slack's Web API (429 with Retry-After, 500,
// down) and a real SMTP server. Dedup, the throttle summary, the outbox surviving a restart with Slack down, signed
// button clicks (forged and stale refused, unmapped users refused, Acknowledge and Revoke acting), digests per
// account, and no full secret in any message or mail.
import { createHmac, randomUUID } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AlertService } from '../alerts/service.ts'
import { buildApi } from '../api/server.ts'
import { apiDepsOf, type Runtime } from '../app/runtime.ts'
import { queryRows } from '../clickhouse/client.ts'
import { startStandInKeyService, type StandInKeyService } from '../demo/key-service.ts'
import { ago, leak, lifecycle, sha256, usage } from '../detectors/fixtures/events.ts'
import type { Finding } from '../detectors/findings.ts'
import { waitFor } from './kafka/admin.ts'
import { openTestRuntime, tempDir } from './helpers.ts'
import { startSlackStandIn, type SlackStandIn } from './stand-ins/slack.ts'
import { startSmtpStandIn, type SmtpStandIn } from './stand-ins/smtp.ts'

const SIGNING_SECRET = 'slack_signing_secret_for_tests'
const KEY_SERVICE_SECRET = 'alerts_key_service_secret'
const now = new Date().toISOString()
const shop = { account_id: 'acct_Alerts001', key_id: 'key_AlertLeak1', key_prefix: 'sk_live_AlLk', key_kind: 'secret' as const, mode: 'live' as const }
const SECRET = `sk_live_AlLk${randomUUID().replaceAll('-', '')}`

let slack: SlackStandIn
let smtp: SmtpStandIn
let keys: StandInKeyService
let rt: Runtime
let api: FastifyInstance
let dataDir: string

const envFor = () => ({
  KEYWATCH_DATA_DIR: dataDir,
  SLACK_BOT_TOKEN: 'xoxb-test-token',
  SLACK_API_URL: slack.apiUrl,
  SLACK_CHANNEL: 'C0SECURITY',
  SLACK_SIGNING_SECRET: SIGNING_SECRET,
  SLACK_USER_ROLES: JSON.stringify({ U0RESPONDER: 'responder', U0VIEWER: 'viewer' }),
  SMTP_URL: smtp.url,
  ALERT_MAIL_TO: 'oncall@merchant.example',
  KEY_SERVICE_URL: keys.url,
  KEY_SERVICE_SECRET,
  KEYWATCH_PUBLIC_URL: 'https://keywatch.example',
})

async function open(): Promise<void> {
  rt = await openTestRuntime(envFor())
  await rt.startServices()
  api = await buildApi(apiDepsOf(rt))
}

async function ingest(events: object[]): Promise<void> {
  const { rejections } = await rt.pipeline.ingest(events.map((e) => ({ raw: Buffer.from(JSON.stringify(e)), origin: { source: 'file' as const } })))
  expect(rejections.map((r) => r.detail)).toEqual([])
}

/** Every byte any peer received. */
const everything = () => JSON.stringify(slack.calls) + smtp.mails.map((m) => `${m.subject}\n${m.text}\n${m.html}`).join('\n')

function click(action: 'acknowledge' | 'snooze' | 'revoke', findingId: string, user: string, opts: { secret?: string; timestamp?: number } = {}) {
  const body = `payload=${encodeURIComponent(JSON.stringify({ type: 'block_actions', user: { id: user }, actions: [{ action_id: action, value: findingId }] }))}`
  const ts = String(opts.timestamp ?? Math.floor(Date.now() / 1000))
  const signature = `v0=${createHmac('sha256', opts.secret ?? SIGNING_SECRET).update(`v0:${ts}:${body}`).digest('hex')}`
  return api.inject({ method: 'POST', url: '/v1/slack/interactions', payload: body, headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-slack-request-timestamp': ts, 'x-slack-signature': signature } })
}

beforeAll(async () => {
  ;[slack, smtp, keys] = await Promise.all([startSlackStandIn(), startSmtpStandIn(), startStandInKeyService({ secret: KEY_SERVICE_SECRET })])
  keys.keys.set(shop.key_id, { ...shop, state: 'active' })
  dataDir = tempDir()
  await open()
})

afterAll(async () => {
  await api?.close()
  await rt?.close()
  await Promise.all([slack?.close(), smtp?.close(), keys?.close()])
})

describe('a critical finding', () => {
  let leakFinding: Finding

  it('goes to Slack with the key by its prefix, the evidence and the action taken, and by mail, never with the secret', async () => {
    await ingest([lifecycle(shop, 'created', ago(now, { days: 30 }), { secret_sha256: sha256(SECRET) }), leak(shop.account_id, new Date().toISOString(), SECRET)])
    const post = await waitFor('the Slack alert', async () => slack.calls.find((c) => c.method === 'chat.postMessage' && c.fields.text!.includes('found in public')))
    expect(post.fields.channel).toBe('C0SECURITY')
    expect(post.token).toBe('Bearer xoxb-test-token')
    const blocks = JSON.stringify(post.blocks)
    expect(blocks).toContain('sk_live_AlLk')
    expect(blocks).toContain('`leak.public_report`')
    expect(blocks).toContain('acct_Alerts001')
    expect(blocks).toMatch(/Revoke requested automatically at .*: (requested|confirmed)/)
    expect(blocks).toContain('https://keywatch.example/findings/fnd_')
    const mail = await waitFor('the critical mail', async () => smtp.mails.find((m) => m.subject?.includes('found in public')))
    expect(mail.to).toMatchObject({ text: 'oncall@merchant.example' })
    expect(mail.text).toContain('leak.public_report')
    expect(mail.html).toContain('<h2>')
    leakFinding = (await rt.findings.list({ detector: 'leak.public_report', account_id: shop.account_id }))[0]!
    expect(everything()).not.toContain(SECRET)
    expect(everything()).not.toContain(sha256(SECRET)) // hashes only by their start
  })

  it('shows the confirmed revocation and offers no Revoke button once the key is revoked', async () => {
    // Over HTTP the key service confirms before the alert goes out; over Kafka an update follows. Either way the
    // latest version of the message says confirmed.
    const latest = await waitFor('the message saying confirmed', async () =>
      slack.calls.filter((c) => JSON.stringify(c.blocks ?? '').includes(leakFinding.finding_id)).findLast((c) => JSON.stringify(c.blocks).includes(': confirmed.')),
    )
    expect(JSON.stringify(latest.blocks)).not.toContain('"action_id":"revoke"')
    expect(slack.calls.filter((c) => c.method === 'chat.postMessage' && c.fields.text!.includes('found in public'))).toHaveLength(1)
  })

  it('is alerted once per 6 hours, and again when its severity rises', async () => {
    const draft = { detector: 'abuse.ratelimit_spike', account_id: shop.account_id, key_id: shop.key_id, title: `429 storm on ${shop.key_prefix}`, evidence: { rate_limited: 120 }, dedupKey: `dedup-test:${randomUUID()}` }
    const before = slack.calls.length
    const record = (severity: 'high' | 'critical') => rt.findings.record([{ ...draft, severity }], new Date())
    const alerts = rt.alerts
    await alerts.onFindings(await record('high'))
    await alerts.onFindings(await record('high'))
    await alerts.outbox.idle()
    const posted = () => slack.calls.slice(before).filter((c) => c.method === 'chat.postMessage' && c.fields.text!.includes('429 storm'))
    expect(posted()).toHaveLength(1)
    await alerts.onFindings(await record('critical'))
    await alerts.outbox.idle()
    expect(posted()).toHaveLength(2)
    expect(posted()[1]!.fields.text).toMatch(/^CRITICAL/)
  })
})

describe('the throttle', () => {
  it('sends at most N a minute to a channel and sums up the rest in one message', async () => {
    const fixed = Date.parse('2026-11-24T12:00:10Z')
    const service = new AlertService(rt.storage.client, { ...rt.config.alerts, maxPerMinute: 3 }, rt.log, () => fixed)
    await service.start()
    try {
      const findings = await rt.findings.record(
        Array.from({ length: 7 }, (_, i) => ({ detector: 'auth.mfa_bruteforce', severity: 'high' as const, account_id: 'acct_Throttle1', user_id: `usr_${i}`, title: `MFA brute force on usr_${i}`, evidence: { failures: 10 + i }, dedupKey: `throttle:${randomUUID()}` })),
        new Date(),
      )
      const before = slack.calls.length
      await service.onFindings(findings)
      await service.flushSummaries()
      await service.outbox.idle()
      const sent = slack.calls.slice(before).filter((c) => c.fields.channel === 'C0SECURITY')
      expect(sent.map((c) => c.fields.text!.replace(/ — .*/, ''))).toEqual([
        'HIGH MFA brute force on usr_0',
        'HIGH MFA brute force on usr_1',
        'HIGH MFA brute force on usr_2',
        '4 more alerts for C0SECURITY in the minute from 12:00 UTC (over the per-minute cap)',
      ])
      expect(JSON.stringify(sent[3]!.blocks)).toContain('MFA brute force on usr_6')
    } finally {
      await service.stop()
    }
  })
})

describe('the outbox', () => {
  it('honours Retry-After on a 429', async () => {
    slack.script.push({ status: 429, retryAfter: 1 })
    const started = Date.now()
    const [f] = await rt.findings.record([{ detector: 'key.mode_mismatch', severity: 'high', account_id: 'acct_Retry0001', key_id: 'key_Retry0001', title: 'live key from staging', evidence: {}, dedupKey: `retry:${randomUUID()}` }], new Date())
    await rt.alerts.onFindings([f!])
    await waitFor('the retried alert', async () => slack.calls.find((c) => c.fields.text?.includes('live key from staging')))
    expect(Date.now() - started).toBeGreaterThanOrEqual(1_000)
    // The outbox records the delivery right after Slack answers: wait for that write, not only for the call.
    const row = await waitFor('the delivered outbox row', async () => {
      const [r] = await queryRows<{ attempts: number; status: string }>(rt.storage.client, "SELECT attempts, status FROM alert_outbox FINAL WHERE finding_id = {id:String}", { id: f!.finding.finding_id })
      return r?.status === 'delivered' ? r : undefined
    })
    expect(row).toEqual({ attempts: 2, status: 'delivered' })
  })

  it('survives a restart with Slack down and delivers in order once it is back', async () => {
    slack.down = true
    const titles = ['first while down', 'second while down', 'third while down']
    for (const title of titles) {
      const recorded = await rt.findings.record([{ detector: 'key.mode_mismatch', severity: 'high', account_id: 'acct_Outage001', key_id: 'key_Outage001', title, evidence: {}, dedupKey: `outage:${randomUUID()}` }], new Date())
      await rt.alerts.onFindings(recorded)
    }
    await waitFor('a failed attempt', async () => (await queryRows<{ n: number }>(rt.storage.client, "SELECT count() AS n FROM alert_outbox FINAL WHERE status = 'pending' AND attempts > 0")).at(0)?.n)
    await api.close()
    await rt.close() // the process goes away with three alerts undelivered
    slack.down = false
    const before = slack.calls.length
    await open() // a new process on the same data: it picks them up
    await waitFor('the three alerts', async () => slack.calls.slice(before).filter((c) => c.fields.text?.includes('while down')).length === 3, 30_000)
    expect(slack.calls.slice(before).filter((c) => c.fields.text?.includes('while down')).map((c) => c.fields.text!.replace(/^HIGH | — .*$/g, ''))).toEqual(titles)
  })
})

describe('Slack buttons', () => {
  let finding: Finding
  beforeAll(async () => {
    finding = (await rt.findings.record([{ detector: 'key.rotation_stalled', severity: 'high', account_id: shop.account_id, key_id: 'key_Buttons01', title: 'rotation stalled', evidence: {}, dedupKey: `buttons:${randomUUID()}` }], new Date()))[0]!.finding
    await rt.alerts.onFindings([{ finding: finding!, change: 'new', alert: true }])
    await rt.alerts.outbox.idle()
  })

  it('refuse a forged or stale signature and change nothing', async () => {
    expect((await click('acknowledge', finding.finding_id, 'U0RESPONDER', { secret: 'not-the-signing-secret!!' })).statusCode).toBe(401)
    expect((await click('acknowledge', finding.finding_id, 'U0RESPONDER', { timestamp: Math.floor(Date.now() / 1000) - 600 })).statusCode).toBe(401)
    expect((await rt.findings.list({ finding_id: finding.finding_id }))[0]!.status).toBe('open')
  })

  it('refuse a user who is not mapped to a role that may act, and record it', async () => {
    const res = await click('acknowledge', finding.finding_id, 'U0VIEWER')
    expect(res.statusCode).toBe(200)
    expect(res.json().text).toContain('not mapped')
    expect((await click('acknowledge', finding.finding_id, 'U0STRANGER')).json().text).toContain('not mapped')
    expect((await rt.findings.list({ finding_id: finding.finding_id }))[0]!.status).toBe('open')
    const denied = await queryRows<{ actor: string }>(rt.storage.client, "SELECT actor FROM audit_trail WHERE action = 'slack.acknowledge' AND outcome = 'denied' ORDER BY seq")
    expect(denied.map((d) => d.actor)).toEqual(['slack:U0VIEWER', 'slack:U0STRANGER'])
  })

  it('Acknowledge changes the finding, updates the message and lands in the audit trail', async () => {
    const before = slack.calls.length
    expect((await click('acknowledge', finding.finding_id, 'U0RESPONDER')).statusCode).toBe(200)
    expect((await rt.findings.list({ finding_id: finding.finding_id }))[0]).toMatchObject({ status: 'acknowledged', status_changed_by: 'slack:U0RESPONDER' })
    const update = await waitFor('the updated message', async () => slack.calls.slice(before).find((c) => c.method === 'chat.update'))
    expect(JSON.stringify(update.blocks)).toContain('acknowledged by slack:U0RESPONDER')
    const [record] = await queryRows<{ outcome: string }>(rt.storage.client, "SELECT outcome FROM audit_trail WHERE action = 'slack.acknowledge' AND actor = 'slack:U0RESPONDER'")
    expect(record!.outcome).toBe('ok')
  })

  it('Revoke reaches the response engine and the key service', async () => {
    const key = { account_id: shop.account_id, key_id: 'key_SlackRvk01', key_prefix: 'sk_live_SlRv', key_kind: 'secret' as const, mode: 'live' as const }
    keys.keys.set(key.key_id, { ...key, state: 'active' })
    await ingest([lifecycle(key, 'created', ago(now, { days: 10 }), { secret_sha256: sha256('slack-revoke') }), usage(key, ago(now, { minutes: 1 }))])
    const [leakFinding] = (await rt.findings.record([{ detector: 'leak.public_report', severity: 'critical', account_id: key.account_id, key_id: key.key_id, title: 'sk_live_SlRv found in public', evidence: { key_prefix: key.key_prefix }, dedupKey: `slack-revoke:${randomUUID()}` }], new Date())).map((r) => r.finding)
    const res = await click('revoke', leakFinding!.finding_id, 'U0RESPONDER')
    expect(res.statusCode).toBe(200)
    await waitFor('the revoke at the key service', async () => keys.calls.find((c) => c.key_id === key.key_id && c.command === 'revoke'))
    const [action] = await rt.actions.list({ key_id: key.key_id })
    expect(action).toMatchObject({ requested_by: 'slack:U0RESPONDER', incident: true, finding_id: leakFinding!.finding_id })
  })
})

describe('digests', () => {
  it("list an account's stale, overdue and due-soon keys, and nothing of another account's", async () => {
    const mine = (name: string) => ({ account_id: 'acct_Digest001', key_id: `key_${name}`, key_prefix: `sk_live_${name.slice(0, 4)}`, key_kind: 'secret' as const, mode: 'live' as const })
    const theirs = { account_id: 'acct_Digest002', key_id: 'key_TheirStale', key_prefix: 'sk_live_Thei', key_kind: 'secret' as const, mode: 'live' as const }
    await ingest([
      lifecycle(mine('StaleKey'), 'created', ago(now, { days: 200 }), { secret_sha256: sha256('d1'), label: 'old-cron' }),
      lifecycle(mine('OverKey1'), 'created', ago(now, { days: 100 }), { secret_sha256: sha256('d2') }),
      usage(mine('OverKey1'), ago(now, { hours: 1 })),
      lifecycle(mine('SoonKey1'), 'created', ago(now, { days: 80 }), { secret_sha256: sha256('d3') }),
      usage(mine('SoonKey1'), ago(now, { hours: 1 })),
      lifecycle(mine('FineKey1'), 'created', ago(now, { days: 5 }), { secret_sha256: sha256('d4') }),
      usage(mine('FineKey1'), ago(now, { hours: 1 })),
      lifecycle(theirs, 'created', ago(now, { days: 300 }), { secret_sha256: sha256('d5') }),
    ])
    await rt.alerts.sendDigest('acct_Digest001', ['owner@digest.example'], 'weekly')
    const mail = await waitFor('the digest', async () => smtp.mails.find((m) => m.subject?.includes('acct_Digest001')))
    expect(mail.subject).toBe('[keywatch] weekly key hygiene for acct_Digest001: 1 stale, 2 overdue, 1 due soon')
    expect(mail.text).toContain('key_StaleKey')
    expect(mail.text).toContain('old-cron')
    expect(mail.text).toContain('key_OverKey1')
    expect(mail.text).toContain('key_SoonKey1')
    expect(mail.text).not.toContain('key_FineKey1')
    expect(`${mail.text}${mail.html}`).not.toContain('acct_Digest002')
    expect(`${mail.text}${mail.html}`).not.toContain('key_TheirStale')
    expect(mail.html).toContain('<table>')
  })
})
