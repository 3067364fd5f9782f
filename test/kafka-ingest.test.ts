// Kafka in, end to end, on a real broker and the real engine: every contract example is stored, each kind of bad
// input reaches the dead-letter topic (original bytes, key and headers) and ingest_errors, valid messages around
// the bad ones all land, and SIGTERM drains and commits.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest'
import type { Storage } from '../clickhouse/client.ts'
import { queryRows } from '../clickhouse/client.ts'
import { usageEvent } from '../contract/synthetic.ts'
import { contractExamples, count, openTestStorage, startKeywatch, tempDir } from './helpers.ts'
import { createTopics } from './kafka/broker.ts'
import { groupProgress, publish, readTopic, waitFor } from './kafka/admin.ts'

const brokers = inject('kafkaBrokers')
const run = randomUUID().slice(0, 8)
const topics = {
  usage: `usage-${run}`,
  ratelimits: `ratelimits-${run}`,
  auth: `auth-${run}`,
  lifecycle: `lifecycle-${run}`,
  leaks: `leaks-${run}`,
  deadLetter: `deadletter-${run}`,
}
const topicOfType: Record<string, string> = {
  'key.usage': topics.usage,
  'key.ratelimited': topics.ratelimits,
  'auth.event': topics.auth,
  'key.lifecycle': topics.lifecycle,
  'leak.reported': topics.leaks,
}
const groupId = `keywatch-${run}`
const dataDir = tempDir()
const env = {
  KEYWATCH_DATA_DIR: dataDir,
  KAFKA_BROKERS: brokers,
  KAFKA_GROUP_ID: groupId,
  KAFKA_TOPIC_USAGE: topics.usage,
  KAFKA_TOPIC_RATELIMITS: topics.ratelimits,
  KAFKA_TOPIC_AUTH: topics.auth,
  KAFKA_TOPIC_LIFECYCLE: topics.lifecycle,
  KAFKA_TOPIC_LEAKS: topics.leaks,
  KAFKA_TOPIC_DEAD_LETTER: topics.deadLetter,
}

const examples = contractExamples().filter((e) => e.type !== 'key.command')
const now = Date.now()
const valid = (i: number) => JSON.stringify(usageEvent(i, { keys: 10, from: now - 600_000, to: now - 60_000 }))
const tooLarge = JSON.stringify({ ...usageEvent(9_000), user_agent: 'x'.repeat(70_000) })
const future = JSON.stringify({ ...usageEvent(9_001), occurred_at: new Date(now + 3_600_000).toISOString() })
const schemaBroken = JSON.stringify({ ...usageEvent(9_002), status: 'two hundred' })
const wrongType = examples.find((e) => e.type === 'auth.event')!.line.replace(/"event_id": "[^"]+"/, `"event_id": "${randomUUID()}"`)
const bad = [
  { value: Buffer.from('{"this is": not json'), reason: 'invalid_json' },
  { value: Buffer.from(schemaBroken), reason: 'schema_violation' },
  { value: Buffer.from(tooLarge), reason: 'too_large' },
  { value: Buffer.from(future), reason: 'future_timestamp' },
  { value: Buffer.from(wrongType), reason: 'wrong_topic' },
  { value: Buffer.from([0xff, 0xfe, 0x00, 0x7b]), reason: 'invalid_json' },
]

let storage: Storage

describe('Kafka ingest', () => {
  beforeAll(async () => {
    await createTopics(brokers, [...Object.values(topics)], 3)
    for (const e of examples) {
      const event = JSON.parse(e.line) as { key_id?: string | null; account_id: string }
      const key = e.type === 'auth.event' || e.type === 'leak.reported' ? event.account_id : (event.key_id ?? event.account_id)
      await publish(brokers, topicOfType[e.type]!, [{ key, value: e.line }])
    }
    // Bad messages interleaved with valid ones on the usage topic, all on one key so one partition sees them in order.
    const stream: { key: string; value: string | Buffer }[] = []
    for (let i = 0; i < 200; i++) {
      stream.push({ key: 'key_interleaved', value: valid(i) })
      if (i % 30 === 0 && bad[i / 30]) stream.push({ key: 'key_interleaved', value: bad[i / 30]!.value })
    }
    await publish(brokers, topics.usage, stream)
  })

  afterAll(async () => {
    await storage?.close()
  })

  it('stores every valid message, dead-letters every bad one, and drains on SIGTERM', async () => {
    const keywatch = await startKeywatch(env)
    const allTopics = Object.values(topicOfType)
    const progress = await waitFor('the consumer group to commit every offset', async () => {
      const p = await groupProgress(brokers, groupId, allTopics)
      return p.end > 0 && p.committed === p.end ? p : undefined
    })
    expect(progress.end).toBe(examples.length + 200 + bad.length)

    const dead = await readTopic(brokers, topics.deadLetter, bad.length)
    expect(dead).toHaveLength(bad.length)
    for (const b of bad) {
      const letter = dead.find((d) => d.value.equals(b.value))
      expect(letter, `dead letter for ${b.reason}`).toBeDefined()
      expect(letter!.headers.reason).toBe(b.reason)
      expect(letter!.headers['source-topic']).toBe(topics.usage)
      expect(letter!.key).toBe('key_interleaved')
      expect(Number(letter!.headers['source-offset'])).toBeGreaterThanOrEqual(0)
      expect(Number(letter!.headers['source-partition'])).toBeGreaterThanOrEqual(0)
      expect(letter!.headers.detail ?? '').not.toBe('')
    }

    keywatch.child.kill('SIGTERM')
    expect(await keywatch.exited).toBe(0)
    expect(keywatch.logs()).toContain('stopped cleanly')

    storage = await openTestStorage(dataDir)
    const byType = (t: string) => examples.filter((e) => e.type === t).length
    expect(await count(storage, 'SELECT count() AS n FROM key_usage')).toBe(byType('key.usage') + 200)
    expect(await count(storage, 'SELECT count() AS n FROM key_ratelimits')).toBe(byType('key.ratelimited'))
    expect(await count(storage, 'SELECT count() AS n FROM auth_events')).toBe(byType('auth.event'))
    expect(await count(storage, 'SELECT count() AS n FROM key_lifecycle')).toBe(byType('key.lifecycle'))
    expect(await count(storage, 'SELECT count() AS n FROM leak_reports')).toBe(byType('leak.reported'))

    const errors = await queryRows<{ reason: string; topic: string; offset: string; raw_base64: string }>(
      storage.client,
      'SELECT reason, topic, offset, raw_base64 FROM ingest_errors ORDER BY toInt64(offset)',
    )
    expect(errors.map((e) => e.reason).sort()).toEqual(bad.map((b) => b.reason).sort())
    for (const e of errors) {
      expect(e.topic).toBe(topics.usage)
      expect(bad.some((b) => Buffer.from(e.raw_base64, 'base64').equals(b.value))).toBe(true)
    }
  })
})
