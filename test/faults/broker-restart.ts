// A broker restart under several instances (issue 16): a broker of its own (restarting the suite's shared one would
// break every other test file), three instances sharing one store (test/faults/instances.ts: each its own consumer
// and leadership membership), N usage events with unique ids over 6 partitions plus 5% producer duplicates, half
// published first and half live (a send the broker refuses while it is down is sent again: still one id each). At
// 40% committed the broker is stopped, left down, and started again on the same ports and data. Judged by the oracle;
// the leaders are polled throughout (never two) and one must lead again after the restart.
import { randomUUID } from 'node:crypto'
import type { Storage } from '../../clickhouse/client.ts'
import { usageEvent } from '../../contract/synthetic.ts'
import { createTopics, startBroker } from '../kafka/broker.ts'
import { groupProgress, publish, waitFor } from '../kafka/admin.ts'
import { judge, type Verdict } from './oracle.ts'
import { startInstance, watchLeaders, type Instance } from './instances.ts'

export interface BrokerRestartRun {
  verdict: Verdict
  published: number
  maxLeaders: number
  leaderChanges: string[]
  restartedAt: number
  leaderAfterRestart: string
  sendsRetried: number
}

export async function brokerRestartRun(storage: Storage, opts: { n: number; signal?: 'SIGTERM' | 'SIGKILL'; downMs?: number }): Promise<BrokerRestartRun> {
  const broker = await startBroker()
  const brokers = broker.brokers
  const run = randomUUID().slice(0, 8)
  const kafka = {
    brokers: [brokers],
    clientId: `kwb-${run}`,
    groupId: `keywatch-restart-${run}`,
    controlTopic: `control-restart-${run}`,
    sessionTimeoutMs: 15_000,
    topics: {
      usage: `usage-restart-${run}`,
      ratelimits: `ratelimits-restart-${run}`,
      auth: `auth-restart-${run}`,
      lifecycle: `lifecycle-restart-${run}`,
      leaks: `leaks-restart-${run}`,
      commands: `commands-restart-${run}`,
      deadLetter: `deadletter-restart-${run}`,
    },
  }
  const topicsOfGroup = [kafka.topics.usage, kafka.topics.ratelimits, kafka.topics.auth, kafka.topics.lifecycle, kafka.topics.leaks]
  const instances: Instance[] = []
  const leaders = watchLeaders(() => instances)
  try {
    await createTopics(brokers, [kafka.topics.usage], 6)
    await createTopics(brokers, [...topicsOfGroup.slice(1), kafka.topics.deadLetter], 1)
    const now = Date.now()
    const N = opts.n
    const events = Array.from({ length: N }, (_, i) => usageEvent(i, { keys: 600, from: now - 3 * 86_400_000, to: now - 60_000 }))
    const produced = new Set(events.map((e) => e.event_id.toLowerCase()))
    const messages = events.map((e) => ({ key: e.key_id, value: JSON.stringify(e) }))
    for (let i = 0; i < Math.floor(N / 20); i++) messages.push({ key: events[(i * 19) % N]!.key_id, value: JSON.stringify(events[(i * 19) % N]) })
    await publish(brokers, kafka.topics.usage, messages.slice(0, messages.length / 2))
    for (const name of ['i1', 'i2', 'i3']) instances.push(await startInstance(name, storage, kafka, { insertDelayMs: 200 }))
    let sendsRetried = 0
    // Live, paced so the sends run through the outage.
    const publishing = (async () => {
      const rest = messages.slice(messages.length / 2)
      for (let i = 0; i < rest.length; i += 250) {
        for (;;) {
          try {
            await publish(brokers, kafka.topics.usage, rest.slice(i, i + 250))
            break
          } catch {
            sendsRetried++ // the broker is down: the same messages again (a duplicate on the topic at worst)
            await new Promise((r) => setTimeout(r, 500))
          }
        }
        await new Promise((r) => setTimeout(r, 300))
      }
    })()
    const progress = () => groupProgress(brokers, kafka.groupId, topicsOfGroup)
    await waitFor('40% committed', async () => ((await progress()).committed >= 0.4 * messages.length ? true : undefined), 600_000, 100)
    const restartedAt = Date.now()
    await broker.restart({ signal: opts.signal ?? 'SIGTERM', downMs: opts.downMs ?? 5_000 })
    await publishing
    await waitFor('everything committed after the restart', async () => {
      const p = await progress().catch(() => undefined)
      return p && p.committed >= p.end ? p : undefined
    }, 600_000, 250)
    const leader = await waitFor('one leader again', async () => {
      const l = instances.filter((i) => !i.dead && i.leadership.isLeader())
      return l.length === 1 ? l[0] : undefined
    }, 60_000)
    for (const i of instances) await i.stop()
    leaders.stop()
    await new Promise((r) => setTimeout(r, 700))
    return { verdict: await judge(storage.client, produced), published: messages.length, maxLeaders: leaders.max(), leaderChanges: leaders.changes(), restartedAt, leaderAfterRestart: leader.name, sendsRetried }
  } finally {
    leaders.stop()
    for (const i of instances) if (!i.dead) await i.kill().catch(() => undefined)
    await broker.stop()
  }
}
