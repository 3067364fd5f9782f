// The leader killed mid-work at fault-suite size (test/faults/takeover.ts): the four kills one after another on one
// store, FAULTS_USAGE usage events each (default 30,000) and four leaked keys each.
import { afterAll, beforeAll, describe, inject, it } from 'vitest'
import type { Storage } from '../../clickhouse/client.ts'
import { openTestStorage, tempDir } from '../helpers.ts'
import { startSlackStandIn, type SlackStandIn } from '../stand-ins/slack.ts'
import { expectExactlyOnce, takeoverRun, type KillAt } from './takeover.ts'

const brokers = inject('kafkaBrokers')
let storage: Storage
let slack: SlackStandIn
const produced = new Set<string>()
const deploymentDir = tempDir()

beforeAll(async () => {
  storage = await openTestStorage(tempDir())
  slack = await startSlackStandIn()
})

afterAll(async () => {
  await slack?.close()
  await storage?.close()
})

describe('the leader killed mid-work (fault suite)', () => {
  for (const killAt of ['detector', 'alert', 'revoke', 'revoke-kafka'] as KillAt[]) {
    it(`killed at ${killAt}`, { timeout: 900_000 }, async () => {
      expectExactlyOnce(await takeoverRun({ brokers, storage, slack, killAt, usage: Number(process.env.FAULTS_USAGE ?? 30_000), produced, deploymentDir, leakedKeys: 4 }))
    })
  }
})
