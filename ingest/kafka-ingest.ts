// Kafka in: one consumer group over the contract's five topics. A partition batch is acknowledged (its offsets
// committed) only after its valid events are stored in ClickHouse and its bad messages are on the dead-letter
// topic and in ingest_errors.
import type { Config } from '../config/config.ts'
import type { InboundType } from '../contract/events.ts'
import { KafkaBatchConsumer, KafkaProducer, type ConsumerProgress, type Logger } from './kafka.ts'
import { KafkaMessages } from './kafka-messages.ts'
import { addSummary, emptySummary, type IngestPipeline, type IngestSummary } from './pipeline.ts'

export interface KafkaIngest {
  stats(): IngestSummary & { batches: number; deadLettered: number }
  stop(): Promise<void>
  /** Tests of several instances in one process (issue 16): stops like a SIGKILL, committing nothing more. */
  abort(): Promise<void>
}

export async function startKafkaIngest(
  kafka: NonNullable<Config['kafka']>,
  ingest: Config['ingest'],
  pipeline: IngestPipeline,
  log: Logger,
  /** Told where each partition stands: fetched, committed, assigned (metrics). */
  progress?: ConsumerProgress,
  /**
   * Fencing (issue 16): how long a newly assigned partition waits for its previous owner's inserts on the wire (0 on
   * the embedded engine, which one process owns); `unfenced` for the fault suite's negative control only.
   */
  fencing: { handoverMs?: number; unfenced?: boolean } = {},
): Promise<KafkaIngest> {
  const settings = { brokers: kafka.brokers, clientId: kafka.clientId }
  const t = kafka.topics
  const typeOfTopic: Record<string, InboundType> = {
    [t.usage]: 'key.usage',
    [t.ratelimits]: 'key.ratelimited',
    [t.auth]: 'auth.event',
    [t.lifecycle]: 'key.lifecycle',
    [t.leaks]: 'leak.reported',
  }
  const totals = { ...emptySummary(), batches: 0, deadLettered: 0 }
  const deadLetters = await KafkaProducer.connect(settings, log)
  const consumer = new KafkaBatchConsumer(
    settings,
    {
      groupId: kafka.groupId,
      topics: Object.keys(typeOfTopic),
      // Deeper than the writer's minimum batch: the next insert fills while one is in the engine.
      maxPendingPerPartition: ingest.kafkaPendingBatches ?? ingest.maxInflightBatches,
      partitionsConsumedConcurrently: 3,
      sessionTimeoutMs: kafka.sessionTimeoutMs,
      unfenced: fencing.unfenced,
      handoverMs: fencing.handoverMs,
    },
    log,
    progress,
  )

  // Takes what it needs of the batch and lets go of it: kafkajs's message objects, and the fetch response their
  // buffers point into, are not kept while the rows are stored (ingest/kafka-messages.ts).
  await consumer.start(({ topic, partition, messages: fetched, owned }) => ingestBatch(topic, partition, new KafkaMessages(topic, partition, fetched), owned))

  async function ingestBatch(topic: string, partition: number, messages: KafkaMessages, owned?: () => boolean): Promise<void> {
    // Rejections, the engine's refusals (storage_rejected) among them, go to the dead-letter topic; conflicting
    // duplicates are kept in ingest_errors only (their first version is stored).
    const { summary, rejections } = await pipeline.ingest(messages, typeOfTopic[topic], owned)
    await deadLetters.send(
      kafka.topics.deadLetter,
      rejections.map((r) => ({
        key: r.message.origin.key ?? null,
        value: Buffer.from(r.message.raw.buffer, r.message.raw.byteOffset, r.message.raw.byteLength),
        headers: {
          reason: r.reason,
          // A header is one line of bounded size (an engine message can be long).
          detail: r.detail.replace(/\s+/g, ' ').slice(0, 1000),
          'source-topic': topic,
          'source-partition': String(partition),
          'source-offset': r.message.origin.offset ?? '',
        },
      })),
    )
    addSummary(totals, summary)
    totals.batches++
    totals.deadLettered += rejections.length
    if (rejections.length) log.warn({ topic, partition, rejected: summary.rejectedByReason }, 'messages dead-lettered')
  }
  log.info({ brokers: kafka.brokers, topics: Object.keys(typeOfTopic), groupId: kafka.groupId }, 'kafka ingest started')

  return {
    stats: () => ({ ...totals, rejectedByReason: { ...totals.rejectedByReason } }),
    async abort() {
      await consumer.abort()
      await deadLetters.disconnect().catch(() => undefined)
    },
    async stop() {
      await consumer.stop()
      await deadLetters.disconnect()
      log.info({ ...totals }, 'kafka ingest stopped; all consumed batches stored and committed')
    },
  }
}
