// Negative control of the several-instance run: the same run with the consumer's fencing and handover off must
// store duplicates, and the oracle must say so (else the run could not catch what fencing prevents).
import { afterAll, describe, expect, inject, it } from 'vitest'
import type { Storage } from '../../clickhouse/client.ts'
import { openTestStorage, tempDir } from '../helpers.ts'
import { rebalanceRun } from './rebalance.ts'

const brokers = inject('kafkaBrokers')
let storage: Storage | undefined

describe('several instances on one store, unfenced', () => {
  afterAll(async () => {
    await storage?.close()
  })

  it('negative control: unfenced, the oracle catches double writes', { timeout: 1_800_000 }, async () => {
    storage = await openTestStorage(tempDir())
    const run = await rebalanceRun(brokers, storage, { n: 30_000, unfenced: true })
    console.log(JSON.stringify({ fenced: false, ...run.verdict }))
    expect(run.verdict.verdict).toBe('FAIL')
    expect(run.verdict.duplicates).toBeGreaterThan(0)
  })
})
