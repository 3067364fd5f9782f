// The audit chain with several instances: one writer, the leader. A follower's audited action (an API call served
// there) goes to the leader through the control topic and is appended there, with `origin` in its detail (which
// instance, and the message id the leader uses to skip a message it appended before a failover). The leader's own
// entries are appended directly; one that meets a step-down on the way is forwarded instead. Nothing is dropped.
import type { AuditEntry } from '../audit/audit-log.ts'
import { queryRows, type ClickHouseClient } from '../clickhouse/client.ts'
import { AuditTrail, NotChainWriterError, type AuditTrailOptions } from '../audit/trail.ts'
import type { ControlMessage, Leadership } from './leadership.ts'
import { chTime } from '../clickhouse/time.ts'

export class ClusterAuditTrail extends AuditTrail {
  constructor(
    private readonly db: ClickHouseClient,
    private readonly leadership: Leadership,
    options: AuditTrailOptions = {},
  ) {
    super(db, Date.now, { ...options, writerFence: () => leadership.isLeader() })
  }

  override async record(entry: AuditEntry, at?: number): Promise<void> {
    if (this.leadership.isLeader()) {
      try {
        return await super.record(entry, at)
      } catch (err) {
        if (!(err instanceof NotChainWriterError)) throw err
      }
    }
    await this.leadership.toLeader({ kind: 'audit', entry })
  }

  /** On the leader: followers' entries, in the order they were sent, each once. */
  async appendForwarded(messages: ControlMessage[]): Promise<void> {
    // A producer's retry can put a message in the topic twice, often in the same batch: the first copy counts.
    const byId = new Map<string, AuditMessage>()
    for (const m of messages) if (m.kind === 'audit' && !byId.has(m.id)) byId.set(m.id, m)
    const audits = [...byId.values()]
    if (!audits.length) return
    const since = Math.min(...audits.map((m) => m.at))
    const seen = new Set(
      (
        await queryRows<{ id: string }>(
          this.db,
          `SELECT JSONExtractString(detail, 'origin', 'id') AS id FROM audit_trail
           WHERE at >= {since:DateTime64(3, 'UTC')} AND JSONExtractString(detail, 'origin', 'id') IN {ids:Array(String)}`,
          { since: chTime(since), ids: audits.map((m) => m.id) },
        )
      ).map((r) => r.id),
    )
    const fresh = audits.filter((m) => !seen.has(m.id))
    // Appended with the leader's fence: if it stepped down meanwhile this throws, nothing is committed, and the next
    // leader handles the same messages. Settled, not raced: the handler returns (and the batch may be handed out
    // again) only once none of its entries can still be appended.
    const outcomes = await Promise.allSettled(fresh.map((m) => super.record({ ...m.entry, detail: { ...m.entry.detail, origin: { instance: m.from, id: m.id } } }, m.at)))
    const failed = outcomes.find((o) => o.status === 'rejected')
    if (failed) throw failed.reason
  }
}

type AuditMessage = Extract<ControlMessage, { kind: 'audit' }>
