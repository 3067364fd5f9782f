// How a finding travels, in one place and in this order:
//   record (detectors/findings.ts) -> decide (the response engine acts on the key, or holds the action)
//   -> group into an incident -> alert (saying what was done, in the incident's thread) -> audit and metrics.
// Findings come from two sources: detector runs, and keywatch itself (a tripped guard rail, an approval waiting,
// a revocation that did not take effect), which the response engine raises through `raise`. That is the one loop
// in the flow, and it is closed here on purpose: keywatch's own findings are recorded and alerted, never decided
// on, so a guard rail can never act on the key it just held back.
import type { AuditTrail } from '../audit/trail.ts'
import type { AlertService } from '../alerts/service.ts'
import type { Metrics } from '../api/metrics.ts'
import type { RunResult } from '../detectors/engine.ts'
import type { FindingDraft } from '../detectors/detector.ts'
import type { Finding, FindingStore, Recorded } from '../detectors/findings.ts'
import type { IncidentRef, IncidentStore } from '../incidents/store.ts'
import type { Action } from '../response/actions.ts'
import type { ResponseEngine } from '../response/engine.ts'

export type FindingsListener = (recorded: Recorded[]) => void | Promise<void>

interface FlowLogger {
  warn(obj: object, msg?: string): void
  error(obj: object, msg?: string): void
}

export interface FindingFlowDeps {
  findings: FindingStore
  response: ResponseEngine
  alerts: AlertService
  incidents: IncidentStore
  audit: AuditTrail
  metrics: Metrics
  log: FlowLogger
  /** Whether this instance decides and alerts (the leader, or a single instance). */
  leads: () => boolean
}

/** Detectors whose findings keywatch raises about its own response; never decided on. */
const OWN_FINDINGS = /^(response|detector)\./

export class FindingFlow {
  private running = false
  private readonly listeners: FindingsListener[] = []

  constructor(private readonly deps: FindingFlowDeps) {
    deps.response.onAction((action) => this.actionChanged(action))
  }

  /** From now on findings are decided on and alerted (keywatch start); before, they are recorded and grouped only. */
  start(): void {
    if (this.running) return
    this.running = true
    this.deps.findings.onStatusChange((f) => this.statusChanged(f))
  }

  /** Told about every finding that went through the flow (tests, the demo). */
  onFindings(listener: FindingsListener): void {
    this.listeners.push(listener)
  }

  /** A detector run's findings. */
  fromRun(run: RunResult): void {
    for (const f of run.findings) {
      if (f.change !== 'updated') this.deps.log.warn({ finding: f.finding.finding_id, detector: run.detector, severity: f.finding.severity, title: f.finding.title }, 'finding raised')
    }
    if (run.findings.length) this.dispatch(run.findings)
  }

  /** keywatch's own findings: recorded, then alerted (`realert`: again inside the dedup window, for a pending approval). */
  async raise(drafts: FindingDraft[], at: Date, opts: { realert?: boolean } = {}): Promise<Recorded[]> {
    const recorded = await this.deps.findings.record(drafts, at)
    this.dispatch(opts.realert ? recorded.map((r) => ({ ...r, realert: true })) : recorded)
    return recorded
  }

  private dispatch(recorded: Recorded[]): void {
    void this.travel(recorded).catch((err) => this.deps.log.error({ err: String(err) }, 'a finding could not complete its flow'))
    for (const l of this.listeners) void Promise.resolve().then(() => l(recorded)).catch((err) => this.deps.log.error({ err: String(err) }, 'findings listener failed'))
  }

  /** The order: metrics, decide, group, alert. A follower (issue 16) records and groups, and leaves the rest to the leader. */
  async travel(recorded: Recorded[]): Promise<void> {
    const { response, alerts, metrics } = this.deps
    metrics.findingsRecorded(recorded)
    if (!this.running || !this.deps.leads()) {
      if (!this.running) await this.group(recorded) // detect --once: incidents still form
      return
    }
    // A leaked key waits for nothing: the response decides before the incident and the alert.
    const actions = await response.onFindings(recorded.filter((r) => !OWN_FINDINGS.test(r.finding.detector)))
    const incidentOf = await this.group(recorded)
    const note = (id: string) => {
      const a = actions.find((x) => x.finding_id === id)
      return a && { kind: a.command, status: a.status, requested_by: a.requested_by, requested_at: a.requested_at }
    }
    await alerts.onFindings(recorded.map((r) => ({ ...r, action: note(r.finding.finding_id), incident: incidentOf.get(r.finding.finding_id) })))
  }

  private group(recorded: Recorded[]): Promise<Map<string, IncidentRef>> {
    return this.deps.incidents.group(recorded).catch((err) => {
      this.deps.log.error({ err: String(err) }, 'could not group findings into incidents')
      return new Map<string, IncidentRef>()
    })
  }

  /** An action changed: counted; keywatch's own audited once settled; the finding's alert updated. */
  private actionChanged(action: Action): void {
    const { metrics, audit, alerts, findings, log } = this.deps
    metrics.action(action)
    // Recorded once it is settled (confirmed, held, failed…); a request still in flight is recorded by its outcome.
    // A person's requests are recorded where they arrive (the API, the CLI, Slack).
    if (action.requested_by.startsWith('auto:') && action.status !== 'requested') {
      void audit
        .record({
          actor: 'keywatch',
          action: `key.${action.command}`,
          target: action.key_id,
          request_id: action.action_id,
          outcome: action.status === 'failed' ? 'failed' : action.status === 'blocked' || action.status === 'paused' || action.status === 'dry_run' ? 'refused' : 'ok',
          detail: { account_id: action.account_id, status: action.status, policy: action.policy, finding_id: action.finding_id, requested_by: action.requested_by, key_prefix: action.key_prefix, detail: action.status_detail },
        })
        .catch((err) => log.error({ err: String(err) }, 'could not record the audit entry'))
    }
    if (!this.running || !this.deps.leads() || !alerts.updatesMessages || !action.finding_id || !['confirmed', 'failed', 'not_effective'].includes(action.status)) return
    void findings
      .list({ finding_id: action.finding_id, limit: 1 })
      .then(([f]) => f && alerts.onFindingChanged(f, { kind: action.command, status: action.status, requested_by: action.requested_by, requested_at: action.requested_at }))
      .catch((err) => log.error({ err: String(err) }, 'could not update the alert'))
  }

  private statusChanged(finding: Finding): void {
    if (!this.deps.leads()) return
    void this.deps.alerts.onFindingChanged(finding).catch((err) => this.deps.log.error({ err: String(err) }, 'could not update the alert'))
  }
}
