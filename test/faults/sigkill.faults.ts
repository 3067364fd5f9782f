// SIGKILL at 10, 50 and 90% of the committed offsets, a restart after each, with leadership on (the last start
// must lead again). Judged by the oracle against N (raw, distinct, every rollup).
import { randomUUID } from 'node:crypto'
import { afterAll, describe, expect, inject, it } from 'vitest'
import type { Storage } from '../../clickhouse/client.ts'
import { usageEvent } from '../../contract/synthetic.ts'
import { openTestStorage, startKeywatch, tempDir } from '../helpers.ts'
import { createTopics } from '../kafka/broker.ts'
import { groupProgress, publish, waitFor } from '../kafka/admin.ts'
import { judge } from './oracle.ts'

const brokers = inject('kafkaBrokers')
const run = randomUUID().slice(0, 8)
const N = Number(process.env.FAULTS_N ?? 200_000)
const dataDir = tempDir()
const env = {
  KEYWATCH_DATA_DIR: dataDir,
  KAFKA_BROKERS: brokers,
  KAFKA_GROUP_ID: `keywatch-kill-${run}`,
  KAFKA_TOPIC_CONTROL: `control-kill-${run}`,
  KAFKA_TOPIC_USAGE: `usage-kill-${run}`,
  KAFKA_TOPIC_RATELIMITS: `ratelimits-kill-${run}`,
  KAFKA_TOPIC_AUTH: `auth-kill-${run}`,
  KAFKA_TOPIC_LIFECYCLE: `lifecycle-kill-${run}`,
  KAFKA_TOPIC_LEAKS: `leaks-kill-${run}`,
  KAFKA_TOPIC_DEAD_LETTER: `deadletter-kill-${run}`,
  INGEST_BATCH_MAX_ROWS: '1000',
  EXPORT_SCHEDULE: 'off',
}
const topicsOfGroup = [env.KAFKA_TOPIC_USAGE, env.KAFKA_TOPIC_RATELIMITS, env.KAFKA_TOPIC_AUTH, env.KAFKA_TOPIC_LIFECYCLE, env.KAFKA_TOPIC_LEAKS]
let storage: Storage | undefined

describe('SIGKILL at 10/50/90%', () => {
  afterAll(async () => {
    await storage?.close()
  })

  it('stores exactly N after three kills and restarts', { timeout: 1_800_000 }, async () => {
    await createTopics(brokers, [env.KAFKA_TOPIC_USAGE], 6)
    await createTopics(brokers, [...topicsOfGroup.slice(1), env.KAFKA_TOPIC_DEAD_LETTER], 1)
    const now = Date.now()
    const events = Array.from({ length: N }, (_, i) => usageEvent(i, { keys: 2_000, from: now - 5 * 86_400_000, to: now - 60_000 }))
    await publish(brokers, env.KAFKA_TOPIC_USAGE, events.map((e) => ({ key: e.key_id, value: JSON.stringify(e) })))
    const progress = () => groupProgress(brokers, env.KAFKA_GROUP_ID, topicsOfGroup)
    for (const share of [0.1, 0.5, 0.9]) {
      const kw = await startKeywatch(env)
      const at = await waitFor(`${share * 100}% committed`, async () => {
        const p = await progress()
        return p.committed >= share * N ? p : undefined
      }, 900_000, 20)
      kw.child.kill('SIGKILL')
      await kw.exited
      console.log(`SIGKILL at ${at.committed}/${N} committed`)
      expect(at.committed).toBeLessThan(N)
    }
    const last = await startKeywatch(env)
    // After three SIGKILLs of the one leader, this one leads again (the dead members' sessions run out).
    await waitFor('leading again', async () => /"msg":"leadership acquired"/.test(last.logs()) || undefined, 60_000)
    await waitFor('everything committed', async () => {
      const p = await progress()
      return p.committed === p.end || undefined
    }, 900_000, 250)
    last.child.kill('SIGTERM')
    expect(await last.exited).toBe(0)
    storage = await openTestStorage(dataDir)
    const verdict = await judge(storage.client, new Set(events.map((e) => e.event_id.toLowerCase())))
    console.log(JSON.stringify(verdict))
    expect(verdict.failures).toEqual([])
  })
})
