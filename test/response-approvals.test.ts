// Response that never harms and never stalls, on the real engine against the stand-in key service and a Slack
// stand-in on loopback: a leak report dated 30 days ago still revokes; a publishable key found in public is a low
// finding and nothing is revoked; an automatic action a guard rail holds back waits for approval (Slack has Approve
// and Reject), is approved through the API or a Slack click and then confirmed, rejected, or expires; a policy rule
// can ask for approval up front.
import { createHmac, randomUUID } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildApi } from '../api/server.ts'
import { apiDepsOf, type Runtime } from '../app/runtime.ts'
import { lifecycleEventFor, startStandInKeyService, type StandInKeyService } from '../demo/key-service.ts'
import { ago, leak, lifecycle, sha256 } from '../detectors/fixtures/events.ts'
import type { Action } from '../response/actions.ts'
import { waitFor } from './kafka/admin.ts'
import { bearer, openTestRuntime, tempDir } from './helpers.ts'
import { startSlackStandIn, type SlackStandIn } from './stand-ins/slack.ts'

const SERVICE_SECRET = 'approvals_key_service_secret'
const SIGNING_SECRET = 'approvals_slack_signing_secret'
let rt: Runtime
let api: FastifyInstance
let service: StandInKeyService
let slack: SlackStandIn
let responder: { authorization: string }
let viewer: { authorization: string }
let ingester: { authorization: string }

interface TestKey {
  account_id: string
  key_id: string
  key_prefix: string
  key_kind: 'secret' | 'publishable' | 'restricted'
  mode: 'live' | 'test'
  secret: string
}

function newKey(account: string, kind: TestKey['key_kind'] = 'secret'): TestKey {
  const id = randomUUID().replaceAll('-', '').slice(0, 12)
  const prefix = `${kind === 'secret' ? 'sk' : kind === 'publishable' ? 'pk' : 'rk'}_live_${id.slice(0, 4)}`
  const key: TestKey = { account_id: `acct_${account}`, key_id: `key_${id}`, key_prefix: prefix, key_kind: kind, mode: 'live', secret: `${prefix}${randomUUID().replaceAll('-', '')}` }
  service.keys.set(key.key_id, { account_id: key.account_id, key_prefix: prefix, key_kind: kind, mode: 'live', state: 'active' })
  return key
}

async function ingest(events: object[]): Promise<void> {
  const { rejections } = await rt.pipeline.ingest(events.map((e) => ({ raw: Buffer.from(JSON.stringify(e)), origin: { source: 'file' as const } })))
  expect(rejections.map((r) => r.detail)).toEqual([])
}

async function createKeys(keys: TestKey[]): Promise<void> {
  const now = new Date().toISOString()
  await ingest(keys.map((k) => lifecycle(k, 'created', ago(now, { days: 60 }), { secret_sha256: sha256(k.secret) })))
}

const report = (k: TestKey, occurredAt = new Date().toISOString()) =>
  api.inject({ method: 'POST', url: '/v1/leaks', headers: { 'content-type': 'application/json', ...ingester }, payload: leak(k.account_id, occurredAt, k.secret) })
const callsFor = (key: TestKey) => service.calls.filter((c) => c.key_id === key.key_id)
const actionOf = (key: TestKey, status: Action['status']) =>
  waitFor(`a ${status} action on ${key.key_prefix}`, async () => (await rt.actions.list({ key_id: key.key_id })).find((a) => a.status === status), 20_000)

/** Three keys leaked in one account: the policy allows one automatic action an hour there, so two wait for approval. */
async function heldActions(account: string): Promise<{ keys: TestKey[]; held: Action[] }> {
  const keys = [newKey(account), newKey(account), newKey(account)]
  await createKeys(keys)
  await ingest(keys.map((k) => leak(k.account_id, new Date().toISOString(), k.secret)))
  const held = await waitFor('two actions awaiting approval', async () => {
    const all = await rt.actions.list({ account_id: `acct_${account}` })
    const waiting = all.filter((a) => a.status === 'awaiting_approval')
    return all.length === 3 && waiting.length === 2 && waiting
  }, 20_000)
  return { keys, held }
}

function click(action: 'approve' | 'reject', actionId: string, user: string) {
  const body = `payload=${encodeURIComponent(JSON.stringify({ type: 'block_actions', user: { id: user }, actions: [{ action_id: action, value: actionId }] }))}`
  const ts = String(Math.floor(Date.now() / 1000))
  const signature = `v0=${createHmac('sha256', SIGNING_SECRET).update(`v0:${ts}:${body}`).digest('hex')}`
  return api.inject({ method: 'POST', url: '/v1/slack/interactions', payload: body, headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-slack-request-timestamp': ts, 'x-slack-signature': signature } })
}

/** The Slack messages posted about an approval request, with their buttons. */
const approvalMessages = (actionId: string) =>
  slack.calls.filter((c) => c.method === 'chat.postMessage' && JSON.stringify(c.blocks ?? []).includes(`"value":"${actionId}"`))

beforeAll(async () => {
  ;[slack, service] = await Promise.all([
    startSlackStandIn(),
    startStandInKeyService({
      secret: SERVICE_SECRET,
      onApplied: (applied) => ingest([lifecycleEventFor(applied, randomUUID(), applied.command === 'reset' ? sha256(randomUUID()) : undefined)]),
    }),
  ])
  const dir = tempDir()
  const policyFile = join(dir, 'policy.json')
  writeFileSync(
    policyFile,
    JSON.stringify({
      rules: [
        { name: 'approve-restricted-keys', detectors: ['leak.public_report'], key_kinds: ['restricted'], action: 'revoke', approve: true },
        { name: 'revoke-live-secret-keys', detectors: ['leak.public_report'], key_kinds: ['secret'], modes: ['live'], action: 'revoke' },
        { name: 'alert-publishable', detectors: ['leak.public_report'], key_kinds: ['publishable'], action: 'alert' },
      ],
      guard_rails: { max_per_account_per_hour: 1, max_per_hour: 100 },
      approvals: { realert_minutes: 15, expire_after_minutes: 60 },
    }),
  )
  rt = await openTestRuntime({
    KEYWATCH_DATA_DIR: join(dir, 'data'),
    // These tests are about approvals; the step-up an approval needs over the API is test/step-up.test.ts's.
    STEP_UP: 'off',
    KEY_SERVICE_URL: service.url,
    KEY_SERVICE_SECRET: SERVICE_SECRET,
    RESPONSE_POLICY_FILE: policyFile,
    SLACK_BOT_TOKEN: 'xoxb-test-token',
    SLACK_API_URL: slack.apiUrl,
    SLACK_CHANNEL: 'C0SECURITY',
    SLACK_SIGNING_SECRET: SIGNING_SECRET,
    SLACK_USER_ROLES: JSON.stringify({ U0RESPONDER: 'responder', U0VIEWER: 'viewer' }),
    KEYWATCH_PUBLIC_URL: 'https://keywatch.example',
    // Every message of these tests is looked at: none summed up by the per-minute cap.
    ALERT_CHANNEL_MAX_PER_MINUTE: '1000',
  })
  await rt.startServices()
  api = await buildApi(apiDepsOf(rt))
  responder = await bearer(rt, 'responder', 'usr_Approver1')
  viewer = await bearer(rt, 'viewer')
  ingester = await bearer(rt, 'ingest')
}, 60_000)

afterAll(async () => {
  await api?.close()
  await rt?.close()
  await service?.close()
  await slack?.close()
})

describe('every leak report is acted on when it arrives', () => {
  it('revokes a key whose report is dated 30 days ago', async () => {
    const key = newKey('OldLeak01')
    await createKeys([key])
    const answer = await report(key, ago(new Date().toISOString(), { days: 30 }))
    expect(answer.statusCode).toBe(202)
    const action = await actionOf(key, 'confirmed')
    expect(action).toMatchObject({ command: 'revoke', requested_by: 'auto:leak.public_report', policy: 'revoke-live-secret-keys' })
    expect(callsFor(key).map((c) => [c.command, c.status])).toEqual([['revoke', 200]])
  })

  it('raises a low finding for a publishable key found in public and revokes nothing', async () => {
    const key = newKey('PubLeak01', 'publishable')
    await createKeys([key])
    expect((await report(key)).statusCode).toBe(202)
    const finding = await waitFor('the publishable key finding', async () => (await rt.findings.list({ detector: 'leak.public_report', key_id: key.key_id }))[0])
    expect(finding.severity).toBe('low')
    expect(finding.evidence.key_kind).toBe('publishable')
    // Give a wrong revoke every chance to happen.
    await new Promise((r) => setTimeout(r, 1_000))
    expect(await rt.actions.list({ key_id: key.key_id })).toEqual([])
    expect(callsFor(key)).toEqual([])
    expect(service.keys.get(key.key_id)!.state).toBe('active')
  })
})

describe('approvals instead of dead ends', () => {
  it('holds the action a guard rail stops for approval, alerts with Approve and Reject, and sends it once approved through the API', async () => {
    const { keys, held } = await heldActions('Approve01')
    const [first] = held
    expect(first!.status_detail).toContain('guard rail: 1 automatic actions in acct_Approve01 in the last hour (limit 1)')
    expect(first!.expires_at).not.toBeNull()
    const waitingKey = keys.find((k) => k.key_id === first!.key_id)!
    expect(callsFor(waitingKey)).toEqual([])

    // The approval request is alerted with both buttons.
    const posted = await waitFor('the approval request in Slack', async () => approvalMessages(first!.action_id)[0])
    const buttons = JSON.stringify(posted.blocks)
    expect(buttons).toContain('"action_id":"approve"')
    expect(buttons).toContain('"action_id":"reject"')

    // A viewer may not approve; a reason is required.
    expect((await api.inject({ method: 'POST', url: `/v1/actions/${first!.action_id}/approve`, headers: viewer, payload: { reason: 'looks right' } })).statusCode).toBe(403)
    expect((await api.inject({ method: 'POST', url: `/v1/actions/${first!.action_id}/approve`, headers: responder, payload: {} })).statusCode).toBe(400)

    const approved = await api.inject({ method: 'POST', url: `/v1/actions/${first!.action_id}/approve`, headers: responder, payload: { reason: 'a real leak, checked the gist' } })
    expect(approved.statusCode).toBe(200)
    expect(approved.json().action).toMatchObject({ action_id: first!.action_id, status: 'confirmed', decided_by: 'token:usr_Approver1', decision_reason: 'a real leak, checked the gist' })
    expect(callsFor(waitingKey).map((c) => [c.command, c.status])).toEqual([['revoke', 200]])
    expect(service.keys.get(waitingKey.key_id)!.state).toBe('revoked')

    // Decided once: a second approval is refused and sends nothing more.
    const again = await api.inject({ method: 'POST', url: `/v1/actions/${first!.action_id}/approve`, headers: responder, payload: { reason: 'again' } })
    expect(again.statusCode).toBe(409)
    expect(callsFor(waitingKey)).toHaveLength(1)

    // The approval is in the audit trail with who and why; the approval request is closed.
    const [audited] = await rt.storage.client
      .query({ query: `SELECT actor, outcome, detail FROM audit_trail WHERE action = 'action.approve' AND target = {id:String} AND outcome = 'ok' ORDER BY seq`, query_params: { id: first!.action_id }, format: 'JSONEachRow' })
      .then((r) => r.json<{ actor: string; outcome: string; detail: string }>())
    expect(audited).toMatchObject({ actor: 'token:usr_Approver1', outcome: 'ok' })
    expect(audited!.detail).toContain('a real leak, checked the gist')
    const request = await waitFor('the approval request resolved', async () => (await rt.findings.list({ detector: 'response.approval_required', key_id: waitingKey.key_id })).find((f) => f.status === 'resolved'))
    expect(request.status_changed_by).toBe('token:usr_Approver1')
  })

  it('is approved by a Slack click of a responder (not of a viewer), then confirmed; rejected actions are never sent', async () => {
    const { keys, held } = await heldActions('Approve02')
    const [one, two] = held
    const denied = await click('approve', one!.action_id, 'U0VIEWER')
    expect(denied.json().text).toContain('not mapped to a keywatch role')
    expect((await rt.actions.get(one!.action_id))!.status).toBe('awaiting_approval')

    const clicked = await click('approve', one!.action_id, 'U0RESPONDER')
    expect(clicked.statusCode).toBe(200)
    expect(clicked.json().text).toContain('Approved')
    const confirmed = await waitFor('the approved action confirmed', async () => {
      const a = await rt.actions.get(one!.action_id)
      return a?.status === 'confirmed' && a
    })
    expect(confirmed.decided_by).toBe('slack:U0RESPONDER')
    const oneKey = keys.find((k) => k.key_id === one!.key_id)!
    expect(callsFor(oneKey).map((c) => c.command)).toEqual(['revoke'])

    const rejected = await api.inject({ method: 'POST', url: `/v1/actions/${two!.action_id}/reject`, headers: responder, payload: { reason: 'a test fixture in a public repo, rotating by hand' } })
    expect(rejected.json().action).toMatchObject({ status: 'rejected', decided_by: 'token:usr_Approver1' })
    const twoKey = keys.find((k) => k.key_id === two!.key_id)!
    expect(callsFor(twoKey)).toEqual([])
    const audited = await rt.storage.client
      .query({ query: `SELECT actor, outcome FROM audit_trail WHERE action = 'slack.approve' AND target = {id:String} ORDER BY seq`, query_params: { id: one!.action_id }, format: 'JSONEachRow' })
      .then((r) => r.json<{ actor: string; outcome: string }>())
    expect(audited.map((a) => [a.actor, a.outcome])).toEqual([['slack:U0VIEWER', 'denied'], ['slack:U0RESPONDER', 'ok']])
  })

  it('asks for approval up front when the policy rule says so', async () => {
    const key = newKey('UpFront01', 'restricted')
    await createKeys([key])
    expect((await report(key)).statusCode).toBe(202)
    const action = await actionOf(key, 'awaiting_approval')
    expect(action).toMatchObject({ policy: 'approve-restricted-keys', status_detail: expect.stringContaining('policy rule approve-restricted-keys asks a person to approve') })
    expect(callsFor(key)).toEqual([])
    const done = await api.inject({ method: 'POST', url: `/v1/actions/${action.action_id}/approve`, headers: responder, payload: { reason: 'second person: agreed' } })
    expect(done.json().action.status).toBe('confirmed')
    expect(callsFor(key).map((c) => c.command)).toEqual(['revoke'])
  })

  it('alerts a pending approval again every 15 minutes and expires it, alerted, when nobody decides', async () => {
    const { keys, held } = await heldActions('Expire001')
    const [pending] = held
    await waitFor('the first approval alert', async () => approvalMessages(pending!.action_id).length === 1)
    const started = Date.now()
    // Nothing again within 15 minutes; again at 16.
    expect((await rt.response.checkApprovals(new Date(started + 10 * 60_000))).realerted.map((a) => a.action_id)).not.toContain(pending!.action_id)
    expect((await rt.response.checkApprovals(new Date(started + 16 * 60_000))).realerted.map((a) => a.action_id)).toContain(pending!.action_id)
    await waitFor('the approval alerted again', async () => approvalMessages(pending!.action_id).length === 2)

    const { expired } = await rt.response.checkApprovals(new Date(started + 61 * 60_000))
    expect(expired.map((a) => a.action_id)).toContain(pending!.action_id)
    expect((await rt.actions.get(pending!.action_id))!.status).toBe('expired')
    const finding = await waitFor('the expiry finding', async () => (await rt.findings.list({ detector: 'response.approval_expired', key_id: pending!.key_id }))[0])
    expect(finding.severity).toBe('high')
    await waitFor('the expiry alerted', async () => slack.calls.some((c) => c.method === 'chat.postMessage' && String(c.fields.text).includes('Nobody approved')))
    // Too late to approve now.
    const late = await api.inject({ method: 'POST', url: `/v1/actions/${pending!.action_id}/approve`, headers: responder, payload: { reason: 'sorry, late' } })
    expect(late.statusCode).toBe(409)
    expect(callsFor(keys.find((k) => k.key_id === pending!.key_id)!)).toEqual([])
  })
})
