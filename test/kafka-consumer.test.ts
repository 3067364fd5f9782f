// The Kafka consumer on a real broker when a batch fails to store: nothing after it is committed, the consumer
// rejoins from the last commit, and every message is handled (none skipped) before the group is fully committed.
import { randomUUID } from 'node:crypto'
import { describe, expect, inject, it } from 'vitest'
import { KafkaBatchConsumer, type PartitionBatch } from '../ingest/kafka.ts'
import { createTopics } from './kafka/broker.ts'
import { groupProgress, publish, waitFor } from './kafka/admin.ts'

const brokers = inject('kafkaBrokers')
const quiet = { info: () => {}, warn: () => {}, error: () => {} }

describe('KafkaBatchConsumer', () => {
  it('rejoins from the last commit after a failed batch and skips nothing', async () => {
    const topic = `consumer-${randomUUID().slice(0, 8)}`
    const groupId = `group-${topic}`
    await createTopics(brokers, [topic], 3)
    const N = 3_000
    await publish(brokers, topic, Array.from({ length: N }, (_, i) => ({ key: `k${i % 50}`, value: String(i) })))

    const handled = new Set<string>()
    let failures = 0
    const consumer = new KafkaBatchConsumer(
      { brokers: brokers.split(','), clientId: 'consumer-test' },
      { groupId, topics: [topic], maxPendingPerPartition: 2, partitionsConsumedConcurrently: 3 },
      quiet,
    )
    await consumer.start(async (batch: PartitionBatch) => {
      // The first batch that reaches offset 100 of partition 0 fails, as a store would.
      if (failures === 0 && batch.partition === 0 && batch.messages.some((m) => Number(m.offset) >= 100)) {
        failures++
        throw new Error('storage unavailable')
      }
      await new Promise((r) => setTimeout(r, 5))
      for (const m of batch.messages) handled.add(m.value!.toString())
    })
    try {
      await waitFor('every offset committed', async () => {
        const p = await groupProgress(brokers, groupId, [topic])
        return p.committed === N ? p : undefined
      }, 90_000)
    } finally {
      await consumer.stop()
    }
    expect(failures).toBe(1)
    expect(handled.size).toBe(N) // every message handled, the failed batch's included
  })
})
