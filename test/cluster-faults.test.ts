// The several-instance fault run (issue 16), CI size: test/faults/rebalance.ts (three instances sharing one store
// join mid-stream, the leader is killed, producer duplicates), judged by the oracle (test/faults/oracle.ts) against
// N in the raw table and every rollup; then the negative control damages the store and the oracle must fail.
// `npm run test:faults` runs it bigger, and the unfenced control beside it.
import { afterAll, describe, expect, inject, it } from 'vitest'
import type { Storage } from '../clickhouse/client.ts'
import { openTestStorage, tempDir } from './helpers.ts'
import { damage, judge } from './faults/oracle.ts'
import { rebalanceRun } from './faults/rebalance.ts'

const brokers = inject('kafkaBrokers')
let storage: Storage | undefined

describe('several instances on one store', () => {
  afterAll(async () => {
    await storage?.close()
  })

  it('stores every event once, in the raw table and every rollup, through joins and a leader kill; one leader at a time', { timeout: 900_000 }, async () => {
    storage = await openTestStorage(tempDir())
    const run = await rebalanceRun(brokers, storage, { n: Number(process.env.FAULTS_N ?? 30_000) })
    console.log(JSON.stringify({ published: run.published, killedLeader: run.killedLeader, leaderChanges: run.leaderChanges, ...run.verdict }))
    expect(run.verdict.failures).toEqual([])
    expect(run.verdict.verdict).toBe('PASS')
    expect(run.maxLeaders).toBe(1) // never two at once (polled every 25 ms)

    // Negative control: the same oracle on a store known to be wrong must fail.
    await damage(storage.client)
    const broken = await judge(storage.client, run.produced)
    expect(broken.verdict).toBe('FAIL')
    expect(broken.failures.join('; ')).toMatch(/raw|missing|duplicates/)
  })
})
