// The leader killed mid-work, CI size (issue 16): whole instances sharing one store, a real broker, Slack and the key
// service on loopback (test/faults/takeover.ts). The leader dies right after a detector run recorded findings,
// while Slack holds its answer to an alert, while the key service's answer to a revoke is on its way back, and right
// after it published a revoke on the commands topic. Each time: every usage event stored once (the oracle), one
// leader at a time, each leaked key's finding decided once, its alert posted once, its revoke sent under one command
// id and carried out once, and the audit chain whole. `npm run test:faults` runs the same with more events.
import { afterAll, beforeAll, describe, inject, it } from 'vitest'
import type { Storage } from '../clickhouse/client.ts'
import { openTestStorage, tempDir } from './helpers.ts'
import { startSlackStandIn, type SlackStandIn } from './stand-ins/slack.ts'
import { expectExactlyOnce, takeoverRun, type KillAt } from './faults/takeover.ts'

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

describe('the leader killed mid-work, several instances on one store', () => {
  const cases: [KillAt, string][] = [
    ['detector', 'right after its detector run recorded findings'],
    ['alert', 'while Slack holds its answer to an alert'],
    ['revoke', "while the key service's answer to a revoke is on its way"],
    ['revoke-kafka', 'right after it published a revoke on the commands topic'],
  ]
  for (const [killAt, when] of cases) {
    it(`killed ${when}: nothing lost, nothing twice`, { timeout: 180_000 }, async () => {
      expectExactlyOnce(await takeoverRun({ brokers, storage, slack, killAt, usage: 3_000, produced, deploymentDir }))
    })
  }
})
