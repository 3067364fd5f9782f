// Incidents: the findings an on-call engineer should see as one. A finding joins an incident of its account when
// they share a subject, directly (the same key or user) or through a link (the user who created, rotated, reset or
// revealed that key), and the incident's latest finding is within the window; otherwise it opens one. A finding
// about the account itself (no key, no user) joins the account's latest incident in the window. Low and info
// findings (key hygiene) open none. This module owns the incidents and incident_findings tables.
import { randomUUID } from 'node:crypto'
import { queryRows, type ClickHouseClient } from '../clickhouse/client.ts'
import { SEVERITY_RANK, type Severity } from '../detectors/detector.ts'
import type { Finding, Recorded } from '../detectors/findings.ts'
import { chTime } from '../clickhouse/time.ts'
import type { OutboxAlert } from '../alerts/outbox.ts'
import type { Action } from '../response/actions.ts'

/** What keywatch did about findings, read from the modules that own those tables. */
export interface IncidentSources {
  actionsFor?: (findingIds: string[]) => Promise<Action[]>
  alertsFor?: (findingIds: string[]) => Promise<OutboxAlert[]>
}

export interface Incident {
  incident_id: string
  account_id: string
  title: string
  severity: Severity
  subjects: string[]
  opened_at: string
  last_finding_at: string
  findings: number
  /** open while any of its findings is open or acknowledged; resolved once all are resolved or suppressed. */
  status?: 'open' | 'resolved'
}

export interface IncidentMember {
  incident_id: string
  finding_id: string
  account_id: string
  detector: string
  severity: string
  title: string
  subject: string
  linked_by: string
  at: string
}

/** Where a finding went: its incident, whether it opened it, and the incident's findings before it (oldest first). */
export interface IncidentRef {
  incident_id: string
  opened: boolean
  earlier: string[]
}

export interface TimelineEntry {
  at: string
  kind: 'finding' | 'status' | 'action' | 'link'
  text: string
  finding_id?: string
  detector?: string
  severity?: string
  actor?: string
}

// The filter goes inside: an alias (toString(…) AS opened_at) would shadow its column in a WHERE beside it.
const selectIncidents = (where: string, rest = '') => `SELECT incident_id, account_id, title, severity, subjects, toString(opened_at) AS opened_at,
  toString(last_finding_at) AS last_finding_at, findings FROM (SELECT * FROM incidents FINAL ${where}) ${rest}`
const SELECT_MEMBER = `SELECT incident_id, finding_id, account_id, detector, severity, title, subject, linked_by, toString(at) AS at FROM incident_findings FINAL`

const subjectsOf = (f: Finding): string[] => [...(f.key_id ? [`key:${f.key_id}`] : []), ...(f.user_id ? [`user:${f.user_id}`] : [])]
const msOf = (chDateTime: string) => Date.parse(chDateTime.replace(' ', 'T') + 'Z')

interface Link {
  key_id: string
  user_id: string
  action: string
}

export class IncidentStore {
  private lastVersion = 0

  constructor(
    private readonly client: ClickHouseClient,
    private readonly windowHours = 24,
    private readonly sources: IncidentSources = {},
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * Groups what a detector run (or keywatch) recorded. One at a time, so two runs never open two incidents for one
   * subject; what arrives meanwhile is grouped together next (under 50 leak reports a second, one round of queries
   * for many findings rather than one each, on the engine the revocations also wait for).
   */
  group(recorded: Recorded[]): Promise<Map<string, IncidentRef>> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ recorded, resolve, reject })
      if (!this.busy) void this.drain()
    })
  }

  private readonly waiting: { recorded: Recorded[]; resolve: (m: Map<string, IncidentRef>) => void; reject: (err: unknown) => void }[] = []
  private busy = false

  private async drain(): Promise<void> {
    this.busy = true
    while (this.waiting.length) {
      const batch = this.waiting.splice(0)
      try {
        const refs = await this.groupNow(batch.flatMap((b) => b.recorded))
        for (const b of batch) b.resolve(refs)
      } catch (err) {
        for (const b of batch) b.reject(err)
      }
    }
    this.busy = false
  }

  private async groupNow(recorded: Recorded[]): Promise<Map<string, IncidentRef>> {
    const out = new Map<string, IncidentRef>()
    const candidates = recorded
      .filter((r) => r.change !== 'updated' && r.finding.status !== 'suppressed' && r.finding.account_id && SEVERITY_RANK[r.finding.severity] >= SEVERITY_RANK.medium)
      .filter((r) => subjectsOf(r.finding).length > 0 || !r.finding.ip)
      .map((r) => r.finding)
      .sort((a, b) => a.last_seen_at.localeCompare(b.last_seen_at))
    if (!candidates.length) return out
    const windowMs = this.windowHours * 3_600_000
    const accounts = [...new Set(candidates.map((f) => f.account_id))]
    const earliest = msOf(candidates[0]!.last_seen_at) - windowMs
    const open = await queryRows<Incident>(this.client, selectIncidents(`WHERE account_id IN {accounts:Array(String)} AND last_finding_at >= {since:DateTime64(3, 'UTC')}`, 'ORDER BY opened_at, incident_id'), {
      accounts,
      since: chTime(earliest),
    })
    const members = new Map<string, string[]>()
    if (open.length) {
      for (const m of await queryRows<{ incident_id: string; finding_id: string }>(this.client, 'SELECT incident_id, finding_id FROM incident_findings WHERE incident_id IN {ids:Array(String)} ORDER BY at, finding_id', { ids: open.map((i) => i.incident_id) })) {
        members.set(m.incident_id, [...(members.get(m.incident_id) ?? []), m.finding_id])
      }
    }
    const links = await this.links(accounts, candidates)
    const changed = new Map<string, Incident>()
    const added: IncidentMember[] = []
    for (const f of candidates) {
      const t = msOf(f.last_seen_at)
      const own = subjectsOf(f)
      // The subjects this finding reaches through links, with the event that links each.
      const reach = new Map<string, string>(own.map((s) => [s, s]))
      for (const l of links) {
        if (l.account_id !== f.account_id) continue
        if (own.includes(`key:${l.key_id}`) && !reach.has(`user:${l.user_id}`)) reach.set(`user:${l.user_id}`, `${l.user_id} ${l.action} ${l.key_id}`)
        if (own.includes(`user:${l.user_id}`) && !reach.has(`key:${l.key_id}`)) reach.set(`key:${l.key_id}`, `${l.user_id} ${l.action} ${l.key_id}`)
      }
      const live = open.filter((i) => i.account_id === f.account_id && t - msOf(i.last_finding_at) <= windowMs && msOf(i.opened_at) - t <= windowMs)
      let incident: Incident | undefined
      let linkedBy = ''
      if (own.length === 0) {
        incident = live.at(-1)
        linkedBy = incident ? `the account ${f.account_id}` : ''
      } else {
        for (const i of live) {
          // A subject it shares itself says more than one reached through a link.
          const shared = i.subjects.find((s) => own.includes(s)) ?? i.subjects.find((s) => reach.has(s))
          if (shared) {
            incident = i
            linkedBy = reach.get(shared) === shared ? `the same ${shared.replace(':', ' ')}` : reach.get(shared)!
            break
          }
        }
      }
      const already = incident && (members.get(incident.incident_id) ?? []).includes(f.finding_id)
      // When it was raised, or reopened (a new finding's last_seen_at is its first_seen_at).
      const at = f.last_seen_at
      if (!incident) {
        incident = {
          incident_id: `inc_${randomUUID().replaceAll('-', '').slice(0, 24)}`,
          account_id: f.account_id,
          title: f.title,
          severity: f.severity,
          subjects: own.length ? own : [`account:${f.account_id}`],
          opened_at: at,
          last_finding_at: f.last_seen_at,
          findings: 0,
        }
        open.push(incident)
        out.set(f.finding_id, { incident_id: incident.incident_id, opened: true, earlier: [] })
      } else {
        out.set(f.finding_id, { incident_id: incident.incident_id, opened: false, earlier: (members.get(incident.incident_id) ?? []).filter((id) => id !== f.finding_id).slice(0, 50) })
        incident.subjects = [...new Set([...incident.subjects, ...own])]
        if (SEVERITY_RANK[f.severity] > SEVERITY_RANK[incident.severity]) incident.severity = f.severity
        if (f.last_seen_at > incident.last_finding_at) incident.last_finding_at = f.last_seen_at
      }
      if (!already) {
        incident.findings++
        members.set(incident.incident_id, [...(members.get(incident.incident_id) ?? []), f.finding_id])
        added.push({ incident_id: incident.incident_id, finding_id: f.finding_id, account_id: f.account_id, detector: f.detector, severity: f.severity, title: f.title, subject: own[0] ?? `account:${f.account_id}`, linked_by: linkedBy, at })
      }
      changed.set(incident.incident_id, incident)
    }
    const now = chTime(this.now())
    await this.client.insert({ table: 'incidents', format: 'JSONEachRow', values: [...changed.values()].map((i) => ({ ...i, status: undefined, version: this.version() })) })
    if (added.length) await this.client.insert({ table: 'incident_findings', format: 'JSONEachRow', values: added.map((m) => ({ ...m, added_at: now })) })
    return out
  }

  /** Who created, rotated, reset or revoked the findings' keys, and who revealed them; and the keys their users did that to. */
  private async links(accounts: string[], findings: Finding[]): Promise<(Link & { account_id: string })[]> {
    const keys = [...new Set(findings.map((f) => f.key_id).filter(Boolean))]
    const users = [...new Set(findings.map((f) => f.user_id).filter(Boolean))]
    if (!keys.length && !users.length) return []
    // Aliases differ from the columns they are computed from: an alias would shadow its column in the WHERE.
    const rows = await queryRows<{ account_id: string; link_key: string; link_user: string; link: string }>(
      this.client,
      `SELECT DISTINCT account_id, key_id AS link_key, ifNull(actor_id, '') AS link_user, toString(action) AS link FROM key_lifecycle
        WHERE account_id IN {accounts:Array(String)} AND actor_type = 'user' AND ifNull(actor_id, '') != ''
          AND action IN ('created', 'rotated', 'reset', 'revoked') AND (key_id IN {keys:Array(String)} OR ifNull(actor_id, '') IN {users:Array(String)})
       UNION ALL
       SELECT DISTINCT account_id, ifNull(key_id, '') AS link_key, ifNull(user_id, '') AS link_user, 'revealed' AS link FROM auth_events
        WHERE account_id IN {accounts:Array(String)} AND action = 'apikey.revealed' AND ifNull(key_id, '') != '' AND ifNull(user_id, '') != ''
          AND (ifNull(key_id, '') IN {keys:Array(String)} OR ifNull(user_id, '') IN {users:Array(String)})`,
      { accounts, keys, users },
    )
    return rows.map((r) => ({ account_id: r.account_id, key_id: r.link_key, user_id: r.link_user, action: r.link }))
  }

  async list(filter: { account_id?: string; key_id?: string; user_id?: string; status?: 'open' | 'resolved'; limit?: number } = {}): Promise<Incident[]> {
    const subject = filter.key_id ? `key:${filter.key_id}` : filter.user_id ? `user:${filter.user_id}` : ''
    const rows = await queryRows<Incident>(
      this.client,
      selectIncidents(`WHERE ({account:String} = '' OR account_id = {account:String}) AND ({subject:String} = '' OR has(subjects, {subject:String}))`, 'ORDER BY last_finding_at DESC LIMIT {limit:UInt32}'),
      { account: filter.account_id ?? '', subject, limit: filter.status ? 10_000 : (filter.limit ?? 500) },
    )
    const withStatus = await this.withStatus(rows.map((r) => ({ ...r, findings: Number(r.findings) })))
    return (filter.status ? withStatus.filter((i) => i.status === filter.status) : withStatus).slice(0, filter.limit ?? 500)
  }

  async get(id: string): Promise<{ incident: Incident; members: IncidentMember[]; timeline: TimelineEntry[] } | undefined> {
    const [row] = await queryRows<Incident>(this.client, selectIncidents('WHERE incident_id = {id:String}'), { id })
    if (!row) return undefined
    const [incident] = await this.withStatus([{ ...row, findings: Number(row.findings) }])
    const members = await queryRows<IncidentMember>(this.client, `${SELECT_MEMBER} WHERE incident_id = {id:String} ORDER BY at, finding_id`, { id })
    return { incident: incident!, members, timeline: await this.timeline(incident!, members) }
  }

  /** What fired and when, what keywatch and people did about it, and the events that tie its subjects together. */
  private async timeline(incident: Incident, members: IncidentMember[]): Promise<TimelineEntry[]> {
    const ids = members.map((m) => m.finding_id)
    const entries: TimelineEntry[] = members.map((m) => ({
      at: m.at,
      kind: 'finding',
      text: `${m.title}${m.linked_by ? ` (joined by ${m.linked_by})` : ''}`,
      finding_id: m.finding_id,
      detector: m.detector,
      severity: m.severity,
    }))
    const [changes, actions, alerts, links] = await Promise.all([
      queryRows<{ finding_id: string; at: string; to_status: string; actor: string; reason: string }>(
        this.client,
        `SELECT finding_id, toString(at) AS at, to_status, actor, reason FROM finding_changes WHERE finding_id IN {ids:Array(String)} AND from_status != '' ORDER BY at`,
        { ids },
      ),
      this.sources.actionsFor?.(ids) ?? [],
      this.sources.alertsFor?.(ids) ?? [],
      this.subjectEvents(incident),
    ])
    for (const c of changes) entries.push({ at: c.at, kind: 'status', text: `finding ${c.to_status} by ${c.actor}: ${c.reason}`, finding_id: c.finding_id, actor: c.actor })
    for (const a of alerts) {
      if (a.kind !== 'finding' || (a.status !== 'delivered' && a.status !== 'pending' && a.status !== 'sending')) continue
      const where = a.channel === 'slack' ? `Slack ${a.destination}` : a.channel === 'email' ? `mail to ${a.destination}` : 'the log'
      entries.push({ at: a.delivered_at ?? a.created_at, kind: 'action', text: `alerted to ${where}${a.status === 'pending' || a.status === 'sending' ? ' (not delivered yet)' : ''}`, finding_id: a.finding_id, actor: 'keywatch' })
    }
    for (const a of actions) {
      entries.push({ at: a.requested_at, kind: 'action', text: `${a.command} of ${a.key_prefix} requested by ${a.requested_by}: ${a.status}${a.status_detail ? ` (${a.status_detail})` : ''}`, finding_id: a.finding_id, actor: a.requested_by })
      if (a.confirmed_at) entries.push({ at: a.confirmed_at, kind: 'action', text: `${a.command} of ${a.key_prefix} confirmed by the key service`, finding_id: a.finding_id, actor: 'key service' })
    }
    entries.push(...links)
    return entries.sort((a, b) => a.at.localeCompare(b.at) || order(a.kind) - order(b.kind))
  }

  /** Lifecycle changes and reveals of the incident's keys by its users, from a window before it opened to its last finding. */
  private async subjectEvents(incident: Incident): Promise<TimelineEntry[]> {
    const keys = incident.subjects.filter((s) => s.startsWith('key:')).map((s) => s.slice(4))
    const users = incident.subjects.filter((s) => s.startsWith('user:')).map((s) => s.slice(5))
    if (!keys.length && !users.length) return []
    const params = { account: incident.account_id, keys, users, from: chTime(msOf(incident.opened_at) - this.windowHours * 3_600_000), to: chTime(msOf(incident.last_finding_at) + 1) }
    const rows = await queryRows<{ at: string; text: string; actor: string }>(
      this.client,
      `SELECT toString(occurred_at) AS at, concat(ifNull(actor_id, actor_type), ' ', action, ' ', key_id) AS text, ifNull(actor_id, actor_type) AS actor FROM key_lifecycle
        WHERE account_id = {account:String} AND occurred_at >= {from:DateTime64(3, 'UTC')} AND occurred_at <= {to:DateTime64(3, 'UTC')}
          AND (key_id IN {keys:Array(String)} OR actor_id IN {users:Array(String)})
       UNION ALL
       SELECT toString(occurred_at), concat(ifNull(user_id, ''), ' ', action, if(ifNull(key_id, '') = '', '', concat(' ', key_id)), ' from ', ip, if(country IS NULL, '', concat(' (', country, ')'))), ifNull(user_id, '')
        FROM auth_events
        WHERE account_id = {account:String} AND occurred_at >= {from:DateTime64(3, 'UTC')} AND occurred_at <= {to:DateTime64(3, 'UTC')}
          AND (user_id IN {users:Array(String)} OR key_id IN {keys:Array(String)})
          AND action IN ('apikey.revealed', 'login.succeeded', 'password.changed', 'member.role_changed', 'member.invited', 'session.revoked')
       ORDER BY 1 LIMIT 200`,
      params,
    )
    return rows.map((r) => ({ at: r.at, kind: 'link' as const, text: r.text, actor: r.actor }))
  }

  private async withStatus(incidents: Incident[]): Promise<Incident[]> {
    if (!incidents.length) return []
    const active = await queryRows<{ incident_id: string; active: number }>(
      this.client,
      `SELECT m.incident_id AS incident_id, countIf(f.status IN ('open', 'acknowledged')) AS active
       FROM (SELECT incident_id, finding_id FROM incident_findings WHERE incident_id IN {ids:Array(String)}) AS m
       LEFT JOIN (SELECT finding_id, status FROM findings FINAL WHERE finding_id IN (SELECT finding_id FROM incident_findings WHERE incident_id IN {ids:Array(String)})) AS f
         ON m.finding_id = f.finding_id
       GROUP BY m.incident_id`,
      { ids: incidents.map((i) => i.incident_id) },
    )
    const n = new Map(active.map((a) => [a.incident_id, Number(a.active)]))
    return incidents.map((i) => ({ ...i, status: (n.get(i.incident_id) ?? 0) > 0 ? 'open' : 'resolved' }))
  }

  private version(): number {
    this.lastVersion = Math.max(this.lastVersion + 1, this.now() * 1000)
    return this.lastVersion
  }
}

const order = (kind: TimelineEntry['kind']) => ({ link: 0, finding: 1, action: 2, status: 3 })[kind]
