// The findings lifecycle: a detector's draft becomes a finding, or updates the one with its dedup key; a resolved
// finding that fires again reopens; a suppressed one is recorded but not alerted. Every status change is appended
// to finding_changes with who, when and why. Writes go through one queue, so two runs never race on a dedup key.
import { randomUUID } from 'node:crypto'
import { queryRows, type ClickHouseClient } from '../clickhouse/client.ts'
import { chTime } from '../clickhouse/time.ts'
import { SEVERITY_RANK, type FindingDraft, type Severity } from './detector.ts'
import { KeywatchError } from '../core/errors.ts'

export type FindingStatus = 'open' | 'acknowledged' | 'resolved' | 'suppressed'

export interface Finding {
  finding_id: string
  detector: string
  severity: Severity
  account_id: string
  key_id: string
  user_id: string
  ip: string
  title: string
  evidence: Record<string, unknown>
  dedup_key: string
  first_seen_at: string
  last_seen_at: string
  occurrences: number
  status: FindingStatus
  status_changed_at: string
  status_changed_by: string
  status_reason: string
}

export interface Recorded {
  finding: Finding
  /** new, updated (fired again while open/acknowledged/suppressed) or reopened (was resolved). */
  change: 'new' | 'updated' | 'reopened'
  /** Whether the finding should be alerted on: not when suppressed. */
  alert: boolean
}

export interface Suppression {
  suppression_id: string
  detector: string
  account_id: string
  key_id: string
  user_id: string
  ip: string
  reason: string
  author: string
  created_at: string
  expires_at: string | null
}

export class FindingError extends KeywatchError {
  constructor(message: string, kind: 'invalid' | 'not_found' = 'invalid') {
    super(kind, kind === 'not_found' ? 'not_found' : 'invalid_input', message)
    this.name = 'FindingError'
  }
}

const SELECT_FINDING = `SELECT finding_id, detector, severity, account_id, key_id, user_id, ip, title, evidence, dedup_key,
  toString(first_seen_at) AS first_seen_at, toString(last_seen_at) AS last_seen_at, occurrences, status,
  toString(status_changed_at) AS status_changed_at, status_changed_by, status_reason FROM findings FINAL`

/** A stored finding without what a draft that fires again replaces anyway (title, evidence): the dedup look-up. */
type StoredFinding = Omit<Finding, 'title' | 'evidence'>

const SELECT_FOR_DEDUP = `SELECT finding_id, detector, severity, account_id, key_id, user_id, ip, dedup_key,
  toString(first_seen_at) AS first_seen_at, toString(last_seen_at) AS last_seen_at, occurrences, status,
  toString(status_changed_at) AS status_changed_at, status_changed_by, status_reason FROM findings FINAL
  WHERE dedup_key IN {keys:Array(String)}`

/** The findings table's columns in the order write() sends them (JSONCompactEachRow: no key names per row). */
const FINDING_COLUMNS = ['finding_id', 'detector', 'severity', 'account_id', 'key_id', 'user_id', 'ip', 'title', 'evidence', 'dedup_key', 'first_seen_at',
  'last_seen_at', 'occurrences', 'status', 'status_changed_at', 'status_changed_by', 'status_reason', 'version'] as const

export class FindingStore {
  private queue: Promise<unknown> = Promise.resolve()
  private readonly statusListeners: ((finding: Finding) => void)[] = []
  private lastVersion = 0

  constructor(private readonly client: ClickHouseClient) {}

  /** Records what a detector run found, as of `at`. */
  async record(drafts: FindingDraft[], at: Date, actor = 'keywatch'): Promise<Recorded[]> {
    return (await this.recordBatches([drafts], at, actor))[0]!
  }

  /**
   * Records what several detector runs found, as of the same `at`, as record() would one after the other, in one
   * look-up of the dedup keys, one insert of the findings and one of their changes (`detectors run` runs them all).
   */
  recordBatches(batches: FindingDraft[][], at: Date, actor = 'keywatch'): Promise<Recorded[][]> {
    return this.serial(async () => {
      const drafts = batches.flat()
      if (drafts.length === 0) return batches.map(() => [])
      // One look-up of every dedup key of the batch; title and evidence are not read: a draft replaces both.
      const stored = await queryRows<StoredFinding>(this.client, SELECT_FOR_DEDUP, { keys: [...new Set(drafts.map((d) => d.dedupKey))] })
      const existing = new Map<string, StoredFinding>(stored.map((f) => [f.dedup_key, { ...f, occurrences: Number(f.occurrences) }]))
      const suppressions = await this.activeSuppressions(at)
      const when = chTime(at.getTime())
      const out: Recorded[] = []
      for (const draft of drafts) {
        const suppressed = suppressions.find((s) => matches(s, draft))
        const before = existing.get(draft.dedupKey)
        let finding: Finding
        let change: Recorded['change']
        if (!before) {
          change = 'new'
          finding = {
            finding_id: `fnd_${randomUUID().replaceAll('-', '').slice(0, 24)}`,
            detector: draft.detector,
            severity: draft.severity,
            account_id: draft.account_id,
            key_id: draft.key_id ?? '',
            user_id: draft.user_id ?? '',
            ip: draft.ip ?? '',
            title: draft.title,
            evidence: draft.evidence,
            dedup_key: draft.dedupKey,
            first_seen_at: when,
            last_seen_at: when,
            occurrences: 1,
            status: suppressed ? 'suppressed' : 'open',
            status_changed_at: when,
            status_changed_by: actor,
            status_reason: suppressed ? `suppressed: ${suppressed.reason}` : 'raised',
          }
        } else {
          const reopen = before.status === 'resolved'
          change = reopen ? 'reopened' : 'updated'
          const status: FindingStatus = reopen ? (suppressed ? 'suppressed' : 'open') : before.status
          finding = {
            ...before,
            severity: SEVERITY_RANK[draft.severity] > SEVERITY_RANK[before.severity] ? draft.severity : before.severity,
            title: draft.title,
            evidence: draft.evidence,
            last_seen_at: when > before.last_seen_at ? when : before.last_seen_at,
            occurrences: before.occurrences + 1,
            status,
            ...(reopen ? { status_changed_at: when, status_changed_by: actor, status_reason: 'fired again after it was resolved' } : {}),
          }
        }
        existing.set(draft.dedupKey, finding)
        out.push({ finding, change, alert: finding.status !== 'suppressed' && finding.status !== 'acknowledged' })
      }
      await this.write(out.map((r) => r.finding))
      await this.logChanges(
        out
          .filter((r) => r.change !== 'updated')
          .map((r) => ({ finding: r.finding, from: r.change === 'reopened' ? 'resolved' : '', actor, reason: r.finding.status_reason, at: when })),
      )
      let next = 0
      return batches.map((b) => out.slice(next, (next += b.length)))
    })
  }

  /** Told after a finding's status was changed by a person (alerts update their messages). */
  onStatusChange(listener: (finding: Finding) => void): void {
    this.statusListeners.push(listener)
  }

  /** A person (or keywatch) changes a finding's status; the change is audited. */
  setStatus(findingId: string, status: FindingStatus, actor: string, reason: string, at = new Date()): Promise<Finding> {
    return this.serial(async () => {
      if (!reason.trim()) throw new FindingError('a status change needs a reason')
      const [before] = await this.select('WHERE finding_id = {id:String}', { id: findingId })
      if (!before) throw new FindingError(`no finding ${findingId}`, 'not_found')
      const when = chTime(at.getTime())
      const after: Finding = { ...before, status, status_changed_at: when, status_changed_by: actor, status_reason: reason }
      await this.write([after])
      await this.logChanges([{ finding: after, from: before.status, actor, reason, at: when }])
      for (const l of this.statusListeners) l(after)
      return after
    })
  }

  async list(filter: { status?: FindingStatus; detector?: string; account_id?: string; key_id?: string; severity?: string; finding_id?: string; limit?: number } = {}): Promise<Finding[]> {
    return this.select(
      `WHERE ({status:String} = '' OR status = {status:String}) AND ({detector:String} = '' OR detector = {detector:String})
         AND ({account:String} = '' OR account_id = {account:String}) AND ({key:String} = '' OR key_id = {key:String})
         AND ({severity:String} = '' OR severity = {severity:String}) AND ({id:String} = '' OR finding_id = {id:String})
       ORDER BY last_seen_at DESC LIMIT {limit:UInt32}`,
      {
        status: filter.status ?? '',
        detector: filter.detector ?? '',
        account: filter.account_id ?? '',
        key: filter.key_id ?? '',
        severity: filter.severity ?? '',
        id: filter.finding_id ?? '',
        limit: filter.limit ?? 1000,
      },
    )
  }

  async changes(findingId: string): Promise<{ at: string; from_status: string; to_status: string; actor: string; reason: string }[]> {
    return queryRows(
      this.client,
      'SELECT toString(at) AS at, from_status, to_status, actor, reason FROM finding_changes WHERE finding_id = {id:String} ORDER BY at',
      { id: findingId },
    )
  }

  /** Suppress by detector and subject (key, user or ip) or by account; '' means any. */
  suppress(s: Omit<Suppression, 'suppression_id' | 'created_at'>, at = new Date()): Promise<Suppression> {
    return this.serial(async () => {
      if (!s.reason.trim() || !s.author.trim()) throw new FindingError('a suppression needs a reason and an author')
      if (!s.detector && !s.account_id && !s.key_id && !s.user_id && !s.ip) throw new FindingError('a suppression needs a detector, an account or a subject')
      const suppression: Suppression = { ...s, suppression_id: `sup_${randomUUID().replaceAll('-', '').slice(0, 24)}`, created_at: chTime(at.getTime()) }
      await this.client.insert({
        table: 'suppressions',
        format: 'JSONEachRow',
        values: [{ ...suppression, expires_at: s.expires_at ? chTime(Date.parse(s.expires_at)) : null, version: this.version() }],
      })
      return suppression
    })
  }

  async activeSuppressions(at: Date): Promise<Suppression[]> {
    return queryRows<Suppression>(
      this.client,
      `SELECT suppression_id, detector, account_id, key_id, user_id, ip, reason, author, toString(created_at) AS created_at,
              if(expires_at IS NULL, NULL, toString(expires_at)) AS expires_at
       FROM (SELECT * FROM suppressions FINAL
             WHERE NOT deleted AND created_at <= {at:DateTime64(3, 'UTC')} AND (expires_at IS NULL OR expires_at > {at:DateTime64(3, 'UTC')}))`,
      { at: chTime(at.getTime()) },
    )
  }

  private async select(where: string, params: Record<string, unknown>): Promise<Finding[]> {
    const rows = await queryRows<Omit<Finding, 'evidence'> & { evidence: string }>(this.client, `${SELECT_FINDING} ${where}`, params)
    return rows.map((r) => ({ ...r, occurrences: Number(r.occurrences), evidence: JSON.parse(r.evidence) as Record<string, unknown> }))
  }

  private async write(findings: Finding[]): Promise<void> {
    if (!findings.length) return
    // Rows as arrays in FINDING_COLUMNS order: the engine parses a third less than objects with their key names.
    await this.client.insert({
      table: 'findings',
      format: 'JSONCompactEachRow',
      columns: [...FINDING_COLUMNS],
      values: findings.map((f) => {
        const row: Record<(typeof FINDING_COLUMNS)[number], unknown> = { ...f, evidence: JSON.stringify(f.evidence), version: this.version() }
        return FINDING_COLUMNS.map((c) => row[c])
      }),
    })
  }

  private async logChanges(changes: { finding: Finding; from: string; actor: string; reason: string; at: string }[]): Promise<void> {
    if (!changes.length) return
    await this.client.insert({
      table: 'finding_changes',
      format: 'JSONEachRow',
      values: changes.map((c) => ({ finding_id: c.finding.finding_id, at: c.at, from_status: c.from, to_status: c.finding.status, actor: c.actor, reason: c.reason })),
    })
  }

  /** Strictly increasing across this process: the latest write of a finding wins under FINAL. */
  private version(): number {
    this.lastVersion = Math.max(this.lastVersion + 1, Date.now() * 1000)
    return this.lastVersion
  }

  private serial<T>(work: () => Promise<T>): Promise<T> {
    const next = this.queue.then(work, work)
    this.queue = next.catch(() => undefined)
    return next
  }
}

function matches(s: Suppression, d: FindingDraft): boolean {
  return (
    (!s.detector || s.detector === d.detector) &&
    (!s.account_id || s.account_id === d.account_id) &&
    (!s.key_id || s.key_id === d.key_id) &&
    (!s.user_id || s.user_id === d.user_id) &&
    (!s.ip || s.ip === d.ip)
  )
}
