// The several-instance run (issue 16): N usage events with unique ids over 6 partitions plus 5% producer duplicates,
// half published before the first instance starts and half live in small sends; three instances sharing one store
// join one after another mid-stream (rebalances) and the one leading at 60% is killed abruptly. Every insert reaches
// the engine a while after it is sent (slowInserts), the window a handover must cover. Returns the oracle's verdict.
import { randomUUID } from 'node:crypto'
import type { Storage } from '../../clickhouse/client.ts'
import { usageEvent } from '../../contract/synthetic.ts'
import { createTopics } from '../kafka/broker.ts'
import { groupProgress, publish, waitFor } from '../kafka/admin.ts'
import { judge, type Verdict } from './oracle.ts'
import { startInstance, watchLeaders, type Instance } from './instances.ts'

export interface RebalanceRun {
  verdict: Verdict
  produced: Set<string>
  published: number
  maxLeaders: number
  leaderChanges: string[]
  killedLeader: string
}

export async function rebalanceRun(brokers: string, storage: Storage, opts: { n: number; insertDelayMs?: number; unfenced?: boolean }): Promise<RebalanceRun> {
  const run = randomUUID().slice(0, 8)
  const kafka = {
    brokers: brokers.split(','),
    clientId: `kwf-${run}`,
    groupId: `keywatch-faults-${run}`,
    controlTopic: `control-faults-${run}`,
    sessionTimeoutMs: 15_000,
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
  await createTopics(brokers, [kafka.topics.usage], 6)
  await createTopics(brokers, [...topicsOfGroup.slice(1), kafka.topics.deadLetter], 1)
  const now = Date.now()
  const N = opts.n
  const events = Array.from({ length: N }, (_, i) => usageEvent(i, { keys: 600, from: now - 3 * 86_400_000, to: now - 60_000 }))
  const produced = new Set(events.map((e) => e.event_id.toLowerCase()))
  const messages = events.map((e) => ({ key: e.key_id, value: JSON.stringify(e) }))
  for (let i = 0; i < Math.floor(N / 20); i++) messages.push({ key: events[(i * 19) % N]!.key_id, value: JSON.stringify(events[(i * 19) % N]) })
  await publish(brokers, kafka.topics.usage, messages.slice(0, messages.length / 2))
  // The rest live, in small sends: fetches end at different offsets on each owner, so no batch boundary repeats by
  // chance and the inserts' content tokens cannot hide a double write.
  const publishing = (async () => {
    const rest = messages.slice(messages.length / 2)
    for (let i = 0; i < rest.length; i += 300) {
      await publish(brokers, kafka.topics.usage, rest.slice(i, i + 300))
      await new Promise((r) => setTimeout(r, 30))
    }
  })()

  const instances: Instance[] = []
  const leaders = watchLeaders(() => instances)
  const progress = () => groupProgress(brokers, kafka.groupId, topicsOfGroup)
  const reach = (share: number) => waitFor(`${share * 100}% committed`, async () => ((await progress()).committed >= share * messages.length ? true : undefined), 900_000, 100)
  const start = async (name: string) => instances.push(await startInstance(name, storage, kafka, { insertDelayMs: opts.insertDelayMs ?? 1_000, unfenced: opts.unfenced }))
  try {
    await start('i1')
    await reach(0.15)
    await start('i2') // a second instance joins mid-stream
    await reach(0.4)
    await start('i3') // and a third
    await reach(0.6)
    const victim = await waitFor('a leader to kill', async () => instances.find((i) => !i.dead && i.leadership.isLeader()), 30_000)
    await victim.kill() // abrupt: what it had in flight is neither finished nor committed by it
    await publishing
    await waitFor('everything committed', async () => {
      const p = await progress()
      return p.committed === p.end ? p : undefined
    }, 900_000, 250)
    await waitFor('a leader among the survivors', async () => instances.filter((i) => !i.dead && i.leadership.isLeader()).length === 1 || undefined, 30_000)
    for (const i of instances) if (!i.dead) await i.stop()
    leaders.stop()
    await new Promise((r) => setTimeout(r, (opts.insertDelayMs ?? 1_000) + 500)) // the killed one's last insert lands
    return { verdict: await judge(storage.client, produced), produced, published: messages.length, maxLeaders: leaders.max(), leaderChanges: leaders.changes(), killedLeader: victim.name }
  } finally {
    leaders.stop()
    for (const i of instances) if (!i.dead) await i.kill().catch(() => undefined)
  }
}
