// The response engine on the real engine, against the stand-in key service on loopback: a leak report turns into a
// signed revoke (a reset for an auto-generated key), guard rails stop the 4th automatic revoke in an account and
// raise a critical finding, a manual revoke of a key in use is refused, dry-run and the kill switch send nothing,
// and a revoked key accepted after the cache grace period marks its revocation as not effective.
import { randomUUID } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildApi } from '../api/server.ts'
import { apiDepsOf, openRuntime, type Runtime } from '../app/runtime.ts'
import { parseConfig } from '../config/config.ts'
import { lifecycleEventFor, startStandInKeyService, type StandInKeyService } from '../demo/key-service.ts'
import { ago, leak, lifecycle, sha256, usage } from '../detectors/fixtures/events.ts'
import type { Action } from '../response/actions.ts'
import { ResponseEngine } from '../response/engine.ts'
import { parsePolicy, type Policy } from '../response/policy.ts'
import { HttpCommandSender } from '../response/senders.ts'
import { KeyServiceClient } from '../response/key-service.ts'
import { waitFor } from './kafka/admin.ts'
import { bearer, tempDir } from './helpers.ts'

const SERVICE_SECRET = 'monitor_shared_secret_for_tests'
const log = pino({ level: 'silent' })
let rt: Runtime
let api: FastifyInstance
let service: StandInKeyService
let responder: { authorization: string }
let admin: { authorization: string }
let ingester: { authorization: string }

interface TestKey {
  account_id: string
  key_id: string
  key_prefix: string
  key_kind: 'secret' | 'publishable' | 'restricted'
  mode: 'live' | 'test'
  secret: string
}

function newKey(account: string, opts: { auto_generated?: boolean; kind?: TestKey['key_kind']; mode?: TestKey['mode'] } = {}): TestKey {
  const id = randomUUID().replaceAll('-', '').slice(0, 12)
  const kind = opts.kind ?? 'secret'
  const mode = opts.mode ?? 'live'
  const prefix = `${kind === 'secret' ? 'sk' : kind === 'publishable' ? 'pk' : 'rk'}_${mode}_${id.slice(0, 4)}`
  const key: TestKey = { account_id: `acct_${account}`, key_id: `key_${id}`, key_prefix: prefix, key_kind: kind, mode, secret: `${prefix}${randomUUID().replaceAll('-', '')}` }
  service.keys.set(key.key_id, { account_id: key.account_id, key_prefix: prefix, key_kind: kind, mode, auto_generated: opts.auto_generated, state: 'active' })
  return key
}

async function ingest(events: object[]): Promise<void> {
  const { rejections } = await rt.pipeline.ingest(events.map((e) => ({ raw: Buffer.from(JSON.stringify(e)), origin: { source: 'file' as const } })))
  expect(rejections.map((r) => r.detail)).toEqual([])
}

async function createKeys(keys: TestKey[], auto_generated = false): Promise<void> {
  const now = new Date().toISOString()
  await ingest(keys.map((k) => lifecycle(k, 'created', ago(now, { days: 20 }), { secret_sha256: sha256(k.secret), auto_generated })))
}

const callsFor = (key: TestKey) => service.calls.filter((c) => c.key_id === key.key_id)
const actionsFor = (key: TestKey) => rt.actions.list({ key_id: key.key_id })

async function settledAction(key: TestKey, status: Action['status'] = 'confirmed'): Promise<Action> {
  return waitFor(`a ${status} action on ${key.key_prefix}`, async () => (await actionsFor(key)).find((a) => a.status === status), 20_000)
}

beforeAll(async () => {
  service = await startStandInKeyService({
    secret: SERVICE_SECRET,
    // The platform answers an applied command with its lifecycle event.
    onApplied: (applied) => ingest([lifecycleEventFor(applied, randomUUID(), applied.command === 'reset' ? sha256(randomUUID()) : undefined)]),
  })
  // Step-up (a TOTP code for resume and forced revokes) has its own tests (test/step-up.test.ts).
  const config = parseConfig({ KEYWATCH_DATA_DIR: tempDir(), KEY_SERVICE_URL: service.url, KEY_SERVICE_SECRET: SERVICE_SECRET, LOG_LEVEL: 'silent', STEP_UP: 'off' })
  rt = await openRuntime(config, log)
  await rt.startServices()
  api = await buildApi(apiDepsOf(rt))
  responder = await bearer(rt, 'responder', 'usr_Test01')
  admin = await bearer(rt, 'admin')
  ingester = await bearer(rt, 'ingest')
})

afterAll(async () => {
  await api?.close()
  await rt?.close()
  await service?.close()
})

describe('automatic response to a leaked key', () => {
  it('revokes a leaked live secret key through the signed key service and confirms it', async () => {
    const key = newKey('Leak0001')
    await createKeys([key])
    const reported = await api.inject({ method: 'POST', url: '/v1/leaks', headers: { 'content-type': 'application/json', ...ingester }, payload: leak(key.account_id, new Date().toISOString(), key.secret) })
    expect(reported.statusCode).toBe(202)

    // Decided as the report arrived, sent while the action was written; linked to its finding once that is recorded.
    const action = await waitFor('the confirmed action linked to its finding', async () => (await actionsFor(key)).find((a) => a.status === 'confirmed' && a.finding_id), 20_000)
    const [finding] = await rt.findings.list({ detector: 'leak.public_report', key_id: key.key_id })
    expect(action.finding_id).toBe(finding!.finding_id)
    const calls = callsFor(key)
    expect(calls.map((c) => [c.command, c.status, c.signature_ok])).toEqual([['revoke', 200, true]])
    expect(calls[0]!.idempotency_key).toBe(action.command_id)
    expect(calls[0]!.body).toMatchObject({ command_id: action.command_id, requested_by: 'auto:leak.public_report' })
    expect(action).toMatchObject({ command: 'revoke', requested_by: 'auto:leak.public_report', policy: 'revoke-leaked-keys', transport: 'http', confirmed_by: 'http' })
    expect(action.confirmed_at).not.toBeNull()
    expect(service.keys.get(key.key_id)!.state).toBe('revoked')
    // The leaked secret travels nowhere: not to the key service, not into the action.
    expect(JSON.stringify([calls, action])).not.toContain(key.secret)

    const listed = await api.inject({ method: 'GET', url: `/v1/actions?key=${key.key_id}`, headers: responder })
    expect(listed.json().actions).toEqual([expect.objectContaining({ action_id: action.action_id, status: 'confirmed' })])
    // The lifecycle event the key service published lands too: the inventory shows the key revoked.
    await waitFor('the revoked lifecycle event', async () => (await rt.storage.client.query({ query: `SELECT status FROM key_inventory WHERE key_id = {k:String}`, query_params: { k: key.key_id }, format: 'JSONEachRow' }).then((r) => r.json<{ status: string }>()))[0]?.status === 'revoked')
  })

  it('resets an auto-generated key and never asks to revoke it', async () => {
    const key = newKey('AutoGen01', { auto_generated: true })
    await createKeys([key], true)
    await ingest([leak(key.account_id, new Date().toISOString(), key.secret)])
    const action = await settledAction(key)
    expect(action.command).toBe('reset')
    expect(action.status_detail).toContain('auto-generated')
    expect(callsFor(key).map((c) => c.command)).toEqual(['reset'])
  })

  it('stops at 3 automatic revocations in one account within an hour and raises a critical finding', async () => {
    const keys = [1, 2, 3, 4, 5].map(() => newKey('Guard0001'))
    await createKeys(keys)
    const now = new Date().toISOString()
    await ingest(keys.map((k) => leak(k.account_id, now, k.secret)))

    const actions = await waitFor('5 decided actions', async () => {
      const all = await rt.actions.list({ account_id: 'acct_Guard0001' })
      return all.length === 5 && all.every((a) => a.status !== 'requested') && all
    }, 20_000)
    expect(actions.filter((a) => a.status === 'confirmed')).toHaveLength(3)
    // Held for a person to approve (test/response-approvals.test.ts), not dead-ended.
    const blocked = actions.filter((a) => a.status === 'awaiting_approval')
    expect(blocked).toHaveLength(2)
    expect(blocked[0]!.status_detail).toContain('3 automatic actions in acct_Guard0001 in the last hour (limit 3)')
    // Only three reached the key service; the two blocked keys are still active there.
    expect(service.calls.filter((c) => keys.some((k) => k.key_id === c.key_id))).toHaveLength(3)
    expect(keys.filter((k) => service.keys.get(k.key_id)!.state === 'active')).toHaveLength(2)

    const rail = await waitFor('the guard-rail finding', async () => (await rt.findings.list({ detector: 'response.guard_rail', account_id: 'acct_Guard0001' }))[0])
    expect(rail.severity).toBe('critical')
    expect(rail.status).toBe('open')
    // Another account is not affected by this account's rail.
    const other = newKey('Guard0002')
    await createKeys([other])
    await ingest([leak(other.account_id, new Date().toISOString(), other.secret)])
    expect((await settledAction(other)).status).toBe('confirmed')
  })

  it('sends nothing while the kill switch is on, and says why', async () => {
    const refused = await api.inject({ method: 'POST', url: '/v1/response/pause', headers: responder, payload: {} })
    expect(refused.statusCode).toBe(400)
    expect(refused.json().error.message).toContain('body.reason')
    const paused = await api.inject({ method: 'POST', url: '/v1/response/pause', headers: responder, payload: { reason: 'detector misfiring, investigating' } })
    expect(paused.json()).toMatchObject({ paused: true, changed_by: 'token:usr_Test01' })

    const key = newKey('Paused001')
    await createKeys([key])
    await ingest([leak(key.account_id, new Date().toISOString(), key.secret)])
    const action = await settledAction(key, 'paused')
    expect(action.status_detail).toContain('kill switch')
    expect(callsFor(key)).toEqual([])

    const resumed = await api.inject({ method: 'POST', url: '/v1/response/resume', headers: admin, payload: { reason: 'fixed' } })
    expect(resumed.json().paused).toBe(false)
  })
})

// Engines with their own policies, on a detector the runtime's default policy does not act on.
describe('policies', () => {
  const DETECTOR = 'leak.secret_key_client_side'
  const policy = (doc: object): Policy => {
    const parsed = parsePolicy(doc)
    if ('problems' in parsed) throw new Error(parsed.problems.join('; '))
    return parsed.policy
  }
  const engineWith = (p: Policy) =>
    new ResponseEngine({
      client: rt.storage.client,
      actions: rt.actions,
      sender: new HttpCommandSender(new KeyServiceClient({ baseUrl: service.url, secret: SERVICE_SECRET })),
      policy: p,
      log,
      raise: (drafts, at) => rt.findings.record(drafts, at),
    })
  const findingOn = (key: TestKey) =>
    rt.findings.record([{ detector: DETECTOR, severity: 'critical', account_id: key.account_id, key_id: key.key_id, title: `${key.key_prefix} used from a browser`, evidence: {}, dedupKey: `${DETECTOR}:${key.key_id}` }], new Date())

  it('rejects a policy file with a wrong field, naming it', () => {
    expect(parsePolicy({ rules: [{ name: 'x', action: 'delete' }] })).toEqual({ problems: [expect.stringMatching(/^rules\.0\.action: /)] })
    expect(parsePolicy({ guard_rails: { max_per_acount_per_hour: 1 } })).toEqual({ problems: [expect.stringContaining('guard_rails')] })
  })

  it('in dry-run mode decides and records the action but sends nothing', async () => {
    const engine = engineWith(policy({ mode: 'dry_run', rules: [{ name: 'browser-keys', detectors: [DETECTOR], action: 'revoke' }] }))
    const key = newKey('DryRun001')
    await createKeys([key])
    const [action] = await engine.onFindings(await findingOn(key))
    expect(action).toMatchObject({ status: 'dry_run', command: 'revoke', policy: 'browser-keys', key_prefix: key.key_prefix })
    expect(callsFor(key)).toEqual([])
    // Decided once: the finding firing again does not decide again.
    expect(await engine.onFindings(await findingOn(key))).toEqual([])
  })

  it('acts only on the key kinds and modes its rules name', async () => {
    const engine = engineWith(policy({ rules: [{ name: 'live-secrets', detectors: [DETECTOR], key_kinds: ['secret'], modes: ['live'], action: 'revoke' }] }))
    const testKey = newKey('Modes0001', { mode: 'test' })
    const publishable = newKey('Modes0001', { kind: 'publishable' })
    await createKeys([testKey, publishable])
    expect(await engine.onFindings([...(await findingOn(testKey)), ...(await findingOn(publishable))])).toEqual([])
    expect(callsFor(testKey).concat(callsFor(publishable))).toEqual([])
  })

  it('marks a revocation not effective when the key is accepted after the cache grace period', async () => {
    const engine = engineWith(policy({ rules: [{ name: 'browser-keys', detectors: [DETECTOR], action: 'revoke' }], cache_grace_seconds: 2 }))
    const key = newKey('Effect001')
    await createKeys([key])
    const [revoked] = await engine.onFindings(await findingOn(key))
    expect(revoked).toMatchObject({ status: 'confirmed' })
    const at = revoked!.effective_at!.replace(' ', 'T') + 'Z'
    const plus = (ms: number) => new Date(Date.parse(at) + ms).toISOString()
    // Within the grace period (caches) and refused requests do not count; an accepted one later does.
    await ingest([usage(key, plus(1_000), { status: 200 }), usage(key, plus(5_000), { status: 401, error_code: 'API_KEY_REVOKED' })])
    expect(await engine.checkEffectiveness(new Date(Date.parse(at) + 30_000))).toEqual([])
    await ingest([usage(key, plus(6_000), { status: 200, ip: '198.51.100.7' })])
    const [changed] = await engine.checkEffectiveness(new Date(Date.parse(at) + 30_000))
    expect(changed).toMatchObject({ action_id: revoked!.action_id, status: 'not_effective' })
    expect(changed!.status_detail).toContain('1 requests accepted more than 2 s after the revocation')
    const [finding] = await rt.findings.list({ detector: 'key.used_after_revocation', account_id: key.account_id })
    expect(finding).toMatchObject({ severity: 'high', key_id: key.key_id })
    expect(finding!.evidence).toMatchObject({ accepted: 1, action_id: revoked!.action_id })
  })
})

describe('a manual revoke', () => {
  it('needs a reason', async () => {
    const key = newKey('Manual001')
    await createKeys([key])
    const res = await api.inject({ method: 'POST', url: `/v1/keys/${key.key_id}/revoke`, headers: responder, payload: { reason: '  ' } })
    expect(res.statusCode).toBe(400)
    expect(res.json().error.message).toMatch(/^body\.reason: /)
  })

  it('is refused for a key used in the last 15 minutes unless marked as an incident', async () => {
    const key = newKey('Manual002')
    await createKeys([key])
    await ingest([usage(key, ago(new Date().toISOString(), { minutes: 3 }))])

    const refused = await api.inject({ method: 'POST', url: `/v1/keys/${key.key_id}/revoke`, headers: responder, payload: { reason: 'offboarding the contractor' } })
    expect(refused.statusCode).toBe(409)
    expect(refused.json().error).toMatchObject({ code: 'key_in_use' })
    expect(refused.json().error.message).toContain('used 1 times in the last 15 minutes')
    expect(callsFor(key)).toEqual([])
    expect((await actionsFor(key)).map((a) => [a.status, a.requested_by])).toEqual([['refused', 'token:usr_Test01']])

    const incident = await api.inject({ method: 'POST', url: `/v1/keys/${key.key_id}/revoke`, headers: responder, payload: { reason: 'card testing from this key', incident: true } })
    expect(incident.statusCode).toBe(200)
    expect(incident.json().action).toMatchObject({ status: 'confirmed', incident: true, requested_by: 'token:usr_Test01', reason: 'card testing from this key' })
    expect(callsFor(key).map((c) => c.command)).toEqual(['revoke'])
  })

  it('goes through for a key unused for 15 minutes, and refuses to revoke an auto-generated key', async () => {
    const quiet = newKey('Manual003')
    const auto = newKey('Manual003', { auto_generated: true })
    await createKeys([quiet])
    await createKeys([auto], true)
    await ingest([usage(quiet, ago(new Date().toISOString(), { minutes: 20 }))])
    const ok = await api.inject({ method: 'POST', url: `/v1/keys/${quiet.key_id}/revoke`, headers: responder, payload: { reason: 'key no longer needed' } })
    expect(ok.statusCode).toBe(200)
    const no = await api.inject({ method: 'POST', url: `/v1/keys/${auto.key_id}/revoke`, headers: responder, payload: { reason: 'rotate', force: true } })
    expect(no.statusCode).toBe(422)
    expect(no.json().error.message).toContain('reset')
    const reset = await api.inject({ method: 'POST', url: `/v1/keys/${auto.key_id}/reset`, headers: responder, payload: { reason: 'suspected exposure' } })
    expect(reset.json().action).toMatchObject({ command: 'reset', status: 'confirmed' })
    expect(callsFor(auto).map((c) => c.command)).toEqual(['reset'])
    const unknown = await api.inject({ method: 'POST', url: '/v1/keys/key_NoSuchKey1/revoke', headers: responder, payload: { reason: 'x' } })
    expect(unknown.statusCode).toBe(404)
  })
})
