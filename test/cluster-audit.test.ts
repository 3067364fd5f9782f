// The audit chain with two instances on one store (issue 16): one writer, the leader; a follower's entries go through
// the control topic and are appended by the leader, once each. The leader is killed mid-stream: the survivor takes
// over, and the chain is whole (no gap, no fork, verify-audit OK) with every acknowledged entry in it exactly once.
import { randomUUID } from 'node:crypto'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest'
import type { Storage } from '../clickhouse/client.ts'
import { queryRows } from '../clickhouse/client.ts'
import { ClusterAuditTrail } from '../cluster/audit.ts'
import { KafkaLeadership, SoloLeadership, type ControlMessage } from '../cluster/leadership.ts'
import { openTestStorage, tempDir } from './helpers.ts'
import { waitFor } from './kafka/admin.ts'

const brokers = inject('kafkaBrokers')
const run = randomUUID().slice(0, 8)
let storage: Storage | undefined
const members: KafkaLeadership[] = []

function member(name: string, storage: Storage): { leadership: KafkaLeadership; audit: ClusterAuditTrail } {
  const leadership = new KafkaLeadership({ brokers: brokers.split(','), clientId: `kwa-${name}`, groupId: `keywatch-audit-${run}`, topic: `control-audit-${run}` }, pino({ level: 'silent' }))
  const audit = new ClusterAuditTrail(storage.client, leadership)
  leadership.onControl((messages) => audit.appendForwarded(messages))
  leadership.onChange((leader) => void (leader && audit.resync()))
  members.push(leadership)
  return { leadership, audit }
}

describe('the audit chain with several instances', () => {
  beforeAll(async () => {
    storage = await openTestStorage(tempDir())
  })
  afterAll(async () => {
    for (const m of members) await m.abort().catch(() => undefined)
    await storage?.close()
  })

  it('has one writer; followers reach it; a killed leader leaves no gap and no duplicate', { timeout: 180_000 }, async () => {
    const a = member('a', storage!)
    const b = member('b', storage!)
    await a.leadership.start()
    await b.leadership.start()
    const [leader, follower] = await waitFor('a leader', async () => (a.leadership.isLeader() ? [a, b] : b.leadership.isLeader() ? [b, a] : undefined), 60_000)
    const acknowledged: string[] = []
    const record = async (m: typeof a, target: string) => {
      await m.audit.record({ actor: 'token:test', action: 'finding.acknowledge', target, request_id: target, outcome: 'ok' })
      acknowledged.push(target)
    }
    // Both write at once, interleaved.
    await Promise.all(Array.from({ length: 40 }, (_, i) => record(i % 2 ? leader : follower, `t-${i}`)))
    // The leader dies mid-stream (its entries on the way may be lost with it; acknowledged ones may not).
    const inFlight = Array.from({ length: 20 }, (_, i) => record(leader, `dying-${i}`).catch(() => undefined))
    await leader.leadership.abort()
    await Promise.all(inFlight)
    // The survivor goes on; what it records before it leads waits in the topic for it.
    await Promise.all(Array.from({ length: 20 }, (_, i) => record(follower, `after-${i}`)))
    await waitFor('the survivor leads', async () => follower.leadership.isLeader() || undefined, 60_000)
    const targets = async () => (await queryRows<{ target: string }>(storage!.client, 'SELECT target FROM audit_trail ORDER BY seq')).map((r) => r.target)
    await waitFor('every acknowledged entry in the chain', async () => {
      const inChain = new Set(await targets())
      return acknowledged.every((t) => inChain.has(t)) || undefined
    }, 60_000)
    const all = await targets()
    // (A producer's retry put a dying leader's forwarded entries in the topic twice, and both copies were appended.)
    const twice = await queryRows<{ seq: string; at: string; target: string; detail: string }>(storage!.client, `SELECT seq, toString(at) AS at, target, detail FROM audit_trail
      WHERE target IN (SELECT target FROM audit_trail GROUP BY target HAVING count() > 1) ORDER BY target, seq`)
    expect(twice, 'entries appended twice').toEqual([]) // none twice
    expect(all.length).toBe(new Set(all).size)
    const verdict = await follower.audit.verify()
    expect(verdict).toMatchObject({ ok: true })
    const forwarded = await queryRows<{ n: number }>(storage!.client, "SELECT count() AS n FROM audit_trail WHERE JSONExtractString(detail, 'origin', 'id') != ''")
    expect(Number(forwarded[0]!.n)).toBeGreaterThanOrEqual(20) // the follower's first 20 went through the topic
  })

  it('appends a forwarded entry once though the topic holds it twice, in one batch or again after a failover', async () => {
    const audit = new ClusterAuditTrail(storage!.client, new SoloLeadership(pino({ level: 'silent' })))
    const message = (target: string): ControlMessage => ({
      kind: 'audit',
      id: randomUUID(),
      from: 'kwa-x',
      at: Date.now(),
      entry: { actor: 'token:test', action: 'finding.acknowledge', target, request_id: target, outcome: 'ok' },
    })
    const [x, y, z] = ['twice-x', 'twice-y', 'twice-z'].map(message)
    await audit.appendForwarded([x!, y!, x!, z!, y!]) // a producer's retries land in the same batch
    await audit.appendForwarded([y!, z!, x!]) // the batch handed out again: its commit was lost with the leader
    const rows = await queryRows<{ target: string }>(storage!.client, "SELECT target FROM audit_trail WHERE startsWith(target, 'twice-') ORDER BY seq")
    expect(rows.map((r) => r.target)).toEqual(['twice-x', 'twice-y', 'twice-z'])
    expect(await audit.verify()).toMatchObject({ ok: true })
  })
})
