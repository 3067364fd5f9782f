// A broker restart under three instances sharing one store, CI size (issue 16; test/faults/broker-restart.ts): every
// event stored once in the raw table and every rollup, never two leaders, one leader again after the restart.
// `npm run test:faults` runs it bigger, down longer.
import { afterAll, describe, expect, it } from 'vitest'
import type { Storage } from '../clickhouse/client.ts'
import { openTestStorage, tempDir } from './helpers.ts'
import { brokerRestartRun } from './faults/broker-restart.ts'

let storage: Storage | undefined

describe('a broker restart with several instances', () => {
  afterAll(async () => {
    await storage?.close()
  })

  it('stores every event once, one leader at a time, and a leader again after it', { timeout: 300_000 }, async () => {
    storage = await openTestStorage(tempDir())
    const run = await brokerRestartRun(storage, { n: 8_000, signal: 'SIGKILL', downMs: 2_000 })
    console.log(JSON.stringify({ published: run.published, sendsRetried: run.sendsRetried, leaderAfterRestart: run.leaderAfterRestart, leaderChanges: run.leaderChanges, ...run.verdict }))
    expect(run.verdict.failures).toEqual([])
    expect(run.maxLeaders).toBe(1)
  })
})
