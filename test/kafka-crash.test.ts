// None lost, none twice: N events on a real broker, the consumer SIGKILLed mid-stream and restarted, exactly N stored,
// in the raw table and in the rollups the materialized views keep.
import { randomUUID } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, inject, it } from 'vitest'
import type { Storage } from '../clickhouse/client.ts'
import { usageEvent } from '../contract/synthetic.ts'
import { count, openTestStorage, startKeywatch, tempDir } from './helpers.ts'
import { createTopics } from './kafka/broker.ts'
import { groupProgress, publish, waitFor } from './kafka/admin.ts'

const brokers = inject('kafkaBrokers')
const run = randomUUID().slice(0, 8)
const usageTopic = `usage-crash-${run}`
const groupId = `keywatch-crash-${run}`
const dataDir = tempDir()
const N = 30_000
const REDELIVERED = 500 // published twice by the platform: same event_id, must be stored once
const env = {
  KEYWATCH_DATA_DIR: dataDir,
  KAFKA_BROKERS: brokers,
  KAFKA_GROUP_ID: groupId,
  KAFKA_TOPIC_USAGE: usageTopic,
  KAFKA_TOPIC_RATELIMITS: `ratelimits-crash-${run}`,
  KAFKA_TOPIC_AUTH: `auth-crash-${run}`,
  KAFKA_TOPIC_LIFECYCLE: `lifecycle-crash-${run}`,
  KAFKA_TOPIC_LEAKS: `leaks-crash-${run}`,
  KAFKA_TOPIC_DEAD_LETTER: `deadletter-crash-${run}`,
  // Small batches: many commits, so a kill lands between them.
  INGEST_BATCH_MAX_ROWS: '500',
  INGEST_BATCH_MAX_WAIT_MS: '20',
  LOG_LEVEL: 'debug',
}

let storage: Storage | undefined

describe('crash safety', () => {
  afterAll(async () => {
    await storage?.close()
  })

  it('stores exactly N events after a SIGKILL mid-stream and a restart', async () => {
    await createTopics(brokers, [usageTopic, env.KAFKA_TOPIC_RATELIMITS, env.KAFKA_TOPIC_AUTH, env.KAFKA_TOPIC_LIFECYCLE, env.KAFKA_TOPIC_LEAKS], 3)
    const now = Date.now()
    const events = Array.from({ length: N }, (_, i) => usageEvent(i, { keys: 300, from: now - 86_400_000, to: now - 60_000 }))
    const messages = events.map((e) => ({ key: e.key_id, value: JSON.stringify(e) }))
    for (let i = 0; i < REDELIVERED; i++) messages.push({ key: events[i * 7]!.key_id, value: JSON.stringify(events[i * 7]) })
    await publish(brokers, usageTopic, messages)

    const topicsOfGroup = [usageTopic, env.KAFKA_TOPIC_RATELIMITS, env.KAFKA_TOPIC_AUTH, env.KAFKA_TOPIC_LIFECYCLE, env.KAFKA_TOPIC_LEAKS]
    const first = await startKeywatch(env)
    const atKill = await waitFor(
      'some but not all offsets committed',
      async () => {
        const p = await groupProgress(brokers, groupId, topicsOfGroup)
        return p.committed > 0 ? p : undefined
      },
      60_000,
      20,
    )
    first.child.kill('SIGKILL')
    await first.exited
    // The kill must land mid-stream, or this test proves nothing.
    expect(atKill.committed).toBeLessThan(N + REDELIVERED)

    const second = await startKeywatch(env)
    await waitFor('every offset committed after the restart', async () => {
      const p = await groupProgress(brokers, groupId, topicsOfGroup)
      return p.committed === p.end && p.end === N + REDELIVERED
    }, 120_000)
    second.child.kill('SIGTERM')
    expect(await second.exited).toBe(0)

    storage = await openTestStorage(dataDir)
    const problems = [first.logs(), second.logs()].join('\n').split('\n').filter((l) => /"level":(40|50|60)/.test(l)).join('\n')
    writeFileSync(join(dataDir, '..', `crash-${run}-first.log`), first.logs())
    writeFileSync(join(dataDir, '..', `crash-${run}-second.log`), second.logs())
    expect(await count(storage, 'SELECT count() AS n FROM key_usage'), `${dataDir} ${problems}`).toBe(N)
    expect(await count(storage, 'SELECT uniqExact(event_id) AS n FROM key_usage')).toBe(N)
    expect(await count(storage, 'SELECT sum(requests) AS n FROM key_usage_hourly')).toBe(N)
    expect(await count(storage, 'SELECT sum(requests) AS n FROM key_usage_daily')).toBe(N)
    expect(await count(storage, 'SELECT sum(requests) AS n FROM key_last_used')).toBe(N)
    expect(await count(storage, "SELECT count() AS n FROM event_ids FINAL WHERE type = 'key.usage'")).toBe(N)
  })
})
