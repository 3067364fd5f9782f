// The response engine: turns findings into revocations (by policy) and people's requests into revocations (with a
// reason, and not on a key in use unless it is an incident), behind guard rails and a kill switch; tracks each
// action until the key service confirms it, and then watches that the key really stopped working.
import { randomUUID } from 'node:crypto'
import { queryRows, type ClickHouseClient } from '../clickhouse/client.ts'
import type { FindingDraft } from '../detectors/detector.ts'
import type { Finding, Recorded } from '../detectors/findings.ts'
import { chTime } from '../clickhouse/time.ts'
import { derivedCommandId, type Action, type ActionStatus, type ActionStore } from './actions.ts'
import { matchRule, type Policy } from './policy.ts'
import type { CommandSender, SendResult } from './senders.ts'
import { KeywatchError, kindOfStatus } from '../core/errors.ts'
import type { Row } from '../ingest/rows.ts'
import type { SecretIndex } from './secret-index.ts'

/** The stages of one leak report decided on the fast path, for bench:revoke (ms since the time origin). */
export interface FastTiming {
  key_id: string
  decoded_at: number
  decide_us: number
  send_started_at: number
  sent_at: number
  written_at: number
}

export interface Logger {
  info(obj: object, msg?: string): void
  warn(obj: object, msg?: string): void
  error(obj: object, msg?: string): void
}

/** A request keywatch refuses or cannot carry out; `status` is the HTTP status the API answers with. */
export class ResponseError extends KeywatchError {
  constructor(
    readonly status: 400 | 404 | 409 | 422,
    code: string,
    message: string,
    readonly action?: Action,
  ) {
    super(kindOfStatus(status), code, message)
    this.name = 'ResponseError'
  }
}

export interface ResponseDeps {
  client: ClickHouseClient
  actions: ActionStore
  sender: CommandSender
  policy: Policy
  log: Logger
  /**
   * Records findings keywatch raises itself (a tripped guard rail, a revocation that did not bite, an approval asked
   * for) and alerts on them; `realert` alerts again even inside the alert dedup window.
   */
  raise: (drafts: FindingDraft[], at: Date, opts?: { realert?: boolean }) => Promise<Recorded[]>
  /** Closes keywatch's own finding once what it asked for is decided (an approval request). */
  resolveFinding?: (dedupKey: string, actor: string, reason: string) => Promise<void>
  now?: () => number
}

/** A person's decision on an automatic action awaiting approval; the one function the API, the CLI and Slack call. */
export interface ApprovalDecision {
  actionId: string
  decision: 'approve' | 'reject'
  /** `token:<name>`, `cli:<user>`, `slack:<user id>`: the transport checked that this person may respond. */
  by: string
  reason: string
}

export interface ManualRequest {
  command: 'revoke' | 'reset'
  key_id: string
  reason: string
  /** `user:<id>` or `token:<name>`. */
  actor: string
  /** The key is being abused: revoke even though it is in use. */
  incident?: boolean
  /** Revoke even though it is in use, knowing it is an outage. */
  force?: boolean
  finding_id?: string
}

interface KeyFacts {
  account_id: string
  key_id: string
  key_prefix: string
  key_kind: string
  mode: string
  status: string
  auto_generated: boolean
}

/** Statuses that count against the guard rails: keywatch tried to act. */
const COUNTED: ActionStatus[] = ['requested', 'confirmed', 'failed', 'not_effective']
/** A failed automatic action is tried again on the finding's next run, up to this many attempts. */
const MAX_AUTO_ATTEMPTS = 3
const HOUR_MS = 3_600_000
/** How stale another instance's automatic actions may be in this one's guard-rail counts. */
const WINDOW_REFRESH_MS = 5_000

type ActionListener = (action: Action) => void

export class ResponseEngine {
  private queue: Promise<unknown> = Promise.resolve()
  /** Automatic actions that went out in the last hour, for the guard rails (read at each decision, then counted on). */
  private recentAuto: { account_id: string; at: number; action_id?: string }[] = []
  private index?: SecretIndex
  /** Keys a leak report was acted on by the fast path, and that action (latest state): the finding links to it. */
  private readonly fastActed = new Map<string, Action>()
  /** Actions decided before their finding was recorded: action id -> finding id, kept on every later write. */
  private readonly linkedFinding = new Map<string, string>()
  private stateTimer?: NodeJS.Timeout
  /** The last fast-path decisions' stages (bench:revoke prints them). */
  readonly fastTimings: FastTiming[] = []
  private windowReadAt = 0
  private readonly listeners: ActionListener[] = []
  private watchTimer?: NodeJS.Timeout
  private approvalTimer?: NodeJS.Timeout
  /** When each pending approval was last alerted (by this process): re-alerted every `realert_minutes`. */
  private readonly approvalAlertedAt = new Map<string, number>()
  private pausedCache?: { paused: boolean; at: number }
  /** Findings already decided in this process (not failed): a finding that fires again is not looked up again. */
  private readonly decided = new Set<string>()
  private readonly now: () => number

  constructor(private readonly deps: ResponseDeps) {
    this.now = deps.now ?? Date.now
  }

  get policy(): Policy {
    return this.deps.policy
  }

  get transport(): CommandSender['transport'] {
    return this.deps.sender.transport
  }

  /** Told about every new or changed action (alerts update their messages with it). */
  onAction(listener: ActionListener): void {
    this.listeners.push(listener)
  }

  /** Starts the minute-by-minute watch of revoked keys. */
  async start(): Promise<void> {
    this.watchTimer = setInterval(() => {
      void this.checkEffectiveness().catch((err) => this.deps.log.error({ err: String(err) }, 'revocation watch failed'))
    }, 60_000)
    this.watchTimer.unref()
    this.approvalTimer = setInterval(() => {
      void this.checkApprovals().catch((err) => this.deps.log.error({ err: String(err) }, 'approval check failed'))
    }, 60_000)
    this.approvalTimer.unref()
    // The fast path reads the kill switch and the guard-rail window from memory: refreshed here, never on its way.
    await this.refreshState()
    this.stateTimer = setInterval(() => void this.refreshState().catch((err) => this.deps.log.error({ err: String(err) }, 'could not refresh the response state')), WINDOW_REFRESH_MS)
    this.stateTimer.unref()
  }

  private async refreshState(): Promise<void> {
    await this.state()
  }

  /** Decides leak reports from this index of current secrets as they are decoded (see onLeakRows). */
  useIndex(index: SecretIndex): void {
    this.index = index
  }

  /**
   * The fast path: leak report rows as they are decoded, before they are stored. A report matching the current
   * secret of a live key (whatever its occurred_at) that the policy revokes, with nothing holding it back, is decided
   * here from memory, and the action is written while its command is sent. Everything else (held, approval, alert
   * only) is left to the leak detector's run, which follows the report's storage and records the finding; that
   * finding is then linked to the action taken here, never decided twice.
   */
  onLeakRows(rows: Row[]): void {
    const index = this.index
    const paused = this.pausedCache?.paused
    if (!index?.ready || paused === undefined || this.deps.policy.mode !== 'enforce') return
    for (const row of rows) {
      const decodedAt = performance.timeOrigin + performance.now()
      const t0 = performance.now()
      const hash = row.values.token_sha256
      const key = typeof hash === 'string' ? index.lookup(hash) : undefined
      if (!key || this.fastActed.has(key.key_id)) continue
      const severity = key.key_kind === 'publishable' ? 'low' : 'critical'
      const rule = matchRule(this.deps.policy, { detector: 'leak.public_report', severity, key_kind: key.key_kind, mode: key.mode })
      if (!rule || rule.action === 'alert' || rule.approve) continue
      const facts: KeyFacts = { account_id: key.account_id, key_id: key.key_id, key_prefix: key.key_prefix, key_kind: key.key_kind, mode: key.mode, status: 'active', auto_generated: key.auto_generated }
      if (this.holdReason(facts, paused)) continue
      const { command, note } = commandFor(facts, rule.action)
      const action = this.deps.actions.draft({
        // The same id the leak detector's finding would be decided with (a leader dying between send and record).
        command_id: leakCommandId(key.key_id, String(hash), command, 1),
        command,
        account_id: key.account_id,
        key_id: key.key_id,
        key_prefix: key.key_prefix,
        finding_id: '',
        policy: rule.name,
        requested_by: 'auto:leak.public_report',
        reason: `Secret found in public on ${String(row.values.source)} (leak report ${row.eventId})`,
        incident: true,
        forced: false,
        transport: this.deps.sender.transport,
        status: 'requested',
        status_detail: note,
        requested_at: new Date(this.now()),
      })
      this.recentAuto.push({ account_id: key.account_id, at: this.now(), action_id: action.action_id })
      this.fastActed.set(key.key_id, action)
      if (this.fastActed.size > 100_000) this.fastActed.clear() // a bound: the actions table is the truth
      const decideUs = (performance.now() - t0) * 1000
      void this.fastSend(action, decodedAt, decideUs).catch((err) => this.deps.log.error({ err: String(err), action: action.action_id }, 'fast-path action failed'))
    }
  }

  /** Writes the action while its command goes out: durable without waiting for the engine first. */
  private async fastSend(action: Action, decodedAt: number, decideUs: number): Promise<void> {
    const timing: FastTiming = { key_id: action.key_id, decoded_at: decodedAt, decide_us: decideUs, send_started_at: performance.timeOrigin + performance.now(), sent_at: 0, written_at: 0 }
    const written = this.save([action]).then(
      () => void (timing.written_at = performance.timeOrigin + performance.now()),
      // Not recorded before the send: record it again after (the command id makes the send itself idempotent).
      async (err: unknown) => {
        this.deps.log.error({ err: String(err), action: action.action_id }, 'could not record the action before sending; retrying')
        await new Promise((r) => setTimeout(r, 200))
        await this.save([action])
      },
    )
    const sent = this.send(action).then((done) => {
      timing.sent_at = performance.timeOrigin + performance.now()
      // A failed fast action is tried again when its finding fires again, like any failed automatic action.
      if (done.status === 'failed') this.decided.delete(this.linkedFinding.get(done.action_id) ?? '')
      return done
    })
    await Promise.all([written, sent])
    this.fastTimings.push(timing)
    if (this.fastTimings.length > 10_000) this.fastTimings.splice(0, 5_000)
  }

  /**
   * Several instances (issue 16): automatic actions a previous leader saved as requested but may not have sent (it
   * died mid-revoke) are sent now, with their own command id, never decided again (the finding already has its
   * action). Over HTTP the key service's Idempotency-Key makes a repeat of one that did go out the same revoke. Over
   * Kafka the lifecycle events stored so far confirm what was carried out first; the rest are published again with
   * the same command id, which the command topic's consumers deduplicate by.
   */
  async resumeRequested(): Promise<Action[]> {
    const transport = this.deps.sender.transport
    if (transport === 'none') return []
    if (transport === 'kafka') await this.confirmFromLifecycle()
    const open = (await this.deps.actions.withStatus(['requested'], new Date(this.now() - 24 * HOUR_MS))).filter((a) => a.requested_by.startsWith('auto:') && a.transport === transport)
    for (const a of open) this.decided.add(a.finding_id)
    if (open.length) this.deps.log.warn({ actions: open.length, transport, commands: open.map((a) => a.command_id) }, 'sending again the automatic actions a previous leader left requested (same command ids)')
    return Promise.all(open.map((a) => this.send(a)))
  }

  stop(): Promise<unknown> {
    clearInterval(this.watchTimer)
    clearInterval(this.approvalTimer)
    clearInterval(this.stateTimer)
    return this.queue
  }

  // ---- automatic: findings -> actions ----------------------------------------------------------------------

  /** Decides, for findings just recorded, whether the policy acts on their keys, and acts. */
  onFindings(recorded: Recorded[]): Promise<Action[]> {
    const policy = this.deps.policy
    if (policy.mode === 'off') return Promise.resolve([])
    // Kinds and modes are matched once the keys are looked up; here only whether some acting rule names the detector.
    const acting = policy.rules.filter((r) => r.action !== 'alert')
    const candidates = recorded
      .map((r) => r.finding)
      // keywatch's own findings (a tripped guard rail) never trigger an action: a rule for every detector must not
      // revoke the very key a guard rail just held back.
      .filter((f) => f.key_id && f.status !== 'suppressed' && f.status !== 'resolved' && !f.detector.startsWith('response.'))
      .filter((f) => acting.some((r) => r.detectors.length === 0 || r.detectors.includes(f.detector)))
      .filter((f) => !this.decided.has(f.finding_id))
    if (!candidates.length) return Promise.resolve([])
    // Decisions are serialized (guard-rail counts stay exact, a finding is decided once); sending is not, so one slow
    // key service call never holds up the next leaked key.
    return this.serial(() => this.decide(candidates)).then(({ held, toSend }) => Promise.all([...held, ...toSend.map((a) => this.send(a))]))
  }

  /** Decides what to do for each finding; held actions are saved as such, the others saved as requested. */
  private async decide(candidates: Finding[]): Promise<{ held: Action[]; toSend: Action[] }> {
    let findings = candidates
    // Leak findings whose report the fast path already acted on are linked to that action, never decided again;
    // after a restart the table says which keys have such an action waiting for its finding.
    const leaks = findings.filter((f) => f.detector === 'leak.public_report' && !this.fastActed.has(f.key_id))
    if (leaks.length) for (const a of await this.deps.actions.unlinkedAutomatic(leaks.map((f) => f.key_id), new Date(this.now() - 24 * HOUR_MS))) if (!this.fastActed.has(a.key_id)) this.fastActed.set(a.key_id, a)
    const linked: Action[] = []
    findings = findings.filter((f) => {
      const fast = f.detector === 'leak.public_report' ? this.fastActed.get(f.key_id) : undefined
      if (!fast) return true
      if (!fast.finding_id && !this.linkedFinding.has(fast.action_id)) {
        this.linkedFinding.set(fast.action_id, f.finding_id)
        linked.push({ ...fast, finding_id: f.finding_id })
      }
      // Failed: linked, and tried again (up to 3 attempts) when the finding fires again, not now a second time.
      if (fast.status === 'failed') this.fastActed.delete(f.key_id)
      else this.decided.add(f.finding_id)
      return false
    })
    // Only the finding id changes: no new decision, so nothing to tell (audit, metrics) a second time.
    if (linked.length) await this.save(linked, { quiet: true })
    if (!findings.length) return { held: linked, toSend: [] }
    const previous = await this.deps.actions.forFindings(findings.map((f) => f.finding_id))
    const keys = await this.keyFacts(findings.map((f) => f.key_id))
    const paused = await this.isPaused()
    if (this.now() - this.windowReadAt > WINDOW_REFRESH_MS) await this.loadGuardRailWindow()
    const held: Action[] = []
    const toSend: Action[] = []
    const approvals: Action[] = []
    for (const finding of findings) {
      const before = previous.filter((a) => a.finding_id === finding.finding_id)
      const retry = before.length > 0 && before.every((a) => a.status === 'failed') && before.length < MAX_AUTO_ATTEMPTS
      if (before.length > 0 && !retry) continue
      const key = keys.get(finding.key_id)
      const rule = key && matchRule(this.deps.policy, { detector: finding.detector, severity: finding.severity, key_kind: key.key_kind, mode: key.mode })
      if (!key || !rule || rule.action === 'alert') continue
      const { command, note } = commandFor(key, rule.action)
      const leakedSecret = finding.detector === 'leak.public_report' ? finding.evidence.token_sha256 : undefined
      const action = this.deps.actions.draft({
        // A leaked secret's command has an id any leader derives alike (the fast path's too): sent once however many
        // leaders decide it. Other findings: written before they are sent, so a new leader resends the same one.
        ...(typeof leakedSecret === 'string' ? { command_id: leakCommandId(key.key_id, leakedSecret, command, before.length + 1) } : {}),
        command,
        account_id: key.account_id,
        key_id: key.key_id,
        key_prefix: key.key_prefix,
        finding_id: finding.finding_id,
        policy: rule.name,
        requested_by: `auto:${finding.detector}`,
        reason: `${finding.title} (finding ${finding.finding_id})`,
        incident: true,
        forced: false,
        transport: this.deps.sender.transport,
        status: 'requested',
        status_detail: note,
        requested_at: new Date(this.now()),
      })
      const hold = this.holdReason(key, paused) ?? (rule.approve ? { status: 'awaiting_approval' as const, detail: `policy rule ${rule.name} asks a person to approve` } : undefined)
      if (!hold) {
        this.recentAuto.push({ account_id: key.account_id, at: this.now() })
        toSend.push(action)
        continue
      }
      // A guard rail no longer dead-ends an action: it waits for a person to approve or reject it.
      const status = hold.status === 'blocked' ? 'awaiting_approval' : hold.status
      const heldAction: Action = {
        ...action,
        status,
        status_detail: joinDetail(note, hold.detail),
        expires_at: status === 'awaiting_approval' ? chTime(this.now() + this.deps.policy.approvals.expire_after_minutes * 60_000) : null,
      }
      held.push(heldAction)
      if (hold.status === 'blocked') await this.raiseGuardRail(key, heldAction, hold.detail)
      if (status === 'awaiting_approval') approvals.push(heldAction)
    }
    // Written before anything is sent: a crash in between still leaves the request on record, and the next decision
    // on the same finding sees it.
    await this.save([...held, ...toSend])
    if (this.decided.size > 100_000) this.decided.clear() // a bound, not a correctness matter: the table is the truth
    for (const f of findings) this.decided.add(f.finding_id)
    for (const a of held) this.deps.log.warn({ action: a.action_id, key: a.key_prefix, account: a.account_id, status: a.status, detail: a.status_detail }, 'automatic action held')
    for (const a of approvals) await this.askApproval(a)
    return { held: [...linked, ...held], toSend }
  }

  /**
   * The automatic actions of the last hour, read from the table every few seconds (and counted on in between): the
   * rails count what every instance did, and what this one did before a restart.
   */
  private async loadGuardRailWindow(): Promise<void> {
    this.windowReadAt = this.now()
    const since = new Date(this.now() - HOUR_MS)
    const stored = (await this.deps.actions.withStatus(COUNTED, since))
      .filter((a) => a.requested_by.startsWith('auto:'))
      .map((a) => ({ account_id: a.account_id, at: Date.parse(a.requested_at.replace(' ', 'T') + 'Z'), action_id: a.action_id }))
    // Actions decided in the last seconds may not be stored yet (the fast path writes while it sends): kept counted.
    const storedIds = new Set(stored.map((a) => a.action_id))
    const inFlight = this.recentAuto.filter((a) => a.action_id && !storedIds.has(a.action_id) && a.at > this.now() - 30_000)
    this.recentAuto = [...stored, ...inFlight]
  }

  /** Why an automatic action must not go out, if it must not. */
  private holdReason(key: KeyFacts, paused: boolean): { status: ActionStatus; detail: string } | undefined {
    // An expired key is still revoked: past its deadline the platform may yet accept it (key.used_after_expiry).
    if (key.status === 'revoked' || key.status === 'deleted') return { status: 'skipped', detail: `the key is already ${key.status}` }
    if (paused) return { status: 'paused', detail: 'the kill switch is on: automatic actions are paused' }
    if (this.deps.policy.mode === 'dry_run') return { status: 'dry_run', detail: 'dry-run policy: decided and recorded, not sent' }
    const since = this.now() - HOUR_MS
    this.recentAuto = this.recentAuto.filter((a) => a.at > since)
    const { max_per_account_per_hour: perAccount, max_per_hour: overall } = this.deps.policy.guard_rails
    const inAccount = this.recentAuto.filter((a) => a.account_id === key.account_id).length
    if (inAccount >= perAccount) return { status: 'blocked', detail: `guard rail: ${inAccount} automatic actions in ${key.account_id} in the last hour (limit ${perAccount})` }
    if (this.recentAuto.length >= overall) return { status: 'blocked', detail: `guard rail: ${this.recentAuto.length} automatic actions in the last hour across all accounts (limit ${overall})` }
    return undefined
  }

  /** A tripped guard rail is itself a critical finding: a detector bug must not revoke a platform's keys quietly. */
  private async raiseGuardRail(key: KeyFacts, action: Action, detail: string): Promise<void> {
    const overall = detail.includes('across all accounts')
    const hour = new Date(this.now()).toISOString().slice(0, 13)
    await this.deps.raise(
      [
        {
          detector: 'response.guard_rail',
          severity: 'critical',
          account_id: key.account_id,
          key_id: key.key_id,
          title: overall ? 'Automatic response stopped: too many automatic actions across all accounts' : `Automatic response stopped in ${key.account_id}: too many automatic actions`,
          evidence: { blocked_action: action.action_id, blocked_key_prefix: key.key_prefix, finding_id: action.finding_id, limit: detail, hour },
          dedupKey: `response.guard_rail:${overall ? '*' : key.account_id}:${hour}`,
        },
      ],
      new Date(this.now()),
    )
  }

  // ---- approvals: a person decides on a held automatic action ---------------------------------------------

  /** The approval request is a critical finding of keywatch's own: alerted (Slack has Approve and Reject), linked. */
  private async askApproval(action: Action, realert = false): Promise<void> {
    this.approvalAlertedAt.set(action.action_id, this.now())
    await this.deps.raise(
      [
        {
          detector: 'response.approval_required',
          severity: 'critical',
          account_id: action.account_id,
          key_id: action.key_id,
          title: `Approve or reject: ${action.command} ${action.key_prefix} (${action.account_id})`,
          evidence: { action_id: action.action_id, command: action.command, key_prefix: action.key_prefix, finding_id: action.finding_id, why_held: action.status_detail, expires_at: action.expires_at },
          dedupKey: approvalDedupKey(action.action_id),
        },
      ],
      new Date(this.now()),
      { realert },
    )
  }

  /**
   * Approves or rejects an automatic action awaiting approval. Approved, it is sent at once (a person decided: the
   * guard rails and the kill switch, which hold back automation, do not hold it back again); rejected or expired, it
   * is never sent. Decided once: a second decision is refused (409).
   */
  async decideApproval(d: ApprovalDecision): Promise<Action> {
    const decided = await this.serial(async () => {
      if (!d.reason.trim()) throw new ResponseError(400, 'reason_required', `${d.decision === 'approve' ? 'approving' : 'rejecting'} an action needs a reason`)
      const action = await this.deps.actions.get(d.actionId)
      if (!action) throw new ResponseError(404, 'not_found', `no action ${d.actionId}`)
      if (action.status !== 'awaiting_approval') throw new ResponseError(409, 'not_awaiting_approval', `action ${action.action_id} is ${action.status}, not awaiting approval`, action)
      if (action.expires_at && msOf(action.expires_at) <= this.now()) {
        const expired = await this.expire(action)
        throw new ResponseError(409, 'expired', `action ${action.action_id} expired at ${action.expires_at} UTC without a decision`, expired)
      }
      const when = chTime(this.now())
      const reason = d.reason.trim().slice(0, 500)
      const base: Action = { ...action, decided_by: d.by, decided_at: when, decision_reason: reason }
      if (d.decision === 'reject') {
        const rejected: Action = { ...base, status: 'rejected', status_detail: joinDetail(action.status_detail, `rejected by ${d.by}: ${reason}`) }
        await this.save([rejected])
        return { action: rejected, send: false }
      }
      const key = (await this.keyFacts([action.key_id])).get(action.key_id)
      if (!key || key.status === 'revoked' || key.status === 'deleted') {
        const skipped: Action = { ...base, status: 'skipped', status_detail: joinDetail(action.status_detail, `approved by ${d.by}, but the key is ${key?.status ?? 'unknown'}`) }
        await this.save([skipped])
        return { action: skipped, send: false }
      }
      const approved: Action = { ...base, status: 'requested', transport: this.deps.sender.transport, status_detail: joinDetail(action.status_detail, `approved by ${d.by}: ${reason}`) }
      await this.save([approved])
      return { action: approved, send: true }
    })
    this.approvalAlertedAt.delete(d.actionId)
    await this.deps
      .resolveFinding?.(approvalDedupKey(d.actionId), d.by, `${decided.action.status === 'rejected' ? 'rejected' : 'approved'}: ${d.reason.trim().slice(0, 200)}`)
      .catch((err) => this.deps.log.error({ err: String(err) }, 'could not close the approval request'))
    this.deps.log.warn({ action: d.actionId, decision: d.decision, by: d.by, status: decided.action.status }, 'approval decided')
    return decided.send ? this.send(decided.action) : decided.action
  }

  /**
   * Every minute: a pending approval nobody decided on is alerted again every `realert_minutes`, and expires after
   * `expire_after_minutes` (status `expired`, alerted).
   */
  async checkApprovals(at = new Date(this.now())): Promise<{ realerted: Action[]; expired: Action[] }> {
    const pending = await this.deps.actions.withStatus(['awaiting_approval'], new Date(at.getTime() - 30 * 24 * HOUR_MS))
    const realerted: Action[] = []
    const expired: Action[] = []
    const every = this.deps.policy.approvals.realert_minutes * 60_000
    for (const action of pending) {
      if (action.expires_at && msOf(action.expires_at) <= at.getTime()) {
        const done = await this.serial(async () => {
          const current = await this.deps.actions.get(action.action_id)
          return current?.status === 'awaiting_approval' ? this.expire(current) : undefined
        })
        if (done) expired.push(done)
        continue
      }
      const last = this.approvalAlertedAt.get(action.action_id) ?? msOf(action.updated_at)
      if (at.getTime() - last < every) continue
      await this.askApproval(action, true)
      this.approvalAlertedAt.set(action.action_id, at.getTime())
      realerted.push(action)
    }
    return { realerted, expired }
  }

  private async expire(action: Action): Promise<Action> {
    const expired: Action = { ...action, status: 'expired', status_detail: joinDetail(action.status_detail, `nobody approved or rejected it by ${action.expires_at} UTC`) }
    await this.save([expired])
    this.approvalAlertedAt.delete(action.action_id)
    await this.deps.resolveFinding?.(approvalDedupKey(action.action_id), 'keywatch', 'the approval request expired').catch(() => undefined)
    await this.deps.raise(
      [
        {
          detector: 'response.approval_expired',
          severity: 'high',
          account_id: action.account_id,
          key_id: action.key_id,
          title: `Nobody approved the ${action.command} of ${action.key_prefix} in time: the key was not ${action.command === 'revoke' ? 'revoked' : 'reset'}`,
          evidence: { action_id: action.action_id, key_prefix: action.key_prefix, finding_id: action.finding_id, expired_at: action.expires_at },
          dedupKey: `response.approval_expired:${action.action_id}`,
        },
      ],
      new Date(this.now()),
    )
    this.deps.log.error({ action: action.action_id, key: action.key_prefix, account: action.account_id }, 'approval expired')
    return expired
  }

  // ---- manual: a person asks ------------------------------------------------------------------------------

  /** A person's revoke or reset. Refusals are recorded as actions too, and thrown as ResponseError. */
  async manual(request: ManualRequest): Promise<Action> {
    const action = await this.serial(async () => {
      if (!request.reason.trim()) throw new ResponseError(400, 'reason_required', 'a manual revoke or reset needs a reason')
      const key = (await this.keyFacts([request.key_id])).get(request.key_id)
      if (!key) throw new ResponseError(404, 'unknown_key', `no key ${request.key_id} in the inventory`)
      const action = this.deps.actions.draft({
        command: request.command,
        account_id: key.account_id,
        key_id: key.key_id,
        key_prefix: key.key_prefix,
        finding_id: request.finding_id ?? '',
        policy: '',
        requested_by: request.actor,
        reason: request.reason.trim().slice(0, 500),
        incident: Boolean(request.incident),
        forced: Boolean(request.force),
        transport: this.deps.sender.transport,
        status: 'requested',
        status_detail: '',
        requested_at: new Date(this.now()),
      })
      const refusal = await this.manualRefusal(request, key)
      if (refusal) {
        const refused: Action = { ...action, status: 'refused', status_detail: refusal.message }
        await this.save([refused])
        throw new ResponseError(refusal.status, refusal.code, refusal.message, refused)
      }
      await this.save([action])
      return action
    })
    return this.send(action)
  }

  private async manualRefusal(request: ManualRequest, key: KeyFacts): Promise<{ status: 409 | 422; code: string; message: string } | undefined> {
    if (key.status === 'revoked') return { status: 409, code: 'already_revoked', message: `${key.key_prefix} is already revoked` }
    if (request.command === 'revoke' && key.auto_generated) {
      return { status: 422, code: 'not_revocable', message: `${key.key_prefix} is the account's auto-generated key: it can be reset but never revoked` }
    }
    if (request.command !== 'revoke' || request.incident || request.force) return undefined
    const minutes = this.deps.policy.manual.recent_use_minutes
    const [use] = await queryRows<{ requests: number; last: string | null }>(
      this.deps.client,
      `SELECT count() AS requests, if(count() = 0, NULL, toString(max(occurred_at))) AS last FROM key_usage
       WHERE account_id = {account:String} AND key_id = {key:String}
         AND occurred_at > {now:DateTime64(3, 'UTC')} - toIntervalMinute({minutes:UInt32})`,
      { account: key.account_id, key: key.key_id, now: chTime(this.now()), minutes },
    )
    if (!use || Number(use.requests) === 0) return undefined
    return {
      status: 409,
      code: 'key_in_use',
      message: `${key.key_prefix} was used ${use.requests} times in the last ${minutes} minutes (last at ${use.last} UTC): revoking it is an outage. Mark the revoke as an incident if the key is being abused, or force it`,
    }
  }

  // ---- sending and confirming -----------------------------------------------------------------------------

  /** Sends a saved, requested action and saves what the key service said. */
  private async send(action: Action): Promise<Action> {
    let result: SendResult = await this.deps.sender.send(commandOf(action))
    let sent = action
    if (result.state === 'not_revocable' && action.command === 'revoke') {
      // 422: the key service says the key cannot be revoked (an auto-generated key): reset it instead.
      sent = { ...action, command: 'reset', command_id: derivedCommandId(action.command_id, 'reset'), status_detail: joinDetail(action.status_detail, 'key service: not revocable (422), reset instead') }
      result = await this.deps.sender.send(commandOf(sent))
    }
    const done = this.settle(sent, result)
    if (done !== action) await this.save([done])
    if (done.status === 'failed') this.decided.delete(done.finding_id) // tried again when the finding fires again
    const log = done.status === 'failed' ? this.deps.log.error.bind(this.deps.log) : this.deps.log.info.bind(this.deps.log)
    log({ action: done.action_id, command: done.command, key: done.key_prefix, account: done.account_id, status: done.status, by: done.requested_by, detail: done.status_detail }, 'key action')
    return done
  }

  private settle(action: Action, result: SendResult): Action {
    const now = chTime(this.now())
    switch (result.state) {
      case 'requested':
        return action
      case 'confirmed':
        return { ...action, status: 'confirmed', status_detail: joinDetail(action.status_detail, result.detail), confirmed_at: now, confirmed_by: 'http', effective_at: result.effective_at ? chTime(Date.parse(result.effective_at)) : now }
      case 'not_revocable':
        return { ...action, status: 'failed', status_detail: joinDetail(action.status_detail, 'key service: not revocable (422)') }
      case 'failed':
        return { ...action, status: 'failed', status_detail: joinDetail(action.status_detail, result.detail) }
    }
  }

  /**
   * Confirms requested actions from the key service's lifecycle events (`revoked` for a revoke, `reset` for a
   * reset) stored since the request. Called when lifecycle events are stored.
   */
  confirmFromLifecycle(): Promise<Action[]> {
    return this.serial(async () => {
      const pending = await this.deps.actions.withStatus(['requested'], new Date(this.now() - 7 * 24 * HOUR_MS))
      if (!pending.length) return []
      // A minute of slack: the key service's clock may be behind ours.
      const events = await queryRows<{ key_id: string; action: string; at: string }>(
        this.deps.client,
        `SELECT key_id, action, toString(occurred_at) AS at FROM key_lifecycle
         WHERE key_id IN {keys:Array(String)} AND action IN ('revoked', 'reset') AND occurred_at >= {since:DateTime64(3, 'UTC')} - toIntervalMinute(1)
         ORDER BY occurred_at`,
        { keys: [...new Set(pending.map((a) => a.key_id))], since: pending[0]!.requested_at },
      )
      const confirmed: Action[] = []
      for (const action of pending) {
        const event = events.find((e) => e.key_id === action.key_id && e.action === (action.command === 'revoke' ? 'revoked' : 'reset') && msOf(e.at) >= msOf(action.requested_at) - 60_000)
        if (!event) continue
        confirmed.push({ ...action, status: 'confirmed', confirmed_at: chTime(this.now()), confirmed_by: 'lifecycle', effective_at: event.at, status_detail: joinDetail(action.status_detail, `key.lifecycle ${event.action} at ${event.at}`) })
      }
      await this.save(confirmed)
      return confirmed
    })
  }

  /**
   * The closed loop: a revoked key accepted later than the cache grace period after its revocation did not stop
   * working. The action is marked not effective and `key.used_after_revocation` is raised at high severity.
   */
  checkEffectiveness(at = new Date(this.now())): Promise<Action[]> {
    return this.serial(async () => {
      const rows = await queryRows<{ action_id: string; accepted: number; ips: number; first: string; last: string }>(
        this.deps.client,
        `WITH watched AS (
             SELECT action_id, account_id, key_id, ifNull(effective_at, confirmed_at) AS revoked_at FROM actions FINAL
             WHERE command = 'revoke' AND status = 'confirmed' AND requested_at > {at:DateTime64(3, 'UTC')} - INTERVAL 30 DAY)
         SELECT w.action_id AS action_id, count() AS accepted, uniqExact(u.ip) AS ips, toString(min(u.occurred_at)) AS first, toString(max(u.occurred_at)) AS last
         FROM key_usage AS u INNER JOIN watched AS w ON u.account_id = w.account_id AND u.key_id = w.key_id
         WHERE (u.account_id, u.key_id) IN (SELECT account_id, key_id FROM watched)
           AND u.status < 400 AND u.occurred_at > w.revoked_at + toIntervalSecond({grace:UInt32}) AND u.occurred_at <= {at:DateTime64(3, 'UTC')}
         GROUP BY w.action_id`,
        { at: chTime(at.getTime()), grace: this.deps.policy.cache_grace_seconds },
      )
      const changed: Action[] = []
      for (const row of rows) {
        const action = await this.deps.actions.get(row.action_id)
        if (!action || action.status !== 'confirmed') continue
        const detail = `${row.accepted} requests accepted more than ${this.deps.policy.cache_grace_seconds} s after the revocation (first ${row.first}, last ${row.last}, ${row.ips} IPs)`
        const updated: Action = { ...action, status: 'not_effective', status_detail: joinDetail(action.status_detail, detail) }
        await this.save([updated])
        changed.push(updated)
        await this.deps.raise(
          [
            {
              detector: 'key.used_after_revocation',
              severity: 'high',
              account_id: action.account_id,
              key_id: action.key_id,
              title: `Revoked ${action.key_prefix} was accepted ${row.accepted} times after revocation`,
              evidence: { action_id: action.action_id, revoked_at: action.effective_at ?? action.confirmed_at, accepted: Number(row.accepted), distinct_ips: Number(row.ips), first: row.first, last: row.last },
              // The detector's own dedup key: one finding per key, whichever saw it first.
              dedupKey: `key.used_after_revocation:${action.account_id}:${action.key_id}`,
            },
          ],
          at,
        )
        this.deps.log.error({ action: action.action_id, key: action.key_prefix, account: action.account_id, detail }, 'revocation not effective')
      }
      return changed
    })
  }

  // ---- the kill switch ------------------------------------------------------------------------------------

  async setPaused(paused: boolean, actor: string, reason: string): Promise<void> {
    if (!reason.trim()) throw new ResponseError(400, 'reason_required', 'pausing or resuming automatic response needs a reason')
    await this.deps.client.insert({
      table: 'response_state',
      format: 'JSONEachRow',
      values: [{ name: 'paused', value: JSON.stringify({ paused, reason: reason.trim().slice(0, 500) }), changed_by: actor, changed_at: chTime(this.now()), version: this.now() * 1000 + 1 }],
    })
    this.pausedCache = { paused, at: this.now() }
    this.deps.log.warn({ paused, actor, reason }, paused ? 'automatic response paused (kill switch on)' : 'automatic response resumed')
  }

  /**
   * Read at most every few seconds (like the guard-rail window): a pause through this instance applies at once, one
   * through another instance within WINDOW_REFRESH_MS.
   */
  async isPaused(): Promise<boolean> {
    if (this.pausedCache && this.now() - this.pausedCache.at < WINDOW_REFRESH_MS) return this.pausedCache.paused
    return (await this.state()).paused
  }

  async state(): Promise<{ mode: Policy['mode']; paused: boolean; paused_reason: string; changed_by: string; changed_at: string | null; transport: string; guard_rails: Policy['guard_rails']; automatic_in_last_hour: number }> {
    const [row] = await queryRows<{ value: string; changed_by: string; changed_at: string }>(
      this.deps.client,
      `SELECT value, changed_by, toString(changed_at) AS changed_at FROM response_state FINAL WHERE name = 'paused'`,
    )
    const value = row ? (JSON.parse(row.value) as { paused: boolean; reason: string }) : { paused: false, reason: '' }
    this.pausedCache = { paused: value.paused, at: this.now() }
    await this.loadGuardRailWindow()
    const since = this.now() - HOUR_MS
    return {
      mode: this.deps.policy.mode,
      paused: value.paused,
      paused_reason: value.reason,
      changed_by: row?.changed_by ?? '',
      changed_at: row?.changed_at ?? null,
      transport: this.deps.sender.transport,
      guard_rails: this.deps.policy.guard_rails,
      automatic_in_last_hour: this.recentAuto.filter((a) => a.at > since).length,
    }
  }

  // ---- helpers --------------------------------------------------------------------------------------------

  private async keyFacts(keyIds: string[]): Promise<Map<string, KeyFacts>> {
    const rows = await queryRows<KeyFacts>(
      this.deps.client,
      `SELECT account_id, key_id, key_prefix, key_kind, mode, status, auto_generated FROM key_inventory_at(at = {now:DateTime64(3, 'UTC')})
       WHERE key_id IN {keys:Array(String)}`,
      { keys: [...new Set(keyIds)], now: chTime(this.now()) },
    )
    return new Map(rows.map((r) => [r.key_id, { ...r, auto_generated: Boolean(r.auto_generated) }]))
  }

  private async save(written: Action[], opts: { quiet?: boolean } = {}): Promise<void> {
    if (!written.length) return
    const actions = written.map((a) => (a.finding_id ? a : { ...a, finding_id: this.linkedFinding.get(a.action_id) ?? '' }))
    for (const a of actions) if (this.fastActed.get(a.key_id)?.action_id === a.action_id) this.fastActed.set(a.key_id, a)
    await this.deps.actions.write(actions)
    if (opts.quiet) return
    for (const action of actions) {
      for (const l of this.listeners) {
        try {
          l(action)
        } catch (err) {
          this.deps.log.error({ err: String(err) }, 'action listener failed')
        }
      }
    }
  }

  private serial<T>(work: () => Promise<T>): Promise<T> {
    const next = this.queue.then(work, work)
    this.queue = next.catch(() => undefined)
    return next
  }
}

/** One leaked secret of one key, one command per attempt (1 = the first), whoever decides it. */
function leakCommandId(keyId: string, secretSha256: string, command: string, attempt: number): string {
  return derivedCommandId('leak.public_report', keyId, secretSha256.toLowerCase(), command, String(attempt))
}

/** An auto-generated key cannot be revoked: it is reset instead. */
function commandFor(key: KeyFacts, wanted: 'revoke' | 'reset'): { command: 'revoke' | 'reset'; note: string } {
  if (wanted === 'revoke' && key.auto_generated) return { command: 'reset', note: 'auto-generated key: reset instead of revoked' }
  return { command: wanted, note: '' }
}

function commandOf(a: Action) {
  return { command: a.command, command_id: a.command_id, account_id: a.account_id, key_id: a.key_id, reason: a.reason, finding_id: a.finding_id || null, requested_by: a.requested_by }
}

function joinDetail(...parts: string[]): string {
  return parts.filter(Boolean).join('; ')
}

export function approvalDedupKey(actionId: string): string {
  return `response.approval_required:${actionId}`
}

function msOf(chDateTime: string): number {
  return Date.parse(chDateTime.replace(' ', 'T') + 'Z')
}
