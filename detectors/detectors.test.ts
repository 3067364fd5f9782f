// Every detector's fixtures on the real engine: each attack fires with the expected subject, severity and evidence;
// each look-alike stays quiet. Every case has an account of its own, so cases cannot see each other.
import { Readable } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Storage } from '../clickhouse/client.ts'
import { ingestNdjson } from '../ingest/ndjson.ts'
import { IngestPipeline } from '../ingest/pipeline.ts'
import { EventWriter } from '../ingest/writer.ts'
import { openTestStorage, tempDir } from '../test/helpers.ts'
import type { Fixtures } from './detector.ts'
import { DetectionEngine } from './engine.ts'
import { FindingStore } from './findings.ts'
import * as abuse from './fixtures/abuse.ts'
import * as behaviour from './fixtures/behaviour.ts'
import * as keys from './fixtures/keys.ts'
import * as leak from './fixtures/leak.ts'

const FIXTURES: Record<string, Fixtures> = {
  'leak.public_report': leak.publicReport,
  'leak.unmatched_report': leak.unmatchedReport,
  'leak.secret_key_client_side': abuse.secretKeyClientSide,
  'abuse.ratelimit_spike': abuse.ratelimitSpike,
  'abuse.key_enumeration': abuse.keyEnumeration,
  'auth.mfa_bruteforce': abuse.mfaBruteforce,
  'key.mode_mismatch': abuse.modeMismatch,
  'key.used_after_revocation': keys.usedAfterRevocation,
  'key.stale': keys.stale,
  'key.rotation_overdue': keys.rotationOverdue,
  'key.rotation_due_soon': keys.rotationDueSoon,
  'key.rotation_stalled': keys.rotationStalled,
  'key.expiring_in_use': keys.expiringInUse,
  'key.new_network': behaviour.newNetwork,
  'key.dormant_reactivated': behaviour.dormantReactivated,
  'key.scope_probe': behaviour.scopeProbe,
  'key.money_spike': behaviour.moneySpike,
  'auth.account_takeover': behaviour.accountTakeover,
  'auth.password_spray': behaviour.passwordSpray,
  'key.orphaned': behaviour.orphaned,
  'key.env_reuse': behaviour.envReuse,
  'key.used_after_expiry': behaviour.usedAfterExpiry,
  'key.rotation_grace_too_long': behaviour.rotationGraceTooLong,
  'key.overprivileged': behaviour.overprivileged,
  'key.sensitive_change_without_step_up': behaviour.sensitiveChangeWithoutStepUp,
}

let storage: Storage
let engine: DetectionEngine
const log = { info: () => {}, error: (o: object, m?: string) => console.error(m, o) }

beforeAll(async () => {
  storage = await openTestStorage(tempDir())
  const writer = new EventWriter(storage, { maxRows: 20_000, maxWaitMs: 10, maxInflight: 2 })
  const pipeline = new IngestPipeline(storage.client, writer)
  const events = Object.values(FIXTURES).flatMap((f) => [...f.fires, ...f.quiet].flatMap((c) => c.events))
  const report = await ingestNdjson(Readable.from([Buffer.from(events.map((e) => JSON.stringify(e)).join('\n'))]), pipeline, { source: 'file' })
  expect(report.errors).toEqual([])
  await writer.drain()
  engine = new DetectionEngine(storage.client, new FindingStore(storage.client), log)
})
afterAll(async () => {
  await storage.close()
})

const accountsOf = (events: Record<string, unknown>[]) => new Set(events.map((e) => e.account_id as string))

describe.each(Object.entries(FIXTURES))('%s', (id, fixtures) => {
  it('has fixtures for every detector', () => {
    expect(engine.list().map((d) => d.id)).toContain(id)
  })

  it('fires on each attack and stays quiet on each look-alike', async () => {
    const run = await engine.run(id, new Date(fixtures.at))
    expect(run.error).toBeUndefined()
    for (const c of fixtures.fires) {
      const accounts = accountsOf(c.events)
      const found = run.findings.filter((f) => accounts.has(f.finding.account_id))
      expect(found, `fires: ${c.name}`).toHaveLength(1)
      const { evidence, ...fields } = c.expect
      expect(found[0]!.finding, c.name).toMatchObject({ detector: id, ...fields })
      if (evidence) expect(found[0]!.finding.evidence, c.name).toMatchObject(evidence)
    }
    for (const c of fixtures.quiet) {
      const accounts = accountsOf(c.events)
      const found = run.findings.filter((f) => accounts.has(f.finding.account_id))
      expect(found.map((f) => f.finding.title), `quiet: ${c.name}`).toEqual([])
    }
  })
})
