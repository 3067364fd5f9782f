// The only file that knows kafkajs: a partition-batch consumer with explicit commits, and a producer.
// Swapping the client library means rewriting this file only.
import { Kafka, logLevel as KafkaLogLevel, Partitioners, type Consumer, type Producer } from 'kafkajs'

export interface KafkaSettings {
  brokers: string[]
  clientId: string
}

export interface PartitionBatch {
  topic: string
  partition: number
  messages: { key: Buffer | null; value: Buffer | null; offset: string }[]
  /** Offset to commit once every message of this batch is handled. */
  nextOffset: string
  /** Messages of the partition after this batch, when it was fetched: the consumer's lag. */
  lag: number
  /** Fencing (issue 16): true while this member still owns the partition in the generation the batch came from. */
  owned?: () => boolean
}

export interface OutboundRecord {
  key?: Buffer | string | null
  value: Buffer | string
  headers?: Record<string, string>
}

export interface Logger {
  info(obj: object, msg?: string): void
  warn(obj: object, msg?: string): void
  error(obj: object, msg?: string): void
}

function client(settings: KafkaSettings, log: Logger): Kafka {
  return new Kafka({
    clientId: settings.clientId,
    brokers: settings.brokers,
    logLevel: KafkaLogLevel.WARN,
    logCreator: () => ({ level, log: entry }) => {
      const { message, ...rest } = entry
      if (level <= KafkaLogLevel.ERROR) log.error({ kafka: rest }, message)
      else log.warn({ kafka: rest }, message)
    },
    retry: { retries: 8, initialRetryTime: 300 },
  })
}

export class KafkaProducer {
  private constructor(private readonly producer: Producer) {}

  static async connect(settings: KafkaSettings, log: Logger): Promise<KafkaProducer> {
    const producer = client(settings, log).producer({ allowAutoTopicCreation: true, idempotent: false, createPartitioner: Partitioners.DefaultPartitioner })
    await producer.connect()
    return new KafkaProducer(producer)
  }

  /** Resolves when every broker acknowledged (acks=all). */
  async send(topic: string, records: OutboundRecord[]): Promise<void> {
    if (records.length) await this.producer.send({ topic, acks: -1, messages: records })
  }

  disconnect(): Promise<void> {
    return this.producer.disconnect()
  }
}

export interface ConsumerOptions {
  groupId: string
  topics: string[]
  /** Partition batches handed over but not yet committed, per partition. */
  maxPendingPerPartition: number
  partitionsConsumedConcurrently: number
  /** Fencing (issue 16): how long a partition newly assigned here waits for its previous owner's inserts on the wire. */
  handoverMs?: number
  /**
   * How long the group waits for a member that stopped heartbeating (a crashed instance) before its partitions move:
   * what a SIGKILL costs a restarted instance. kafkajs has no static membership, so this is the lever (the broker's
   * group.min.session.timeout.ms, 6 s by default, is the floor). A clean stop leaves the group at once.
   */
  sessionTimeoutMs?: number
  /** The fault suite's negative control only: no fencing, to show what it prevents. */
  unfenced?: boolean
}

/** Fencing (issue 16): a batch whose partition this member no longer owns; not a failure, the new owner writes it. */
export class FencedBatchError extends Error {
  constructor(message = 'partition handed over to another member; batch not written') {
    super(message)
    this.name = 'FencedBatchError'
  }
}

/** Where each partition stands, for /metrics: told at every fetch, commit and assignment. */
export interface ConsumerProgress {
  fetched(topic: string, partition: number, p: { highWatermark: string; firstOffset: string }): void
  committed(topic: string, partition: number, offset: string): void
  assigned(assignment: Record<string, number[]>): void
}

/** The rows of a batch are stored; committing its offset failed (e.g. a rebalance made the generation stale). */
class CommitFailedError extends Error {
  constructor(readonly offset: string, options: ErrorOptions) {
    super(`offset commit failed: ${String((options.cause as Error)?.message ?? options.cause)}`, options)
    this.name = 'CommitFailedError'
  }
}

/**
 * Hands partition batches to `handle` without waiting for the previous ones to finish (up to a bound), and commits
 * a batch's offsets only when it and every earlier batch of its partition are handled. If a batch fails, nothing
 * after it is committed and the consumer restarts from the last commit: its events come again and are deduplicated.
 */
export class KafkaBatchConsumer {
  private consumer?: Consumer
  private readonly pending = new Map<string, Promise<void>[]>()
  // Per partition: settles after the latest batch is committed; rejected if any batch in it failed.
  private readonly chains = new Map<string, Promise<void>>()
  private failed = false
  private stopping = false
  private restarting?: Promise<void>
  // ---- fencing (issue 16) ----
  // The epoch moves on at every rebalance (and crash, abort): a batch is owned while its epoch is current and the
  // group has heard from us within the session timeout (a member frozen longer has been replaced).
  private epoch = 0
  private lastHeartbeat = Date.now()
  private aborted = false
  private assigned = new Set<string>()
  private readonly handoverUntil = new Map<string, number>()
  // ---- end fencing ----
  /** Per partition, the store failure last logged at error level: the same one again is not logged again. */
  private readonly failing = new Map<string, string>()

  constructor(
    private readonly settings: KafkaSettings,
    private readonly options: ConsumerOptions,
    private readonly log: Logger,
    private readonly progress?: ConsumerProgress,
  ) {}

  async start(handle: (batch: PartitionBatch) => Promise<void>): Promise<void> {
    const heartbeatEvery = Math.max(500, Math.floor((this.options.sessionTimeoutMs ?? 15_000) / 10))
    const consumer = client(this.settings, this.log).consumer({
      groupId: this.options.groupId,
      maxBytesPerPartition: 4 * 1024 * 1024,
      maxBytes: 32 * 1024 * 1024,
      maxWaitTimeInMs: 100,
      sessionTimeout: this.options.sessionTimeoutMs ?? 15_000,
      heartbeatInterval: heartbeatEvery,
      allowAutoTopicCreation: true,
    })
    this.consumer = consumer
    consumer.on(consumer.events.GROUP_JOIN, ({ payload }) => this.progress?.assigned(payload.memberAssignment))
    await consumer.connect()
    await consumer.subscribe({ topics: this.options.topics, fromBeginning: true })
    consumer.on(consumer.events.CRASH, ({ payload }) => {
      this.epoch++ // fencing (issue 16)
      this.log.error({ err: String(payload.error), restart: payload.restart }, 'kafka consumer crashed')
    })
    // ---- fencing (issue 16) ----
    consumer.on(consumer.events.REBALANCING, () => void this.epoch++)
    consumer.on(consumer.events.HEARTBEAT, () => void (this.lastHeartbeat = Date.now()))
    consumer.on(consumer.events.GROUP_JOIN, ({ payload }) => {
      this.epoch++
      this.lastHeartbeat = Date.now()
      this.chains.clear() // batches of earlier epochs are fenced; their chains no longer matter
      const now = new Set(Object.entries(payload.memberAssignment).flatMap(([t, ps]) => ps.map((p) => `${t}/${p}`)))
      // A partition that was not ours: its previous owner may still have an insert on the wire. Wait that out.
      for (const k of now) if (!this.assigned.has(k)) this.handoverUntil.set(k, Date.now() + (this.options.unfenced ? 0 : (this.options.handoverMs ?? 3_000)))
      this.assigned = now
    })
    // ---- end fencing ----
    await consumer.run({
      autoCommit: false,
      // Offsets are resolved by hand: a batch returned from unhandled (stale after a rebalance, stopping, failed)
      // is fetched again instead of skipped, so no commit can move past events that were never stored.
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: this.options.partitionsConsumedConcurrently,
      eachBatch: async ({ batch, isRunning, isStale, heartbeat, resolveOffset }) => {
        if (this.failed || this.stopping || !isRunning() || isStale()) return
        const key = `${batch.topic}/${batch.partition}`
        // ---- fencing (issue 16) ----
        const epoch = this.epoch
        const owned = () => !this.aborted && (this.options.unfenced || (this.epoch === epoch && Date.now() - this.lastHeartbeat < (this.options.sessionTimeoutMs ?? 15_000) - 5_000))
        while (Date.now() < (this.handoverUntil.get(key) ?? 0) && owned() && isRunning()) {
          await new Promise((r) => setTimeout(r, 100))
          await heartbeat()
        }
        const chainKey = `${key}#${epoch}`
        // ---- end fencing ----
        const queue = this.pending.get(key) ?? []
        this.pending.set(key, queue)
        // While waiting for room, keep heartbeating: a slow insert must not cost the group its member.
        while (queue.length >= this.options.maxPendingPerPartition) {
          let timer: NodeJS.Timeout | undefined
          await Promise.race([queue[0]!.catch(() => undefined), new Promise((r) => (timer = setTimeout(r, heartbeatEvery)))])
          clearTimeout(timer)
          await heartbeat()
        }
        if (this.failed || this.stopping || !isRunning() || isStale()) return
        const nextOffset = (BigInt(batch.lastOffset()) + 1n).toString()
        const lag = Math.max(0, Number(BigInt(batch.highWatermark) - BigInt(nextOffset)))
        const offsets = { topic: batch.topic, partition: batch.partition, firstOffset: batch.firstOffset(), lastOffset: batch.lastOffset() }
        this.progress?.fetched(batch.topic, batch.partition, { highWatermark: batch.highWatermark, firstOffset: batch.firstOffset() ?? nextOffset })
        // Nothing below holds `batch`: kafkajs's message objects (a dozen fields and two buffers each) are garbage
        // as soon as `handle` has taken what it needs, not when the batch is committed seconds later.
        const { topic, partition } = batch
        const work = handle({ topic, partition, messages: batch.messages, nextOffset, lag, owned })
        const chain = Promise.all([this.chains.get(chainKey), work]).then(async () => {
          if (!owned()) throw new FencedBatchError() // fencing (issue 16): the new owner commits
          if (this.failed) throw new Error('an earlier batch failed; not committing past it')
          try {
            await consumer.commitOffsets([{ topic, partition, offset: nextOffset }])
          } catch (err) {
            throw new CommitFailedError(nextOffset, { cause: err })
          }
          this.progress?.committed(topic, partition, nextOffset)
          if (this.failing.delete(key)) this.log.info(offsets, 'partition stored and committed again')
        })
        this.chains.set(chainKey, chain)
        const done: Promise<void> = chain
          .catch((err) => {
            // fencing (issue 16): written by (or left to) the partition's new owner; nothing to restart
            if (['FencedBatchError', 'FencedWriteError'].includes((err as Error)?.name) || !owned()) {
              this.log.info(offsets, 'batch fenced: its partition was handed over')
              return
            }
            if (this.failed) return // the batch that failed first is logged; this one waits for the same restart
            this.failed = true
            if (err instanceof CommitFailedError) {
              this.log.warn({ ...offsets, offset: err.offset, err: String(err.cause) }, 'offset commit failed; the batch is stored, its events will come again as duplicates; rejoining')
            } else if (this.failing.get(key) !== String(err)) {
              this.failing.set(key, String(err))
              this.log.error({ ...offsets, err: String(err) }, 'batch not stored; restarting from the last commit (logged once while it fails the same way)')
            }
            this.restarting ??= this.restart(handle)
          })
          .finally(() => queue.splice(queue.indexOf(done), 1))
        queue.push(done)
        resolveOffset(batch.lastOffset()) // fetch on; the commit waits for the store above
      },
    })
  }

  /**
   * After a failed batch: let everything in flight settle, leave the group and join again with a new consumer, which
   * fetches from the committed offsets. The failed batch and everything after it come again; stored ones are
   * recognised as duplicates.
   */
  private async restart(handle: (batch: PartitionBatch) => Promise<void>): Promise<void> {
    await this.settle()
    await this.consumer?.disconnect().catch((err) => this.log.warn({ err: String(err) }, 'disconnect failed'))
    this.pending.clear()
    this.chains.clear()
    if (this.stopping) return
    await new Promise((r) => setTimeout(r, 1_000))
    this.failed = false
    this.restarting = undefined
    await this.start(handle).catch((err) => {
      this.log.error({ err: String(err) }, 'kafka consumer restart failed; retrying')
      this.failed = true
      this.restarting = this.restart(handle)
    })
  }

  private async settle(): Promise<void> {
    while ([...this.pending.values()].some((q) => q.length)) {
      await Promise.allSettled([...this.pending.values()].flat())
    }
  }

  /**
   * Fencing (issue 16), for tests of several instances in one process: stops like a killed process would, writing
   * and committing nothing more (inserts already sent to the engine finish, as they would on a server).
   */
  async abort(): Promise<void> {
    this.aborted = true
    this.stopping = true
    this.epoch++
    await this.consumer?.disconnect().catch(() => undefined)
  }

  /** Stops fetching, waits until everything handed over is stored and committed, then leaves the group. */
  async stop(): Promise<void> {
    if (!this.consumer) return
    this.stopping = true
    this.consumer.pause(this.options.topics.map((topic) => ({ topic })))
    await this.settle()
    await this.restarting
    await this.consumer.disconnect()
  }
}
