// The several-instance fault run (issue 16), CI size: N usage events with unique ids over 6 partitions plus producer
// duplicates; three instances sharing one store join one after another mid-stream (rebalances), and the first one,
// whichever leads, is killed abruptly mid-stream. The oracle (test/faults/oracle.ts) then counts raw rows, distinct
// ids and every rollup against N; the negative control damages the store and the oracle must fail.
// `npm run test:faults` runs it with FAULTS_N=200000.
import { randomUUID } from 'node:crypto'
import { afterAll, describe, expect, inject, it } from 'vitest'
import type { Storage } from '../clickhouse/client.ts'
import { usageEvent } from '../contract/synthetic.ts'
import { openTestStorage, tempDir } from './helpers.ts'
import { createTopics } from './kafka/broker.ts'
import { groupProgress, publish, waitFor } from './kafka/admin.ts'
import { damage, judge } from './faults/oracle.ts'
import { startInstance, watchLeaders, type Instance } from './faults/instances.ts'

const brokers = inject('kafkaBrokers')
const run = randomUUID().slice(0, 8)
const N = Number(process.env.FAULTS_N ?? 30_000)
// Every insert reaches the engine this long after it is sent (test/faults/instances.ts: slowInserts).
const INSERT_DELAY_MS = Number(process.env.FAULTS_INSERT_DELAY_MS ?? 1_000)
const DUPLICATES = Math.floor(N / 20) // the producer sends 5% twice
const kafka = {
  brokers: brokers.split(','),
  clientId: `kwf-${run}`,
  groupId: `keywatch-faults-${run}`,
  controlTopic: `control-faults-${run}`,
  topics: {
    usage: `usage-faults-${run}`,
    ratelimits: `ratelimits-faults-${run}`,
    auth: `auth-faults-${run}`,
    lifecycle: `lifecycle-faults-${run}`,
    leaks: `leaks-faults-${run}`,
    commands: `commands-faults-${run}`,
    deadLetter: `deadletter-faults-${run}`,
  },
}
const topicsOfGroup = [kafka.topics.usage, kafka.topics.ratelimits, kafka.topics.auth, kafka.topics.lifecycle, kafka.topics.leaks]

let storage: Storage | undefined
const instances: Instance[] = []

describe('several instances on one store', () => {
  afterAll(async () => {
    for (const i of instances) if (!i.dead) await i.kill().catch(() => undefined)
    await storage?.close()
  })

  it('stores every event once, in the raw table and every rollup, through joins and a kill; one leader at a time', { timeout: 900_000 }, async () => {
    storage = await openTestStorage(tempDir())
    await createTopics(brokers, [kafka.topics.usage], 6)
    await createTopics(brokers, [...topicsOfGroup.slice(1), kafka.topics.deadLetter], 1)
    const now = Date.now()
    const events = Array.from({ length: N }, (_, i) => usageEvent(i, { keys: 600, from: now - 3 * 86_400_000, to: now - 60_000 }))
    const produced = new Set(events.map((e) => e.event_id.toLowerCase()))
    const messages = events.map((e) => ({ key: e.key_id, value: JSON.stringify(e) }))
    for (let i = 0; i < DUPLICATES; i++) messages.push({ key: events[i * 19 % N]!.key_id, value: JSON.stringify(events[i * 19 % N]) })
    // Half before the first instance starts, the rest while they join and die.
    await publish(brokers, kafka.topics.usage, messages.slice(0, messages.length / 2))
    // The rest live, in small sends: fetches then end at different offsets on each owner (no batch boundary repeats
    // by chance, so the insert tokens cannot hide a double write).
    const publishing = (async () => {
      const rest = messages.slice(messages.length / 2)
      for (let i = 0; i < rest.length; i += 300) {
        await publish(brokers, kafka.topics.usage, rest.slice(i, i + 300))
        await new Promise((r) => setTimeout(r, 30))
      }
    })()

    const leaders = watchLeaders(() => instances)
    const progress = () => groupProgress(brokers, kafka.groupId, topicsOfGroup)
    const reach = (share: number) => waitFor(`${share * 100}% committed`, async () => ((await progress()).committed >= share * messages.length ? true : undefined), 600_000, 100)

    instances.push(await startInstance('i1', storage, kafka, { insertDelayMs: INSERT_DELAY_MS }))
    await reach(0.15)
    instances.push(await startInstance('i2', storage, kafka, { insertDelayMs: INSERT_DELAY_MS })) // a second instance joins mid-stream
    await reach(0.4)
    instances.push(await startInstance('i3', storage, kafka, { insertDelayMs: INSERT_DELAY_MS })) // and a third
    await reach(0.6)
    const victim = await waitFor('a leader to kill', async () => instances.find((i) => !i.dead && i.leadership.isLeader()), 30_000)
    const victimLed = victim.leadership.isLeader()
    await victim.kill() // abrupt: whatever it had in flight is neither finished nor committed by it
    await publishing
    const end = await waitFor('everything committed', async () => {
      const p = await progress()
      return p.committed === p.end ? p : undefined
    }, 600_000, 250)
    await waitFor('a leader among the survivors', async () => instances.filter((i) => !i.dead && i.leadership.isLeader()).length === 1 || undefined, 30_000)
    for (const i of instances) if (!i.dead) await i.stop()
    leaders.stop()

    const verdict = await judge(storage.client, produced)
    console.log(JSON.stringify({ N, published: messages.length, committed: end.committed, victimLed, leaderChanges: leaders.changes(), ...verdict }))
    expect(verdict.failures).toEqual([])
    expect(verdict.verdict).toBe('PASS')
    expect(leaders.max()).toBe(1) // never two at once (polled every 25 ms)

    // Negative control: the same oracle on a store known to be wrong must fail.
    await damage(storage.client)
    const broken = await judge(storage.client, produced)
    expect(broken.verdict).toBe('FAIL')
    expect(broken.failures.join('; ')).toMatch(/raw|missing|duplicates/)
  })
})
