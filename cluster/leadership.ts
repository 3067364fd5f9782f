// One leader among keywatch instances for what must run once: detector schedules, automatic response decisions,
// alert delivery from the outbox, scheduled exports, the audit chain's writer and its checkpoints.
//
// Elected with Kafka's own group membership, not a home-made protocol: every instance joins the consumer group
// `<KAFKA_GROUP_ID>.leader` on a single-partition control topic; the member that owns partition 0 is the leader.
// The coordinator hands partition 0 to one member per generation, and a member is fenced three ways:
//  - at a rebalance (kafkajs emits REBALANCING before it rejoins) it steps down at once, before the coordinator can
//    give partition 0 to anyone else (the new assignment waits for every member to rejoin or time out);
//  - its claim and renewals are offset commits on partition 0, which the broker refuses (ILLEGAL_GENERATION,
//    UNKNOWN_MEMBER_ID, REBALANCE_IN_PROGRESS) once the generation moved on: a refused commit steps it down;
//  - a lease: with no heartbeat answered for (session timeout - margin) it steps down by itself, before the
//    coordinator (which counts from the same heartbeat) can time it out and elect another.
// A new leader waits `handoverMs` after its claim so the steps of the previous one still finishing (an alert on the
// wire, an audit append) land first. Failover after a leader dies: session timeout + rebalance + handover (about
// 10 + 1 + 2 s with the defaults).
//
// Followers send the leader what it must do for them through the same topic (partition 0): their audited actions
// (appended to the one chain by the leader) and nudges (a leak report stored: run the leak detector now; a lifecycle
// event stored: it may confirm a command sent on the commands topic). The
// leader commits a message's offset only after handling it; a new leader resumes from the last commit.
//
// Without Kafka (one embedded instance) the process is simply its own leader: `SoloLeadership`.
import { randomUUID } from 'node:crypto'
import { Kafka, logLevel as KafkaLogLevel, type Consumer, type Producer } from 'kafkajs'
import type { AuditEntry } from '../audit/audit-log.ts'

export type ControlMessage =
  | { kind: 'audit'; id: string; from: string; at: number; entry: AuditEntry }
  | { kind: 'leak.stored'; id: string; from: string; at: number }
  | { kind: 'lifecycle.stored'; id: string; from: string; at: number }

/** What a follower hands to the leader (id, sender and time are filled in). */
export type ControlRequest = { kind: 'audit'; entry: AuditEntry } | { kind: 'leak.stored' } | { kind: 'lifecycle.stored' }

export type LeadershipListener = (leader: boolean) => void | Promise<void>
export type ControlHandler = (messages: ControlMessage[]) => Promise<void>

export interface Leadership {
  /** This instance's name in the group (for logs and the audit trail's `origin`). */
  readonly member: string
  /** True only while this instance is the leader (fenced: false as soon as it may not be). */
  isLeader(): boolean
  /** Told when this instance becomes the leader (true) and when it stops being it (false), in order. */
  onChange(listener: LeadershipListener): void
  /** On the leader: the followers' requests, in order; a message is committed once the handler resolves. */
  onControl(handler: ControlHandler): void
  /** Sends a request to the leader (handled at once when this instance is the leader). */
  toLeader(request: ControlRequest): Promise<void>
  start(): Promise<void>
  /** Steps down (listeners told) and leaves the group. */
  stop(): Promise<void>
}

interface Logger {
  info(obj: object, msg?: string): void
  warn(obj: object, msg?: string): void
  error(obj: object, msg?: string): void
}

abstract class Base {
  protected readonly listeners: LeadershipListener[] = []
  protected handler?: ControlHandler
  protected leader = false
  /** Listener calls run one after another: a step-down finishes before the next step-up starts. */
  private transitions: Promise<void> = Promise.resolve()

  constructor(
    readonly member: string,
    protected readonly log: Logger,
  ) {}

  isLeader(): boolean {
    return this.leader
  }

  onChange(listener: LeadershipListener): void {
    this.listeners.push(listener)
    if (this.leader) this.transitions = this.transitions.then(() => this.call(listener, true))
  }

  onControl(handler: ControlHandler): void {
    this.handler = handler
  }

  protected message(request: ControlRequest): ControlMessage {
    return { ...request, id: randomUUID(), from: this.member, at: Date.now() } as ControlMessage
  }

  protected set(leader: boolean, why: string): Promise<void> {
    if (this.leader === leader) return this.transitions
    this.leader = leader
    this.log.info({ member: this.member, leader, why, at: new Date().toISOString() }, leader ? 'leadership acquired' : 'leadership lost')
    this.transitions = this.transitions.then(async () => {
      for (const l of this.listeners) await this.call(l, leader)
    })
    return this.transitions
  }

  private async call(l: LeadershipListener, leader: boolean): Promise<void> {
    try {
      await l(leader)
    } catch (err) {
      this.log.error({ err: String(err), leader }, 'leadership listener failed')
    }
  }

  /** Waits for the listeners of every change so far. */
  settled(): Promise<void> {
    return this.transitions
  }
}

/** One instance, no Kafka: the leader from the start (an API call before start() is audited in place). */
export class SoloLeadership extends Base implements Leadership {
  constructor(log: Logger) {
    super('solo', log)
    this.leader = true // listeners registered later are told at once (Base.onChange)
  }

  async start(): Promise<void> {
    await this.settled()
  }

  async toLeader(request: ControlRequest): Promise<void> {
    await this.handler?.([this.message(request)])
  }

  async stop(): Promise<void> {
    await this.set(false, 'stopping')
  }
}

export interface KafkaLeadershipOptions {
  brokers: string[]
  clientId: string
  /** The ingest group id; the leadership group is `<groupId>.leader`. */
  groupId: string
  topic: string
  /** How long the coordinator waits for a silent member: the bulk of a failover after a crash. */
  sessionTimeoutMs?: number
  heartbeatIntervalMs?: number
  /** A new leader waits this long after its claim for the previous one's last steps. */
  handoverMs?: number
  /** How often the leader renews its claim (an offset commit the broker checks against the generation). */
  renewEveryMs?: number
}

const LEASE_MARGIN_MS = 3_000

export class KafkaLeadership extends Base implements Leadership {
  private readonly kafka: Kafka
  private consumer?: Consumer
  private producer?: Promise<Producer>
  /** Moves on at every rebalance: a claim made in an older epoch is void. */
  private epoch = 0
  private ownsPartition0 = false
  private lastHeartbeat = 0
  private position?: string
  private timer?: NodeJS.Timeout
  private stopping = false
  private readonly sessionTimeoutMs: number

  constructor(
    private readonly options: KafkaLeadershipOptions,
    log: Logger,
  ) {
    super(`${options.clientId}-${process.pid}-${randomUUID().slice(0, 8)}`, log)
    this.sessionTimeoutMs = options.sessionTimeoutMs ?? 10_000
    this.kafka = new Kafka({
      clientId: `${options.clientId}-leader`,
      brokers: options.brokers,
      logLevel: KafkaLogLevel.ERROR,
      logCreator: () => ({ log: entry }) => {
        const { message, ...rest } = entry
        log.warn({ kafka: rest }, message)
      },
      retry: { retries: 8, initialRetryTime: 300 },
    })
  }

  override isLeader(): boolean {
    // The lease is checked at every call, not only by the timer: a process that froze steps down the moment it wakes.
    if (this.leader && Date.now() - this.lastHeartbeat > this.sessionTimeoutMs - LEASE_MARGIN_MS) {
      void this.stepDown('lease expired (no heartbeat answered)')
      return false
    }
    return this.leader
  }

  async start(): Promise<void> {
    const admin = this.kafka.admin()
    await admin.connect()
    try {
      // One partition: its owner is the one leader. (An existing topic with more keeps working: only partition 0 counts.)
      await admin.createTopics({ topics: [{ topic: this.options.topic, numPartitions: 1 }], waitForLeaders: true })
    } finally {
      await admin.disconnect()
    }
    await this.connectedProducer()
    const consumer = this.kafka.consumer({
      groupId: `${this.options.groupId}.leader`,
      sessionTimeout: this.sessionTimeoutMs,
      rebalanceTimeout: this.sessionTimeoutMs,
      heartbeatInterval: this.options.heartbeatIntervalMs ?? 1_000,
      maxWaitTimeInMs: 250,
      allowAutoTopicCreation: false,
    })
    this.consumer = consumer
    const { REBALANCING, GROUP_JOIN, HEARTBEAT, CRASH, STOP, DISCONNECT } = consumer.events
    consumer.on(HEARTBEAT, () => void (this.lastHeartbeat = Date.now()))
    consumer.on(REBALANCING, () => this.lose('rebalance'))
    consumer.on(CRASH, () => this.lose('consumer crashed'))
    consumer.on(STOP, () => this.lose('consumer stopped'))
    consumer.on(DISCONNECT, () => this.lose('disconnected'))
    consumer.on(GROUP_JOIN, ({ payload }) => {
      this.epoch++
      this.lastHeartbeat = Date.now()
      this.ownsPartition0 = (payload.memberAssignment[this.options.topic] ?? []).includes(0)
      this.position = undefined
      if (this.ownsPartition0) void this.claim(this.epoch)
      else void this.stepDown('partition 0 assigned to another member')
    })
    await consumer.connect()
    await consumer.subscribe({ topics: [this.options.topic], fromBeginning: true })
    // Not awaited: run() waits for the first join, which waits out a dead member's session; the instance serves
    // meanwhile as a follower.
    void consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      eachBatch: async ({ batch, resolveOffset, heartbeat, isRunning, isStale }) => {
        if (batch.partition !== 0 || !batch.messages.length) return
        // Only the leader handles requests (a member in its handover waits; a stepped-down one leaves them).
        const epoch = this.epoch
        while (!this.isLeader() && this.ownsPartition0 && this.epoch === epoch && isRunning() && !isStale()) {
          await new Promise((r) => setTimeout(r, 100))
          await heartbeat()
        }
        if (!this.isLeader() || this.epoch !== epoch || !isRunning() || isStale()) {
          await new Promise((r) => setTimeout(r, 200)) // fetched again from the last resolved offset
          return
        }
        const messages: ControlMessage[] = []
        for (const m of batch.messages) {
          try {
            messages.push(JSON.parse(m.value?.toString('utf8') ?? '') as ControlMessage)
          } catch {
            this.log.error({ offset: m.offset }, 'unreadable control message skipped')
          }
        }
        await this.handler?.(messages)
        const next = (BigInt(batch.lastOffset()) + 1n).toString()
        resolveOffset(batch.lastOffset())
        if (this.isLeader() && this.epoch === epoch) {
          this.position = next
          await this.renew(epoch)
        }
      },
    }).catch((err) => this.log.error({ err: String(err) }, 'leadership consumer failed to start'))
    this.timer = setInterval(() => {
      if (this.leader) {
        if (!this.isLeader()) return
        void this.renew(this.epoch)
      }
    }, this.options.renewEveryMs ?? 2_000)
    this.timer.unref()
  }

  /** Partition 0 is ours in this generation: prove it to the broker with a commit, wait out the handover, lead. */
  private async claim(epoch: number): Promise<void> {
    // A transient failure (the coordinator busy) is tried again while partition 0 is still ours in this epoch; a
    // refused generation is followed by a rebalance, which ends the epoch.
    while (epoch === this.epoch && this.ownsPartition0 && !this.stopping && !this.leader) {
      if (await this.tryClaim(epoch)) return
      await new Promise((r) => setTimeout(r, 1_000))
    }
  }

  private async tryClaim(epoch: number): Promise<boolean> {
    try {
      const consumer = this.consumer!
      const admin = this.kafka.admin()
      await admin.connect()
      try {
        const [t] = await admin.fetchOffsets({ groupId: `${this.options.groupId}.leader`, topics: [this.options.topic] })
        const committed = t?.partitions.find((p) => p.partition === 0)?.offset ?? '-1'
        // Nothing committed yet: commit 0 (nothing handled), so even the first claim is checked by the broker.
        this.position = committed === '-1' ? '0' : committed
      } finally {
        await admin.disconnect()
      }
      await consumer.commitOffsets([{ topic: this.options.topic, partition: 0, offset: this.position }])
      await new Promise((r) => setTimeout(r, this.options.handoverMs ?? 2_000))
      if (epoch !== this.epoch || !this.ownsPartition0 || this.stopping) return true
      await consumer.commitOffsets([{ topic: this.options.topic, partition: 0, offset: this.position }])
      if (epoch !== this.epoch || !this.ownsPartition0 || this.stopping) return true
      if (Date.now() - this.lastHeartbeat > this.sessionTimeoutMs - LEASE_MARGIN_MS) return false
      await this.set(true, `owns partition 0 of ${this.options.topic}`)
      return true
    } catch (err) {
      this.log.warn({ err: String(err) }, 'leadership claim refused; trying again')
      return false
    }
  }

  /** A commit the broker accepts only from the current generation's member: refused, the claim is over. */
  private async renew(epoch: number): Promise<void> {
    if (!this.position || epoch !== this.epoch) return
    try {
      await this.consumer!.commitOffsets([{ topic: this.options.topic, partition: 0, offset: this.position }])
    } catch (err) {
      await this.stepDown(`claim refused by the broker: ${(err as Error).message}`)
    }
  }

  private lose(why: string): void {
    this.epoch++
    this.ownsPartition0 = false
    void this.stepDown(why)
  }

  private stepDown(why: string): Promise<void> {
    return this.set(false, why)
  }

  /** Connected on first use: a follower's API may audit a call before start() has run. */
  private connectedProducer(): Promise<Producer> {
    return (this.producer ??= (async () => {
      const producer = this.kafka.producer({ allowAutoTopicCreation: false })
      await producer.connect()
      return producer
    })())
  }

  async toLeader(request: ControlRequest): Promise<void> {
    const message = this.message(request)
    const producer = await this.connectedProducer()
    await producer.send({ topic: this.options.topic, acks: -1, messages: [{ partition: 0, key: message.from, value: JSON.stringify(message) }] })
  }

  async stop(): Promise<void> {
    this.stopping = true
    clearInterval(this.timer)
    this.lose('stopping')
    await this.settled()
    await this.consumer?.disconnect().catch(() => undefined)
    await (await this.producer?.catch(() => undefined))?.disconnect().catch(() => undefined)
  }

  /** Tests of several instances in one process: stops like a killed one, with no step-down work (it leaves the group). */
  async abort(): Promise<void> {
    this.stopping = true
    clearInterval(this.timer)
    this.leader = false
    this.epoch++
    await this.consumer?.disconnect().catch(() => undefined)
    await (await this.producer?.catch(() => undefined))?.disconnect().catch(() => undefined)
  }
}

export function leadershipFor(kafka: { brokers: string[]; clientId: string; groupId: string; controlTopic: string } | undefined, log: Logger): Leadership {
  return kafka ? new KafkaLeadership({ brokers: kafka.brokers, clientId: kafka.clientId, groupId: kafka.groupId, topic: kafka.controlTopic }, log) : new SoloLeadership(log)
}
