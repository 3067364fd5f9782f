// Several keywatch instances sharing one store, inside one process on one embedded engine (no ClickHouse server
// runs here): each has its own writer, pipeline, Kafka consumer (same ingest group) and leadership membership, and
// an abrupt stop that commits nothing (like a SIGKILL; it leaves the group, so the rebalance comes sooner).
import pino from 'pino'
import type { Storage } from '../../clickhouse/client.ts'
import { KafkaLeadership } from '../../cluster/leadership.ts'
import type { Config } from '../../config/config.ts'
import { startKafkaIngest, type KafkaIngest } from '../../ingest/kafka-ingest.ts'
import { IngestPipeline } from '../../ingest/pipeline.ts'
import { EventWriter } from '../../ingest/writer.ts'

export interface Instance {
  name: string
  ingest: KafkaIngest
  leadership: KafkaLeadership
  /** Graceful: finishes, commits, steps down, leaves. */
  stop(): Promise<void>
  /** Abrupt: nothing more written or committed. */
  kill(): Promise<void>
  dead: boolean
}

const silent = pino({ level: 'silent' })

/**
 * The store as an instance far from it sees it: an insert reaches the engine `ms` after it is sent (a slow network,
 * a busy server). That is the window a handover must cover: an old owner's insert still on the wire while the new
 * owner looks its rows up. On one embedded engine in one process there is no such window without it.
 */
export function slowInserts(storage: Storage, ms: number): Storage {
  return {
    ...storage,
    insertLines: async (...args: Parameters<Storage['insertLines']>) => {
      await new Promise((r) => setTimeout(r, ms))
      return storage.insertLines(...args)
    },
  }
}

export async function startInstance(name: string, shared: Storage, kafka: NonNullable<Config['kafka']>, opts: { batchMaxRows?: number; insertDelayMs?: number; unfenced?: boolean } = {}): Promise<Instance> {
  const batchMaxRows = opts.batchMaxRows ?? 500
  const storage = opts.insertDelayMs ? slowInserts(shared, opts.insertDelayMs) : shared
  const writer = new EventWriter(storage, { maxRows: batchMaxRows, maxWaitMs: 20, maxInflight: 4 })
  const pipeline = new IngestPipeline(storage.client, writer)
  const leadership = new KafkaLeadership({ brokers: kafka.brokers, clientId: `${kafka.clientId}-${name}`, groupId: kafka.groupId, topic: kafka.controlTopic }, silent)
  await leadership.start()
  const ingest = await startKafkaIngest({ ...kafka, clientId: `${kafka.clientId}-${name}` }, { batchMaxRows, batchMaxWaitMs: 20, maxInflightBatches: 4 }, pipeline, silent, undefined, { unfenced: opts.unfenced })
  const instance: Instance = {
    name,
    ingest,
    leadership,
    dead: false,
    async stop() {
      await ingest.stop()
      await writer.drain()
      await leadership.stop()
      instance.dead = true
    },
    async kill() {
      instance.dead = true
      await Promise.all([ingest.abort(), leadership.abort()])
    },
  }
  return instance
}

/** Polls every instance's isLeader(): the most that ever led at once, and the leader changes seen. */
export function watchLeaders(instances: () => Instance[], everyMs = 25): { max: () => number; changes: () => string[]; stop: () => void } {
  let max = 0
  let last = ''
  const changes: string[] = []
  const timer = setInterval(() => {
    const leaders = instances().filter((i) => !i.dead && i.leadership.isLeader())
    max = Math.max(max, leaders.length)
    const now = leaders.map((i) => i.name).join(',')
    if (now !== last) changes.push(`${new Date().toISOString()} ${now || '(none)'}`), (last = now)
  }, everyMs)
  return { max: () => max, changes: () => changes, stop: () => clearInterval(timer) }
}
