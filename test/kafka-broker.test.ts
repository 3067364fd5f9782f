// The Kafka test harness itself: the suite's broker takes a topic, 10 messages in, the same 10 out.
import { randomUUID } from 'node:crypto'
import { Kafka, logLevel } from 'kafkajs'
import { afterAll, expect, inject, test } from 'vitest'
import { createTopics } from './kafka/broker.ts'

const brokers = inject('kafkaBrokers')
const kafka = new Kafka({ clientId: 'keywatch-broker-smoke', brokers: brokers.split(','), logLevel: logLevel.NOTHING })
const admin = kafka.admin()
const producer = kafka.producer({ allowAutoTopicCreation: false })
const consumer = kafka.consumer({ groupId: `smoke-${randomUUID()}` })

afterAll(async () => {
  await Promise.allSettled([admin.disconnect(), producer.disconnect(), consumer.disconnect()])
})

test('creates a topic, produces 10 messages and consumes them back', async () => {
  const topic = `smoke-${randomUUID()}`
  await createTopics(brokers, [topic], 3)
  await createTopics(brokers, [topic], 3) // idempotent
  await admin.connect()
  const metadata = await admin.fetchTopicMetadata({ topics: [topic] })
  expect(metadata.topics[0]?.partitions).toHaveLength(3)

  const sent = Array.from({ length: 10 }, (_, i) => ({ key: `k${i % 4}`, value: `message-${i}` }))
  await producer.connect()
  await producer.send({ topic, acks: -1, messages: sent })

  const received: { key: string; value: string; partition: number }[] = []
  let allIn: () => void = () => undefined
  const done = new Promise<void>((r) => (allIn = r))
  await consumer.connect()
  await consumer.subscribe({ topics: [topic], fromBeginning: true })
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      received.push({ key: message.key?.toString() ?? '', value: message.value?.toString() ?? '', partition })
      if (received.length >= sent.length) allIn()
    },
  })
  await done

  expect(received.map((m) => m.value).sort()).toEqual(sent.map((m) => m.value).sort())
  // Same key, same partition; and per partition, the order they were sent in.
  for (const key of new Set(sent.map((m) => m.key))) {
    const ofKey = received.filter((m) => m.key === key)
    expect(new Set(ofKey.map((m) => m.partition)).size).toBe(1)
    expect(ofKey.map((m) => m.value)).toEqual(sent.filter((m) => m.key === key).map((m) => m.value))
  }
}, 60_000)
