// What every command that touches data shares: the config, a logger, storage (migrated) and the ingest pipeline.
import pinoPretty from 'pino-pretty'
import pino, { type Logger } from 'pino'
import { FindingFlow, type FindingsListener } from '../app/finding-flow.ts'
import { inventoryClocks, KeyInventory } from '../inventory/keys.ts'
import { openStorage, type Storage } from '../clickhouse/client.ts'
import { migrate } from '../clickhouse/migrate.ts'
import { recentWindows, recoverViews, type RecoveryWindows } from '../clickhouse/recovery.ts'
import type { Config } from '../config/config.ts'
import { IngestPipeline } from '../ingest/pipeline.ts'
import { DecodePool } from '../ingest/decode-pool.ts'
import { EventWriter } from '../ingest/writer.ts'
import { RecentIds } from '../ingest/recent-ids.ts'
import { DetectionEngine } from '../detectors/engine.ts'
import { loadCustomDetectors, problemText, type LoadProblem } from '../detectors/custom.ts'
import { DETECTORS } from '../detectors/index.ts'
import type { Fixtures } from '../detectors/detector.ts'
import { IncidentStore } from '../incidents/store.ts'
import { FindingStore, type Recorded } from '../detectors/findings.ts'
import type { FindingDraft } from '../detectors/detector.ts'
import type { ApiDeps } from '../api/server.ts'
import { Metrics } from '../api/metrics.ts'
import { TokenStore } from '../api/tokens.ts'
import { StepUp } from '../api/step-up.ts'
import { AuditTrail } from '../audit/trail.ts'
import { AlertService } from '../alerts/service.ts'
import { slackInteractionRoutes } from '../alerts/interactions.ts'
import { loadSigningKey, manifestAnchors } from '../exports/export.ts'
import { scheduleExports } from '../exports/schedule.ts'
import { createPublicKey, type KeyObject } from 'node:crypto'
import { readFileSync } from 'node:fs'

const VERSION = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version
import { ActionStore } from '../response/actions.ts'
import { ResponseEngine } from '../response/engine.ts'
import { SecretIndex } from '../response/secret-index.ts'
import type { Row } from '../ingest/rows.ts'
import type { KeyChange } from '../alerts/messages.ts'
import { KeyServiceClient } from '../response/key-service.ts'
import type { Leadership } from '../cluster/leadership.ts'
import { ClusterAuditTrail } from '../cluster/audit.ts'
import { HttpCommandSender, KafkaCommandSender, NoCommandSender, type CommandSender } from '../response/senders.ts'

export interface Runtime {
  config: Config
  log: Logger
  storage: Storage
  writer: EventWriter
  pipeline: IngestPipeline
  inventory: KeyInventory
  findings: FindingStore
  detection: DetectionEngine
  actions: ActionStore
  response: ResponseEngine
  tokens: TokenStore
  /** Step-up codes (TOTP) for sensitive actions: enrolment and the verifier (`verifyStepUp`). */
  stepUp: StepUp
  metrics: Metrics
  /** keywatch's own hash-chained audit trail. */
  audit: AuditTrail
  alerts: AlertService
  /** Findings grouped into incidents (grouped as they are recorded). */
  incidents: IncidentStore
  /** The detectors loaded from DETECTORS_DIR, their fixtures, and the files skipped (each problem names file and field). */
  customDetectors: { ids: string[]; fixtures: Record<string, Fixtures>; problems: LoadProblem[] }
  /** The Ed25519 key that signs export manifests (read, or made, on first use). */
  exportSigningKey: () => KeyObject
  version: string
  /** Several instances (issue 16): who leads the singletons; undefined for one-shot commands (they write directly). */
  leadership?: Leadership
  /** Starts what only a running keywatch does: detector schedules, automatic response and its watch. */
  startServices(): Promise<void>
  /** Records findings raised outside a detector run (keywatch itself, a person, a test) and tells the listeners. */
  raise(drafts: FindingDraft[], at: Date): Promise<Recorded[]>
  /** Told about every finding recorded (by a detector run or raised by keywatch itself): alerts listen here. */
  onFindings(listener: FindingsListener): void
  close(): Promise<void>
}

export type { FindingsListener }

/**
 * Logs go to stderr, leaving stdout to command output: JSON lines for machines, or, on a terminal (or with
 * LOG_FORMAT=pretty), one coloured line per event for the person reading it.
 */
export function createLogger(config: Config): Logger {
  const options = { level: config.logLevel, base: { service: 'keywatch' } }
  const pretty = config.logFormat === 'pretty' || (config.logFormat === 'auto' && process.stderr.isTTY)
  if (!pretty) return pino(options, pino.destination({ fd: 2, sync: false }))
  // In-process stream, not a worker transport: nothing is lost when a command exits right after logging.
  return pino(options, pinoPretty({ destination: 2, colorize: process.stderr.isTTY, ignore: 'pid,hostname,service', translateTime: 'SYS:HH:MM:ss.l', singleLine: true }))
}

export interface RuntimeOptions {
  /** `keywatch start`: the singletons below run only while this instance leads (cluster/leadership.ts). */
  leadership?: Leadership
  /**
   * A store already open and shared with other runtimes in this process (the fault suite's instances on one
   * embedded engine, issue 16); close() leaves it open. Otherwise the runtime opens config.clickhouse and owns it.
   */
  storage?: Storage
}

export async function openRuntime(config: Config, log: Logger, options: RuntimeOptions = {}): Promise<Runtime> {
  const { leadership } = options
  const shared = options.storage
  const storage: Storage = shared ?? (await openStorage(config.clickhouse))
  const closeStorage = () => (shared ? Promise.resolve() : storage.close())
  let windows: RecoveryWindows | undefined
  let repairPending = false
  try {
    const result = await migrate(storage.client, undefined, { cluster: config.clickhouse.mode === 'server' ? config.clickhouse.cluster : undefined })
    if (result.applied.length) log.info({ applied: result.applied }, 'migrations applied')
    windows = await recentWindows(storage)
  } catch (err) {
    await closeStorage()
    throw err
  }
  // The repair of views an unclean stop left incomplete. It never destroys (see clickhouse/recovery.ts); if it
  // fails, the instance runs on and the repair is tried again, with the same rows, while no insert runs.
  // One process owns an embedded data directory, so it sees every insert: the duplicate decision can be made in
  // memory. A server may have other writers (instances, one-shot commands): there the engine is asked. So does a
  // store shared with other runtimes (the fault suite's stand-in for a server).
  const recentIds = storage.mode === 'embedded' && !shared && (config.ingest.dedupIndexIds ?? 0) > 0 ? new RecentIds(storage.client, config.ingest.dedupIndexIds!) : undefined
  const repair = async (): Promise<boolean> => {
    try {
      const recovered = await recoverViews(storage, windows)
      if (recovered.eventIdsRestored) recentIds?.reset() // ids it restored behind the index's back
      if (recovered.eventIdsRestored || recovered.usageKeyDaysRebuilt || recovered.ratelimitKeyBucketsRebuilt) log.warn(recovered, 'repaired views left incomplete by an unclean stop')
      windows = undefined // a later repair looks at the newest rows
      return true
    } catch (err) {
      log.error({ err: String(err) }, 'repairing the views failed; keywatch runs on and tries again')
      return false
    }
  }
  let repairTimer: NodeJS.Timeout | undefined
  let repairAttempt = 0
  let closing = false
  const scheduleRepair = () => {
    if (repairTimer || closing) return
    repairTimer = setTimeout(() => {
      void writer.exclusive(repair).then((ok) => {
        repairTimer = undefined
        repairAttempt = ok ? 0 : repairAttempt + 1
        if (!ok || repairPending) ((repairPending = false), scheduleRepair())
      })
    }, Math.min(60_000, 2_000 * 2 ** repairAttempt))
    repairTimer.unref()
  }
  const writer = new EventWriter(storage, {
    recentIds,
    maxRows: config.ingest.batchMaxRows,
    maxWaitMs: config.ingest.batchMaxWaitMs,
    maxInflight: config.ingest.maxInflightBatches,
    minRows: config.ingest.batchMinRows,
    maxAgeMs: config.ingest.batchMaxAgeMs,
    // A leak report starts the clock on a revocation: it does not wait for company.
    lingerMs: { leak_reports: 0 },
    onFlush: (table, s) => log.debug({ table, ...s }, 'batch stored'),
    // Raw rows landed without their views (the engine refused a view's part): repair them soon.
    onPartialInsert: (table) => {
      log.warn({ table }, 'an insert was refused after its raw rows were stored; the views will be repaired')
      if (repairTimer) repairPending = true
      else scheduleRepair()
    },
  })
  if (!(await repair())) scheduleRepair()
  const decodePool = config.ingest.decodeWorkers ? new DecodePool(config.ingest.decodeWorkers) : undefined
  const pipeline = new IngestPipeline(storage.client, writer, Date.now, decodePool)
  const findings = new FindingStore(storage.client)
  const inventory = new KeyInventory(storage.client, inventoryClocks(config.detectorOverrides))
  // A security team's own detectors: a broken file is reported (here, and as a finding once services start) and skipped.
  const custom = config.detectorsDir ? await loadCustomDetectors(storage.client, config.detectorsDir, DETECTORS.map((d) => d.id)) : { detectors: [], fixtures: {}, problems: [] }
  for (const p of custom.problems) log.error({ file: p.file, field: p.field, problem: p.message, kind: p.kind }, `custom detector skipped: ${problemText(p)}`)
  if (custom.detectors.length) log.info({ detectors: custom.detectors.map((d) => d.id), dir: config.detectorsDir }, 'custom detectors loaded')
  let detection: DetectionEngine
  try {
    detection = new DetectionEngine(storage.client, findings, log, config.detectorOverrides, [...DETECTORS, ...custom.detectors])
  } catch (err) {
    await closeStorage()
    throw err
  }
  const actions = new ActionStore(storage.client)
  const sender = commandSender(config, log)
  // The response engine raises keywatch's own findings through the finding flow (created below, once the alerts
  // and the audit trail exist): the flow's one loop, closed there (app/finding-flow.ts).
  const raise = (drafts: FindingDraft[], at: Date, opts: { realert?: boolean } = {}): Promise<Recorded[]> => flow.raise(drafts, at, opts)
  const resolveFinding = async (dedupKey: string, actor: string, reason: string) => {
    const detector = dedupKey.slice(0, dedupKey.indexOf(':'))
    for (const f of await findings.list({ detector, limit: 1000 })) {
      if (f.dedup_key === dedupKey && f.status !== 'resolved') await findings.setStatus(f.finding_id, 'resolved', actor, reason)
    }
  }
  const response = new ResponseEngine({ client: storage.client, actions, sender, policy: config.response.policy, log, raise, resolveFinding })
  // The current secrets of live keys, in memory and fresh from lifecycle rows as they are decoded: a leak report is
  // decided from it as it is decoded (the response engine's fast path), once the services run.
  const secrets = new SecretIndex()
  let deciding = false
  pipeline.onDecoded((table, rows) => {
    if (table === 'key_lifecycle') {
      secrets.applyLifecycle(rows)
      if (deciding) void alerts.onKeyChanges(keyChangesOf(rows)).catch((err) => log.error({ err: String(err) }, 'could not queue the key-change notifications'))
    } else if (table === 'leak_reports' && deciding) response.onLeakRows(rows)
  })
  const tokens = new TokenStore(storage.client)
  const metrics = new Metrics()
  pipeline.onIngested((summary, rejections) => metrics.ingested(summary, rejections))
  detection.onRun((run) => metrics.detectorRun(run))
  // The export signing key also signs the audit trail's checkpoints: a rewrite inside ClickHouse cannot forge them.
  let signingKey: KeyObject | undefined
  const signer = () => (signingKey ??= loadSigningKey(config.exports.signingKeyFile))
  // With a leadership, the chain has one writer: the leader (a follower's entries are forwarded to it).
  // Checkpoints also go to the anchor file, outside ClickHouse: a writer there cannot remove them unseen.
  const auditOptions = { signingKey: signer, anchorFile: config.security.auditAnchorFile, moreAnchors: () => manifestAnchors(config.exports.dir, createPublicKey(signer())) }
  const audit = leadership ? new ClusterAuditTrail(storage.client, leadership, auditOptions) : new AuditTrail(storage.client, Date.now, auditOptions)
  const leads = () => !leadership || leadership.isLeader()
  const alerts = new AlertService(storage.client, config.alerts, log, Date.now, inventory, leadership?.member ?? 'solo')
  const incidents = new IncidentStore(storage.client, config.incidents.windowHours, { actionsFor: (ids) => actions.forFindings(ids), alertsFor: (ids) => alerts.outbox.forFindings(ids) })
  const stepUp = new StepUp(storage.client, { sealingKey: signer })
  // record -> decide -> incident -> alert -> audit and metrics, for detector runs and keywatch's own findings alike.
  const flow: FindingFlow = new FindingFlow({ findings, response, alerts, incidents, audit, metrics, log, leads })
  detection.onRun((run) => flow.fromRun(run))
  // A leaked key is raised as its report is stored, not at the next tick. Such a run reads only the reports stored
  // since the previous one began (with a second of slack for inserts still settling); the minute runs read them all,
  // and raise the unmatched reports (nothing to revoke there, so they wait for the minute).
  let freshSince = 0
  // Runs started as reports arrive: close() waits for them before the engine closes.
  const freshRuns = new Set<Promise<unknown>>()
  pipeline.onStored((type) => {
    if (type !== 'leak.reported') return
    // A follower tells the leader, which runs the leak detector at once (issue 16).
    if (!leads()) return void leadership!.toLeader({ kind: 'leak.stored' }).catch((err) => log.error({ err: String(err) }, 'could not tell the leader about a leak report'))
    const since = freshSince
    freshSince = Date.now()
    const run = detection
      .runFresh('leak.public_report', { received_after_ms: Math.max(0, since - 1_000) })
      .catch((err) => log.error({ err: String(err), detector: 'leak.public_report' }, 'leak detection failed'))
      .finally(() => freshRuns.delete(run))
    freshRuns.add(run)
  })
  let started = false
  let stopExports: (() => Promise<void>) | undefined
  return {
    config,
    log,
    storage,
    writer,
    pipeline,
    inventory,
    findings,
    detection,
    actions,
    response,
    tokens,
    stepUp,
    metrics,
    audit,
    alerts,
    incidents,
    customDetectors: { ids: custom.detectors.map((d) => d.id), fixtures: custom.fixtures, problems: custom.problems },
    exportSigningKey: signer,
    version: VERSION,
    raise,
    leadership,
    onFindings: (listener) => flow.onFindings(listener),
    async startServices() {
      if (started) return
      started = true
      await secrets.load(storage.client)
      response.useIndex(secrets)
      for (const p of custom.problems) metrics.detectorFileProblem(p.file, p.kind)
      // From now on findings are decided on and alerted; only the leader does so (issue 16).
      flow.start()
      // The key service answers a command on the commands topic with a lifecycle event: that confirms the action.
      // A follower that stores lifecycle events tells the leader (at most every half second): they may confirm its commands.
      let lifecycleNudge: NodeJS.Timeout | undefined
      pipeline.onStored((type) => {
        if (type !== 'key.lifecycle') return
        if (leads()) return void response.confirmFromLifecycle().catch((err) => log.error({ err: String(err) }, 'confirming actions failed'))
        lifecycleNudge ??= setTimeout(() => {
          lifecycleNudge = undefined
          void leadership!.toLeader({ kind: 'lifecycle.stored' }).catch((err) => log.error({ err: String(err) }, 'could not tell the leader about lifecycle events'))
        }, 500)
        lifecycleNudge.unref()
      })
      // ---- the singletons: on the leader only (issue 16); without a leadership this process leads ----
      let refreshSecrets: NodeJS.Timeout | undefined
      const startSingletons = async () => {
        if (audit instanceof ClusterAuditTrail) audit.resync() // the previous leader may have appended since
        await response.start()
        // In the background: a key service that is down must not hold up the alerts and the schedules.
        void response.resumeRequested().catch((err) => log.error({ err: String(err) }, 'could not resume the requested actions'))
        // Other instances consume other partitions of the lifecycle topic: the leader's index of current secrets
        // also reads what they stored, every few seconds, so a reset they saw is not decided on with the old secret.
        if (leadership) {
          await secrets.load(storage.client)
          refreshSecrets = setInterval(() => void secrets.load(storage.client).catch((err) => log.error({ err: String(err) }, 'could not refresh the secret index')), 5_000)
          refreshSecrets.unref()
        }
        deciding = true
        await alerts.start()
        alerts.scheduleDigests()
        detection.schedule()
        // A previous leader may have died in a run, its findings recorded but not decided or alerted: leaked keys do
        // not wait for the next minute (the run decides what is undecided; what was decided is linked, not redone).
        if (leadership) void detection.runFresh('leak.public_report').catch((err) => log.error({ err: String(err) }, 'leak detection at takeover failed'))
        // Files skipped at load are findings too (once the alerts listen), so a broken rule does not go unnoticed.
        if (custom.problems.length) {
          const byFile = new Map<string, LoadProblem[]>()
          for (const p of custom.problems) byFile.set(p.file, [...(byFile.get(p.file) ?? []), p])
          void raise(
            [...byFile].map(([file, problems]) => ({
              detector: 'detector.custom_invalid',
              severity: 'medium' as const,
              account_id: '',
              title: `Custom detector file ${file} skipped: ${problems[0]!.field}: ${problems[0]!.message}`.slice(0, 300),
              evidence: { file, problems: problems.map((p) => `${p.field}: ${p.message}`), refused: problems.some((p) => p.kind === 'refused') },
              dedupKey: `detector.custom_invalid:${file}`,
            })),
            new Date(),
          ).catch((err) => log.error({ err: String(err) }, 'could not record the custom detector problems'))
        }
        if (config.exports.scheduled) {
          stopExports = scheduleExports({ storage, dir: config.exports.dir, format: config.exports.scheduledFormat, signingKey: signer, version: VERSION, log })
        }
      }
      const stopSingletons = async () => {
        deciding = false
        clearInterval(refreshSecrets)
        await detection.stop()
        await stopExports?.()
        stopExports = undefined
        await response.stop()
        await alerts.stop()
      }
      if (!leadership) return startSingletons()
      leadership.onControl(async (messages) => {
        if (audit instanceof ClusterAuditTrail) await audit.appendForwarded(messages)
        const leak = messages.filter((m) => m.kind === 'leak.stored')
        if (leak.length) {
          const since = Math.min(...leak.map((m) => m.at)) - 10_000 // the follower stored the report before telling
          await detection.runFresh('leak.public_report', { received_after_ms: Math.max(0, since) })
        }
        if (messages.some((m) => m.kind === 'lifecycle.stored')) await response.confirmFromLifecycle()
      })
      leadership.onChange((leader) => (leader ? startSingletons() : stopSingletons()))
      await leadership.start()
    },
    async close() {
      closing = true
      clearTimeout(repairTimer)
      await writer.drain()
      await decodePool?.close()
      if (leadership) {
        await audit.checkpoint().catch((err) => log.error({ err: String(err) }, 'could not sign the audit checkpoint'))
        await leadership.stop() // steps down: the singletons stop below
      }
      while (freshRuns.size) await Promise.allSettled([...freshRuns])
      await detection.stop()
      await stopExports?.()
      await response.stop()
      await alerts.stop()
      await audit.checkpoint().catch((err) => log.error({ err: String(err) }, 'could not sign the audit checkpoint'))
      await sender.close?.()
      await closeStorage()
    },
  }
}

/** Live keys' lifecycle rows their owners are told about (seed 004); never the secret hash. */
function keyChangesOf(rows: Row[]): KeyChange[] {
  return rows
    .map((r) => r.values)
    .filter((v) => v.mode === 'live' && v.action !== 'created')
    .map((v) => ({
      event_id: String(v.event_id),
      occurred_at: String(v.occurred_at),
      account_id: String(v.account_id),
      key_id: String(v.key_id),
      key_prefix: String(v.key_prefix),
      key_kind: String(v.key_kind),
      action: String(v.action),
      actor: `${String(v.actor_type)}:${String(v.actor_id ?? '')}`,
      replacement_key_id: (v.replacement_key_id as string | null) ?? null,
      old_key_expires_at: (v.old_key_expires_at as string | null) ?? null,
      reason: (v.reason as string | null) ?? null,
    }))
}

function commandSender(config: Config, log: Logger): CommandSender {
  const { transport, keyService } = config.response
  if (transport === 'http' && keyService) return new HttpCommandSender(new KeyServiceClient({ baseUrl: keyService.url, secret: keyService.secret }))
  if (transport === 'kafka' && config.kafka) {
    const kafka = config.kafka
    // kafkajs loads with the first command sent, not with every command-line run.
    const connect = async () => (await import('../ingest/kafka.ts')).KafkaProducer.connect({ brokers: kafka.brokers, clientId: `${kafka.clientId}-commands` }, log)
    return new KafkaCommandSender(connect, config.topics.commands)
  }
  return new NoCommandSender()
}

/** What the API needs of a runtime; `extra` adds the instance's own pieces (its CLI token, plugins). */
export function apiDepsOf(rt: Runtime, extra: Partial<ApiDeps> = {}): ApiDeps {
  return {
    log: rt.log,
    storageReady: async () => (await rt.storage.client.ping()).success,
    client: rt.storage.client,
    pipeline: rt.pipeline,
    inventory: rt.inventory,
    findings: rt.findings,
    incidents: rt.incidents,
    detection: rt.detection,
    actions: rt.actions,
    response: rt.response,
    tokens: rt.tokens,
    githubKeys: rt.config.githubKeys,
    metrics: rt.metrics,
    audit: rt.audit,
    plugins: rt.config.alerts.signingSecret ? [slackPlugin(rt, rt.config.alerts.signingSecret)] : [],
    exports: { storage: rt.storage, dir: rt.config.exports.dir, signingKey: rt.exportSigningKey, version: rt.version, trail: rt.audit },
    rateLimitPerMinute: rt.config.http.rateLimitPerMinute,
    eventsBodyLimit: rt.config.http.eventsBodyLimit,
    stepUp: rt.config.security.stepUp === 'totp' ? rt.stepUp : undefined,
    ...extra,
  }
}

/** Slack's buttons: acknowledge, snooze, and revoke (a reset for an auto-generated key) through the response engine. */
function slackPlugin(rt: Runtime, signingSecret: string) {
  return (scope: Parameters<typeof slackInteractionRoutes>[0]) =>
    slackInteractionRoutes(scope, {
      signingSecret,
      userRoles: rt.config.alerts.slackUserRoles,
      findings: rt.findings,
      audit: rt.audit,
      revoke: async (finding, actor) => {
        const action = await rt.response.manual({
          command: finding.evidence.auto_generated ? 'reset' : 'revoke',
          key_id: finding.key_id,
          reason: `Revoke clicked in Slack on finding ${finding.finding_id}`,
          actor,
          incident: true,
          finding_id: finding.finding_id,
        })
        return { status: action.status, detail: action.status_detail }
      },
      decideApproval: async (actionId, decision, actor) => {
        const action = await rt.response.decideApproval({ actionId, decision, by: actor, reason: `${decision === 'approve' ? 'approved' : 'rejected'} in Slack` })
        return { status: action.status, detail: action.status_detail, account_id: action.account_id, key_prefix: action.key_prefix }
      },
    })
}
