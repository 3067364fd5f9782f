// A poison event on one partition, on a real broker and the real engine (issue 11): the engine refuses one event
// of partition 0 for good (a constraint stands for any such refusal), partition 0 also carries a leap second, an
// event of 1970 and 150 events on 150 past days. Every partition keeps committing, the refused event and the
// ancient one are dead-lettered with their reasons and original bytes, everything after them is stored exactly once,
// /metrics says where each partition stands, and a restart after a SIGKILL resumes.
import { randomUUID } from 'node:crypto'
import { createServer } from 'node:net'
import { Kafka, logLevel } from 'kafkajs'
import { afterAll, describe, expect, inject, it } from 'vitest'
import { openStorage, queryRows } from '../clickhouse/client.ts'
import { usageEvent } from '../contract/synthetic.ts'
import { openTestStorage, startKeywatch, tempDir } from './helpers.ts'
import { createTopics } from './kafka/broker.ts'
import { readTopic, waitFor } from './kafka/admin.ts'

const brokers = inject('kafkaBrokers')
const run = randomUUID().slice(0, 8)
const topics = { usage: `usage-${run}`, ratelimits: `ratelimits-${run}`, auth: `auth-${run}`, lifecycle: `lifecycle-${run}`, leaks: `leaks-${run}`, deadLetter: `deadletter-${run}` }
const groupId = `keywatch-${run}`
const dataDir = tempDir()
const DAY = 86_400_000
const kafka = new Kafka({ clientId: 'keywatch-test', brokers: brokers.split(','), logLevel: logLevel.NOTHING })
const admin = kafka.admin()
let metricsPort = 0

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })
}

const env = () => ({
  KEYWATCH_DATA_DIR: dataDir,
  KAFKA_BROKERS: brokers,
  KAFKA_GROUP_ID: groupId,
  KAFKA_TOPIC_USAGE: topics.usage,
  KAFKA_TOPIC_RATELIMITS: topics.ratelimits,
  KAFKA_TOPIC_AUTH: topics.auth,
  KAFKA_TOPIC_LIFECYCLE: topics.lifecycle,
  KAFKA_TOPIC_LEAKS: topics.leaks,
  KAFKA_TOPIC_DEAD_LETTER: topics.deadLetter,
  METRICS_PORT: String(metricsPort),
})

/** Committed offset and end of each partition of the usage topic. */
async function partitions(): Promise<{ committed: number; end: number }[]> {
  const [offsets] = await admin.fetchOffsets({ groupId, topics: [topics.usage] })
  const ends = await admin.fetchTopicOffsets(topics.usage)
  return ends
    .sort((a, b) => a.partition - b.partition)
    .map((e) => ({ committed: Math.max(0, Number(offsets?.partitions.find((p) => p.partition === e.partition)?.offset ?? -1)), end: Number(e.high) }))
}

afterAll(async () => {
  await admin.disconnect()
})

describe('a poison event on one partition', () => {
  it('isolates it, keeps every partition committing and stores everything after it exactly once', async () => {
    metricsPort = await freePort()
    await admin.connect()
    await createTopics(brokers, Object.values(topics), 3)
    // The engine refuses one event's contents: a constraint on the raw table, set before keywatch holds the directory.
    const setup = await openTestStorage(dataDir)
    await setup.client.command({ query: "ALTER TABLE key_usage ADD CONSTRAINT IF NOT EXISTS test_poison CHECK request_id != 'req_poison'" })
    await setup.close()

    const now = Date.now()
    const valid = (i: number) => ({ ...usageEvent(i, { keys: 30, from: now - 3_600_000, to: now - 60_000 }) })
    const perPartition = 3_000
    const produced: { partition: number; value: string }[] = []
    const storedIds = new Set<string>()
    for (let p = 0; p < 3; p++) {
      for (let i = 0; i < perPartition; i++) {
        if (p === 0 && i === perPartition / 2) {
          // The middle of partition 0: the poison, a leap second, an event of 1970, 150 past days.
          const poison = { ...valid(90_000), request_id: 'req_poison' }
          const leap = { ...valid(90_001), occurred_at: new Date(now - DAY).toISOString().slice(0, 10) + 'T23:59:60.000Z' }
          const ancient = { ...valid(90_002), occurred_at: '1970-01-01T00:00:00.000Z' }
          produced.push({ partition: 0, value: JSON.stringify(poison) }, { partition: 0, value: JSON.stringify(leap) }, { partition: 0, value: JSON.stringify(ancient) })
          storedIds.add(leap.event_id)
          for (let d = 1; d <= 150; d++) {
            const e = { ...valid(91_000 + d), occurred_at: new Date(now - d * 2 * DAY - d * 60_000).toISOString() }
            produced.push({ partition: 0, value: JSON.stringify(e) })
            storedIds.add(e.event_id)
          }
        }
        const e = valid(p * perPartition + i)
        produced.push({ partition: p, value: JSON.stringify(e) })
        storedIds.add(e.event_id)
      }
    }
    const producer = kafka.producer()
    await producer.connect()
    for (let i = 0; i < produced.length; i += 500) await producer.send({ topic: topics.usage, acks: -1, messages: produced.slice(i, i + 500) })
    await producer.disconnect()

    const keywatch = await startKeywatch(env(), ['start'], 180_000)
    // Sampled while it runs: no partition may sit still with messages left while another moves.
    const samples: { committed: number; end: number }[][] = []
    await waitFor(
      'every partition committed to its end',
      async () => {
        const ps = await partitions()
        samples.push(ps)
        return ps.every((p) => p.committed === p.end)
      },
      240_000,
      500,
    )
    expect(samples.at(-1)!.map((p) => p.end)).toEqual([perPartition + 153, perPartition, perPartition])
    // Once consuming began, no partition with messages left stood still for long (a wedged one stands forever).
    const began = samples.findIndex((ps) => ps.some((p) => p.committed > 0))
    for (let p = 0; p < 3; p++) {
      let still = 0
      let longest = 0
      for (let i = Math.max(1, began + 1); i < samples.length; i++) {
        const [prev, cur] = [samples[i - 1]![p]!, samples[i]![p]!]
        still = cur.committed < cur.end && cur.committed === prev.committed ? still + 1 : 0
        longest = Math.max(longest, still)
      }
      expect(longest * 0.5, `partition ${p} stood still (s)`).toBeLessThan(30)
    }
    expect(keywatch.logs()).not.toMatch(/batch not stored/)

    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text()
    for (let p = 0; p < 3; p++) {
      const labels = `{topic="${topics.usage}",partition="${p}"}`
      expect(metrics).toContain(`keywatch_kafka_consumer_lag${labels} 0`)
      expect(metrics).toContain(`keywatch_kafka_committed_offset${labels} ${samples.at(-1)![p]!.end}`)
      expect(metrics).toMatch(new RegExp(`keywatch_kafka_seconds_since_commit\\{topic="${topics.usage}",partition="${p}"\\} [\\d.]+`))
    }

    // The two that cannot be stored are on the dead-letter topic with their reasons and their original bytes.
    const dead = await readTopic(brokers, topics.deadLetter, 2)
    const byReason = Object.fromEntries(dead.map((m) => [m.headers.reason, m]))
    expect(Object.keys(byReason).sort()).toEqual(['outside_retention', 'storage_rejected'])
    // Byte for byte what was produced: the engine refuses it after its batch was packed (ingest/kafka-messages.ts).
    expect(byReason.storage_rejected!.value.toString()).toBe(produced.find((m) => m.value.includes('"req_poison"'))!.value)
    expect(byReason.storage_rejected!.headers.detail).toMatch(/test_poison/)
    expect(byReason.storage_rejected!.headers['source-partition']).toBe('0')
    expect(JSON.parse(byReason.outside_retention!.value.toString()).occurred_at).toBe('1970-01-01T00:00:00.000Z')

    // SIGKILL, then a new instance: it resumes (the crashed member's session runs out in 15 s, not 30 s).
    keywatch.child.kill('SIGKILL')
    await keywatch.exited
    const again = await startKeywatch(env(), ['start'], 180_000)
    const restartedAt = Date.now()
    const more = Array.from({ length: 30 }, (_, i) => valid(95_000 + i))
    for (const e of more) storedIds.add(e.event_id)
    const p2 = kafka.producer()
    await p2.connect()
    await p2.send({ topic: topics.usage, acks: -1, messages: more.map((e, i) => ({ partition: i % 3, value: JSON.stringify(e) })) })
    await p2.disconnect()
    await waitFor('the restarted instance consumed the new events', async () => (await partitions()).every((p) => p.committed === p.end), 90_000, 250)
    console.log(`resumed after a SIGKILL in ${Date.now() - restartedAt} ms`)
    again.child.kill('SIGTERM')
    expect(await again.exited).toBe(0)
    expect(again.logs()).toMatch(/stopped cleanly/)

    // Stored exactly once: every valid id, nothing else, rollups alike.
    const storage = await openStorage({ mode: 'embedded', dataDir, database: 'keywatch' })
    try {
      const [c] = await queryRows<{ raw: number; ids: number; hourly: number; daily: number }>(
        storage.client,
        `SELECT (SELECT count() FROM key_usage) AS raw, (SELECT uniqExact(event_id) FROM key_usage) AS ids,
                (SELECT sum(requests) FROM key_usage_hourly) AS hourly, (SELECT sum(requests) FROM key_usage_daily) AS daily`,
      )
      expect(c).toEqual({ raw: storedIds.size, ids: storedIds.size, hourly: storedIds.size, daily: storedIds.size })
      const ids = await queryRows<{ id: string }>(storage.client, 'SELECT toString(event_id) AS id FROM key_usage')
      expect(ids.every((r) => storedIds.has(r.id))).toBe(true)
      // Rejections are recorded at least once: a batch fetched again after a rebalance records its rejections again.
      const errors = await queryRows<{ reason: string; partition: number; offset: number }>(storage.client, 'SELECT DISTINCT reason, partition, offset FROM ingest_errors ORDER BY reason')
      expect(errors).toEqual([
        { reason: 'outside_retention', partition: 0, offset: perPartition / 2 + 2 },
        { reason: 'storage_rejected', partition: 0, offset: perPartition / 2 },
      ])
    } finally {
      await storage.close()
    }
  }, 420_000)
})
