// npm run bench:revoke — report-to-revoke latency: leak reports for live secret keys sent to POST /v1/leaks of a
// running keywatch (embedded engine, real HTTP on loopback), each answered by a signed revoke call at the stand-in
// key service. Latency is from sending the report to the revoke request arriving at the key service.
// Reference, same run: the bare round trip of a signed command to the key service (what keywatch cannot go below).
// Args: --reports=N (default 1000), --rate=R reports per second (default 50), --history=N usage events to seed
// (default 1,000,000), --ingest=E: ingest load beside it, E key.usage events a second through the same pipeline
// (default 0; `npm run bench:revoke:ingest` runs 30,000/s, about half what bench:ingest sustains here: the load is made
// in this process, on the JS thread keywatch runs on, which a Kafka producer elsewhere would not take).
// Prints the stages of the reports decided as they arrived (the fast path): HTTP to decoded, the in-memory
// decision, decision to revoke request, and the action's write beside it.
import { randomUUID } from 'node:crypto'
import type { AddressInfo } from 'node:net'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import pino from 'pino'
import { buildApi } from '../api/server.ts'
import { apiDepsOf, openRuntime } from '../app/runtime.ts'
import { parseConfig } from '../config/config.ts'
import { startStandInKeyService } from '../demo/key-service.ts'
import { leak, lifecycle, sha256, usage } from '../detectors/fixtures/events.ts'
import { KeyServiceClient } from '../response/key-service.ts'
import { tempDir } from '../test/helpers.ts'

const arg = (name: string, fallback: number) => Number(process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? fallback)
const REPORTS = arg('reports', 1000)
const RATE = arg('rate', 50)
const HISTORY = arg('history', 1_000_000)
const INGEST = arg('ingest', 0)
const SECRET = 'bench_monitor_signature_secret'

const service = await startStandInKeyService({ secret: SECRET })
const dir = tempDir('keywatch-bench-revoke-')
// One key per account (the per-account rail is 3/hour); the overall rail is lifted so all reports are acted on.
const policyFile = join(dir, 'policy.json')
writeFileSync(policyFile, JSON.stringify({ guard_rails: { max_per_account_per_hour: 3, max_per_hour: REPORTS + 10 } }))
const config = parseConfig({ KEYWATCH_DATA_DIR: join(dir, 'data'), KEY_SERVICE_URL: service.url, KEY_SERVICE_SECRET: SECRET, RESPONSE_POLICY_FILE: policyFile, LOG_LEVEL: 'silent' })
const rt = await openRuntime(config, pino({ level: 'silent' }))
await rt.startServices()
const api = await buildApi(apiDepsOf(rt, { rateLimitPerMinute: 1_000_000 }))
const { token } = await rt.tokens.create('ingest', 'bench-scanner', 'bench')
await api.listen({ host: '127.0.0.1', port: 0 })
const url = `http://127.0.0.1:${(api.server.address() as AddressInfo).port}`

// The keys, and a history of usage so the engine is not empty (the leak path must not scan it).
const now = Date.now()
const keys = Array.from({ length: REPORTS + 100 }, (_, i) => {
  const id = String(i).padStart(6, '0')
  const k = { account_id: `acct_Bench${id}`, key_id: `key_Bench${id}`, key_prefix: `sk_live_${id.slice(2)}`, key_kind: 'secret' as const, mode: 'live' as const, secret: `sk_live_${randomUUID().replaceAll('-', '')}` }
  service.keys.set(k.key_id, { ...k, state: 'active' })
  return k
})
await rt.pipeline.ingest(keys.map((k) => ({ raw: Buffer.from(JSON.stringify(lifecycle(k, 'created', new Date(now - 30 * 86_400_000).toISOString(), { secret_sha256: sha256(k.secret) }))), origin: { source: 'file' as const } })))
if (HISTORY > 0) {
  await rt.storage.client.command({
    query: `INSERT INTO key_usage (event_id, occurred_at, account_id, key_id, key_prefix, key_kind, mode, request_id, method, endpoint, scope, status, ip, country, asn)
            SELECT generateUUIDv4(), now64(3) - toIntervalSecond(number % 86400), concat('acct_Bench', leftPad(toString(number % {keys:UInt32}), 6, '0')),
                   concat('key_Bench', leftPad(toString(number % {keys:UInt32}), 6, '0')), 'sk_live_0000', 'secret', 'live', concat('req_', toString(number)),
                   'GET', '/v1/payments', 'payments', 200, '10.0.0.1', 'PH', 64500
            FROM numbers({n:UInt64})`,
    query_params: { keys: keys.length, n: HISTORY },
  })
}
// The unmatched reports a scanner also sends (tokens of no known key), so the leak queries see a realistic table.
await rt.pipeline.ingest(Array.from({ length: 2000 }, () => ({ raw: Buffer.from(JSON.stringify(leak('acct_unmatched', new Date(now - 3_600_000).toISOString(), `sk_live_${randomUUID()}`))), origin: { source: 'file' as const } })))
console.log(`seeded ${keys.length} keys, ${HISTORY.toLocaleString('en')} usage events and 2,000 unmatched leak reports`)

// Reference: a signed revoke straight to the key service, no keywatch in between.
const direct = new KeyServiceClient({ baseUrl: service.url, secret: SECRET })
const reference: number[] = []
for (const k of keys.slice(REPORTS, REPORTS + 100)) {
  const t = performance.now()
  await direct.send({ command: 'revoke', key_id: k.key_id, command_id: randomUUID(), reason: 'reference', finding_id: null, requested_by: 'bench' })
  reference.push(performance.now() - t)
}

// Ingest load beside the run: key.usage events in batches through the pipeline, as the Kafka consumer hands them over:
// several batches waiting for their insert at once (the consumer keeps up to 12 per partition of 3), paced to the
// target rate. One batch at a time would measure the round trip of an insert, not a load.
let ingesting = INGEST > 0
let ingested = 0
let ingestError: unknown
const INGEST_WINDOW = 36
const ingestLoad = (async () => {
  const batch = Math.max(1, Math.round(INGEST / 20))
  const window = new Set<Promise<void>>()
  let sent = 0
  const t0 = performance.now()
  while (ingesting && ingestError === undefined) {
    const at = new Date().toISOString()
    const messages = Array.from({ length: batch }, (_, j) => {
      const k = keys[(sent + j) % keys.length]!
      return { raw: Buffer.from(JSON.stringify(usage(k, at))), origin: { source: 'kafka' as const } }
    })
    const stored = rt.pipeline.ingest(messages).then(
      (r) => void (ingested += r.summary.accepted),
      (err) => void (ingestError = err),
    )
    window.add(stored)
    void stored.finally(() => window.delete(stored))
    sent += batch
    if (window.size >= INGEST_WINDOW) await Promise.race(window)
    const ahead = t0 + (sent / INGEST) * 1000 - performance.now()
    // Each batch in a turn of its own, as each Kafka batch comes in an I/O callback of its own.
    await new Promise((r) => (ahead > 0 ? setTimeout(r, ahead) : setImmediate(r)))
  }
  await Promise.all(window)
  if (ingestError !== undefined) throw ingestError
})()
if (INGEST > 0) await new Promise((r) => setTimeout(r, 3_000)) // let the load settle in

// How late the one JS thread runs what is due (keywatch and this bench share it): starvation shows here.
const loopDelay = monitorEventLoopDelay({ resolution: 10 })
loopDelay.enable()

// The run: reports at a steady rate, each timed to its revoke request at the key service.
const sentAt = new Map<string, number>()
const ackMs: number[] = []
const started = performance.now()
const ingestedBefore = ingested
const inflight: Promise<void>[] = []
for (let i = 0; i < REPORTS; i++) {
  const due = started + (i * 1000) / RATE
  const wait = due - performance.now()
  if (wait > 0) await new Promise((r) => setTimeout(r, wait))
  const k = keys[i]!
  const body = JSON.stringify(leak(k.account_id, new Date().toISOString(), k.secret))
  const t0 = performance.now()
  sentAt.set(k.key_id, performance.timeOrigin + t0)
  inflight.push(
    fetch(`${url}/v1/leaks`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body }).then(async (res) => {
      if (res.status !== 202) throw new Error(`report ${i}: ${res.status} ${await res.text()}`)
      ackMs.push(performance.now() - t0)
    }),
  )
}
await Promise.all(inflight)
const deadline = Date.now() + 60_000
const revokeCalls = () => service.calls.filter((c) => c.command === 'revoke' && sentAt.has(c.key_id))
while (new Set(revokeCalls().map((c) => c.key_id)).size < REPORTS && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100))

const runSeconds = (performance.now() - started) / 1000
const ingestedDuring = ingested - ingestedBefore
ingesting = false
await ingestLoad
const latencies = [...new Map(revokeCalls().map((c) => [c.key_id, c.received_at - sentAt.get(c.key_id)!])).values()]
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] ?? NaN
}
const fmt = (ms: number) => `${ms.toFixed(1).padStart(8)} ms`
console.log(`\n${REPORTS} leak reports at ${RATE}/s over POST /v1/leaks; ${latencies.length} revoke requests reached the key service${INGEST ? `; beside it ${Math.round(ingestedDuring / runSeconds).toLocaleString('en')} key.usage events/s stored (target ${INGEST.toLocaleString('en')})` : ''}`)
console.log(`                                   p50         p95         p99         max`)
console.log(`report -> revoke request    ${fmt(pct(latencies, 50))} ${fmt(pct(latencies, 95))} ${fmt(pct(latencies, 99))} ${fmt(Math.max(...latencies))}`)
console.log(`report -> 202 (stored)      ${fmt(pct(ackMs, 50))} ${fmt(pct(ackMs, 95))} ${fmt(pct(ackMs, 99))} ${fmt(Math.max(...ackMs))}`)
console.log(`reference: signed revoke    ${fmt(pct(reference, 50))} ${fmt(pct(reference, 95))} ${fmt(pct(reference, 99))} ${fmt(Math.max(...reference))}`)
// The stages of each report decided as it arrived.
const timings = rt.response.fastTimings.filter((t) => sentAt.has(t.key_id))
const received = new Map(revokeCalls().map((c) => [c.key_id, c.received_at]))
const stage = (name: string, xs: number[]) => console.log(`${name.padEnd(27)} ${fmt(pct(xs, 50))} ${fmt(pct(xs, 95))} ${fmt(pct(xs, 99))} ${fmt(Math.max(...xs))}`)
console.log(`\nstages of the ${timings.length} reports decided as they arrived (the rest by the leak detector's run)`)
stage('  HTTP -> decoded', timings.map((t) => t.decoded_at - sentAt.get(t.key_id)!))
stage('  decision (in memory)', timings.map((t) => t.decide_us / 1000))
stage('  decision -> revoke request', timings.filter((t) => received.has(t.key_id)).map((t) => received.get(t.key_id)! - t.send_started_at))
stage('  action written (beside)', timings.map((t) => t.written_at - t.send_started_at))
loopDelay.disable()
console.log(`  event-loop delay           ${fmt(loopDelay.percentile(50) / 1e6)} ${fmt(loopDelay.percentile(95) / 1e6)} ${fmt(loopDelay.percentile(99) / 1e6)} ${fmt(loopDelay.max / 1e6)}`)
const p99 = pct(latencies, 99)
const target = INGEST > 0 ? 500 : 250
console.log(`\ntarget p99 < ${target} ms${INGEST ? ' beside ingest load' : ''}: ${latencies.length === REPORTS && p99 < target ? 'met' : 'NOT met'} (p99 ${p99.toFixed(0)} ms; ${(p99 / pct(reference, 99)).toFixed(1)}x the bare key-service round trip)`)
const confirmed = (await rt.actions.list({ status: 'confirmed', limit: 10_000 })).length
console.log(`actions confirmed: ${confirmed}`)

await api.close()
await rt.close()
await service.close()
