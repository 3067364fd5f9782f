// The response engine: turns findings into revocations (by policy) and people's requests into revocations (with a
// reason, and not on a key in use unless it is an incident), behind guard rails and a kill switch; tracks each
// action until the key service confirms it, and then watches that the key really stopped working.
import { randomUUID } from 'node:crypto'
import { queryRows, type ClickHouseClient } from '../clickhouse/client.ts'
import type { FindingDraft } from '../detectors/detector.ts'
import type { Finding, Recorded } from '../detectors/findings.ts'
import { chTime } from '../ingest/rows.ts'
import type { Action, ActionStatus, ActionStore } from './actions.ts'
import { matchRule, type Policy } from './policy.ts'
import type { CommandSender, SendResult } from './senders.ts'

export interface Logger {
  info(obj: object, msg?: string): void
  warn(obj: object, msg?: string): void
  error(obj: object, msg?: string): void
}

/** A request keywatch refuses or cannot carry out; `status` is the HTTP status the API answers with. */
export class ResponseError extends Error {
  readonly retriable = false
  constructor(
    readonly status: 400 | 404 | 409 | 422,
    readonly code: string,
    message: string,
    readonly action?: Action,
  ) {
    super(message)
    this.name = 'ResponseError'
  }
}

export interface ResponseDeps {
  client: ClickHouseClient
  actions: ActionStore
  sender: CommandSender
  policy: Policy
  log: Logger
  /** Records findings keywatch raises itself (a tripped guard rail, a revocation that did not bite) and alerts on them. */
  raise: (drafts: FindingDraft[], at: Date) => Promise<Recorded[]>
  now?: () => number
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
  private recentAuto: { account_id: string; at: number }[] = []
  private windowReadAt = 0
  private readonly listeners: ActionListener[] = []
  private watchTimer?: NodeJS.Timeout
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
  }

  /**
   * Several instances (issue 16): automatic actions a previous leader saved as requested over HTTP but may not have
   * sent (it died mid-revoke) are sent now, with their own command id: the key service's Idempotency-Key makes a
   * repeat of one that did go out the same revoke. Never decided again (the finding already has its action).
   */
  async resumeRequested(): Promise<Action[]> {
    const open = (await this.deps.actions.withStatus(['requested'], new Date(this.now() - 24 * HOUR_MS))).filter(
      (a) => a.requested_by.startsWith('auto:') && a.transport === 'http' && this.deps.sender.transport === 'http',
    )
    for (const a of open) this.decided.add(a.finding_id)
    return Promise.all(open.map((a) => this.send(a)))
  }

  stop(): Promise<unknown> {
    clearInterval(this.watchTimer)
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
  private async decide(findings: Finding[]): Promise<{ held: Action[]; toSend: Action[] }> {
    const previous = await this.deps.actions.forFindings(findings.map((f) => f.finding_id))
    const keys = await this.keyFacts(findings.map((f) => f.key_id))
    const paused = await this.isPaused()
    if (this.now() - this.windowReadAt > WINDOW_REFRESH_MS) await this.loadGuardRailWindow()
    const held: Action[] = []
    const toSend: Action[] = []
    for (const finding of findings) {
      const before = previous.filter((a) => a.finding_id === finding.finding_id)
      const retry = before.length > 0 && before.every((a) => a.status === 'failed') && before.length < MAX_AUTO_ATTEMPTS
      if (before.length > 0 && !retry) continue
      const key = keys.get(finding.key_id)
      const rule = key && matchRule(this.deps.policy, { detector: finding.detector, severity: finding.severity, key_kind: key.key_kind, mode: key.mode })
      if (!key || !rule || rule.action === 'alert') continue
      const { command, note } = commandFor(key, rule.action)
      const action = this.deps.actions.draft({
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
      const hold = this.holdReason(key, paused)
      if (!hold) {
        this.recentAuto.push({ account_id: key.account_id, at: this.now() })
        toSend.push(action)
        continue
      }
      const heldAction: Action = { ...action, status: hold.status, status_detail: joinDetail(note, hold.detail) }
      held.push(heldAction)
      if (hold.status === 'blocked') await this.raiseGuardRail(key, heldAction, hold.detail)
    }
    // Written before anything is sent: a crash in between still leaves the request on record, and the next decision
    // on the same finding sees it.
    await this.save([...held, ...toSend])
    if (this.decided.size > 100_000) this.decided.clear() // a bound, not a correctness matter: the table is the truth
    for (const f of findings) this.decided.add(f.finding_id)
    for (const a of held) this.deps.log.warn({ action: a.action_id, key: a.key_prefix, account: a.account_id, status: a.status, detail: a.status_detail }, 'automatic action held')
    return { held, toSend }
  }

  /**
   * The automatic actions of the last hour, read from the table every few seconds (and counted on in between): the
   * rails count what every instance did, and what this one did before a restart.
   */
  private async loadGuardRailWindow(): Promise<void> {
    this.windowReadAt = this.now()
    const since = new Date(this.now() - HOUR_MS)
    this.recentAuto = (await this.deps.actions.withStatus(COUNTED, since))
      .filter((a) => a.requested_by.startsWith('auto:'))
      .map((a) => ({ account_id: a.account_id, at: Date.parse(a.requested_at.replace(' ', 'T') + 'Z') }))
  }

  /** Why an automatic action must not go out, if it must not. */
  private holdReason(key: KeyFacts, paused: boolean): { status: ActionStatus; detail: string } | undefined {
    if (key.status === 'revoked' || key.status === 'expired') return { status: 'skipped', detail: `the key is already ${key.status}` }
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
      sent = { ...action, command: 'reset', command_id: randomUUID(), status_detail: joinDetail(action.status_detail, 'key service: not revocable (422), reset instead') }
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
    this.deps.log.warn({ paused, actor, reason }, paused ? 'automatic response paused (kill switch on)' : 'automatic response resumed')
  }

  /** Read at every decision, so a pause by any instance (or the CLI) applies at once. */
  async isPaused(): Promise<boolean> {
    return (await this.state()).paused
  }

  async state(): Promise<{ mode: Policy['mode']; paused: boolean; paused_reason: string; changed_by: string; changed_at: string | null; transport: string; guard_rails: Policy['guard_rails']; automatic_in_last_hour: number }> {
    const [row] = await queryRows<{ value: string; changed_by: string; changed_at: string }>(
      this.deps.client,
      `SELECT value, changed_by, toString(changed_at) AS changed_at FROM response_state FINAL WHERE name = 'paused'`,
    )
    const value = row ? (JSON.parse(row.value) as { paused: boolean; reason: string }) : { paused: false, reason: '' }
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

  private async save(actions: Action[]): Promise<void> {
    if (!actions.length) return
    await this.deps.actions.write(actions)
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

function msOf(chDateTime: string): number {
  return Date.parse(chDateTime.replace(' ', 'T') + 'Z')
}
