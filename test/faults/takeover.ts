// The leader killed in the middle of its singletons' work (issue 16): whole instances sharing one store
// (test/faults/runtimes.ts), real broker, the Slack stand-in and the key service stand-in on loopback (or the commands
// topic, with the test as the key service). Leaked keys are reported while usage events stream in; the leader is
// killed at one of these moments:
//  - 'detector': right after its detector run recorded findings (before deciding or alerting on them);
//  - 'alert': while Slack holds its answer to the leader's first post (Slack has the message; the leader never learns);
//  - 'revoke': while the key service's answer to the leader's revoke is on its way back (the key is revoked; the
//    leader never learns);
//  - 'revoke-kafka': right after the leader published its key.command; the key service answers only later.
// Then the survivors finish, and what the world received is counted: one command per leaked key (by command id,
// and one carried out), one Slack post per finding, one decision per finding, every usage event once (the oracle),
// one leader at a time, and an audit chain without a gap.
import { randomUUID } from 'node:crypto'
import { Kafka, logLevel } from 'kafkajs'
import { join } from 'node:path'
import type { Storage } from '../../clickhouse/client.ts'
import { queryRows } from '../../clickhouse/client.ts'
import { usageEvent } from '../../contract/synthetic.ts'
import { startStandInKeyService, type StandInKeyService } from '../../demo/key-service.ts'
import { leak, lifecycle, sha256 } from '../../detectors/fixtures/events.ts'
import { createTopics } from '../kafka/broker.ts'
import { publish, waitFor } from '../kafka/admin.ts'
import { expect } from 'vitest'
import type { SlackStandIn } from '../stand-ins/slack.ts'
import { judge, type Verdict } from './oracle.ts'
import { startMember, watchLeaders, type Member } from './runtimes.ts'

export type KillAt = 'detector' | 'alert' | 'revoke' | 'revoke-kafka'

export interface TakeoverRun {
  killAt: KillAt
  killed: string
  verdict: Verdict
  maxLeaders: number
  leaderChanges: string[]
  keys: number
  /** Per leaked key: distinct command ids sent, commands carried out, sends seen (HTTP calls or topic messages). */
  commands: { key_id: string; ids: number; applied: number; sends: number }[]
  /** Per finding of a leaked key: Slack posts, automatic actions decided. */
  findings: { finding_id: string; posts: number; decided: number }[]
  actions: { key_id: string; status: string }[]
  slackLookups: number
  audit: { ok: boolean; records: number; message?: string }
}

export interface TakeoverOptions {
  brokers: string
  storage: Storage
  slack: SlackStandIn
  killAt: KillAt
  /** Usage events streamed meanwhile (judged by the oracle, together with every earlier run on this store). */
  usage: number
  /** Every usage event id produced on this store so far (this run's are added). */
  produced: Set<string>
  leakedKeys?: number
  /** One deployment's shared files (signing key, audit anchors): the same for every run on this store. */
  deploymentDir: string
}

const SECRET = 'faults_monitor_signature_secret'

export async function takeoverRun(o: TakeoverOptions): Promise<TakeoverRun> {
  const run = randomUUID().slice(0, 8)
  const kafkaTransport = o.killAt === 'revoke-kafka'
  const topics = {
    KAFKA_TOPIC_USAGE: `usage-to-${run}`,
    KAFKA_TOPIC_RATELIMITS: `ratelimits-to-${run}`,
    KAFKA_TOPIC_AUTH: `auth-to-${run}`,
    KAFKA_TOPIC_LIFECYCLE: `lifecycle-to-${run}`,
    KAFKA_TOPIC_LEAKS: `leaks-to-${run}`,
    KAFKA_TOPIC_COMMANDS: `commands-to-${run}`,
    KAFKA_TOPIC_DEAD_LETTER: `deadletter-to-${run}`,
  }
  await createTopics(o.brokers, [topics.KAFKA_TOPIC_USAGE], 3)
  await createTopics(o.brokers, [topics.KAFKA_TOPIC_LIFECYCLE], 2)
  await createTopics(o.brokers, [topics.KAFKA_TOPIC_RATELIMITS, topics.KAFKA_TOPIC_AUTH, topics.KAFKA_TOPIC_LEAKS, topics.KAFKA_TOPIC_COMMANDS, topics.KAFKA_TOPIC_DEAD_LETTER], 1)
  const channel = `C0TO${run}`
  const shared = o.deploymentDir
  const env = {
    KAFKA_BROKERS: o.brokers,
    KAFKA_GROUP_ID: `keywatch-to-${run}`,
    KAFKA_TOPIC_CONTROL: `control-to-${run}`,
    KAFKA_SESSION_TIMEOUT_MS: '10000',
    INGEST_HANDOVER_MS: '1000',
    ...topics,
    SLACK_CHANNEL: channel,
    ALERT_CHANNEL_MAX_PER_MINUTE: '100',
    RESPONSE_TRANSPORT: kafkaTransport ? 'kafka' : 'http',
    // The instances of one deployment share the signing key and the anchor file (the chain's checkpoints).
    EXPORT_SIGNING_KEY_FILE: join(shared, 'signing-key.pem'),
    AUDIT_ANCHOR_FILE: join(shared, 'audit-anchors.ndjson'),
  }

  // The key service: over HTTP the stand-in; over Kafka this test, reading the commands topic, deduplicating by
  // command id like a real consumer, and publishing the lifecycle event of what it carried out.
  const keyService: StandInKeyService | undefined = kafkaTransport ? undefined : await startStandInKeyService({ secret: SECRET })
  type TopicCommand = { command_id: string; key_id: string; command: 'revoke' | 'reset'; requested_by: string }
  const seenOnTopic: TopicCommand[] = []
  const appliedOnTopic = new Map<string, string>() // command id -> key id
  let answerCommands = false
  // Once it answers, it carries out every command it has read and not carried out yet, each command id once.
  const answerTopic = async () => {
    if (!answerCommands) return
    for (const c of seenOnTopic) {
      if (appliedOnTopic.has(c.command_id)) continue
      appliedOnTopic.set(c.command_id, c.key_id)
      const k = keys.find((x) => x.key_id === c.key_id)!
      await publish(o.brokers, topics.KAFKA_TOPIC_LIFECYCLE, [{ key: k.key_id, value: JSON.stringify(lifecycle(k, 'revoked', new Date().toISOString(), { actor: { type: 'monitor', id: c.requested_by } })) }])
    }
  }
  const now = Date.now()
  const keys = Array.from({ length: o.leakedKeys ?? 3 }, (_, i) => {
    const secret = `sk_live_${run}${i}${randomUUID().replaceAll('-', '')}`
    return { account_id: `acct_To${run}${i}`, key_id: `key_To${run}${i}`, key_prefix: `sk_live_${run.slice(0, 4)}`, key_kind: 'secret' as const, mode: 'live' as const, secret }
  })
  for (const k of keys) keyService?.keys.set(k.key_id, { account_id: k.account_id, key_prefix: k.key_prefix, key_kind: 'secret', mode: 'live', state: 'active' })

  const members: Member[] = []
  const leaders = watchLeaders(() => members)
  const leader = () => members.find((m) => !m.dead && m.leadership.isLeader())
  let killed: Member | undefined
  const kill = (m: Member | undefined) => {
    if (killed || !m || m.dead) return
    killed = m
    return m.kill()
  }
  const commandsConsumer = kafkaTransport ? new Kafka({ clientId: `to-keyservice-${run}`, brokers: o.brokers.split(','), logLevel: logLevel.NOTHING }).consumer({ groupId: `to-keyservice-${run}` }) : undefined
  try {
    const peers = { slackApiUrl: o.slack.apiUrl, keyService: keyService && { url: keyService.url, secret: SECRET } }
    for (const name of ['a', 'b']) members.push(await startMember(`${name}${run}`, o.storage, env, peers))
    await waitFor('a leader', async () => leader(), 60_000)

    // Where the leader dies.
    if (o.killAt === 'detector') for (const m of members) m.onInsert = (table) => void (table === 'findings' && m.leadership.isLeader() && kill(m))
    if (o.killAt === 'alert') {
      o.slack.beforeAnswer = async (call) => {
        if (call.method !== 'chat.postMessage' || call.fields.channel !== channel) return
        await kill(members.find((m) => call.token === `Bearer xoxb-${m.name}`))
      }
    }
    if (o.killAt === 'revoke') {
      for (const m of members) m.cables.keyService!.beforeReturn = async (chunk) => void (chunk.toString('latin1').startsWith('HTTP/1.1 200') && (await kill(m)))
    }
    if (commandsConsumer) {
      await commandsConsumer.connect()
      await commandsConsumer.subscribe({ topics: [topics.KAFKA_TOPIC_COMMANDS], fromBeginning: true })
      await commandsConsumer.run({
        eachMessage: async ({ message }) => {
          const c = JSON.parse(message.value!.toString()) as TopicCommand
          seenOnTopic.push(c)
          // The first command: its sender dies right after publishing it, and the key service is slow to act.
          if (!killed) await kill(leader())
          await answerTopic()
        },
      })
    }

    // The keys exist (their secrets known to keywatch), then usage streams in and the keys' secrets leak.
    await publish(o.brokers, topics.KAFKA_TOPIC_LIFECYCLE, keys.map((k) => ({ key: k.key_id, value: JSON.stringify(lifecycle(k, 'created', new Date(now - 30 * 86_400_000).toISOString(), { secret_sha256: sha256(k.secret) })) })))
    await waitFor('the keys in the inventory', async () => (await count(o.storage, 'SELECT count() AS n FROM key_inventory FINAL WHERE key_id IN {ids:Array(String)}', { ids: keys.map((k) => k.key_id) })) === keys.length || undefined, 60_000)
    await new Promise((r) => setTimeout(r, 5_500)) // the leader's secret index reads what the other instance stored
    const events = Array.from({ length: o.usage }, (_, i) => usageEvent(i, { keys: 300, from: now - 2 * 86_400_000, to: now - 60_000 }))
    for (const e of events) o.produced.add(e.event_id.toLowerCase())
    const usage = (async () => {
      const messages = events.map((e) => ({ key: e.key_id, value: JSON.stringify(e) }))
      for (let i = 0; i < messages.length; i += 500) {
        await publish(o.brokers, topics.KAFKA_TOPIC_USAGE, messages.slice(i, i + 500))
        await new Promise((r) => setTimeout(r, 50))
      }
    })()
    await publish(o.brokers, topics.KAFKA_TOPIC_LEAKS, keys.map((k) => ({ key: k.account_id, value: JSON.stringify(leak(k.account_id, new Date().toISOString(), k.secret)) })))

    await waitFor(`the leader killed (${o.killAt})`, async () => killed, 60_000)
    // A replacement joins, as an orchestrator would start one (the survivors are the old follower and it).
    members.push(await startMember(`c${run}`, o.storage, env, peers))
    await waitFor('a new leader', async () => leader(), 60_000)
    answerCommands = true
    await answerTopic()
    await usage

    const keyIds = keys.map((k) => k.key_id)
    const actionsNow = () =>
      queryRows<{ key_id: string; status: string; finding_id: string; command_id: string; requested_by: string }>(
        o.storage.client,
        `SELECT key_id, status, finding_id, toString(command_id) AS command_id, requested_by FROM actions FINAL WHERE key_id IN {ids:Array(String)}`,
        { ids: keyIds },
      )
    await waitFor('every leaked key revoked and confirmed', async () => {
      const a = await actionsNow()
      return keyIds.every((id) => a.some((x) => x.key_id === id && x.status === 'confirmed')) || undefined
    }, 90_000, 500)
    const findingsOf = await queryRows<{ finding_id: string; key_id: string }>(o.storage.client, `SELECT finding_id, key_id FROM findings FINAL WHERE detector = 'leak.public_report' AND key_id IN {ids:Array(String)}`, { ids: keyIds })
    const findingIds = findingsOf.map((f) => f.finding_id)
    const alertRows = () => queryRows<{ alert_id: string; finding_id: string; status: string }>(o.storage.client, `SELECT alert_id, finding_id, status FROM alert_outbox FINAL WHERE finding_id IN {ids:Array(String)} AND kind = 'finding' AND channel = 'slack'`, { ids: findingIds })
    await waitFor('every finding alerted and the alert recorded', async () => {
      const rows = await alertRows()
      return (findingIds.length === keys.length && findingIds.every((id) => rows.some((r) => r.finding_id === id && r.status === 'delivered'))) || undefined
    }, 60_000, 500)
    await waitFor('every usage event stored', async () => (await count(o.storage, 'SELECT count() AS n FROM key_usage WHERE event_id IN {ids:Array(UUID)}', { ids: events.map((e) => e.event_id) })) >= events.length || undefined, 120_000, 500)
    await new Promise((r) => setTimeout(r, 3_000)) // anything still on its way (a resend, a duplicate) lands before counting

    const survivor = members.find((m) => !m.dead)!
    for (const m of members) if (!m.dead) await m.stop()
    leaders.stop()
    const actions = await actionsNow()
    const alerts = await alertRows()
    const postsOf = (findingId: string) => {
      const ids = new Set(alerts.filter((a) => a.finding_id === findingId).map((a) => a.alert_id))
      return o.slack.calls.filter((c) => c.method === 'chat.postMessage' && c.fields.metadata && ids.has((JSON.parse(c.fields.metadata) as { event_payload: { alert_id: string } }).event_payload.alert_id)).length
    }
    const audit = await survivor.rt.audit.verify()
    return {
      killAt: o.killAt,
      killed: killed!.name,
      verdict: await judge(o.storage.client, o.produced),
      maxLeaders: leaders.max(),
      leaderChanges: leaders.changes(),
      keys: keys.length,
      commands: keys.map((k) => {
        if (kafkaTransport) {
          const sent = seenOnTopic.filter((c) => c.key_id === k.key_id)
          return { key_id: k.key_id, ids: new Set(sent.map((c) => c.command_id)).size, applied: [...appliedOnTopic.values()].filter((id) => id === k.key_id).length, sends: sent.length }
        }
        const calls = keyService!.calls.filter((c) => c.key_id === k.key_id)
        return { key_id: k.key_id, ids: new Set(calls.map((c) => c.idempotency_key)).size, applied: keyService!.keys.get(k.key_id)!.state === 'revoked' ? new Set(calls.filter((c) => c.status === 200).map((c) => c.idempotency_key)).size : 0, sends: calls.length }
      }),
      findings: findingsOf.map((f) => ({ finding_id: f.finding_id, posts: postsOf(f.finding_id), decided: actions.filter((a) => a.key_id === f.key_id && a.requested_by.startsWith('auto:')).length })),
      actions: actions.map((a) => ({ key_id: a.key_id, status: a.status })),
      slackLookups: o.slack.reads.filter((r) => r.fields.channel === channel).length,
      audit: { ok: audit.ok, records: audit.records, ...('message' in audit && audit.message ? { message: String(audit.message) } : {}) },
    }
  } finally {
    o.slack.beforeAnswer = undefined
    leaders.stop()
    await commandsConsumer?.disconnect().catch(() => undefined)
    for (const m of members) if (!m.dead) await m.kill().catch(() => undefined)
    await keyService?.close()
  }
}

async function count(storage: Storage, sql: string, params: Record<string, unknown>): Promise<number> {
  return Number((await queryRows<{ n: number | string }>(storage.client, sql, params))[0]?.n ?? 0)
}

/** What the issue asks of every run: stored == produced, one leader, one decision, one post, one command. */
export function expectExactlyOnce(run: TakeoverRun): void {
  console.log(JSON.stringify({ killAt: run.killAt, killed: run.killed, leaderChanges: run.leaderChanges, commands: run.commands, findings: run.findings, slackLookups: run.slackLookups, audit: run.audit, ...run.verdict }))
  expect(run.verdict.failures).toEqual([])
  expect(run.maxLeaders).toBe(1)
  expect(run.findings).toHaveLength(run.keys)
  for (const f of run.findings) expect(f, 'one decision and one Slack post per finding').toMatchObject({ posts: 1, decided: 1 })
  for (const c of run.commands) expect(c, 'one command id per leaked key, carried out once').toMatchObject({ ids: 1, applied: 1 })
  expect(run.actions.every((a) => a.status === 'confirmed')).toBe(true)
  expect(run.audit).toMatchObject({ ok: true })
  if (run.killAt === 'alert') expect(run.slackLookups, 'the new leader looked in the channel before posting').toBeGreaterThanOrEqual(1)
  if (run.killAt === 'revoke' || run.killAt === 'revoke-kafka') expect(run.commands.some((c) => c.sends >= 2), 'the new leader sent the unconfirmed command again').toBe(true)
}
