// A real Apache Kafka broker for tests and benchmarks: kafka_2.13 from Maven Central (test/kafka/pom.xml),
// single-node KRaft (broker + controller in one JVM) on 127.0.0.1, in a fresh temporary directory.
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Kafka, logLevel } from 'kafkajs'

const HERE = dirname(fileURLToPath(import.meta.url))
const DEFAULT_REPO_ROOT = resolve(HERE, '..', '..')
/** Warnings and errors on stderr: the broker's, and the tools' (whose results go to stdout). */
export const LOG4J_CONFIG = join(HERE, 'log4j2.yaml')

/** The Kafka version test/kafka/pom.xml fetches. */
function kafkaVersion(repoRoot: string): string {
  try {
    return /<kafka\.version>([^<]+)<\/kafka\.version>/.exec(readFileSync(join(repoRoot, 'test', 'kafka', 'pom.xml'), 'utf8'))?.[1]?.trim() ?? '4.1.1'
  } catch {
    return '4.1.1'
  }
}

function jarsComplete(dir: string, version: string): boolean {
  return existsSync(join(dir, `kafka_2.13-${version}.jar`)) && existsSync(join(dir, `kafka-tools-${version}.jar`))
}

const fetching = new Map<string, Promise<string>>()

/**
 * The directory of the broker's jars, `<repoRoot>/.kafka/libs`, fetched with Maven from Maven Central (~10 s) unless
 * already there. Maven writes into a scratch directory that is renamed into place, so an interrupted fetch leaves
 * nothing half-done behind.
 */
export function ensureKafkaJars(repoRoot: string): Promise<string> {
  const libs = join(repoRoot, '.kafka', 'libs')
  let pending = fetching.get(libs)
  if (!pending) {
    pending = fetchJars(repoRoot, libs).finally(() => fetching.delete(libs))
    fetching.set(libs, pending)
  }
  return pending
}

async function fetchJars(repoRoot: string, libs: string): Promise<string> {
  const version = kafkaVersion(repoRoot)
  if (jarsComplete(libs, version)) return libs
  await requireTool('mvn', ['-v'])
  await requireTool('java', ['-version'])
  const scratch = `${libs}.partial-${process.pid}-${randomBytes(4).toString('hex')}`
  const pom = join(repoRoot, 'test', 'kafka', 'pom.xml')
  try {
    const mvn = await exec('mvn', ['-q', '-B', '-f', pom, 'dependency:copy-dependencies', `-DoutputDirectory=${scratch}`, '-DincludeScope=runtime'])
    if (mvn.code !== 0 || !jarsComplete(scratch, version)) {
      throw new Error(`fetching Kafka ${version} from Maven Central (mvn -f ${pom} dependency:copy-dependencies) failed (exit ${mvn.code}):\n${lastLines(mvn.stdout + mvn.stderr, 40)}`)
    }
    if (jarsComplete(libs, version)) return libs // another process got there first
    rmSync(libs, { recursive: true, force: true })
    renameSync(scratch, libs)
    return libs
  } finally {
    rmSync(scratch, { recursive: true, force: true })
  }
}

export interface BrokerOptions {
  /** The checkout, for test/kafka/pom.xml and .kafka/libs; defaults to the one this file is in. */
  repoRoot?: string
  /** Every line the broker logs (warnings and errors, and its "started" line). */
  log?: (line: string) => void
  /** How long the broker may take to serve metadata; default 60 s. */
  startTimeoutMs?: number
}

export interface Broker {
  /** `127.0.0.1:<port>`, the bootstrap servers for clients. */
  brokers: string
  /** The jars' directory, for runKafkaClass. */
  libsDir: string
  /** SIGTERM, SIGKILL after 15 s, then the temporary directory is removed. Idempotent. */
  stop(): Promise<void>
  /** Stops the broker (SIGTERM by default), leaves it down `downMs`, starts it again on the same ports and data. */
  restart(how?: { signal?: 'SIGTERM' | 'SIGKILL'; downMs?: number }): Promise<void>
  /** The running JVM's process id (a benchmark reads its CPU from /proc). */
  pid(): number | undefined
}

/** Starts a single-node KRaft broker on two free loopback ports and resolves once it serves metadata. */
export async function startBroker(opts: BrokerOptions = {}): Promise<Broker> {
  const repoRoot = opts.repoRoot ?? DEFAULT_REPO_ROOT
  const libsDir = await ensureKafkaJars(repoRoot)
  await requireTool('java', ['-version'])
  const classpath = join(libsDir, '*')
  const [port, controllerPort] = await freePorts(2)
  const dir = mkdtempSync(join(tmpdir(), 'keywatch-kafka-'))
  const properties = join(dir, 'server.properties')
  writeFileSync(
    properties,
    [
      'process.roles=broker,controller',
      'node.id=1',
      `controller.quorum.voters=1@127.0.0.1:${controllerPort}`,
      `listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${controllerPort}`,
      `advertised.listeners=PLAINTEXT://127.0.0.1:${port}`,
      'controller.listener.names=CONTROLLER',
      'listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT',
      'inter.broker.listener.name=PLAINTEXT',
      `log.dirs=${join(dir, 'data')}`,
      'num.partitions=3',
      'auto.create.topics.enable=true',
      'group.initial.rebalance.delay.ms=0',
      'offsets.topic.replication.factor=1',
      'offsets.topic.num.partitions=3',
      'transaction.state.log.replication.factor=1',
      'transaction.state.log.min.isr=1',
      'transaction.state.log.num.partitions=3',
      'share.coordinator.state.topic.replication.factor=1',
      'share.coordinator.state.topic.min.isr=1',
      // 2 cores shared with the tests: fewer threads than the defaults (3 network, 8 I/O).
      'num.network.threads=2',
      'num.io.threads=4',
      'num.recovery.threads.per.data.dir=1',
      '',
    ].join('\n'),
  )

  const tail: string[] = []
  const remember = (line: string) => {
    tail.push(line)
    if (tail.length > 60) tail.shift()
  }
  const cleanupDir = () => rmSync(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 })

  // Storage must be formatted with a cluster id first. `--cluster-id=` as one argument: a base64url id may start with '-'.
  const clusterId = randomBytes(16).toString('base64url')
  const format = await exec('java', [...SHORT_LIVED_JVM, `-Dlog4j2.configurationFile=${LOG4J_CONFIG}`, '-cp', classpath, 'kafka.tools.StorageTool', 'format', `--cluster-id=${clusterId}`, '-c', properties])
  if (format.code !== 0) {
    cleanupDir()
    throw new Error(`formatting the Kafka broker's storage failed (exit ${format.code}):\n${lastLines(format.stdout + format.stderr, 40)}`)
  }

  const jvm = ['-Xms128m', '-Xmx512m', '-XX:+UseSerialGC', '-XX:+ExitOnOutOfMemoryError', '-Djava.awt.headless=true', `-Dlog4j2.configurationFile=${LOG4J_CONFIG}`]
  let child!: ChildProcess
  let exited!: Promise<void>
  let watchdog: { stop(): void } | undefined
  const alive = () => child.exitCode === null && child.signalCode === null && child.pid !== undefined
  // One JVM on the same properties and data directory: started here, and again by restart().
  const launch = () => {
    child = spawn('java', [...jvm, '-cp', classpath, 'kafka.Kafka', properties], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] })
    const running = child
    exited = new Promise<void>((r) => {
      running.once('exit', () => r())
      running.once('error', (e) => {
        remember(`could not run java: ${e.message}`)
        r()
      })
    })
    for (const stream of [running.stdout!, running.stderr!]) {
      let partial = ''
      stream.setEncoding('utf8')
      stream.on('data', (chunk: string) => {
        const lines = (partial + chunk).split('\n')
        partial = lines.pop() ?? ''
        for (const line of lines) {
          if (!line.trim()) continue
          remember(line)
          opts.log?.(line)
        }
      })
      // The broker alone must not keep this process alive; if it exits, the broker goes with it (below).
      ;(stream as unknown as Socket).unref()
    }
    running.unref()
    // If this process dies without running exit handlers (SIGKILL, an unhandled signal), a watchdog that waits for
    // the end of its stdin pipe from us stops the broker and removes the directory.
    watchdog = running.pid === undefined ? undefined : startWatchdog(running.pid, dir)
  }
  launch()

  // If this process exits without stop(): kill the broker then.
  const killOnExit = () => {
    if (alive()) child.kill('SIGKILL')
  }
  process.on('exit', killOnExit)

  const halt = async (signal: 'SIGTERM' | 'SIGKILL') => {
    if (alive()) {
      child.kill(signal)
      if (!(await within(exited, 15_000))) {
        child.kill('SIGKILL')
        await within(exited, 10_000)
      }
    }
    watchdog?.stop()
  }
  let stopping: Promise<void> | undefined
  const stop = () =>
    (stopping ??= (async () => {
      await halt('SIGTERM')
      process.off('exit', killOnExit)
      cleanupDir()
    })())

  const brokers = `127.0.0.1:${port}`
  const timeoutMs = opts.startTimeoutMs ?? 60_000
  const serving = async () => {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      if (!alive()) throw new Error(`the Kafka broker exited during start-up (code ${child.exitCode ?? child.signalCode}). Its last lines:\n${tail.join('\n')}`)
      if (await servesMetadata(brokers)) break
      if (Date.now() > deadline) {
        throw new Error(`the Kafka broker on ${brokers} did not serve metadata within ${timeoutMs / 1000} s. Its last lines:\n${tail.join('\n') || '(none)'}`)
      }
      await Promise.race([exited, sleep(300)])
    }
  }
  try {
    await serving()
  } catch (e) {
    await stop()
    throw e
  }
  const restart = async (how: { signal?: 'SIGTERM' | 'SIGKILL'; downMs?: number } = {}) => {
    await halt(how.signal ?? 'SIGTERM')
    await sleep(how.downMs ?? 0)
    launch()
    await serving()
  }
  return { brokers, libsDir, stop, restart, pid: () => (alive() ? child.pid : undefined) }
}

/** True once the broker accepts a connection and answers a metadata request. */
async function servesMetadata(brokers: string): Promise<boolean> {
  const admin = new Kafka({
    clientId: 'keywatch-harness-probe',
    brokers: [brokers],
    logLevel: logLevel.NOTHING,
    connectionTimeout: 2_000,
    requestTimeout: 5_000,
    retry: { retries: 0 },
  }).admin()
  try {
    await admin.connect()
    await admin.listTopics()
    return true
  } catch {
    return false
  } finally {
    await admin.disconnect().catch(() => undefined)
  }
}

/** Creates the topics that do not exist yet (replication factor 1) and waits for their leaders. */
export async function createTopics(brokers: string, topics: string[], partitions = 3): Promise<void> {
  const admin = new Kafka({ clientId: 'keywatch-harness', brokers: brokers.split(','), logLevel: logLevel.NOTHING }).admin()
  await admin.connect()
  try {
    const existing = new Set(await admin.listTopics())
    const missing = [...new Set(topics)].filter((t) => !existing.has(t))
    if (missing.length === 0) return
    // kafkajs resolves (false) rather than throwing when a topic was created meanwhile by someone else. Right after
    // creation the broker may still answer "does not host this topic-partition" while leaders settle: ask again.
    for (let attempt = 1; ; attempt++) {
      try {
        await admin.createTopics({ waitForLeaders: true, topics: missing.map((topic) => ({ topic, numPartitions: partitions, replicationFactor: 1 })) })
        await admin.fetchTopicMetadata({ topics: missing })
        return
      } catch (err) {
        if (attempt >= 10 || !(err as { retriable?: boolean }).retriable) throw err
        await new Promise((r) => setTimeout(r, 300 * attempt))
      }
    }
  } finally {
    await admin.disconnect()
  }
}

/**
 * Runs one of Kafka's own command-line classes from the same jars, e.g. `org.apache.kafka.tools.ConsumerPerformance`.
 * The tool's own output is on stdout; its logging (warnings and errors) on stderr.
 */
export function runKafkaClass(
  libsDir: string,
  className: string,
  args: string[],
  opts: { jvmArgs?: string[]; timeoutMs?: number } = {},
): Promise<{ stdout: string; stderr: string; code: number | null }> {
  const jvm = opts.jvmArgs ?? ['-Xmx512m', '-Djava.awt.headless=true']
  return exec('java', [...jvm, `-Dlog4j2.configurationFile=${LOG4J_CONFIG}`, '-cp', join(libsDir, '*'), className, ...args], opts.timeoutMs)
}

// --- helpers ---------------------------------------------------------------------------------------------------------

/** For a JVM that runs for a second or two (storage format): start fast rather than run fast. */
const SHORT_LIVED_JVM = ['-Xmx256m', '-XX:+UseSerialGC', '-XX:TieredStopAtLevel=1', '-Xshare:auto']

/**
 * A detached `sh` that reads its stdin, a pipe from this process, until it ends — when this process ends, however it
 * ends. Then it stops the broker (SIGTERM, SIGKILL after 15 s) and removes its directory. stop() ends it first.
 */
function startWatchdog(pid: number, dir: string): { stop(): void } {
  const script = [
    'trap "" INT TERM HUP',
    'cat >/dev/null',
    'kill -TERM "$1" 2>/dev/null',
    'i=0',
    'while kill -0 "$1" 2>/dev/null; do',
    '  if [ "$i" -ge 15 ]; then kill -KILL "$1" 2>/dev/null; sleep 1; break; fi',
    '  sleep 1; i=$((i+1))',
    'done',
    'rm -rf "$2"',
  ].join('\n')
  const dog: ChildProcess = spawn('sh', ['-c', script, 'keywatch-kafka-watchdog', String(pid), dir], { stdio: ['pipe', 'ignore', 'ignore'], detached: true })
  dog.on('error', () => undefined)
  dog.stdin?.on('error', () => undefined)
  ;(dog.stdin as unknown as Socket | null)?.unref()
  dog.unref()
  return {
    stop() {
      if (dog.exitCode === null && dog.signalCode === null) dog.kill('SIGKILL')
    },
  }
}

async function requireTool(tool: string, args: string[]): Promise<void> {
  try {
    await exec(tool, args)
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    throw new Error(
      `the Kafka test broker needs \`${tool}\` on PATH (Java 17+ and Maven) — ${code === 'ENOENT' ? 'not found' : String(e)}; ` +
        'or set KAFKA_BROKERS to the bootstrap servers of a running broker',
    )
  }
}

/** Runs a command to completion; rejects only when it cannot be started (e.g. ENOENT). */
function exec(cmd: string, args: string[], timeoutMs?: number): Promise<{ stdout: string; stderr: string; code: number | null }> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
    const timer = timeoutMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    const killOnExit = () => child.kill('SIGKILL')
    process.once('exit', killOnExit)
    const done = () => {
      clearTimeout(timer)
      process.off('exit', killOnExit)
    }
    child.once('error', (e) => {
      done()
      reject(e)
    })
    child.once('close', (code) => {
      done()
      resolvePromise({ stdout, stderr, code })
    })
  })
}

/** `n` distinct free TCP ports on 127.0.0.1, found by binding to port 0 (all held until all are found). */
async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<ReturnType<typeof createServer>>((resolveServer, reject) => {
          const server = createServer()
          server.once('error', reject)
          server.listen(0, '127.0.0.1', () => resolveServer(server))
        }),
    ),
  )
  const ports = servers.map((s) => {
    const address = s.address()
    if (!address || typeof address === 'string') throw new Error('could not find a free port')
    return address.port
  })
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))))
  return ports
}

function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([p.then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)))]).finally(() => clearTimeout(timer))
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}

function lastLines(text: string, n: number): string {
  return text.trim().split('\n').slice(-n).join('\n')
}
