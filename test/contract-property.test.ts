// The contract, as a property (issue 11): 50,000 random events that the contract's JSON Schemas call valid
// (test/contract-generator.ts: json-schema-faker, seeded, times from anywhere the schema allows) go in by file,
// HTTP and Kafka. Every one is accepted, or rejected for its time with the reason the README gives
// (outside_retention, future_timestamp); accepted + rejected == sent; the raw tables gain exactly the accepted;
// no 500; the consumer commits to the end. The mirror: mutations the schemas reject are all rejected, with a reason.
import { Readable } from 'node:stream'
import { Kafka, logLevel } from 'kafkajs'
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest'
import type { FastifyInstance } from 'fastify'
import { buildApi } from '../api/server.ts'
import { apiDepsOf, type Runtime } from '../app/runtime.ts'
import { openStorage, queryRows, type Storage } from '../clickhouse/client.ts'
import { ingestNdjson } from '../ingest/ndjson.ts'
import { ContractGenerator, TYPES, type Generated } from './contract-generator.ts'
import { bearer, count, openTestRuntime, startKeywatch, tempDir } from './helpers.ts'
import { createTopics } from './kafka/broker.ts'
import { waitFor } from './kafka/admin.ts'

const SEED = Number(process.env.CONTRACT_PROPERTY_SEED ?? 20261201)
const PER_PATH = { file: 20_000, http: 15_000, kafka: 15_000 } // 50,000 in all
const RAW_TABLES = ['key_usage', 'key_ratelimits', 'auth_events', 'key_lifecycle', 'leak_reports']

let rt: Runtime | undefined
let api: FastifyInstance
let auth: { authorization: string }
const now = Date.now()
const gen = new ContractGenerator(SEED)
let serial = 0
const batch = (n: number): Generated[] => Array.from({ length: n }, () => gen.next(serial++, now))

beforeAll(async () => {
  rt = await openTestRuntime()
  api = await buildApi(apiDepsOf(rt))
  auth = await bearer(rt, 'ingest')
})
async function closeRuntime(): Promise<void> {
  await api?.close()
  await rt?.close()
  rt = undefined
}
afterAll(closeRuntime)

async function rawTotal(storage: Storage): Promise<number> {
  let n = 0
  for (const table of RAW_TABLES) n += await count(storage, 'SELECT count() AS n FROM {t:Identifier}', { t: table })
  return n
}

/** What the generator says keywatch must answer, summed. */
function expected(events: Generated[]) {
  const byReason: Record<string, number> = {}
  for (const e of events) if (e.expect !== 'accepted') byReason[e.expect] = (byReason[e.expect] ?? 0) + 1
  return { accepted: events.filter((e) => e.expect === 'accepted').length, rejected: events.length - events.filter((e) => e.expect === 'accepted').length, byReason }
}

describe('the mirror: events the schemas reject', () => {
  it('are all rejected, each with a reason and a detail', async () => {
    const mutated: { line: string; mutation: string }[] = []
    for (let i = 0; mutated.length < 5_000; i++) {
      const m = gen.mutate(gen.next(serial++, now))
      if (m) mutated.push(m)
    }
    const before = await rawTotal(rt!.storage)
    const report = await ingestNdjson(Readable.from([Buffer.from(mutated.map((m) => m.line).join('\n') + '\n')]), rt!.pipeline, { source: 'file' })
    if (report.accepted > 0) {
      // Name the mutations the mirror let through (the first rejected lines are in report.errors; find the accepted).
      const rejectedLines = await queryRows<{ line: number }>(rt!.storage.client, "SELECT line FROM ingest_errors WHERE source = 'file' AND received_at >= now() - INTERVAL 10 MINUTE")
      const seen = new Set(rejectedLines.map((r) => Number(r.line)))
      const through = mutated.filter((_, i) => !seen.has(i + 1)).slice(0, 5)
      expect(through, 'mutations the schema rejects but keywatch accepted').toEqual([])
    }
    expect(report).toMatchObject({ lines: mutated.length, accepted: 0, duplicates: 0, rejected: mutated.length })
    expect(Object.keys(report.rejectedByReason).every((r) => ['schema_violation', 'unknown_type', 'too_large', 'invalid_json'].includes(r))).toBe(true)
    expect(report.errors.every((e) => e.detail.length > 0)).toBe(true)
    expect(await rawTotal(rt!.storage)).toBe(before)
    const details = await queryRows<{ n: number }>(rt!.storage.client, "SELECT count() AS n FROM ingest_errors WHERE detail = '' OR reason = ''")
    expect(Number(details[0]!.n)).toBe(0)
  }, 180_000)
})

describe('valid events from the JSON Schemas', () => {
  it('cover every type, leap seconds, offsets and fractions, and are valid for the schemas', () => {
    const sample = batch(2_000)
    serial = 0
    expect(new Set(sample.map((g) => g.type))).toEqual(new Set(TYPES))
    const times = sample.map((g) => g.event.occurred_at as string)
    expect(times.some((t) => /:60(\.\d+)?Z$/.test(t))).toBe(true)
    expect(times.some((t) => /[+-]\d{2}:\d{2}$/.test(t))).toBe(true)
    for (let d = 1; d <= 6; d++) expect(times.some((t) => new RegExp(`:\\d{2}\\.\\d{${d}}(Z|[+-])`).test(t))).toBe(true)
    expect(sample.every((g) => gen.valid(g.type, g.event))).toBe(true)
    expect(new Set(sample.map((g) => g.expect))).toEqual(new Set(['accepted', 'outside_retention', 'future_timestamp']))
  })

  it('through a file: each accepted or rejected for its time, and the raw tables gain the accepted', async () => {
    const events = batch(PER_PATH.file)
    const before = await rawTotal(rt!.storage)
    const report = await ingestNdjson(Readable.from([Buffer.from(events.map((e) => e.line).join('\n') + '\n')]), rt!.pipeline, { source: 'file' })
    const want = expected(events)
    expect(report.errors.filter((e) => !['outside_retention', 'future_timestamp'].includes(e.reason))).toEqual([])
    expect(report).toMatchObject({ lines: events.length, accepted: want.accepted, duplicates: 0, rejected: want.rejected, rejectedByReason: want.byReason })
    expect(report.accepted + report.rejected).toBe(events.length)
    expect(await rawTotal(rt!.storage)).toBe(before + report.accepted)
  }, 180_000)

  it('through HTTP: 200 with the same answers, never a 500', async () => {
    const events = batch(PER_PATH.http)
    const before = await rawTotal(rt!.storage)
    let accepted = 0
    let rejected = 0
    const byReason: Record<string, number> = {}
    for (let i = 0; i < events.length; i += 5_000) {
      const chunk = events.slice(i, i + 5_000)
      const res = await api.inject({ method: 'POST', url: '/v1/events', headers: { ...auth, 'content-type': 'application/x-ndjson' }, payload: chunk.map((e) => e.line).join('\n') })
      expect(res.statusCode, res.body.slice(0, 500)).toBe(200)
      const body = res.json<{ accepted: number; rejected: number; rejectedByReason: Record<string, number> }>()
      accepted += body.accepted
      rejected += body.rejected
      for (const [r, n] of Object.entries(body.rejectedByReason)) byReason[r] = (byReason[r] ?? 0) + n
    }
    const want = expected(events)
    expect({ accepted, rejected, byReason }).toEqual({ accepted: want.accepted, rejected: want.rejected, byReason: want.byReason })
    expect(await rawTotal(rt!.storage)).toBe(before + accepted)
  }, 180_000)

  it('through Kafka: stored exactly as accepted, rejections dead-lettered, the consumer committed to the end', async () => {
    const brokers = inject('kafkaBrokers')
    const run = randomUUID().slice(0, 8)
    const topicOf: Record<string, string> = Object.fromEntries(TYPES.map((t) => [t, `${t.replace('.', '-')}-${run}`]))
    const deadLetter = `deadletter-${run}`
    await createTopics(brokers, [...Object.values(topicOf), deadLetter], 3)
    const events = batch(PER_PATH.kafka)
    const kafka = new Kafka({ clientId: 'keywatch-test', brokers: brokers.split(','), logLevel: logLevel.NOTHING })
    const producer = kafka.producer()
    await producer.connect()
    for (let i = 0; i < events.length; i += 500) {
      const chunk = events.slice(i, i + 500)
      await producer.sendBatch({ acks: -1, topicMessages: TYPES.map((t) => ({ topic: topicOf[t]!, messages: chunk.filter((e) => e.type === t).map((e) => ({ value: e.line })) })).filter((m) => m.messages.length) })
    }
    await producer.disconnect()
    const dataDir = tempDir()
    const groupId = `keywatch-${run}`
    const keywatch = await startKeywatch(
      {
        KEYWATCH_DATA_DIR: dataDir,
        KAFKA_BROKERS: brokers,
        KAFKA_GROUP_ID: groupId,
        KAFKA_TOPIC_USAGE: topicOf['key.usage']!,
        KAFKA_TOPIC_RATELIMITS: topicOf['key.ratelimited']!,
        KAFKA_TOPIC_AUTH: topicOf['auth.event']!,
        KAFKA_TOPIC_LIFECYCLE: topicOf['key.lifecycle']!,
        KAFKA_TOPIC_LEAKS: topicOf['leak.reported']!,
        KAFKA_TOPIC_DEAD_LETTER: deadLetter,
      },
      ['start'],
      180_000,
    )
    const admin = kafka.admin()
    await admin.connect()
    try {
      const progress = async () => {
        let committed = 0
        let end = 0
        for (const t of await admin.fetchOffsets({ groupId, topics: Object.values(topicOf) })) for (const p of t.partitions) committed += Math.max(0, Number(p.offset))
        for (const topic of Object.values(topicOf)) for (const p of await admin.fetchTopicOffsets(topic)) end += Number(p.high)
        return { committed, end }
      }
      await waitFor('the consumer committed every topic to its end', async () => {
        const p = await progress()
        return p.committed === p.end && p.end === events.length
      }, 300_000, 1_000)
      // Dead letters are written at least once (a batch fetched again after a rebalance sends its own again).
      const dead = (await admin.fetchTopicOffsets(deadLetter)).reduce((n, p) => n + Number(p.high), 0)
      expect(dead).toBeGreaterThanOrEqual(expected(events).rejected)
    } finally {
      await admin.disconnect()
      keywatch.child.kill('SIGTERM')
    }
    expect(await keywatch.exited).toBe(0)
    expect(keywatch.logs()).not.toMatch(/batch not stored/)
    await closeRuntime() // one data directory per process: the file and HTTP tests' runtime goes first (they ran)
    const storage = await openStorage({ mode: 'embedded', dataDir, database: 'keywatch' })
    try {
      const want = expected(events)
      expect(await rawTotal(storage)).toBe(want.accepted)
      const reasons = await queryRows<{ reason: string; n: number }>(storage.client, 'SELECT reason, uniqExact(topic, partition, offset) AS n FROM ingest_errors GROUP BY reason ORDER BY reason')
      expect(Object.fromEntries(reasons.map((r) => [r.reason, Number(r.n)]))).toEqual(want.byReason)
    } finally {
      await storage.close()
    }
  }, 600_000)
})

