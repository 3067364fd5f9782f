// The several-instance run at fault-suite size (its unfenced control is unfenced.faults.ts: one engine per process).
import { afterAll, describe, expect, inject, it } from 'vitest'
import type { Storage } from '../../clickhouse/client.ts'
import { openTestStorage, tempDir } from '../helpers.ts'
import { rebalanceRun } from './rebalance.ts'

const brokers = inject('kafkaBrokers')
const stores: Storage[] = []

describe('several instances on one store (fault suite)', () => {
  afterAll(async () => {
    for (const s of stores) await s.close()
  })

  it('fenced: stored == produced, no duplicates, rollups == produced, one leader at a time', { timeout: 1_800_000 }, async () => {
    const storage = await openTestStorage(tempDir())
    stores.push(storage)
    const run = await rebalanceRun(brokers, storage, { n: Number(process.env.FAULTS_N ?? 200_000) })
    console.log(JSON.stringify({ fenced: true, published: run.published, killedLeader: run.killedLeader, leaderChanges: run.leaderChanges, ...run.verdict }))
    expect(run.verdict.failures).toEqual([])
    expect(run.maxLeaders).toBe(1)
  })
})
