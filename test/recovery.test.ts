// Recovery after an unclean stop: the views that missed a batch (a SIGKILL between the raw part's commit and the
// views') are rebuilt from the raw tables. Here the views' rows of a batch are deleted to make that state on purpose.
import { Readable } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Storage } from '../clickhouse/client.ts'
import { recoverViews } from '../clickhouse/recovery.ts'
import { usageEvent } from '../contract/synthetic.ts'
import { ratelimited } from '../detectors/fixtures/events.ts'
import { ingestNdjson } from '../ingest/ndjson.ts'
import { IngestPipeline } from '../ingest/pipeline.ts'
import { EventWriter } from '../ingest/writer.ts'
import { count, openTestStorage, tempDir } from './helpers.ts'

let storage: Storage
let pipeline: IngestPipeline
let writer: EventWriter
beforeAll(async () => {
  storage = await openTestStorage(tempDir())
  writer = new EventWriter(storage, { maxRows: 10_000, maxWaitMs: 10, maxInflight: 2 })
  pipeline = new IngestPipeline(storage.client, writer)
})
afterAll(async () => {
  await writer.drain()
  await storage.close()
})

describe('recoverViews', () => {
  it('restores event ids and rebuilds rollups that missed rows, and leaves consistent views alone', async () => {
    const now = Date.now()
    const events = Array.from({ length: 2_000 }, (_, i) => usageEvent(i, { keys: 40, from: now - 3 * 86_400_000, to: now - 60_000 }))
    const limits = Array.from({ length: 30 }, (_, i) => ratelimited({ account_id: 'acct_Recover01', key_id: 'key_Recover01' }, new Date(now - i * 60_000).toISOString()))
    const text = [...events, ...limits].map((e) => JSON.stringify(e)).join('\n')
    await ingestNdjson(Readable.from([Buffer.from(text)]), pipeline, { source: 'file' })
    expect(await recoverViews(storage)).toEqual({ eventIdsRestored: 0, usageKeyDaysRebuilt: 0, ratelimitKeyBucketsRebuilt: 0 })

    // The state a kill mid-insert leaves: raw rows whose views never got them.
    const victim = events[0]!.key_id!
    const sync = { mutations_sync: '2', lightweight_deletes_sync: '2' } as const
    await storage.client.command({ query: "DELETE FROM event_ids WHERE type = 'key.usage' AND event_id IN (SELECT event_id FROM key_usage WHERE key_id = {k:String})", query_params: { k: victim }, clickhouse_settings: sync })
    await storage.client.command({ query: 'DELETE FROM key_usage_hourly WHERE key_id = {k:String}', query_params: { k: victim }, clickhouse_settings: sync })
    await storage.client.command({ query: 'DELETE FROM key_usage_daily WHERE key_id = {k:String}', query_params: { k: victim }, clickhouse_settings: sync })
    await storage.client.command({ query: "DELETE FROM key_ratelimits_5m WHERE key_id = 'key_Recover01'", clickhouse_settings: sync })
    const victimRows = events.filter((e) => e.key_id === victim).length

    const report = await recoverViews(storage)
    expect(report.eventIdsRestored).toBe(victimRows)
    expect(report.usageKeyDaysRebuilt).toBeGreaterThan(0)
    expect(report.ratelimitKeyBucketsRebuilt).toBeGreaterThan(0)
    expect(await count(storage, "SELECT uniqExact(event_id) AS n FROM event_ids WHERE type = 'key.usage'")).toBe(2_000)
    expect(await count(storage, 'SELECT sum(requests) AS n FROM key_usage_hourly')).toBe(2_000)
    expect(await count(storage, 'SELECT sum(requests) AS n FROM key_usage_daily')).toBe(2_000)
    expect(await count(storage, 'SELECT sum(requests) AS n FROM key_last_used')).toBe(2_000)
    expect(await count(storage, 'SELECT sum(requests) AS n FROM key_last_used WHERE key_id = {k:String}', { k: victim })).toBe(victimRows)
    expect(await count(storage, "SELECT sum(events) AS n FROM key_ratelimits_5m WHERE key_id = 'key_Recover01'")).toBe(30)

    // A redelivered batch after recovery is recognised as stored.
    const again = await ingestNdjson(Readable.from([Buffer.from(text)]), pipeline, { source: 'file' })
    expect(again).toMatchObject({ accepted: 0, duplicates: 2_030 })
  })
})
