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
import { BUILTIN_FIXTURES } from './fixtures/index.ts'

const FIXTURES: Record<string, Fixtures> = BUILTIN_FIXTURES

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

describe('shared thresholds', () => {
  it("moves the password spray's per-IP bar with an override of the brute-force detector's", () => {
    const moved = new DetectionEngine(storage.client, new FindingStore(storage.client), log, { 'auth.mfa_bruteforce': { min_login_failures: 8 } })
    expect(moved.get('auth.password_spray').params.below_per_ip).toBe(8)
    const own = new DetectionEngine(storage.client, new FindingStore(storage.client), log, {
      'auth.mfa_bruteforce': { min_login_failures: 8 },
      'auth.password_spray': { below_per_ip: 12 },
    })
    expect(own.get('auth.password_spray').params.below_per_ip).toBe(12)
  })
})
