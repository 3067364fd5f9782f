// A broker stopped (SIGTERM), left down 15 s and started again under three instances sharing one store, at
// fault-suite size (test/faults/broker-restart.ts; CI SIGKILLs it at 8,000 events: test/cluster-broker-restart.test.ts).
import { afterAll, describe, expect, it } from 'vitest'
import type { Storage } from '../../clickhouse/client.ts'
import { openTestStorage, tempDir } from '../helpers.ts'
import { brokerRestartRun } from './broker-restart.ts'

let storage: Storage | undefined

describe('a broker restart with several instances (fault suite)', () => {
  afterAll(async () => {
    await storage?.close()
  })

  it('SIGTERM, 15 s down: stored == produced, no duplicates, rollups == produced, one leader at a time', { timeout: 1_800_000 }, async () => {
    storage = await openTestStorage(tempDir())
    const run = await brokerRestartRun(storage, { n: Number(process.env.FAULTS_N ?? 100_000), signal: 'SIGTERM', downMs: 15_000 })
    console.log(JSON.stringify({ signal: 'SIGTERM', published: run.published, sendsRetried: run.sendsRetried, leaderAfterRestart: run.leaderAfterRestart, leaderChanges: run.leaderChanges, ...run.verdict }))
    expect(run.verdict.failures).toEqual([])
    expect(run.maxLeaders).toBe(1)
  })
})
