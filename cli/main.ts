// The `keywatch` command line.
import { createReadStream, fstatSync, statSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { createServer, type Server } from 'node:http'
import { Socket } from 'node:net'
import { Readable } from 'node:stream'
import { Command, CommanderError, Option } from 'commander'
import { DataDirLockedError, openStorage } from '../clickhouse/client.ts'
import { migrate } from '../clickhouse/migrate.ts'
import { EXIT_CODE_OF_KIND, KeywatchError } from '../core/errors.ts'
import type { KafkaIngest } from '../ingest/kafka-ingest.ts'
import { ingestNdjson, type NdjsonReport } from '../ingest/ndjson.ts'
import { config, dataDirOf, ExitError, instanceHeaders, openForCommand, runningInstance } from './context.ts'
import { announceInstance } from './instance.ts'
import { registerResponseCommands } from './response-commands.ts'
import { registerTokenCommands } from './token-commands.ts'
import { registerComplianceCommands } from './compliance-commands.ts'
import { registerDemoCommand } from './demo-command.ts'
import { registerDetectorCommands } from './detector-commands.ts'
import { progressBar } from './progress.ts'
import { apiDepsOf, createLogger, openRuntime } from '../app/runtime.ts'
import type { Metrics } from '../api/metrics.ts'

async function start(): Promise<void> {
  // The server's own modules (fastify and its routes, kafkajs, the election) load here: a one-shot command such as
  // `keywatch ingest FILE` starts without them (0.3 s of its start, see README).
  const [{ buildApi }, { startKafkaIngest }, { leadershipFor }] = await Promise.all([import('../api/server.ts'), import('../ingest/kafka-ingest.ts'), import('../cluster/leadership.ts')])
  const cfg = config()
  const log = createLogger(cfg)
  // Several instances elect one leader for the singletons; without Kafka this one is its own leader (issue 16).
  const rt = await openRuntime(cfg, log, { leadership: leadershipFor(cfg.kafka, log) })
  // The command line on this machine reaches the instance with a token only its data directory holds.
  const cliToken = cfg.clickhouse.mode === 'embedded' ? randomBytes(32).toString('base64url') : undefined
  const metricsPort = cfg.http.metricsPort
  const api = await buildApi(apiDepsOf(rt, { localToken: cliToken, metrics: metricsPort === undefined ? rt.metrics : undefined }))
  await api.listen({ host: cfg.http.host, port: cfg.http.port })
  const metricsServer = metricsPort === undefined ? undefined : await serveMetrics(rt.metrics, cfg.http.host, metricsPort)
  const address = api.server.address()
  const url = typeof address === 'object' && address ? `http://${cfg.http.host}:${address.port}` : `http://${cfg.http.host}:${cfg.http.port}`
  const release = cfg.clickhouse.mode === 'embedded' ? announceInstance(cfg.clickhouse.dataDir, { pid: process.pid, url, startedAt: new Date().toISOString(), cliToken }) : () => {}
  let kafka: KafkaIngest | undefined
  try {
    kafka = cfg.kafka ? await startKafkaIngest(cfg.kafka, cfg.ingest, rt.pipeline, log, rt.metrics.kafkaProgress, {
          // One process owns an embedded engine: no other instance can have an insert on the wire (issue 16).
          handoverMs: cfg.clickhouse.mode === 'embedded' ? 0 : cfg.ingest.handoverMs,
        }) : undefined
  } catch (err) {
    release()
    throw err
  }
  await rt.startServices()
  if (!(await rt.tokens.list()).some((t) => !t.revoked_at)) {
    log.warn({ hint: 'npx keywatch token create --role admin' }, 'no API tokens yet: create one to use the API and the dashboard')
  }
  log.info({ url, storage: cfg.clickhouse.mode, kafka: cfg.kafka ? cfg.kafka.brokers : 'off (KAFKA_BROKERS unset)', detectors: rt.detection.list().length }, 'keywatch started')

  let stopping = false
  const shutdown = async (signal: string) => {
    if (stopping) return
    stopping = true
    log.info({ signal }, 'draining: finishing stored batches and committing offsets')
    try {
      await kafka?.stop()
      await api.close()
      metricsServer?.close()
      await rt.close()
      release()
      log.info('stopped cleanly')
      log.flush()
      process.exit(0)
    } catch (err) {
      log.error({ err }, 'shutdown failed')
      log.flush()
      process.exit(1)
    }
  }
  process.on('SIGTERM', () => void shutdown('SIGTERM'))
  process.on('SIGINT', () => void shutdown('SIGINT'))
}

/** Prometheus metrics on a port of their own, for a scraper that holds no token (keep that port internal). */
async function serveMetrics(metrics: Metrics, host: string, port: number): Promise<Server> {
  const server = createServer((request, response) => {
    if (request.url !== '/metrics') return void response.writeHead(404).end()
    void metrics.registry.metrics().then((body) => response.writeHead(200, { 'content-type': metrics.registry.contentType }).end(body))
  })
  await new Promise<void>((resolve) => server.listen(port, host, resolve))
  return server
}

async function runMigrate(): Promise<void> {
  const cfg = config()
  const instance = runningInstance(cfg)
  if (instance) {
    throw new ExitError(
      `keywatch (pid ${instance.pid}, ${instance.url}) holds ${dataDirOf(cfg)} and applied the migrations when it started; ` +
        'stop it and run `keywatch migrate` again, or restart it to apply new migrations',
      1,
    )
  }
  const storage = await openStorage(cfg.clickhouse)
  try {
    const result = await migrate(storage.client, undefined, { cluster: cfg.clickhouse.mode === 'server' ? cfg.clickhouse.cluster : undefined })
    for (const name of result.applied) process.stdout.write(`applied  ${name}\n`)
    process.stdout.write(`schema up to date: ${result.applied.length} applied now, ${result.alreadyApplied.length} before\n`)
  } finally {
    await storage.close()
  }
}

/** A pipe or socket is read as a stream (it may be non-blocking); a redirected file as a file. */
function readDescriptor(fd: number): Readable {
  const stat = fstatSync(fd)
  return stat.isFIFO() || stat.isSocket() ? new Socket({ fd, readable: true, writable: false }) : createReadStream('', { fd, highWaterMark: 1 << 20 })
}

async function runIngest(file: string, opts: { json?: boolean; inputFd?: string }): Promise<void> {
  const cfg = config()
  let total: number | undefined
  if (file !== '-') {
    // Say plainly what is wrong with the path before opening anything.
    let stat
    try {
      stat = statSync(file)
    } catch (err) {
      throw new ExitError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as NodeJS.ErrnoException).code ?? 'unreadable'}`, 2)
    }
    if (!stat.isFile() && !stat.isFIFO()) throw new ExitError(`cannot read ${file}: not a regular file`, 2)
    total = stat.isFile() ? stat.size : undefined
  }
  // Piped input arrives on another descriptor (bin/keywatch.js): the embedded engine must not see it on fd 0.
  const stdin = () => (opts.inputFd ? readDescriptor(Number(opts.inputFd)) : process.stdin)
  const input: Readable = file === '-' ? stdin() : createReadStream(file, { highWaterMark: 1 << 20 })
  const bar = process.stderr.isTTY && !opts.json ? progressBar(total) : undefined
  let report: NdjsonReport

  const instance = runningInstance(cfg)
  if (instance) {
    // The running instance owns the engine: send the file through its API.
    let sent = 0
    const counted = input.map((chunk: Buffer) => {
      sent += chunk.byteLength
      bar?.update({ bytes: sent })
      return chunk
    })
    const response = await fetch(`${instance.url}/v1/events`, {
      method: 'POST',
      headers: { ...instanceHeaders(instance), 'content-type': 'application/x-ndjson' },
      body: Readable.toWeb(counted) as ReadableStream,
      duplex: 'half',
    } as RequestInit)
    if (!response.ok) throw new ExitError(`keywatch at ${instance.url} refused the events: ${response.status} ${await response.text()}`, 1)
    report = (await response.json()) as NdjsonReport
  } else {
    const log = createLogger(cfg)
    // Group commit alone (no INGEST_BATCH_MIN_ROWS): the file's chunks in flight (ingest/ndjson.ts) are the only
    // source, fewer than the minimum, and each insert takes all that came in while the one before was in the engine.
    const rt = await openRuntime({ ...cfg, ingest: { ...cfg.ingest, batchMinRows: 0 } }, log)
    try {
      report = await ingestNdjson(input, rt.pipeline, {
        source: 'file',
        onProgress: (p) => bar?.update({ bytes: p.bytes, events: p.summary.accepted + p.summary.duplicates + p.summary.rejected }),
      })
    } finally {
      await rt.close()
    }
  }
  bar?.done()
  process.stdout.write(opts.json ? JSON.stringify(report) + '\n' : formatReport(report))
  if (report.rejected > 0) process.exitCode = 1
}

async function runDetect(opts: { once?: boolean; at?: string; only?: string; json?: boolean }): Promise<void> {
  if (!opts.once) throw new ExitError('`keywatch detect` needs --once (keywatch start runs the detectors on their schedules)', 2)
  const at = opts.at ? new Date(opts.at) : new Date()
  if (opts.at && (!/^\d{4}-\d{2}-\d{2}T/.test(opts.at) || Number.isNaN(at.getTime()))) throw new ExitError(`--at ${JSON.stringify(opts.at)} is not an RFC 3339 date-time`, 2)
  const cfg = config()
  const rt = await openForCommand(cfg, 'run detectors')
  try {
    const only = opts.only?.split(',').map((s) => s.trim()).filter(Boolean)
    for (const id of only ?? []) {
      try {
        rt.detection.get(id) // unknown ids fail before anything runs
      } catch (err) {
        throw new ExitError((err as Error).message, 2)
      }
    }
    const runs = await rt.detection.runAll(at, only)
    if (opts.json) {
      process.stdout.write(JSON.stringify(runs.map((r) => ({ ...r, findings: r.findings.map((f) => ({ ...f.finding, change: f.change })) }))) + '\n')
    } else {
      for (const r of runs) {
        process.stdout.write(`${r.detector.padEnd(28)} ${r.durationMs.toFixed(0).padStart(6)} ms ${String(r.rowsRead).padStart(10)} rows ${String(r.findings.length).padStart(4)} findings${r.error ? `  ERROR ${r.error}` : ''}\n`)
        for (const f of r.findings) process.stdout.write(`  ${f.finding.severity.padEnd(8)} ${f.change.padEnd(8)} ${f.finding.title}\n`)
      }
    }
    if (runs.some((r) => r.error)) process.exitCode = 1
  } finally {
    await rt.close()
  }
}

async function runFindings(opts: { json?: boolean; status?: string; detector?: string; account?: string }): Promise<void> {
  const statuses = ['open', 'acknowledged', 'resolved', 'suppressed']
  if (opts.status && !statuses.includes(opts.status)) throw new ExitError(`--status must be one of ${statuses.join(', ')}`, 2)
  const cfg = config()
  const rt = await openForCommand(cfg, 'list findings')
  try {
    const list = await rt.findings.list({ status: opts.status as never, detector: opts.detector, account_id: opts.account })
    if (opts.json) process.stdout.write(JSON.stringify(list) + '\n')
    else for (const f of list) process.stdout.write(`${f.finding_id}  ${f.severity.padEnd(8)} ${f.status.padEnd(12)} ${f.detector.padEnd(28)} ${f.account_id}  ${f.key_id || f.user_id || f.ip}  ${f.title}  (x${f.occurrences}, last ${f.last_seen_at})\n`)
  } finally {
    await rt.close()
  }
}

function formatReport(r: NdjsonReport): string {
  const lines = [`accepted    ${r.accepted}`, `duplicates  ${r.duplicates}`]
  if (r.conflictingDuplicates) lines.push(`  conflicting        ${r.conflictingDuplicates} (other contents than the stored version, which stays; kept in ingest_errors)`)
  lines.push(`rejected    ${r.rejected}`)
  for (const [reason, n] of Object.entries(r.rejectedByReason)) lines.push(`  ${reason.padEnd(18)} ${n}`)
  for (const e of r.errors) lines.push(`line ${e.line}: ${e.reason}: ${e.detail}`)
  if (r.rejected > r.errors.length) lines.push(`(${r.rejected - r.errors.length} more rejections in ingest_errors)`)
  return lines.join('\n') + '\n'
}

// kafkajs computes a negative timeout on Node >= 24 (harmless); keep that one warning out of operators' logs.
process.removeAllListeners('warning')
process.on('warning', (warning) => {
  if (warning.name !== 'TimeoutNegativeWarning') process.stderr.write(`${warning.name}: ${warning.message}\n`)
})

const program = new Command()
  .name('keywatch')
  .description('Security monitoring and audit analytics for a payment platform\'s API keys')
  .showHelpAfterError()
  .exitOverride()

program
  .command('start')
  .description('run the API, and the Kafka consumers when KAFKA_BROKERS is set (applies migrations first)')
  .action(start)

program.command('migrate').description('apply the ClickHouse schema migrations (safe to rerun)').action(runMigrate)

program
  .command('ingest')
  .description('ingest an NDJSON file of contract events of any type (- for stdin); exits 1 if any line was rejected')
  .argument('<file>', 'NDJSON file, or - for stdin')
  .option('--json', 'print the summary as JSON')
  .addOption(new Option('--input-fd <fd>', 'read - from this descriptor (set by bin/keywatch.js)').hideHelp())
  .action(runIngest)

program
  .command('detect')
  .description('run the detectors once, as of now or of --at (a backtest over stored history)')
  .option('--once', 'run once and exit')
  .option('--at <time>', 'RFC 3339 moment to run as of, e.g. 2026-11-22T15:00:00Z')
  .option('--only <ids>', 'comma-separated detector ids')
  .option('--json', 'print the runs and their findings as JSON')
  .action(runDetect)

program
  .command('findings')
  .description('list findings (newest first)')
  .option('--json', 'print a JSON array of findings')
  .option('--status <status>', 'open, acknowledged, resolved or suppressed')
  .option('--detector <id>', 'one detector')
  .option('--account <id>', 'one account')
  .action(runFindings)

registerResponseCommands(program)
registerTokenCommands(program)
registerComplianceCommands(program)
registerDemoCommand(program)
registerDetectorCommands(program)

try {
  await program.parseAsync(process.argv)
} catch (err) {
  if (err instanceof CommanderError) process.exit(err.exitCode === 0 ? 0 : 2)
  if (err instanceof ExitError) {
    process.stderr.write(`keywatch: ${err.message}\n`)
    process.exit(err.exitCode)
  }
  // Every deliberate error (a bad configuration, a refusal, a held data directory): its message, its code, and
  // the exit code of its kind; never a stack.
  if (err instanceof KeywatchError) {
    process.stderr.write(`keywatch: ${err.message}${err.message.includes('\n') ? '' : ` (${err.code})`}\n`)
    process.exit(EXIT_CODE_OF_KIND[err.kind])
  }
  process.stderr.write(`keywatch: ${(err as Error)?.stack ?? String(err)}\n`)
  process.exit(1)
}
