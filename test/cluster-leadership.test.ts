// One leader at a time across real keywatch processes on a real broker, and a failover within 30 s of the leader's
// SIGKILL (issue 16). Who leads is read from each process's own log ("leadership acquired" / "leadership lost", with
// the time), the way an operator would; the intervals of the processes must never overlap.
import { randomUUID } from 'node:crypto'
import { afterAll, describe, expect, inject, it } from 'vitest'
import { startKeywatch, tempDir } from './helpers.ts'
import { waitFor } from './kafka/admin.ts'
import { createTopics } from './kafka/broker.ts'

const brokers = inject('kafkaBrokers')
const run = randomUUID().slice(0, 8)

interface Change {
  leader: boolean
  at: number
}

type Instance = Awaited<ReturnType<typeof startKeywatch>> & { name: string; killedAt?: number }

function changes(i: Instance): Change[] {
  return i
    .logs()
    .split('\n')
    .filter((l) => l.includes('"msg":"leadership '))
    .map((l) => JSON.parse(l) as { leader: boolean; at: string })
    .map((e) => ({ leader: e.leader, at: Date.parse(e.at) }))
}

function leads(i: Instance): boolean {
  const c = changes(i)
  return i.killedAt === undefined && c.length > 0 && c[c.length - 1]!.leader
}

/** The intervals during which each instance believed it led (a killed one until its kill). */
function intervals(i: Instance): [number, number][] {
  const out: [number, number][] = []
  let from: number | undefined
  for (const c of changes(i)) {
    if (c.leader) from = c.at
    else if (from !== undefined) out.push([from, c.at]), (from = undefined)
  }
  if (from !== undefined) out.push([from, i.killedAt ?? Date.now()])
  return out
}

const env = (name: string) => ({
  KEYWATCH_DATA_DIR: tempDir(),
  KAFKA_BROKERS: brokers,
  KAFKA_CLIENT_ID: `kw-${name}`,
  KAFKA_GROUP_ID: `keywatch-lead-${run}`,
  KAFKA_TOPIC_CONTROL: `control-${run}`,
  KAFKA_TOPIC_USAGE: `usage-lead-${run}`,
  KAFKA_TOPIC_RATELIMITS: `ratelimits-lead-${run}`,
  KAFKA_TOPIC_AUTH: `auth-lead-${run}`,
  KAFKA_TOPIC_LIFECYCLE: `lifecycle-lead-${run}`,
  KAFKA_TOPIC_LEAKS: `leaks-lead-${run}`,
  KAFKA_TOPIC_DEAD_LETTER: `deadletter-lead-${run}`,
  EXPORT_SCHEDULE: 'off',
})

const instances: Instance[] = []

describe('leadership across processes', () => {
  afterAll(() => {
    for (const i of instances) if (i.killedAt === undefined) i.child.kill('SIGKILL')
  })

  it('has exactly one leader at a time, and fails over within 30 s of a SIGKILL', { timeout: 240_000 }, async () => {
    const e = env('x')
    await createTopics(brokers, [e.KAFKA_TOPIC_USAGE, e.KAFKA_TOPIC_RATELIMITS, e.KAFKA_TOPIC_AUTH, e.KAFKA_TOPIC_LIFECYCLE, e.KAFKA_TOPIC_LEAKS, e.KAFKA_TOPIC_DEAD_LETTER], 2)
    for (const name of ['a', 'b']) instances.push({ ...(await startKeywatch(env(name))), name })
    const live = () => instances.filter((i) => i.killedAt === undefined)
    const first = await waitFor('one leader among a and b', async () => {
      const l = live().filter(leads)
      return l.length === 1 ? l[0] : undefined
    }, 60_000)

    // A third instance joins: a rebalance; afterwards again exactly one leader.
    instances.push({ ...(await startKeywatch(env('c'))), name: 'c' })
    await new Promise((r) => setTimeout(r, 8_000))
    const second = await waitFor('one leader among a, b, c', async () => {
      const l = live().filter(leads)
      return l.length === 1 ? l[0] : undefined
    }, 60_000)

    // The leader dies without a word: the coordinator notices by the session timeout and another takes over.
    second.child.kill('SIGKILL')
    second.killedAt = Date.now()
    await second.exited
    const next = await waitFor('a new leader', async () => {
      const l = live().filter(leads)
      return l.length === 1 ? l[0] : undefined
    }, 30_000)
    const failoverMs = changes(next).filter((c) => c.leader).at(-1)!.at - second.killedAt
    console.log(`first leader ${first.name}, after the join ${second.name}, after its SIGKILL ${next.name} in ${failoverMs} ms`)
    expect(next).not.toBe(second)
    expect(failoverMs).toBeLessThan(30_000)

    // Never two at once, over the whole run.
    const all = instances.flatMap((i) => intervals(i).map(([from, to]) => ({ name: i.name, from, to })))
    for (const x of all) for (const y of all) if (x !== y && x.name !== y.name) expect(x.from < y.to && y.from < x.to, `${x.name} and ${y.name} overlap`).toBe(false)
    expect(all.length).toBeGreaterThanOrEqual(2)
  })
})
