// npm run bench:ingest — sustained events/s from a real Kafka broker into ClickHouse through `keywatch start`,
// against Kafka's own consumer (kafka.tools ConsumerPerformance, same jars) on the same topic in the same run.
// Env: BENCH_EVENTS (default 1,000,000), KAFKA_BROKERS (else a broker is started here).
// --stages: also where the time goes, stage by stage (bench/stages.ts), and each thread's CPU in keywatch.
import { randomUUID } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { Kafka, logLevel } from 'kafkajs'
import { queryRows } from '../clickhouse/client.ts'
import { usageEvent } from '../contract/synthetic.ts'
import { openTestStorage, repoRoot, startKeywatch, tempDir } from '../test/helpers.ts'
import { createTopics, ensureKafkaJars, runKafkaClass, startBroker } from '../test/kafka/broker.ts'
import { groupProgress, waitFor } from '../test/kafka/admin.ts'
import { diffThreads, fetchStage, pipelineStages, printStages, printThreads, threadCpu } from './stages.ts'

const N = Number(process.argv.find((a) => a.startsWith('--events='))?.split('=')[1] ?? 1_000_000)
const PARTITIONS = 3
const STAGES = process.argv.includes('--stages')
const STAGE_EVENTS = Math.min(N, Number(process.argv.find((a) => a.startsWith('--stage-events='))?.split('=')[1] ?? 200_000))

const external = process.env.KAFKA_BROKERS
const broker = external ? undefined : await startBroker({ repoRoot })
const brokers = external ?? broker!.brokers
const libsDir = broker?.libsDir ?? (await ensureKafkaJars(repoRoot))
const run = randomUUID().slice(0, 8)
const topic = `bench-usage-${run}`

try {
  await createTopics(brokers, [topic], PARTITIONS)

  // 1. The platform's side: N contract-shaped key.usage events, keyed by key_id.
  const producer = new Kafka({ clientId: 'bench', brokers: brokers.split(','), logLevel: logLevel.NOTHING }).producer()
  await producer.connect()
  const now = Date.now()
  let t = performance.now()
  let bytes = 0
  const inFlight: Promise<unknown>[] = []
  // A partition's record batch must stay under the broker's 1 MB message.max.bytes: 3,000 events over 3 partitions.
  for (let i = 0; i < N; i += 3_000) {
    const messages = []
    for (let j = i; j < Math.min(N, i + 3_000); j++) {
      const e = usageEvent(j, { keys: 10_000, accounts: 500, from: now - 3_600_000, to: now - 60_000 })
      const value = JSON.stringify(e)
      bytes += value.length
      messages.push({ key: e.key_id, value })
    }
    inFlight.push(producer.send({ topic, acks: 1, messages }))
    if (inFlight.length >= 4) await inFlight.shift()
  }
  await Promise.all(inFlight)
  await producer.disconnect()
  console.log(`produced ${N.toLocaleString('en')} events (${(bytes / 1e6).toFixed(0)} MB, avg ${Math.round(bytes / N)} B) in ${((performance.now() - t) / 1000).toFixed(1)} s`)

  // 2. The ceiling: Kafka's own consumer reading the same topic.
  const perf = await runKafkaClass(libsDir, 'org.apache.kafka.tools.ConsumerPerformance', [
    '--bootstrap-server', brokers, '--topic', topic, '--messages', String(N), '--group', `perf-${run}`, '--timeout', '60000',
  ])
  const kafkaRate = parseConsumerPerformance(perf.stdout)

  // 3. keywatch: `keywatch start` consuming the topic into the embedded engine.
  const dataDir = tempDir('keywatch-bench-')
  const groupId = `keywatch-bench-${run}`
  const env = {
    KEYWATCH_DATA_DIR: dataDir,
    KAFKA_BROKERS: brokers,
    KAFKA_GROUP_ID: groupId,
    KAFKA_TOPIC_USAGE: topic,
    KAFKA_TOPIC_RATELIMITS: `bench-rl-${run}`,
    KAFKA_TOPIC_AUTH: `bench-auth-${run}`,
    KAFKA_TOPIC_LIFECYCLE: `bench-lc-${run}`,
    KAFKA_TOPIC_LEAKS: `bench-leaks-${run}`,
    KAFKA_TOPIC_DEAD_LETTER: `bench-dlq-${run}`,
    // Any INGEST_* setting of this shell goes to keywatch too (INGEST_DECODE_WORKERS=0 for the inline reference).
    ...Object.fromEntries(Object.entries(process.env).filter((e): e is [string, string] => e[0].startsWith('INGEST_') && e[1] !== undefined)),
    ...(process.env.BENCH_NODE_OPTIONS ? { NODE_OPTIONS: process.env.BENCH_NODE_OPTIONS } : {}),
    // keywatch starts with bin/runtime-env.js's malloc settings, as it does in production; BENCH_GLIBC_TUNABLES=
    // (empty) for glibc's defaults, the reference they are measured against.
    ...(process.env.BENCH_GLIBC_TUNABLES !== undefined ? { GLIBC_TUNABLES: process.env.BENCH_GLIBC_TUNABLES } : {}),
    ...(process.env.BENCH_LOG_LEVEL ? { LOG_LEVEL: process.env.BENCH_LOG_LEVEL } : {}),
    ...(process.env.BENCH_INFLIGHT ? { INGEST_MAX_INFLIGHT_BATCHES: process.env.BENCH_INFLIGHT } : {}),
    ...(process.env.BENCH_BATCH_ROWS ? { INGEST_BATCH_MAX_ROWS: process.env.BENCH_BATCH_ROWS, INGEST_BATCH_MAX_WAIT_MS: '1000' } : {}),
  }
  await createTopics(brokers, [env.KAFKA_TOPIC_RATELIMITS, env.KAFKA_TOPIC_AUTH, env.KAFKA_TOPIC_LIFECYCLE, env.KAFKA_TOPIC_LEAKS], PARTITIONS)
  const groupTopics = [topic, env.KAFKA_TOPIC_RATELIMITS, env.KAFKA_TOPIC_AUTH, env.KAFKA_TOPIC_LIFECYCLE, env.KAFKA_TOPIC_LEAKS]
  t = performance.now()
  const keywatch = await startKeywatch(env)
  const startedAt = performance.now()
  let peakRssMb = 0
  const samples: { at: number; committed: number }[] = []
  let threadsAtFirstCommit: Record<string, number> | undefined
  let threadsAtLastCommit: Record<string, number> = {}
  // The broker shares the 2 cores: its CPU over the same window says how much of them keywatch can have.
  let brokerAtFirstCommit: number | undefined
  let brokerAtLastCommit = 0
  await waitFor(
    'keywatch to commit every offset',
    async () => {
      const threads = threadCpu(keywatch.child.pid!)
      const p = await groupProgress(brokers, groupId, groupTopics)
      samples.push({ at: performance.now(), committed: p.committed })
      if (p.committed > 0) {
        threadsAtFirstCommit ??= threads
        threadsAtLastCommit = threads
        const brokerCpu = processCpuSeconds(broker?.pid())
        brokerAtFirstCommit ??= brokerCpu
        brokerAtLastCommit = brokerCpu
      }
      peakRssMb = Math.max(peakRssMb, rssMb(keywatch.child.pid!))
      return p.committed >= N
    },
    30 * 60_000,
    100,
  )
  const first = samples.find((s) => s.committed > 0)!
  const last = samples.at(-1)!
  const sustained = ((last.committed - first.committed) / (last.at - first.at)) * 1000
  const endToEnd = (N / (last.at - startedAt)) * 1000
  keywatch.child.kill('SIGTERM')
  await keywatch.exited
  if (process.env.BENCH_LOG_FILE) writeFileSync(process.env.BENCH_LOG_FILE, keywatch.logs())

  const storage = await openTestStorage(dataDir)
  const [stored] = await queryRows<{ n: string }>(storage.client, 'SELECT count() AS n FROM key_usage')
  const [rolled] = await queryRows<{ n: string }>(storage.client, 'SELECT sum(requests) AS n FROM key_usage_hourly')
  const [daily] = await queryRows<{ n: string }>(storage.client, 'SELECT sum(requests) AS n FROM key_usage_daily')
  const [lastUsed] = await queryRows<{ n: string }>(storage.client, 'SELECT sum(requests) AS n FROM key_last_used')
  const rollupsExact = [rolled, daily, lastUsed].every((r) => Number(r!.n) === N)

  let stages: Awaited<ReturnType<typeof pipelineStages>> = []
  let fetched: Awaited<ReturnType<typeof fetchStage>>['figures'] = []
  if (STAGES) {
    // The counts are taken: empty the tables and measure each stage on the same messages, in this process.
    for (const table of ['key_usage', 'event_ids', 'key_usage_hourly', 'key_usage_daily', 'key_last_used']) {
      await storage.client.command({ query: 'TRUNCATE TABLE {t:Identifier}', query_params: { t: table } })
    }
    const f = await fetchStage(brokers, topic, STAGE_EVENTS)
    fetched = f.figures
    stages = await pipelineStages(storage, f.messages, Number(process.env.INGEST_BATCH_MAX_ROWS ?? 100_000))
  }
  await storage.close()

  console.log('')
  console.log(`bench:ingest  ${N.toLocaleString('en')} key.usage events, ${PARTITIONS} partitions, 2 cores`)
  console.log(`  kafka ConsumerPerformance (ceiling)     ${fmt(kafkaRate.fetchRate)} events/s   (incl. group join: ${fmt(kafkaRate.rate)} events/s)`)
  console.log(`  keywatch sustained Kafka -> ClickHouse  ${fmt(sustained)} events/s   (first commit to last)`)
  console.log(`  keywatch end to end                     ${fmt(endToEnd)} events/s   (process start to last commit, startup ${((startedAt - t) / 1000).toFixed(1)} s)`)
  console.log(`  ratio sustained / kafka                 ${(sustained / kafkaRate.fetchRate).toFixed(2)}`)
  if (broker) {
    const seconds = brokerAtLastCommit - (brokerAtFirstCommit ?? 0)
    console.log(`  broker CPU while keywatch consumed     ${(seconds / ((last.at - first.at) / 1000)).toFixed(2)} cores, ${((seconds * 1e6) / (last.committed - first.committed)).toFixed(1)} µs/event`)
  }
  {
    // Always printed: CPU per event varies less between runs than events/s on a shared machine.
    const cpu = Object.values(diffThreads(threadsAtLastCommit, threadsAtFirstCommit ?? {})).reduce((a, b) => a + b, 0)
    console.log(`  keywatch CPU while it consumed          ${(cpu / ((last.at - first.at) / 1000)).toFixed(2)} cores, ${((cpu * 1e6) / (last.committed - first.committed)).toFixed(1)} µs/event`)
  }
  console.log(`  keywatch peak RSS                       ${peakRssMb.toFixed(0)} MB`)
  console.log(`  stored ${Number(stored!.n).toLocaleString('en')} rows, rollup sums hourly ${Number(rolled!.n).toLocaleString('en')} daily ${Number(daily!.n).toLocaleString('en')} last-used ${Number(lastUsed!.n).toLocaleString('en')}  ${Number(stored!.n) === N && rollupsExact ? '(exact)' : '(MISMATCH)'}`)
  console.log(`  target: >= 60,000 events/s sustained; peak RSS <= 1024 MB`)
  console.log(`  machine load average at the end: ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')} (2 cores)`)
  if (STAGES) {
    console.log('')
    printThreads('keywatch threads, first commit to last', diffThreads(threadsAtLastCommit, threadsAtFirstCommit ?? {}), last.committed - first.committed, (last.at - first.at) / 1000)
    console.log('')
    console.log(`stages, in one process on ${STAGE_EVENTS.toLocaleString('en')} of the same messages (the engine runs in-process: its threads count)`)
    printStages([...fetched, ...stages])
    const perEvent = [...fetched, ...stages].filter((f) => !f.stage.startsWith('  ') && !f.stage.startsWith('encode')).reduce((a, f) => a + f.cpuUs, 0)
    console.log(`  sum of the stages: ${perEvent.toFixed(1)} µs CPU/event, i.e. at most ${fmt(2e6 / perEvent).trim()} events/s on 2 cores with nothing else running`)
  }
  if (Number(stored!.n) !== N || !rollupsExact) process.exitCode = 1
} finally {
  await broker?.stop()
}

/** ConsumerPerformance prints a CSV header and one line of figures. */
function parseConsumerPerformance(stdout: string): { rate: number; fetchRate: number } {
  const lines = stdout.trim().split('\n').filter((l) => l.includes(','))
  const header = lines.find((l) => l.includes('nMsg.sec'))?.split(',').map((s) => s.trim())
  const values = lines.at(-1)?.split(',').map((s) => s.trim())
  if (!header || !values) throw new Error(`unexpected ConsumerPerformance output:\n${stdout}`)
  const get = (name: string) => Number(values[header.indexOf(name)])
  return { rate: get('nMsg.sec'), fetchRate: get('fetch.nMsg.sec') }
}

/** User and system CPU seconds of a whole process, from /proc (0 when it is gone). */
function processCpuSeconds(pid: number | undefined): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) / 100
  } catch {
    return 0
  }
}

function rssMb(pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) / 1024 : 0
  } catch {
    return 0
  }
}

function fmt(n: number): string {
  return Math.round(n).toLocaleString('en').padStart(9)
}
