// The actions table: every revoke or reset keywatch decided, sent, was refused or could not send, with its state
// until the key service confirms it and the watch proves (or disproves) that it took effect.
import { createHash, randomUUID } from 'node:crypto'
import { queryRows, type ClickHouseClient } from '../clickhouse/client.ts'
import { chTime } from '../clickhouse/time.ts'

export type ActionStatus =
  | 'dry_run' // decided, not sent: the policy is in dry-run mode
  | 'paused' // decided, not sent: the kill switch is on
  | 'blocked' // decided, not sent: a guard rail stopped it
  | 'skipped' // nothing to do: the key is already revoked or expired, or unknown
  | 'refused' // a person's request that keywatch refused (the key is in use)
  | 'requested' // sent; waiting for the key service to confirm
  | 'confirmed' // the key service confirmed it
  | 'failed' // the key service refused it or could not be reached
  | 'not_effective' // confirmed, but the key was accepted after the cache grace period
  | 'awaiting_approval' // decided, not sent: a guard rail stopped it, or its policy rule asks a person first
  | 'rejected' // a person rejected the automatic action
  | 'expired' // nobody approved or rejected it in time

export interface Action {
  action_id: string
  command_id: string
  command: 'revoke' | 'reset'
  account_id: string
  key_id: string
  key_prefix: string
  finding_id: string
  policy: string
  requested_by: string
  reason: string
  incident: boolean
  forced: boolean
  transport: 'http' | 'kafka' | 'none'
  status: ActionStatus
  status_detail: string
  requested_at: string
  confirmed_at: string | null
  confirmed_by: '' | 'http' | 'lifecycle'
  effective_at: string | null
  updated_at: string
  /** An awaiting_approval action expires then. */
  expires_at: string | null
  decided_by: string
  decided_at: string | null
  decision_reason: string
}

export interface ActionFilter {
  account_id?: string
  key_id?: string
  status?: ActionStatus
  since?: Date
  limit?: number
}

const SELECT_ACTION = `SELECT action_id, toString(command_id) AS command_id, command, account_id, key_id, key_prefix, finding_id, policy,
  requested_by, reason, incident, forced, transport, status, status_detail, toString(requested_at) AS requested_at,
  if(confirmed_at IS NULL, NULL, toString(confirmed_at)) AS confirmed_at, confirmed_by,
  if(effective_at IS NULL, NULL, toString(effective_at)) AS effective_at, toString(updated_at) AS updated_at,
  if(expires_at IS NULL, NULL, toString(expires_at)) AS expires_at, decided_by, if(decided_at IS NULL, NULL, toString(decided_at)) AS decided_at, decision_reason`

export class ActionStore {
  private lastVersion = 0

  constructor(private readonly client: ClickHouseClient) {}

  /** A new action, not yet written. */
  draft(fields: Omit<Action, 'action_id' | 'command_id' | 'confirmed_at' | 'confirmed_by' | 'effective_at' | 'updated_at' | 'requested_at' | 'expires_at' | 'decided_by' | 'decided_at' | 'decision_reason'> & { requested_at?: Date; command_id?: string }): Action {
    const at = chTime((fields.requested_at ?? new Date()).getTime())
    return { ...fields, action_id: `act_${randomUUID().replaceAll('-', '').slice(0, 24)}`, command_id: fields.command_id ?? randomUUID(), requested_at: at, confirmed_at: null, confirmed_by: '', effective_at: null, updated_at: at, expires_at: null, decided_by: '', decided_at: null, decision_reason: '' }
  }

  async write(actions: Action[]): Promise<void> {
    if (!actions.length) return
    const now = chTime(Date.now())
    await this.client.insert({ table: 'actions', format: 'JSONEachRow', values: actions.map((a) => ({ ...a, updated_at: now, version: this.version() })) })
  }

  async get(actionId: string): Promise<Action | undefined> {
    return (await this.select('WHERE action_id = {id:String}', { id: actionId }))[0]
  }

  async list(filter: ActionFilter = {}): Promise<Action[]> {
    return this.select(
      `WHERE ({account:String} = '' OR account_id = {account:String}) AND ({key:String} = '' OR key_id = {key:String})
         AND ({status:String} = '' OR status = {status:String}) AND requested_at >= {since:DateTime64(3, 'UTC')}`,
      { account: filter.account_id ?? '', key: filter.key_id ?? '', status: filter.status ?? '', since: chTime(filter.since?.getTime() ?? 0), limit: filter.limit ?? 1000 },
      'ORDER BY requested_at DESC, action_id LIMIT {limit:UInt32}',
    )
  }

  /** The actions already taken on these findings (any status), latest first. */
  async forFindings(findingIds: string[]): Promise<Action[]> {
    if (!findingIds.length) return []
    return this.select('WHERE finding_id IN {ids:Array(String)}', { ids: findingIds }, 'ORDER BY requested_at DESC')
  }

  /** Automatic leak actions on these keys not linked to a finding yet (decided as the report arrived). */
  async unlinkedAutomatic(keyIds: string[], since: Date): Promise<Action[]> {
    if (!keyIds.length) return []
    return this.select(
      "WHERE key_id IN {keys:Array(String)} AND finding_id = '' AND requested_by = 'auto:leak.public_report' AND requested_at >= {since:DateTime64(3, 'UTC')}",
      { keys: keyIds, since: chTime(since.getTime()) },
      'ORDER BY requested_at',
    )
  }

  async withStatus(statuses: ActionStatus[], since: Date): Promise<Action[]> {
    return this.select("WHERE status IN {statuses:Array(String)} AND requested_at >= {since:DateTime64(3, 'UTC')}", { statuses, since: chTime(since.getTime()) }, 'ORDER BY requested_at')
  }

  /** Filters run on the stored columns; the outer select formats them (its aliases would shadow them). */
  private async select(where: string, params: Record<string, unknown>, orderBy = ''): Promise<Action[]> {
    const rows = await queryRows<Action>(this.client, `${SELECT_ACTION} FROM (SELECT * FROM actions FINAL ${where}) ${orderBy}`, params)
    return rows.map((r) => ({ ...r, incident: Boolean(r.incident), forced: Boolean(r.forced) }))
  }

  /** Strictly increasing across this process: the latest write of an action wins under FINAL. */
  private version(): number {
    this.lastVersion = Math.max(this.lastVersion + 1, Date.now() * 1000)
    return this.lastVersion
  }
}

/**
 * A command id that whoever decides the same thing derives alike (a UUID, version 8, from SHA-256): a leader that
 * died after sending a command and before recording it is followed by one that sends the same id again, which the key
 * service (Idempotency-Key) and the command topic's consumers take as the same command.
 */
export function derivedCommandId(...parts: string[]): string {
  const h = createHash('sha256').update(parts.join('\u0000')).digest('hex')
  const variant = ((parseInt(h[16]!, 16) & 0x3) | 0x8).toString(16)
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-8${h.slice(13, 16)}-${variant}${h.slice(17, 20)}-${h.slice(20, 32)}`
}
