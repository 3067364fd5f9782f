// The leader killed mid-work, CI size (issue 16): whole instances sharing one store, a real broker, Slack and the key
// service on loopback (test/faults/takeover.ts). The leader dies right after a detector run recorded findings,
// while Slack holds its answer to an alert, while the key service's answer to a revoke is on its way back, and right
// after it published a revoke on the commands topic. Each time: every usage event stored once (the oracle), one
// leader at a time, each leaked key's finding decided once, its alert posted once, its revoke sent under one command
// id and carried out once, and the audit chain whole. `npm run test:faults` runs the same with more events.
import { randomUUID } from 'node:crypto'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest'
import { openRuntime } from '../app/runtime.ts'
import { parseConfig } from '../config/config.ts'
import { lifecycle } from '../detectors/fixtures/events.ts'
import { createTopics } from './kafka/broker.ts'
import { readTopic } from './kafka/admin.ts'
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

describe('a new leader and the revokes a dead one left requested on the commands topic', () => {
  it('confirms the ones a lifecycle event answered and publishes the others again under their own command id', { timeout: 60_000 }, async () => {
    const run = randomUUID().slice(0, 8)
    const commandsTopic = `commands-resume-${run}`
    await createTopics(brokers, [commandsTopic], 1)
    const config = parseConfig({ KEYWATCH_DATA_DIR: tempDir(), LOG_LEVEL: 'silent', KAFKA_BROKERS: brokers, KAFKA_TOPIC_COMMANDS: commandsTopic, RESPONSE_TRANSPORT: 'kafka' })
    const rt = await openRuntime(config, pino({ level: 'silent' }), { storage })
    try {
      const [answered, unanswered] = ['Ans', 'Una'].map((n) => ({ account_id: `acct_Res${n}${run}`, key_id: `key_Res${n}${run}`, key_prefix: 'sk_live_Res1', key_kind: 'secret' as const, mode: 'live' as const }))
      const requestedAt = new Date(Date.now() - 5_000)
      // What the dead leader left: both published and saved as requested; the key service carried out one so far.
      const left = [answered!, unanswered!].map((k) =>
        rt.actions.draft({ command: 'revoke', ...k, finding_id: `fnd_Res${k.key_id}`, policy: 'revoke-leaked-keys', requested_by: 'auto:leak.public_report', reason: 'leaked', incident: true, forced: false, transport: 'kafka', status: 'requested', status_detail: '', requested_at: requestedAt }),
      )
      await rt.actions.write(left)
      const { rejections } = await rt.pipeline.ingest([{ raw: Buffer.from(JSON.stringify(lifecycle(answered!, 'revoked', new Date().toISOString(), { actor: { type: 'monitor', id: 'auto:leak.public_report' } }))), origin: { source: 'file' as const } }])
      expect(rejections).toEqual([])

      const resent = await rt.response.resumeRequested()
      expect(resent.map((a) => a.key_id).filter((id) => id.endsWith(run))).toEqual([unanswered!.key_id]) // (the store is shared with the runs above)
      const onTopic = (await readTopic(brokers, commandsTopic, resent.length)).map((m) => JSON.parse(m.value.toString()) as { command_id: string; key_id: string }).filter((c) => c.key_id.endsWith(run))
      expect(onTopic).toEqual([expect.objectContaining({ key_id: unanswered!.key_id, command_id: left[1]!.command_id })]) // its own id: consumers dedupe
      expect((await rt.actions.get(left[0]!.action_id))?.status).toBe('confirmed')
      expect((await rt.actions.get(left[1]!.action_id))?.status).toBe('requested') // until its lifecycle event comes
    } finally {
      await rt.close()
    }
  })
})
