// A real Apache Kafka broker for tests and benchmarks: kafka_2.13 4.1.1 from Maven Central (test/kafka/pom.xml),
// single-node KRaft (broker + controller) on 127.0.0.1, in a temporary directory.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Kafka, logLevel } from 'kafkajs'

const KAFKA_JAR = 'kafka_2.13-4.1.1.jar'

/** Fetches the broker's jars with Maven unless they are there already; returns their directory. */
export async function ensureKafkaJars(repoRoot: string): Promise<string> {
  const libs = join(repoRoot, '.kafka', 'libs')
  if (existsSync(join(libs, KAFKA_JAR)) && readdirSync(libs).some((f) => f.startsWith('kafka-tools-'))) return libs
  for (const tool of ['java', 'mvn']) {
    if (spawnSync(tool, ['-version'], { stdio: 'ignore' }).error) {
      throw new Error(`the Kafka test broker needs ${tool} on PATH (Java 17 and Maven); or set KAFKA_BROKERS to use a running broker`)
    }
  }
  const pom = join(repoRoot, 'test', 'kafka', 'pom.xml')
  const result = spawnSync('mvn', ['-q', '-B', '-f', pom, 'dependency:copy-dependencies', `-DoutputDirectory=${libs}`, '-DincludeScope=runtime'], {
    encoding: 'utf8',
  })
  if (result.status !== 0 || !existsSync(join(libs, KAFKA_JAR))) {
    throw new Error(`fetching Kafka from Maven Central failed:\n${result.stdout}\n${result.stderr}`)
  }
  return libs
}

export interface Broker {
  brokers: string
  libsDir: string
  stop(): Promise<void>
}

export async function startBroker(opts: { repoRoot: string; log?: (line: string) => void }): Promise<Broker> {
  const libsDir = await ensureKafkaJars(opts.repoRoot)
  const dir = mkdtempSync(join(tmpdir(), 'keywatch-kafka-'))
  const [port, controllerPort] = [await freePort(), await freePort()]
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
      'offsets.topic.replication.factor=1',
      'offsets.topic.num.partitions=3',
      'transaction.state.log.replication.factor=1',
      'transaction.state.log.min.isr=1',
      'group.initial.rebalance.delay.ms=0',
      'auto.create.topics.enable=true',
      'log.flush.interval.messages=9223372036854775807',
    ].join('\n'),
  )
  const log4j = join(dir, 'log4j2.yaml')
  writeFileSync(
    log4j,
    [
      'Configuration:',
      '  Appenders:',
      '    Console:',
      '      name: STDOUT',
      '      PatternLayout:',
      '        pattern: "[%d] %p %m (%c)%n"',
      '  Loggers:',
      '    Root:',
      '      level: WARN',
      '      AppenderRef:',
      '        - ref: STDOUT',
    ].join('\n'),
  )
  const classpath = join(libsDir, '*')
  const clusterId = randomBytes(16).toString('base64url').slice(0, 22)
  const format = spawnSync('java', ['-cp', classpath, 'kafka.tools.StorageTool', 'format', `--cluster-id=${clusterId}`, '-c', properties], { encoding: 'utf8' })
  if (format.status !== 0) throw new Error(`formatting Kafka storage failed:\n${format.stdout}\n${format.stderr}`)

  const jvm = ['-Xms256m', '-Xmx512m', '-XX:+UseSerialGC', '-XX:TieredStopAtLevel=1', '-Xshare:auto', `-Dlog4j2.configurationFile=${log4j}`]
  const child: ChildProcess = spawn('java', [...jvm, '-cp', classpath, 'kafka.Kafka', properties], { stdio: ['ignore', 'pipe', 'pipe'] })
  const tail: string[] = []
  const onOutput = (d: Buffer) => {
    for (const line of d.toString().split('\n').filter(Boolean)) {
      tail.push(line)
      if (tail.length > 40) tail.shift()
      opts.log?.(line)
    }
  }
  child.stdout!.on('data', onOutput)
  child.stderr!.on('data', onOutput)
  const killOnExit = () => child.kill('SIGKILL')
  process.on('exit', killOnExit)

  const brokers = `127.0.0.1:${port}`
  const deadline = Date.now() + 90_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`the Kafka broker exited with ${child.exitCode}:\n${tail.join('\n')}`)
    if (await answers(brokers)) break
    if (Date.now() > deadline) {
      child.kill('SIGKILL')
      throw new Error(`the Kafka broker did not come up in 90 s:\n${tail.join('\n')}`)
    }
    await new Promise((r) => setTimeout(r, 500))
  }

  return {
    brokers,
    libsDir,
    async stop() {
      process.off('exit', killOnExit)
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r))
        child.kill('SIGTERM')
        const timer = setTimeout(() => child.kill('SIGKILL'), 15_000)
        await exited
        clearTimeout(timer)
      }
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

/** True once the broker serves metadata and can create a topic. */
async function answers(brokers: string): Promise<boolean> {
  const admin = new Kafka({ clientId: 'keywatch-harness', brokers: [brokers], logLevel: logLevel.NOTHING, retry: { retries: 0 } }).admin()
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

export async function createTopics(brokers: string, topics: string[], partitions = 3): Promise<void> {
  const admin = new Kafka({ clientId: 'keywatch-harness', brokers: brokers.split(','), logLevel: logLevel.NOTHING }).admin()
  await admin.connect()
  try {
    const existing = new Set(await admin.listTopics())
    const missing = topics.filter((t) => !existing.has(t))
    if (missing.length) {
      await admin.createTopics({ waitForLeaders: true, topics: missing.map((topic) => ({ topic, numPartitions: partitions, replicationFactor: 1 })) })
    }
  } finally {
    await admin.disconnect()
  }
}

/** Runs one of Kafka's own tools (e.g. org.apache.kafka.tools.ConsumerPerformance) from the same jars. */
export function runKafkaClass(libsDir: string, className: string, args: string[]): Promise<{ stdout: string; stderr: string; code: number | null }> {
  return new Promise((resolve, reject) => {
    const child = spawn('java', ['-Xmx512m', '-cp', join(libsDir, '*'), className, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code) => resolve({ stdout, stderr, code }))
  })
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.unref()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))))
    })
  })
}
