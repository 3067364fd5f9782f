// Owners are told about lifecycle changes of their live keys (seed 004): a route subscribes an account's key changes
// to a Slack channel and mail recipients. Real SMTP server and Slack stand-in on loopback. Rotated (with the old
// key's deadline), rolled back and reset are told once each, a redelivered event is not told again, a test key and
// another account are not told, and no secret or secret hash is ever in what is sent.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Runtime } from '../app/runtime.ts'
import { ago, lifecycle, sha256 } from '../detectors/fixtures/events.ts'
import { waitFor } from './kafka/admin.ts'
import { openTestRuntime, tempDir } from './helpers.ts'
import { startSlackStandIn, type SlackStandIn } from './stand-ins/slack.ts'
import { startSmtpStandIn, type SmtpStandIn } from './stand-ins/smtp.ts'

let rt: Runtime
let slack: SlackStandIn
let smtp: SmtpStandIn
const now = new Date().toISOString()
const live = { account_id: 'acct_Owner0001', key_id: 'key_OwnerLive1', key_prefix: 'sk_live_Own1', key_kind: 'secret' as const, mode: 'live' as const }
const test = { account_id: 'acct_Owner0001', key_id: 'key_OwnerTest1', key_prefix: 'sk_test_Own2', key_kind: 'secret' as const, mode: 'test' as const }
const stranger = { account_id: 'acct_Stranger1', key_id: 'key_Stranger01', key_prefix: 'sk_live_Str1', key_kind: 'secret' as const, mode: 'live' as const }
const SECRET_HASH = sha256('sk_live_Own1_the_secret')

async function ingest(events: object[]): Promise<void> {
  const { rejections } = await rt.pipeline.ingest(events.map((e) => ({ raw: Buffer.from(JSON.stringify(e)), origin: { source: 'file' as const } })))
  expect(rejections.map((r) => r.detail)).toEqual([])
}

const told = () => [...slack.calls.filter((c) => c.method === 'chat.postMessage' && c.fields.channel === 'C0OWNERS').map((c) => c.fields.text!), ...smtp.mails.map((m) => m.text ?? '')]

beforeAll(async () => {
  ;[slack, smtp] = await Promise.all([startSlackStandIn(), startSmtpStandIn()])
  const dir = tempDir()
  const routes = join(dir, 'routes.json')
  writeFileSync(routes, JSON.stringify({ key_changes: [{ account: live.account_id, slack: 'C0OWNERS', email: ['owner@merchant.example'] }] }))
  rt = await openTestRuntime({ KEYWATCH_DATA_DIR: join(dir, 'data'), ALERT_ROUTES_FILE: routes, SLACK_BOT_TOKEN: 'xoxb-test', SLACK_API_URL: slack.apiUrl, SMTP_URL: smtp.url, ALERT_MAIL_FROM: 'keywatch@platform.example', KEYWATCH_PUBLIC_URL: 'https://keywatch.example' })
  await rt.startServices()
  await ingest([lifecycle(live, 'created', ago(now, { days: 40 }), { secret_sha256: SECRET_HASH }), lifecycle(test, 'created', ago(now, { days: 40 })), lifecycle(stranger, 'created', ago(now, { days: 40 }))])
}, 60_000)

afterAll(async () => {
  await rt?.close()
  await slack?.close()
  await smtp?.close()
})

describe('key-change notifications', () => {
  it('tells the owners of a live key it was rotated, with the old key deadline, once, by Slack and mail', async () => {
    const deadline = new Date(Date.now() + 7 * 86_400_000).toISOString()
    const rotated = lifecycle(live, 'rotated', ago(now, { minutes: 5 }), { replacement_key_id: 'key_OwnerLive2', old_key_expires_at: deadline })
    await ingest([rotated, lifecycle(test, 'rotated', ago(now, { minutes: 5 }), { replacement_key_id: 'key_OwnerTest2', old_key_expires_at: deadline }), lifecycle(stranger, 'revoked', ago(now, { minutes: 5 }))])
    await waitFor('the Slack message and the mail', async () => told().length === 2)
    for (const text of told()) {
      expect(text).toContain('sk_live_Own1')
      expect(text).toContain('was rotated')
      expect(text).toContain('key_OwnerLive2')
      expect(text).toContain(deadline.replace('T', ' ').replace('Z', '').slice(0, 19))
    }
    expect(JSON.stringify(smtp.mails[0]!.to)).toContain('owner@merchant.example')
    // The same event delivered again is not told again.
    await ingest([rotated])
    await new Promise((r) => setTimeout(r, 1_500))
    expect(told()).toHaveLength(2)
  })

  it('tells a rollback and a reset, and never a secret or its hash', async () => {
    await ingest([lifecycle(live, 'rolled_back', ago(now, { minutes: 3 }), { replacement_key_id: 'key_OwnerLive2' }), lifecycle(live, 'reset', ago(now, { minutes: 2 }), { secret_sha256: sha256('sk_live_Own1_new_secret') })])
    await waitFor('four more notifications', async () => told().length === 6)
    expect(told().some((t) => t.includes('rolled back'))).toBe(true)
    expect(told().some((t) => t.includes('had its secret reset'))).toBe(true)
    const everything = JSON.stringify(slack.calls) + smtp.mails.map((m) => `${m.subject}${m.text}${m.html}`).join('')
    expect(everything).not.toContain(SECRET_HASH)
    expect(everything).not.toContain(sha256('sk_live_Own1_new_secret'))
    expect(everything).not.toContain('sk_test_Own2')
    expect(everything).not.toContain('Str1')
  })
})
