// bench:ingest --stages: where an event's cost goes, stage by stage, in this process (the embedded engine runs
// in-process, so process CPU includes the engine's threads), plus a per-thread CPU split of a process by /proc.
// Every stage runs on the same messages, fetched from the bench topic, so the figures add up to one pipeline.
import { createHash } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { performance } from 'node:perf_hooks'
import { Kafka, logLevel } from 'kafkajs'
import type { Storage } from '../clickhouse/client.ts'
import { inboundSchemas } from '../contract/events.ts'
import { decodeEvent } from '../ingest/decode.ts'
import { RecentIds } from '../ingest/recent-ids.ts'
import { LINE_OF, toRow, type Row } from '../ingest/rows.ts'
import { INSERT_SETTINGS } from '../ingest/writer.ts'
import { chTime } from '../clickhouse/time.ts'

export interface StageFigure {
  stage: string
  events: number
  /** CPU of this process (JS thread, engine threads, libuv) per event. */
  cpuUs: number
  /** Wall time per event. */
  wallUs: number
  /** Share of the wall time the JS thread was busy (event loop utilisation). */
  elu: number
  note?: string
}

async function measure<T>(stage: string, events: number, fn: () => Promise<T> | T, note?: string): Promise<{ figure: StageFigure; result: T }> {
  const cpu0 = process.cpuUsage()
  const elu0 = performance.eventLoopUtilization()
  const t0 = performance.now()
  const result = await fn()
  const wall = performance.now() - t0
  const cpu = process.cpuUsage(cpu0)
  const elu = performance.eventLoopUtilization(elu0)
  return { figure: { stage, events, cpuUs: (cpu.user + cpu.system) / events, wallUs: (wall * 1000) / events, elu: elu.utilization, note }, result }
}

/**
 * Fetches `count` messages of the topic with kafkajs (a group of its own), committing each batch as keywatch does,
 * and keeps them for the stages after.
 */
export async function fetchStage(brokers: string, topic: string, count: number): Promise<{ figures: StageFigure[]; messages: Buffer[] }> {
  const kafka = new Kafka({ clientId: 'bench-stages', brokers: brokers.split(','), logLevel: logLevel.NOTHING })
  const consumer = kafka.consumer({ groupId: `bench-stages-${Date.now()}`, maxBytesPerPartition: 4 * 1024 * 1024, maxBytes: 32 * 1024 * 1024, maxWaitTimeInMs: 100 })
  await consumer.connect()
  await consumer.subscribe({ topics: [topic], fromBeginning: true })
  const messages: Buffer[] = []
  let commits = 0
  let started = 0
  let cpu0 = process.cpuUsage()
  let elu0 = performance.eventLoopUtilization()
  const done = new Promise<void>((resolve) => {
    void consumer.run({
      autoCommit: false,
      partitionsConsumedConcurrently: 3,
      eachBatch: async ({ batch, resolveOffset }) => {
        if (!started) {
          // Count from the first batch: group join is not a per-event cost.
          started = performance.now()
          cpu0 = process.cpuUsage()
          elu0 = performance.eventLoopUtilization()
        }
        for (const m of batch.messages) if (messages.length < count && m.value) messages.push(m.value)
        resolveOffset(batch.lastOffset())
        await consumer.commitOffsets([{ topic: batch.topic, partition: batch.partition, offset: (BigInt(batch.lastOffset()) + 1n).toString() }])
        commits++
        if (messages.length >= count) resolve()
      },
    })
  })
  await done
  const wall = performance.now() - started
  const cpu = process.cpuUsage(cpu0)
  const elu = performance.eventLoopUtilization(elu0)
  await consumer.disconnect()
  const n = messages.length
  return {
    messages,
    figures: [
      // One figure: while a commit is awaited the other partitions' batches are fetched and parsed, and the process's
      // CPU over that wait counted them as the commit's (which once made fetch alone come out negative).
      { stage: 'fetch and commit (kafkajs)', events: n, cpuUs: (cpu.user + cpu.system) / n, wallUs: (wall * 1000) / n, elu: elu.utilization, note: `${commits} commits, one per partition batch` },
    ],
  }
}

/** decode (JSON + compiled check; zod alone for reference), row (built as its line), insert with views, dedup. */
export async function pipelineStages(storage: Storage, messages: Buffer[], blockRows: number): Promise<StageFigure[]> {
  const n = messages.length
  const now = Date.now()
  const figures: StageFigure[] = []
  const text = new TextDecoder('utf-8', { fatal: true })

  const json = await measure('  of which JSON.parse', n, () => messages.map((m) => JSON.parse(text.decode(m)) as Record<string, unknown>))
  const zod = await measure('  zod safeParse (reference)', n, () => {
    let ok = 0
    for (const e of json.result) if (inboundSchemas['key.usage'].safeParse(e).success) ok++
    return ok
  }, 'what decode paid per event before the compiled check')
  const decoded = await measure('decode (JSON + compiled check)', n, () => messages.map((m) => decodeEvent(m, now, 'key.usage')))
  const events = decoded.result.flatMap((d) => (d.ok ? [d.event] : []))
  if (events.length !== n) throw new Error(`${n - events.length} bench events were rejected`)
  const rows = await measure('row (toRow, encoded as its TabSeparated line)', n, () => events.map((e) => toRow('key.usage', e)))
  figures.push(decoded.figure, json.figure, zod.figure, rows.figure)

  // Insert with every view, in blocks as the writer sends them, with its settings, through Storage.insertLines (the hot path).
  const blocks: Row[][] = []
  for (let i = 0; i < n; i += blockRows) blocks.push(rows.result.slice(i, i + blockRows))
  const insert = await measure(`insert + views (${blockRows.toLocaleString('en')}-row blocks)`, n, async () => {
    for (const block of blocks) {
      const token = createHash('sha256').update(block.map((r) => r.eventId).join(',')).digest('hex')
      await storage.insertLines('key_usage', LINE_OF.key_usage!.columns, block.map((r) => r.line!), INSERT_SETTINGS(token), LINE_OF.key_usage!.format)
    }
  }, 'includes the file write')
  figures.push(insert.figure)

  // The writer's duplicate lookup, same statement, 20,000 ids at a time against everything stored.
  const lookupRows = 20_000
  const dedup = await measure(`  dedup lookup in event_ids (${lookupRows.toLocaleString('en')} ids)`, n, async () => {
    let found = 0
    for (let i = 0; i < n; i += lookupRows) {
      const slice = rows.result.slice(i, i + lookupRows)
      let from = Infinity
      let to = -Infinity
      for (const r of slice) (from = Math.min(from, r.occurredAtMs)), (to = Math.max(to, r.occurredAtMs))
      for (let j = 0; j < slice.length; j += 10_000) {
        const rs = await storage.client.query({
          query: `SELECT toString(event_id) AS id FROM event_ids
                  WHERE occurred_at BETWEEN {from:DateTime64(3, 'UTC')} AND {to:DateTime64(3, 'UTC')}
                    AND event_id IN {ids:Array(UUID)}`,
          query_params: { from: chTime(from), to: chTime(to), ids: slice.slice(j, j + 10_000).map((r) => r.eventId) },
          format: 'JSONCompactEachRow',
        })
        found += (await rs.json<[string]>()).length
      }
    }
    return found
  }, 'reference: the engine lookup, serial with the inserts')
  if (dedup.result !== n) throw new Error(`the lookup found ${dedup.result} of ${n} stored ids`)
  // What the writer does now on the embedded engine: the recent-id index, fed as inserts are acknowledged.
  const index = new RecentIds(storage.client, n)
  const memory = await measure('dedup decision from the recent-id index', n, () => {
    index.stored('key.usage', rows.result)
    let found = 0
    for (const r of rows.result) if (index.lookup(r.eventId, r.occurredAtMs)?.stored) found++
    return found
  }, 'recording each id and answering for it; the engine is not asked')
  if (memory.result !== n) throw new Error(`the index found ${memory.result} of ${n} stored ids`)
  figures.push(memory.figure, dedup.figure)

  // Reference, after the lookup (it stores the same events again): the same rows sent inline as JSONCompactEachRow
  // through the client in 20,000-row blocks, which is what the server path does and the embedded one did before.
  const cells = rows.result.map((r) => Object.values(r.values))
  const inline = await measure('  inline JSONCompactEachRow, 20,000-row blocks (reference)', n, async () => {
    for (let i = 0; i < n; i += 20_000) {
      await storage.client.insert({ table: 'key_usage', values: cells.slice(i, i + 20_000), columns: [...LINE_OF.key_usage!.columns] as [string, ...string[]], format: 'JSONCompactEachRow', clickhouse_settings: { insert_deduplication_token: `inline-${i}` } })
    }
  }, 'the path before: client.insert')
  figures.splice(figures.indexOf(insert.figure) + 1, 0, inline.figure)
  return figures
}

/** The engine's threads are grouped by name under this prefix (its merges, its query pipeline, its schedulers). */
const ENGINE = 'ClickHouse engine / '

/** CPU seconds of a process's threads, grouped: the JS thread, libuv's pool, V8's helpers, the engine's threads. */
export function threadCpu(pid: number): Record<string, number> {
  const tick = 100 // USER_HZ
  const groups: Record<string, number> = {}
  let dirs: string[] = []
  try {
    dirs = readdirSync(`/proc/${pid}/task`)
  } catch {
    return groups
  }
  for (const tid of dirs) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8')
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      const seconds = (Number(fields[11]) + Number(fields[12])) / tick
      const group =
        tid === String(pid) ? 'JS main thread' : /^keywatch-decod/.test(comm) ? 'decode workers' : /libuv/i.test(comm) ? 'libuv pool (fs, chdb calls)' : /^(V8|DelayedTask)/.test(comm) ? 'V8 GC/compiler' : /^node$/.test(comm) ? 'worker threads' : `${ENGINE}${comm.replace(/[\d_]+$/, '')}`
      groups[group] = (groups[group] ?? 0) + seconds
    } catch {
      // the thread ended
    }
  }
  return groups
}

export function diffThreads(after: Record<string, number>, before: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(after).map(([k, v]) => [k, v - (before[k] ?? 0)]))
}

export function printStages(figures: StageFigure[]): void {
  console.log('  stage                                              µs CPU/event  µs wall/event  JS busy')
  for (const f of figures) {
    console.log(`  ${f.stage.padEnd(50)} ${f.cpuUs.toFixed(2).padStart(10)} ${f.wallUs.toFixed(2).padStart(13)} ${`${Math.round(f.elu * 100)}%`.padStart(8)}${f.note ? `   ${f.note}` : ''}`)
  }
}

export function printThreads(title: string, cpu: Record<string, number>, events: number, wallSeconds: number): void {
  const total = Object.values(cpu).reduce((a, b) => a + b, 0)
  const figures = (s: number) => `${s.toFixed(1).padStart(7)} s  ${((s * 1e6) / events).toFixed(1).padStart(6)} µs/event`
  const engine = Object.entries(cpu).filter(([g]) => g.startsWith(ENGINE)).map(([g, v]) => [g.slice(ENGINE.length), v] as const).sort((a, b) => b[1] - a[1])
  const engineTotal = engine.reduce((a, [, v]) => a + v, 0)
  const top = Object.entries(cpu).filter(([g]) => !g.startsWith(ENGINE))
  if (engineTotal > 0) top.push([ENGINE.slice(0, -3), engineTotal])
  console.log(`  ${title}: ${total.toFixed(1)} CPU s over ${wallSeconds.toFixed(1)} s (${(total / wallSeconds).toFixed(2)} cores), ${((total * 1e6) / events).toFixed(1)} µs CPU/event`)
  for (const [group, s] of top.sort((a, b) => b[1] - a[1])) {
    if (s <= 0) continue
    console.log(`    ${group.padEnd(30)} ${figures(s)}  ${Math.round((s / total) * 100)}%`)
    if (group !== ENGINE.slice(0, -3)) continue
    // The engine's threads by name (merges, the insert's pipeline, schedulers); under 2% of the engine is "other".
    const other = engine.filter(([, v]) => v < s * 0.02).reduce((a, [, v]) => a + v, 0)
    for (const [name, v] of engine) if (v >= s * 0.02) console.log(`      ${name.padEnd(28)} ${figures(v)}`)
    if (other > 0) console.log(`      ${'other'.padEnd(28)} ${figures(other)}`)
  }
}
