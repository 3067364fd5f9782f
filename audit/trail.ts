// The audit trail as a hash chain in ClickHouse: record n holds sha256(canonical(record n) + hash(n-1)), from a fixed
// genesis. Changing a record breaks its hash; deleting one leaves a gap in seq and breaks the next record's link;
// reordering breaks the links. Records are appended by one writer per process, in batches (seq is gapless).
import { createHash } from 'node:crypto'
import { queryRows, type ClickHouseClient } from '../clickhouse/client.ts'
import { chTime } from '../ingest/rows.ts'
import type { AuditEntry, AuditLog } from './audit-log.ts'

export const GENESIS = '0'.repeat(64)
const PAGE = 50_000

export interface AuditRecord {
  seq: number
  at: string
  actor: string
  action: string
  target: string
  request_id: string
  outcome: string
  detail: string
  prev_hash: string
  hash: string
}

export type VerifyResult =
  | { ok: true; records: number; head: string }
  | { ok: false; records: number; seq: number; problem: 'changed' | 'deleted' | 'reordered'; message: string }

/** The hash of a record: over every field but the hash itself, in a fixed order, chained to the previous hash. */
export function recordHash(r: Omit<AuditRecord, 'hash'>): string {
  const canonical = JSON.stringify([r.seq, r.at, r.actor, r.action, r.target, r.request_id, r.outcome, r.detail, r.prev_hash])
  return createHash('sha256').update(canonical).digest('hex')
}

export class AuditTrail implements AuditLog {
  private head?: { seq: number; hash: string }
  /** Entries waiting for the next append; each append writes all that waited, chained in order, in one insert. */
  private pending: { entry: AuditEntry; at: number; resolve: () => void; reject: (err: unknown) => void }[] = []
  private appending = false

  constructor(
    private readonly client: ClickHouseClient,
    private readonly now: () => number = Date.now,
  ) {}

  record(entry: AuditEntry): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ entry, at: this.now(), resolve, reject })
      if (!this.appending) void this.append()
    })
  }

  private async append(): Promise<void> {
    this.appending = true
    while (this.pending.length) {
      const batch = this.pending.splice(0)
      try {
        this.head ??= await this.readHead()
        let { seq, hash } = this.head
        const records = batch.map(({ entry, at }) => {
          const base = {
            seq: ++seq,
            at: chTime(at),
            actor: entry.actor,
            action: entry.action,
            target: entry.target,
            request_id: entry.request_id,
            outcome: entry.outcome,
            detail: JSON.stringify(entry.detail ?? {}),
            prev_hash: hash,
          }
          hash = recordHash(base)
          return { ...base, hash }
        })
        await this.client.insert({ table: 'audit_trail', format: 'JSONEachRow', values: records })
        this.head = { seq, hash }
        for (const b of batch) b.resolve()
      } catch (err) {
        // The insert may or may not have landed: the head is read again before the next append.
        this.head = undefined
        for (const b of batch) b.reject(err)
      }
    }
    this.appending = false
  }

  /** Walks the whole chain a page at a time (flat memory) and reports the first broken link. */
  async verify(): Promise<VerifyResult> {
    let expectedSeq = 1
    let prev = GENESIS
    for (;;) {
      const page = await queryRows<AuditRecord>(
        this.client,
        `SELECT seq, toString(at) AS at, actor, action, target, request_id, outcome, detail, prev_hash, hash
         FROM audit_trail WHERE seq >= {from:UInt64} ORDER BY seq LIMIT {page:UInt32}`,
        { from: expectedSeq, page: PAGE },
      )
      for (const raw of page) {
        const r = { ...raw, seq: Number(raw.seq) }
        if (r.seq !== expectedSeq) {
          return r.seq > expectedSeq
            ? { ok: false, records: expectedSeq - 1, seq: expectedSeq, problem: 'deleted', message: `record ${expectedSeq}${r.seq > expectedSeq + 1 ? `-${r.seq - 1}` : ''} is missing (the next present is ${r.seq})` }
            : { ok: false, records: expectedSeq - 1, seq: r.seq, problem: 'reordered', message: `record ${r.seq} appears twice` }
        }
        const { hash, ...rest } = r
        if (recordHash(rest) !== hash) return { ok: false, records: expectedSeq - 1, seq: r.seq, problem: 'changed', message: `record ${r.seq} (${r.action} by ${r.actor} at ${r.at}) was changed: its hash does not match its content` }
        if (r.prev_hash !== prev) return { ok: false, records: expectedSeq - 1, seq: r.seq, problem: 'reordered', message: `record ${r.seq} does not follow record ${r.seq - 1}: the chain was reordered or rewritten` }
        prev = hash
        expectedSeq++
      }
      if (page.length < PAGE) return { ok: true, records: expectedSeq - 1, head: prev }
    }
  }

  private async readHead(): Promise<{ seq: number; hash: string }> {
    const [row] = await queryRows<{ seq: number; hash: string }>(this.client, 'SELECT seq, hash FROM audit_trail ORDER BY seq DESC LIMIT 1')
    return row ? { seq: Number(row.seq), hash: row.hash } : { seq: 0, hash: GENESIS }
  }
}
