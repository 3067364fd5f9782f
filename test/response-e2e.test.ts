// From leak report to confirmed revocation, end to end: `keywatch start` as a process on a real broker, reports
// sent through each intake (POST /v1/leaks, GitHub's signed POST /v1/leaks/github, the security.leaks topic).
// One instance calls the stand-in key service over signed HTTP; the other publishes key.command on the commands
// topic, and its action is confirmed when the key service's `revoked` lifecycle event arrives on Kafka.
import { generateKeyPairSync, randomUUID, sign } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest'
import { keyCommandSchema } from '../contract/events.ts'
import { lifecycleEventFor, startStandInKeyService, type StandInKeyService } from '../demo/key-service.ts'
import { ago, leak, lifecycle, sha256 } from '../detectors/fixtures/events.ts'
import type { Action } from '../response/actions.ts'
import { runCli, startKeywatch, tempDir } from './helpers.ts'
import { createTopics } from './kafka/broker.ts'
import { groupProgress, publish, readTopic, waitFor } from './kafka/admin.ts'

const brokers = inject('kafkaBrokers')
const SERVICE_SECRET = 'e2e_monitor_signature_secret'
const github = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
const GITHUB_KEY_ID = sha256('github-e2e-key')

interface Instance {
  url: string
  /** Authorization header values. */
  ingest: string
  viewer: string
  topics: Record<'usage' | 'ratelimits' | 'auth' | 'lifecycle' | 'leaks' | 'commands' | 'deadLetter', string>
  groupId: string
  stop: () => Promise<void>
}

type Key = { account_id: string; key_id: string; key_prefix: string; key_kind: 'secret'; mode: 'live'; secret: string }
function newKey(name: string): Key {
  const prefix = `sk_live_${name.slice(0, 4)}`
  return { account_id: `acct_${name}`, key_id: `key_${name}${randomUUID().slice(0, 6)}`, key_prefix: prefix, key_kind: 'secret', mode: 'live', secret: `${prefix}${randomUUID().replaceAll('-', '')}` }
}

async function startInstance(extraEnv: Record<string, string>): Promise<Instance> {
  const run = randomUUID().slice(0, 8)
  const topics = {
    usage: `usage-${run}`,
    ratelimits: `ratelimits-${run}`,
    auth: `auth-${run}`,
    lifecycle: `lifecycle-${run}`,
    leaks: `leaks-${run}`,
    commands: `commands-${run}`,
    deadLetter: `deadletter-${run}`,
  }
  await createTopics(brokers, Object.values(topics), 1)
  const groupId = `keywatch-${run}`
  const keysFile = join(tempDir(), 'github-keys.json')
  writeFileSync(keysFile, JSON.stringify({ public_keys: [{ key_identifier: GITHUB_KEY_ID, key: github.publicKey.export({ type: 'spki', format: 'pem' }), is_current: true }] }))
  const env = {
    KEYWATCH_DATA_DIR: tempDir(),
    KAFKA_BROKERS: brokers,
    KAFKA_GROUP_ID: groupId,
    KAFKA_TOPIC_USAGE: topics.usage,
    KAFKA_TOPIC_RATELIMITS: topics.ratelimits,
    KAFKA_TOPIC_AUTH: topics.auth,
    KAFKA_TOPIC_LIFECYCLE: topics.lifecycle,
    KAFKA_TOPIC_LEAKS: topics.leaks,
    KAFKA_TOPIC_COMMANDS: topics.commands,
    KAFKA_TOPIC_DEAD_LETTER: topics.deadLetter,
    GITHUB_SECRET_SCANNING_KEYS_FILE: keysFile,
    ...extraEnv,
  }
  // The platform's scanner and an on-call viewer hold tokens, made before the instance starts.
  const token = async (role: string) => `Bearer ${(JSON.parse((await runCli(['token', 'create', '--role', role, '--json'], env)).stdout) as { token: string }).token}`
  const [ingest, viewer] = [await token('ingest'), await token('viewer')]
  const kw = await startKeywatch(env)
  return {
    url: kw.url,
    ingest,
    viewer,
    topics,
    groupId,
    stop: async () => {
      kw.child.kill('SIGTERM')
      await kw.exited
    },
  }
}

/** The platform creates keys: their lifecycle events reach keywatch on the lifecycle topic. */
async function createKeys(instance: Instance, keys: Key[]): Promise<void> {
  const now = new Date().toISOString()
  await publish(brokers, instance.topics.lifecycle, keys.map((k) => ({ key: k.key_id, value: JSON.stringify(lifecycle(k, 'created', ago(now, { days: 30 }), { secret_sha256: sha256(k.secret) })) })))
  await waitFor('the created events to be stored', async () => {
    const p = await groupProgress(brokers, instance.groupId, [instance.topics.lifecycle])
    return p.end > 0 && p.committed >= p.end
  })
}

async function actionsOf(instance: Instance, key: Key): Promise<Action[]> {
  return ((await (await fetch(`${instance.url}/v1/actions?key=${key.key_id}`, { headers: { authorization: instance.viewer } })).json()) as { actions: Action[] }).actions
}

async function keyStatus(instance: Instance, key: Key): Promise<string> {
  return ((await (await fetch(`${instance.url}/v1/keys/${key.key_id}/exposure`, { headers: { authorization: instance.viewer } })).json()) as { key: { status: string } }).key.status
}

function signedGithubPost(instance: Instance, body: string, signature = sign('sha256', Buffer.from(body), github.privateKey).toString('base64')) {
  return fetch(`${instance.url}/v1/leaks/github`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'github-public-key-identifier': GITHUB_KEY_ID, 'github-public-key-signature': signature },
    body,
  })
}

let service: StandInKeyService
let viaHttp: Instance
let viaKafka: Instance

beforeAll(async () => {
  service = await startStandInKeyService({
    secret: SERVICE_SECRET,
    // Like the platform: an applied command is published as a lifecycle event.
    onApplied: (applied) => publish(brokers, viaHttp.topics.lifecycle, [{ key: applied.key_id, value: JSON.stringify(lifecycleEventFor(applied, randomUUID())) }]),
  })
  ;[viaHttp, viaKafka] = await Promise.all([
    startInstance({ KEY_SERVICE_URL: service.url, KEY_SERVICE_SECRET: SERVICE_SECRET }),
    startInstance({ RESPONSE_TRANSPORT: 'kafka' }),
  ])
}, 180_000)

afterAll(async () => {
  await Promise.allSettled([viaHttp?.stop(), viaKafka?.stop()])
  await service?.close()
})

describe('a leak report through each intake ends in a confirmed revocation', () => {
  it('POST /v1/leaks (the contract event)', async () => {
    const key = newKey('E2eHttp01')
    service.keys.set(key.key_id, { account_id: key.account_id, key_prefix: key.key_prefix, key_kind: 'secret', mode: 'live', state: 'active' })
    await createKeys(viaHttp, [key])
    const res = await fetch(`${viaHttp.url}/v1/leaks`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: viaHttp.ingest }, body: JSON.stringify(leak(key.account_id, new Date().toISOString(), key.secret)) })
    expect(res.status).toBe(202)
    const action = await waitFor('a confirmed revoke', async () => (await actionsOf(viaHttp, key)).find((a) => a.status === 'confirmed'), 30_000)
    expect(action).toMatchObject({ command: 'revoke', transport: 'http', requested_by: 'auto:leak.public_report' })
    expect(service.calls.filter((c) => c.key_id === key.key_id).map((c) => [c.command, c.signature_ok, c.idempotency_key])).toEqual([['revoke', true, action.command_id]])
    // The key service's lifecycle event came back over Kafka: the inventory says revoked.
    await waitFor('the key to be revoked in the inventory', async () => (await keyStatus(viaHttp, key)) === 'revoked', 30_000)
  })

  it("POST /v1/leaks/github (GitHub's signed partner format); forged, unsigned and replayed payloads get 401", async () => {
    const key = newKey('E2eGhub01')
    const decoy = newKey('E2eGhub02')
    for (const k of [key, decoy]) service.keys.set(k.key_id, { account_id: k.account_id, key_prefix: k.key_prefix, key_kind: 'secret', mode: 'live', state: 'active' })
    await createKeys(viaHttp, [key, decoy])

    const decoyBody = JSON.stringify([{ token: decoy.secret, type: 'paykore_secret_key', url: 'https://github.com/x/y/blob/1/a.js', source: 'content' }])
    const forged = await signedGithubPost(viaHttp, decoyBody, sign('sha256', Buffer.from(decoyBody), generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey).toString('base64'))
    const unsigned = await fetch(`${viaHttp.url}/v1/leaks/github`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: decoyBody })
    expect([forged.status, unsigned.status]).toEqual([401, 401])

    const body = JSON.stringify([{ token: key.secret, type: 'paykore_secret_key', url: 'https://github.com/x/y/blob/2/b.js', source: 'content' }])
    const signature = sign('sha256', Buffer.from(body), github.privateKey).toString('base64')
    const first = await signedGithubPost(viaHttp, body, signature)
    expect(first.status).toBe(200)
    expect(await first.json()).toEqual([{ token_hash: sha256(key.secret), token_type: 'paykore_secret_key', label: 'true_positive' }])
    const replayed = await signedGithubPost(viaHttp, body, signature)
    expect(replayed.status).toBe(401)

    await waitFor('a confirmed revoke', async () => (await actionsOf(viaHttp, key)).find((a) => a.status === 'confirmed'), 30_000)
    expect(service.calls.filter((c) => c.key_id === key.key_id).map((c) => c.command)).toEqual(['revoke'])
    // The forged and unsigned reports changed nothing.
    await new Promise((r) => setTimeout(r, 1_000))
    expect(await actionsOf(viaHttp, decoy)).toEqual([])
    expect(service.calls.filter((c) => c.key_id === decoy.key_id)).toEqual([])
  })

  it('the security.leaks topic', async () => {
    const key = newKey('E2eTopic1')
    service.keys.set(key.key_id, { account_id: key.account_id, key_prefix: key.key_prefix, key_kind: 'secret', mode: 'live', state: 'active' })
    await createKeys(viaHttp, [key])
    await publish(brokers, viaHttp.topics.leaks, [{ key: key.account_id, value: JSON.stringify(leak(key.account_id, new Date().toISOString(), key.secret)) }])
    const action = await waitFor('a confirmed revoke', async () => (await actionsOf(viaHttp, key)).find((a) => a.status === 'confirmed'), 30_000)
    expect(action.command).toBe('revoke')
    expect(service.keys.get(key.key_id)!.state).toBe('revoked')
  })

  it('reports ingest counts and the consumer lag on /metrics', async () => {
    // The lag comes back to 0 once the last lifecycle event is stored and committed.
    const lagZero = new RegExp(`keywatch_kafka_consumer_lag\\{topic="${viaHttp.topics.lifecycle}",partition="0"\\} 0`)
    const metrics = await waitFor('the lifecycle partition caught up', async () => {
      const text = await (await fetch(`${viaHttp.url}/metrics`, { headers: { authorization: viaHttp.viewer } })).text()
      return lagZero.test(text) ? text : undefined
    }, 30_000)
    expect(metrics).toMatch(lagZero)
    expect(metrics).toMatch(/keywatch_events_total\{result="accepted"\} [1-9]/)
    expect(metrics).toMatch(/keywatch_actions_total\{command="revoke",status="confirmed"\} [1-9]/)
  })

  it('over Kafka both ways: key.command on the commands topic, confirmed by the revoked lifecycle event', async () => {
    const key = newKey('E2eKafka1')
    await createKeys(viaKafka, [key])
    await publish(brokers, viaKafka.topics.leaks, [{ key: key.account_id, value: JSON.stringify(leak(key.account_id, new Date().toISOString(), key.secret)) }])

    const [message] = await readTopic(brokers, viaKafka.topics.commands, 1)
    expect(message!.key).toBe(key.key_id)
    const command = keyCommandSchema.parse(JSON.parse(message!.value.toString('utf8')))
    expect(command).toMatchObject({ command: 'revoke', key_id: key.key_id, account_id: key.account_id, requested_by: 'auto:leak.public_report' })
    expect(message!.value.toString('utf8')).not.toContain(key.secret)

    const requested = await waitFor('the requested action', async () => (await actionsOf(viaKafka, key))[0])
    expect(requested).toMatchObject({ status: 'requested', transport: 'kafka', command_id: command.command_id, confirmed_at: null })

    // The key service applies it and publishes the lifecycle event.
    const revoked = lifecycleEventFor({ key_id: key.key_id, key: { account_id: key.account_id, key_prefix: key.key_prefix, key_kind: 'secret', mode: 'live', state: 'revoked' }, command: 'revoke', command_id: command.command_id, at: new Date().toISOString(), requested_by: command.requested_by, reason: command.reason }, randomUUID())
    await publish(brokers, viaKafka.topics.lifecycle, [{ key: key.key_id, value: JSON.stringify(revoked) }])
    const confirmed = await waitFor('the confirmed action', async () => (await actionsOf(viaKafka, key)).find((a) => a.status === 'confirmed'), 30_000)
    expect(confirmed).toMatchObject({ action_id: requested.action_id, confirmed_by: 'lifecycle' })
    expect(confirmed.effective_at).toBe((revoked.occurred_at as string).replace('T', ' ').replace('Z', ''))
  })
})
