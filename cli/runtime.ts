// What every command that touches data shares: the config, a logger, storage (migrated) and the ingest pipeline.
import pino, { type Logger } from 'pino'
import { openStorage, type Storage } from '../clickhouse/client.ts'
import { migrate } from '../clickhouse/migrate.ts'
import { recoverViews } from '../clickhouse/recovery.ts'
import type { Config } from '../config/config.ts'
import { IngestPipeline } from '../ingest/pipeline.ts'
import { EventWriter } from '../ingest/writer.ts'
import { DetectionEngine } from '../detectors/engine.ts'
import { FindingStore, type Recorded } from '../detectors/findings.ts'
import type { FindingDraft } from '../detectors/detector.ts'
import { KafkaProducer } from '../ingest/kafka.ts'
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
import { KeyServiceClient } from '../response/key-service.ts'
import { HttpCommandSender, KafkaCommandSender, NoCommandSender, type CommandSender } from '../response/senders.ts'

export interface Runtime {
  config: Config
  log: Logger
  storage: Storage
  writer: EventWriter
  pipeline: IngestPipeline
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
  /** The Ed25519 key that signs export manifests (read, or made, on first use). */
  exportSigningKey: () => KeyObject
  version: string
  /** Starts what only a running keywatch does: detector schedules, automatic response and its watch. */
  startServices(): Promise<void>
  /** Told about every finding recorded (by a detector run or raised by keywatch itself): alerts listen here. */
  onFindings(listener: FindingsListener): void
  close(): Promise<void>
}

export type FindingsListener = (recorded: Recorded[]) => void | Promise<void>

/** Logs go to stderr as JSON lines, leaving stdout to command output. */
export function createLogger(config: Config): Logger {
  return pino({ level: config.logLevel, base: { service: 'keywatch' } }, pino.destination({ fd: 2, sync: false }))
}

export async function openRuntime(config: Config, log: Logger): Promise<Runtime> {
  const storage = await openStorage(config.clickhouse)
  try {
    const result = await migrate(storage.client, undefined, { cluster: config.clickhouse.mode === 'server' ? config.clickhouse.cluster : undefined })
    if (result.applied.length) log.info({ applied: result.applied }, 'migrations applied')
    const recovered = await recoverViews(storage)
    if (recovered.eventIdsRestored || recovered.usageKeyDaysRebuilt || recovered.ratelimitKeyBucketsRebuilt) {
      log.warn(recovered, 'repaired views left incomplete by an unclean stop')
    }
  } catch (err) {
    await storage.close()
    throw err
  }
  const writer = new EventWriter(storage, {
    maxRows: config.ingest.batchMaxRows,
    maxWaitMs: config.ingest.batchMaxWaitMs,
    maxInflight: config.ingest.maxInflightBatches,
    // A leak report starts the clock on a revocation: it does not wait for company.
    lingerMs: { leak_reports: 0 },
    onFlush: (table, s) => log.debug({ table, ...s }, 'batch stored'),
  })
  const pipeline = new IngestPipeline(storage.client, writer)
  const findings = new FindingStore(storage.client)
  const detection = new DetectionEngine(storage.client, findings, log, config.detectorOverrides)
  const actions = new ActionStore(storage.client)
  const sender = commandSender(config, log)
  const findingsListeners: FindingsListener[] = []
  const announce = (recorded: Recorded[]) => {
    for (const l of findingsListeners) void Promise.resolve().then(() => l(recorded)).catch((err) => log.error({ err: String(err) }, 'findings listener failed'))
  }
  const raise = async (drafts: FindingDraft[], at: Date) => {
    const recorded = await findings.record(drafts, at)
    announce(recorded)
    return recorded
  }
  const response = new ResponseEngine({ client: storage.client, actions, sender, policy: config.response.policy, log, raise })
  const tokens = new TokenStore(storage.client)
  const metrics = new Metrics()
  pipeline.onIngested((summary, rejections) => metrics.ingested(summary, rejections))
  detection.onRun((run) => metrics.detectorRun(run))
  findingsListeners.push((recorded) => metrics.findingsRecorded(recorded))
  response.onAction((action) => metrics.action(action))
  // The export signing key also signs the audit trail's checkpoints: a rewrite inside ClickHouse cannot forge them.
  let signingKey: KeyObject | undefined
  const signer = () => (signingKey ??= loadSigningKey(config.exports.signingKeyFile))
  // Checkpoints also go to the anchor file, outside ClickHouse: a writer there cannot remove them unseen.
  const audit = new AuditTrail(storage.client, Date.now, {
    signingKey: signer,
    anchorFile: config.security.auditAnchorFile,
    moreAnchors: () => manifestAnchors(config.exports.dir, createPublicKey(signer())),
  })
  const alerts = new AlertService(storage.client, config.alerts, log)
  const stepUp = new StepUp(storage.client, { sealingKey: signer })
  // What keywatch does by itself is in the audit trail too (a person's requests are recorded where they arrive).
  response.onAction((action) => {
    // Recorded once it is settled (confirmed, held, failed…); a request still in flight is recorded by its outcome.
    if (!action.requested_by.startsWith('auto:') || action.status === 'requested') return
    void audit
      .record({
        actor: 'keywatch',
        action: `key.${action.command}`,
        target: action.key_id,
        request_id: action.action_id,
        outcome: action.status === 'failed' ? 'failed' : action.status === 'blocked' || action.status === 'paused' || action.status === 'dry_run' ? 'refused' : 'ok',
        detail: { status: action.status, policy: action.policy, finding_id: action.finding_id, requested_by: action.requested_by, key_prefix: action.key_prefix, detail: action.status_detail },
      })
      .catch((err) => log.error({ err: String(err) }, 'could not record the audit entry'))
  })
  detection.onRun((run) => {
    for (const f of run.findings) if (f.change !== 'updated') log.warn({ finding: f.finding.finding_id, detector: run.detector, severity: f.finding.severity, title: f.finding.title }, 'finding raised')
    if (run.findings.length) announce(run.findings)
  })
  // A leaked key is raised as its report is stored, not at the next tick. Such a run reads only the reports stored
  // since the previous one began (with a second of slack for inserts still settling); the minute runs read them all,
  // and raise the unmatched reports (nothing to revoke there, so they wait for the minute).
  let freshSince = 0
  pipeline.onStored((type) => {
    if (type !== 'leak.reported') return
    const since = freshSince
    freshSince = Date.now()
    void detection
      .runFresh('leak.public_report', { received_after_ms: Math.max(0, since - 1_000) })
      .catch((err) => log.error({ err: String(err), detector: 'leak.public_report' }, 'leak detection failed'))
  })
  let started = false
  let stopExports: (() => Promise<void>) | undefined
  return {
    config,
    log,
    storage,
    writer,
    pipeline,
    findings,
    detection,
    actions,
    response,
    tokens,
    stepUp,
    metrics,
    audit,
    alerts,
    exportSigningKey: signer,
    version: VERSION,
    onFindings: (listener) => void findingsListeners.push(listener),
    async startServices() {
      if (started) return
      started = true
      await response.start()
      await alerts.start()
      alerts.scheduleDigests()
      // The response decides first (a leaked key waits for nothing), then the alert says what was done.
      findingsListeners.push(async (recorded) => {
        const actions = await response.onFindings(recorded)
        const note = (id: string) => {
          const a = actions.find((x) => x.finding_id === id)
          return a && { kind: a.command, status: a.status, requested_by: a.requested_by, requested_at: a.requested_at }
        }
        await alerts.onFindings(recorded.map((r) => ({ ...r, action: note(r.finding.finding_id) })))
      })
      findings.onStatusChange((f) => void alerts.onFindingChanged(f).catch((err) => log.error({ err: String(err) }, 'could not update the alert')))
      response.onAction((a) => {
        if (!alerts.updatesMessages || !a.finding_id || !['confirmed', 'failed', 'not_effective'].includes(a.status)) return
        void findings
          .list({ finding_id: a.finding_id, limit: 1 })
          .then(([f]) => f && alerts.onFindingChanged(f, { kind: a.command, status: a.status, requested_by: a.requested_by, requested_at: a.requested_at }))
          .catch((err) => log.error({ err: String(err) }, 'could not update the alert'))
      })
      // The key service answers a command on the commands topic with a lifecycle event: that confirms the action.
      pipeline.onStored((type) => {
        if (type === 'key.lifecycle') void response.confirmFromLifecycle().catch((err) => log.error({ err: String(err) }, 'confirming actions failed'))
      })
      detection.schedule()
      if (config.exports.scheduled) {
        stopExports = scheduleExports({ storage, dir: config.exports.dir, format: config.exports.scheduledFormat, signingKey: signer, version: VERSION, log })
      }
    },
    async close() {
      await writer.drain()
      await detection.stop()
      await stopExports?.()
      await response.stop()
      await alerts.stop()
      await audit.checkpoint().catch((err) => log.error({ err: String(err) }, 'could not sign the audit checkpoint'))
      await sender.close?.()
      await storage.close()
    },
  }
}

function commandSender(config: Config, log: Logger): CommandSender {
  const { transport, keyService } = config.response
  if (transport === 'http' && keyService) return new HttpCommandSender(new KeyServiceClient({ baseUrl: keyService.url, secret: keyService.secret }))
  if (transport === 'kafka' && config.kafka) {
    const kafka = config.kafka
    return new KafkaCommandSender(() => KafkaProducer.connect({ brokers: kafka.brokers, clientId: `${kafka.clientId}-commands` }, log), config.topics.commands)
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
    findings: rt.findings,
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
    })
}
