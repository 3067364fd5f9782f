// Whole keywatch instances sharing one store, inside one process on one embedded engine (issue 16): each is a real
// runtime (app/runtime.ts: detectors, response, alert outbox, audit chain) with its own Kafka ingest consumer,
// leadership membership, and network: its HTTP peers (the Slack stand-in, the key service) are reached through a
// cable of its own, a TCP relay on loopback. `kill()` is a SIGKILL as far as the world can tell: the cable is cut
// (a request already delivered stays delivered; the answer is lost), every call to the store from then on never
// returns (one in flight may land; its result is never seen), nothing more is committed to Kafka, and the group is
// left (so the rebalance comes without waiting out the session).
import { connect, createServer, type Socket } from 'node:net'
import type { AddressInfo } from 'node:net'
import pino from 'pino'
import { openRuntime, type Runtime } from '../../app/runtime.ts'
import type { Storage } from '../../clickhouse/client.ts'
import { KafkaLeadership } from '../../cluster/leadership.ts'
import { parseConfig } from '../../config/config.ts'
import { startKafkaIngest, type KafkaIngest } from '../../ingest/kafka-ingest.ts'
import { tempDir } from '../helpers.ts'

export interface Cable {
  url: string
  /** Called with each chunk a member sends to the peer, before it is relayed (a test can kill the member there). */
  beforeRelay?: (chunk: Buffer) => void | Promise<void>
  /** Called with each chunk the peer answers, before it reaches the member. */
  beforeReturn?: (chunk: Buffer) => void | Promise<void>
  cut(): void
}

/** A TCP relay from a member to a peer (http://host:port…): what a network cable is to a process. */
export async function openCable(target: string): Promise<Cable> {
  const url = new URL(target)
  const sockets = new Set<Socket>()
  let cut = false
  const cable: Cable = { url: '', cut: () => undefined }
  const server = createServer((inbound) => {
    if (cut) return inbound.destroy()
    const outbound = connect(Number(url.port), url.hostname)
    for (const s of [inbound, outbound]) {
      sockets.add(s)
      s.on('close', () => sockets.delete(s))
      s.on('error', () => undefined)
    }
    inbound.pause()
    inbound.on('data', (chunk: Buffer) => {
      inbound.pause()
      void Promise.resolve(cable.beforeRelay?.(chunk)).finally(() => {
        if (cut) return
        outbound.write(chunk)
        inbound.resume()
      })
    })
    outbound.on('connect', () => inbound.resume())
    outbound.on('data', (chunk: Buffer) => {
      outbound.pause()
      void Promise.resolve(cable.beforeReturn?.(chunk)).finally(() => {
        if (cut) return
        inbound.write(chunk)
        outbound.resume()
      })
    })
    outbound.on('close', () => inbound.destroy())
    inbound.on('close', () => outbound.destroy())
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  cable.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}${url.pathname === '/' ? '' : url.pathname}`
  cable.cut = () => {
    cut = true
    for (const s of sockets) s.destroy()
    server.close()
  }
  return cable
}

/** The store as one member sees it: after `die()`, no call returns again (the member is gone). */
export function mortalStorage(shared: Storage, onInsert?: (table: string) => void): { storage: Storage; die(): void; dead(): boolean } {
  let dead = false
  const never = new Promise<never>(() => undefined)
  const gate = <T>(call: () => Promise<T>): Promise<T> => {
    if (dead) return never
    return call().then(
      (v) => (dead ? never : v),
      (e: unknown) => (dead ? never : Promise.reject(e)),
    )
  }
  const client = new Proxy(shared.client, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver) as unknown
      if (typeof value !== 'function') return value
      return (...args: unknown[]) =>
        gate(async () => {
          const result = (await (value as (...a: unknown[]) => Promise<unknown>).apply(target, args)) as unknown
          if (prop === 'insert') onInsert?.(String((args[0] as { table?: string }).table ?? ''))
          return result
        })
    },
  })
  const storage: Storage = {
    ...shared,
    client,
    insertRows: (table, rows, settings) => gate(() => shared.insertRows(table, rows, settings)),
    close: async () => undefined, // the store is shared: the test closes it
  }
  return { storage, die: () => void (dead = true), dead: () => dead }
}

export interface Member {
  name: string
  rt: Runtime
  ingest: KafkaIngest
  leadership: KafkaLeadership
  cables: { slack: Cable; keyService?: Cable }
  dead: boolean
  /** Called after each insert this member's runtime makes through `client.insert` (a test can kill it there). */
  onInsert?: (table: string) => void
  kill(): Promise<void>
  stop(): Promise<void>
}

export interface Peers {
  slackApiUrl: string
  keyService?: { url: string; secret: string }
}

/**
 * Starts a member: `env` is keywatch's environment (topics, group, policy...); the Slack and key-service URLs are
 * replaced by this member's cables to them.
 */
export async function startMember(name: string, shared: Storage, env: Record<string, string>, peers: Peers): Promise<Member> {
  const slack = await openCable(peers.slackApiUrl)
  const keyService = peers.keyService ? await openCable(peers.keyService.url) : undefined
  const member = { name, dead: false } as Member
  const mortal = mortalStorage(shared, (table) => member.onInsert?.(table))
  const config = parseConfig({
    KEYWATCH_DATA_DIR: tempDir(),
    LOG_LEVEL: 'silent',
    EXPORT_SCHEDULE: 'off',
    SLACK_BOT_TOKEN: `xoxb-${name}`,
    SLACK_API_URL: slack.url,
    ...(keyService ? { KEY_SERVICE_URL: keyService.url, KEY_SERVICE_SECRET: peers.keyService!.secret } : {}),
    KAFKA_CLIENT_ID: `kw-${name}`,
    ...env,
  })
  const log = pino({ level: process.env.FAULTS_LOG ?? 'silent' }).child({ member: name })
  const kafka = config.kafka!
  const leadership = new KafkaLeadership({ brokers: kafka.brokers, clientId: kafka.clientId, groupId: kafka.groupId, topic: kafka.controlTopic }, log)
  const rt = await openRuntime(config, log, { leadership, storage: mortal.storage })
  // Several instances on one store: a newly assigned partition waits for the previous owner's inserts on the wire.
  const ingest = await startKafkaIngest(kafka, config.ingest, rt.pipeline, log, rt.metrics.kafkaProgress, { handoverMs: config.ingest.handoverMs })
  await rt.startServices()
  Object.assign(member, {
    rt,
    ingest,
    leadership,
    cables: { slack, keyService },
    async kill() {
      if (member.dead) return
      member.dead = true
      slack.cut()
      keyService?.cut()
      mortal.die()
      await Promise.all([ingest.abort().catch(() => undefined), leadership.abort().catch(() => undefined)])
    },
    async stop() {
      if (member.dead) return
      await ingest.stop()
      await rt.close()
      member.dead = true
      slack.cut()
      keyService?.cut()
    },
  } satisfies Partial<Member>)
  return member
}

/** Polls every member's isLeader(): the most that ever led at once, and the changes seen. */
export function watchLeaders(members: () => Member[], everyMs = 25): { max: () => number; changes: () => string[]; stop: () => void } {
  let max = 0
  let last = ''
  const changes: string[] = []
  const timer = setInterval(() => {
    const leaders = members().filter((m) => !m.dead && m.leadership.isLeader())
    max = Math.max(max, leaders.length)
    const now = leaders.map((m) => m.name).join(',')
    if (now !== last) changes.push(`${new Date().toISOString()} ${now || '(none)'}`), (last = now)
  }, everyMs)
  return { max: () => max, changes: () => changes, stop: () => clearInterval(timer) }
}
