// The audit trail as a hash chain in ClickHouse: record n holds sha256(canonical(record n) + hash(n-1)), from a fixed
// genesis. Changing a record breaks its hash; deleting one leaves a gap in seq and breaks the next record's link;
// reordering breaks the links. Records are appended by one writer per process, in batches (seq is gapless).
//
// An unkeyed chain alone does not stop someone who can write to ClickHouse from changing a record and recomputing
// every hash after it. So every few seconds of activity the head (seq, hash) is signed with keywatch's Ed25519 key
// (a file on keywatch's host, never in ClickHouse) into `audit_checkpoints`: a rewrite is caught at the first signed
// checkpoint after it, and a deleted tail by a checkpoint beyond the end. Only records after the last checkpoint
// are protected by the chain alone; `verify` says how many.
//
// Checkpoints in ClickHouse alone can be deleted by the same writer (TRUNCATE audit_checkpoints, then rewrite). So
// each checkpoint is also appended to the anchor file (AUDIT_ANCHOR_FILE, outside the data directory), and export
// manifests carry the head too: `verify` checks the chain against every anchor, reports checkpoints the table no
// longer has, and fails when records older than a few checkpoint intervals are covered by no checkpoint at all.
import { createHash, createPublicKey, sign, verify as verifySignature, type KeyObject } from 'node:crypto'
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { queryRows, type ClickHouseClient } from '../clickhouse/client.ts'
import { chTime } from '../clickhouse/time.ts'
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

export interface Checkpoint {
  seq: number
  hash: string
  at: string
  key_fingerprint: string
  signature: string
}

export type Problem = 'changed' | 'deleted' | 'reordered' | 'forged' | 'checkpoints_removed' | 'unsigned'

export type VerifyResult =
  | {
      ok: true
      records: number
      head: string
      /** The last record covered by a checkpoint signed with the trusted key (0: none). */
      signed_through: number
      /** Records after it, protected by the hash chain only until the next checkpoint. */
      unsigned: number
      /** Checkpoints signed with another key (an earlier signing key): not checked. */
      unverified_checkpoints: number
      /** Anchors kept outside ClickHouse that were checked (anchor file lines, manifests). */
      anchors: number
    }
  | { ok: false; records: number; seq: number; problem: Problem; message: string }

/** A (seq, hash) of the chain kept outside ClickHouse, e.g. the `audit_head` of a signed export manifest. */
export interface Anchor {
  seq: number
  hash: string
  /** Where it comes from, for the message: `manifest exp_…`. */
  source?: string
}

export interface VerifyOptions {
  /** The public key checkpoints must be signed with (default: this trail's signing key). */
  trustedKey?: KeyObject | string
  /** Heads recorded elsewhere: the chain must still have each, with the same hash. */
  anchors?: Anchor[]
  /** The moment "now" for the age of unsigned records (tests). */
  now?: number
}

export interface AuditTrailOptions {
  /** The Ed25519 key that signs checkpoints (keywatch's export signing key). Without it no checkpoints are written. */
  signingKey?: () => KeyObject
  /** How long after an append the head is signed; appends in between share one checkpoint. */
  checkpointEveryMs?: number
  /** Several instances (issue 16): appends and checkpoints go only while this says the process is the one writer. */
  writerFence?: () => boolean
  /** Where every checkpoint is appended too (one JSON line each), outside ClickHouse; verify reads it back. */
  anchorFile?: string
  /** Records this much older than the newest checkpoint may go unsigned (default: 4 checkpoint intervals). */
  unsignedGraceMs?: number
  /** More anchors kept outside ClickHouse, read at each verify (the audit heads of signed export manifests). */
  moreAnchors?: () => Anchor[]
}

/** Several instances (issue 16): this process is not the chain's writer (any more); the entries were not appended. */
export class NotChainWriterError extends Error {
  constructor() {
    super('not the audit chain writer (another instance leads)')
    this.name = 'NotChainWriterError'
  }
}

/** The checkpoints in an anchor file, each with its line number; unreadable lines are reported, not skipped. */
export function readAnchorFile(path: string): { checkpoints: (Checkpoint & { line: number })[]; bad: number[] } {
  if (!existsSync(path)) return { checkpoints: [], bad: [] }
  const checkpoints: (Checkpoint & { line: number })[] = []
  const bad: number[] = []
  readFileSync(path, 'utf8')
    .split('\n')
    .forEach((text, i) => {
      if (!text.trim()) return
      try {
        const c = JSON.parse(text) as Checkpoint
        if (typeof c.seq !== 'number' || typeof c.hash !== 'string' || typeof c.signature !== 'string') throw new Error('not a checkpoint')
        checkpoints.push({ ...c, line: i + 1 })
      } catch {
        bad.push(i + 1)
      }
    })
  return { checkpoints, bad }
}

/** The hash of a record: over every field but the hash itself, in a fixed order, chained to the previous hash. */
export function recordHash(r: Omit<AuditRecord, 'hash'>): string {
  const canonical = JSON.stringify([r.seq, r.at, r.actor, r.action, r.target, r.request_id, r.outcome, r.detail, r.prev_hash])
  return createHash('sha256').update(canonical).digest('hex')
}

/** The bytes a checkpoint's signature covers. */
export function checkpointBytes(c: Pick<Checkpoint, 'seq' | 'hash' | 'at'>): Buffer {
  return Buffer.from(`keywatch-audit-checkpoint:v1\n${c.seq}\n${c.hash}\n${c.at}`)
}

export function keyFingerprint(key: KeyObject): string {
  const publicKey = key.type === 'private' ? createPublicKey(key) : key
  return createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest('hex')
}

const SELECT_RECORDS = `SELECT seq, toString(at) AS at, actor, action, target, request_id, outcome, detail, prev_hash, hash
  FROM audit_trail WHERE seq >= {from:UInt64} ORDER BY seq LIMIT {page:UInt32}`
const SELECT_CHECKPOINTS = `SELECT seq, hash, toString(at) AS at, key_fingerprint, signature
  FROM audit_checkpoints WHERE seq >= {from:UInt64} AND seq <= {to:UInt64} ORDER BY seq`

export class AuditTrail implements AuditLog {
  private head?: { seq: number; hash: string }
  /** Entries waiting for the next append; each append writes all that waited, chained in order, in one insert. */
  private pending: { entry: AuditEntry; at: number; resolve: () => void; reject: (err: unknown) => void }[] = []
  private readonly fenced = () => this.options.writerFence !== undefined && !this.options.writerFence()
  private appending = false
  private lastSignedSeq?: number
  private checkpointTimer?: NodeJS.Timeout
  private checkpointing?: Promise<void>

  constructor(
    private readonly client: ClickHouseClient,
    private readonly now: () => number = Date.now,
    private readonly options: AuditTrailOptions = {},
  ) {}

  record(entry: AuditEntry, at: number = this.now()): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ entry, at, resolve, reject })
      if (!this.appending) void this.append()
    })
  }

  private async append(): Promise<void> {
    this.appending = true
    while (this.pending.length) {
      const batch = this.pending.splice(0)
      try {
        if (this.fenced()) throw new NotChainWriterError()
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
        if (this.fenced()) throw new NotChainWriterError()
        await this.client.insert({ table: 'audit_trail', format: 'JSONEachRow', values: records })
        this.head = { seq, hash }
        for (const b of batch) b.resolve()
        this.scheduleCheckpoint()
      } catch (err) {
        // The insert may or may not have landed: the head is read again before the next append.
        this.head = undefined
        for (const b of batch) b.reject(err)
      }
    }
    this.appending = false
  }

  private scheduleCheckpoint(): void {
    if (!this.options.signingKey || this.checkpointTimer) return
    this.checkpointTimer = setTimeout(() => {
      this.checkpointTimer = undefined
      void this.checkpoint().catch(() => {
        // Not fatal: the next append schedules another, which covers these records too.
      })
    }, this.options.checkpointEveryMs ?? 5_000)
    this.checkpointTimer.unref()
  }

  /**
   * Signs the current head now (tests, and before a process exits); a no-op when it is signed already. The head is
   * the one this process wrote (or read at its first append), so the records after the previous checkpoint are
   * signed as they are in ClickHouse at that moment.
   */
  async checkpoint(): Promise<void> {
    if (!this.options.signingKey) return
    clearTimeout(this.checkpointTimer)
    this.checkpointTimer = undefined
    await this.checkpointing
    this.checkpointing = this.writeCheckpoint()
    return this.checkpointing
  }

  private async writeCheckpoint(): Promise<void> {
    const head = this.head
    if (!head || head.seq === 0 || this.fenced()) return
    this.lastSignedSeq ??= await this.readLastSignedSeq()
    if (head.seq <= this.lastSignedSeq) return
    const key = this.options.signingKey!()
    const base = { seq: head.seq, hash: head.hash, at: chTime(this.now()) }
    const row: Checkpoint = { ...base, key_fingerprint: keyFingerprint(key), signature: sign(null, checkpointBytes(base), key).toString('base64') }
    await this.client.insert({ table: 'audit_checkpoints', format: 'JSONEachRow', values: [row] })
    if (this.options.anchorFile) {
      mkdirSync(dirname(this.options.anchorFile), { recursive: true })
      appendFileSync(this.options.anchorFile, JSON.stringify(row) + '\n', { mode: 0o600 })
    }
    this.lastSignedSeq = head.seq
  }

  /**
   * Walks the whole chain a page at a time (flat memory) and reports the first problem: a record whose hash does
   * not match its content, a gap, a record out of place, or a signed checkpoint the chain no longer matches.
   * Checkpoints are checked with `trustedKey` (default: this trail's signing key; without any, not checked).
   */
  async verify(options: VerifyOptions = {}): Promise<VerifyResult> {
    const { trustedKey } = options
    const key = trustedKey ? (typeof trustedKey === 'string' ? createPublicKey(trustedKey) : trustedKey) : this.options.signingKey?.()
    const trusted = key && { publicKey: key.type === 'private' ? createPublicKey(key) : key, fingerprint: keyFingerprint(key) }
    // The anchor file: each line a checkpoint, signed like the table's; one the key did not sign is a forgery.
    const fileAnchors: (Checkpoint & { line: number })[] = []
    const file = this.options.anchorFile
    if (file && trusted) {
      const { checkpoints, bad } = readAnchorFile(file)
      if (bad.length) return { ok: false, records: 0, seq: 0, problem: 'forged', message: `${file}: line${bad.length > 1 ? 's' : ''} ${bad.slice(0, 5).join(', ')} ${bad.length > 1 ? 'are' : 'is'} not a checkpoint` }
      for (const c of checkpoints) {
        if (c.key_fingerprint !== trusted.fingerprint) continue
        if (!verifySignature(null, checkpointBytes(c), trusted.publicKey, Buffer.from(c.signature, 'base64'))) {
          return { ok: false, records: 0, seq: c.seq, problem: 'forged', message: `${file} line ${c.line}: the checkpoint of record ${c.seq} is not signed by keywatch's key` }
        }
        fileAnchors.push(c)
      }
    }
    const anchors = [...(options.anchors ?? []), ...(trusted ? (this.options.moreAnchors?.() ?? []) : []), ...fileAnchors.map((c) => ({ seq: c.seq, hash: c.hash, source: `the anchor file (checkpoint signed at ${c.at})` }))].sort((a, b) => a.seq - b.seq)
    const anchorCount = anchors.length
    const walked = await this.walk(anchors, trusted)
    // Checkpoints the anchor file has and the table has not: removed (perhaps to hide a rewrite).
    const missing = fileAnchors.length ? await this.missingCheckpoints(fileAnchors) : []
    const missingText = missing.length
      ? `${missing.length} signed checkpoint${missing.length > 1 ? 's' : ''} recorded in ${file} ${missing.length > 1 ? 'are' : 'is'} missing from audit_checkpoints (record${missing.length > 1 ? 's' : ''} ${summarize(missing.map((m) => m.seq))}): removed from ClickHouse`
      : ''
    if (!walked.ok) return missingText ? { ...walked, message: `${walked.message}; and ${missingText}` } : walked
    if (missingText) return { ok: false, records: walked.records, seq: missing[0]!.seq, problem: 'checkpoints_removed', message: missingText }
    if (trusted && walked.unsigned > 0) {
      // Unsigned records are normal for a few seconds; older ones mean checkpoints were removed or never written.
      const [first] = await queryRows<{ at: string }>(this.client, 'SELECT toString(at) AS at FROM audit_trail WHERE seq = {s:UInt64}', { s: walked.signed_through + 1 })
      const grace = this.options.unsignedGraceMs ?? 4 * (this.options.checkpointEveryMs ?? 5_000)
      const firstAt = first ? Date.parse(`${first.at.replace(' ', 'T')}Z`) : NaN
      if (firstAt < (options.now ?? Date.now()) - grace) {
        return {
          ok: false,
          records: walked.signed_through,
          seq: walked.signed_through + 1,
          problem: 'unsigned',
          message: `records ${walked.signed_through + 1}-${walked.records} (the first written at ${first!.at}) are covered by no signed checkpoint, though keywatch signs within seconds: checkpoints were removed, or these records were added by someone else`,
        }
      }
    }
    return { ...walked, anchors: anchorCount }
  }

  /** The anchor file's checkpoints that audit_checkpoints no longer holds. */
  private async missingCheckpoints(fileAnchors: Checkpoint[]): Promise<Checkpoint[]> {
    const present = new Set(
      (await queryRows<{ seq: number; signature: string }>(this.client, 'SELECT seq, signature FROM audit_checkpoints WHERE seq IN {seqs:Array(UInt64)}', { seqs: fileAnchors.map((c) => c.seq) })).map((r) => `${r.seq}:${r.signature}`),
    )
    return fileAnchors.filter((c) => !present.has(`${c.seq}:${c.signature}`))
  }

  private async walk(anchors: Anchor[], trusted: { publicKey: KeyObject; fingerprint: string } | undefined): Promise<VerifyResult> {
    let expectedSeq = 1
    let prev = GENESIS
    let signedThrough = 0
    let unverified = 0
    for (;;) {
      const page = await queryRows<AuditRecord>(this.client, SELECT_RECORDS, { from: expectedSeq, page: PAGE })
      const last = page.length ? Number(page[page.length - 1]!.seq) : expectedSeq
      const checkpoints = trusted ? await queryRows<Checkpoint>(this.client, SELECT_CHECKPOINTS, { from: expectedSeq, to: last }) : []
      let c = 0
      for (const raw of page) {
        const r = { ...raw, seq: Number(raw.seq) }
        const problem = (await this.linkProblem(r, expectedSeq, prev)) ?? undefined
        if (problem) return { ok: false, records: expectedSeq - 1, ...problem }
        prev = r.hash
        expectedSeq++
        for (; anchors[0] && anchors[0].seq <= r.seq; anchors.shift()) {
          const a = anchors[0]
          if (a.seq === r.seq && a.hash !== r.hash) {
            return { ok: false, records: r.seq - 1, seq: r.seq, problem: 'changed', message: `records up to ${r.seq} were rewritten: ${a.source ?? 'an anchor'} recorded a different hash for record ${r.seq}` }
          }
        }
        for (; c < checkpoints.length && Number(checkpoints[c]!.seq) <= r.seq; c++) {
          const cp = { ...checkpoints[c]!, seq: Number(checkpoints[c]!.seq) }
          if (cp.key_fingerprint !== trusted!.fingerprint) {
            unverified++
            continue
          }
          if (!verifySignature(null, checkpointBytes(cp), trusted!.publicKey, Buffer.from(cp.signature, 'base64'))) {
            return { ok: false, records: r.seq, seq: cp.seq, problem: 'forged', message: `the checkpoint at record ${cp.seq} (${cp.at}) carries keywatch's key fingerprint but not its signature: it was forged` }
          }
          if (cp.seq === r.seq && cp.hash !== r.hash) {
            return {
              ok: false,
              records: signedThrough,
              seq: signedThrough + 1,
              problem: 'changed',
              message: `records ${signedThrough + 1}-${r.seq} were rewritten after keywatch signed them at ${cp.at}: the chain's hash at record ${r.seq} is not the signed one (hashes recomputed to hide a change)`,
            }
          }
          if (cp.seq === r.seq) signedThrough = r.seq
        }
      }
      if (page.length < PAGE && anchors[0]) {
        const a = anchors[anchors.length - 1]!
        return { ok: false, records: expectedSeq - 1, seq: expectedSeq, problem: 'deleted', message: `records ${expectedSeq}-${a.seq} are missing: the trail ends at record ${expectedSeq - 1}, but ${a.source ?? 'an anchor'} recorded record ${a.seq}` }
      }
      if (page.length < PAGE) return this.endOfChain(expectedSeq - 1, prev, signedThrough, unverified, trusted?.fingerprint)
    }
  }

  /** Why record `r` does not belong where it is, if it does not. */
  private async linkProblem(r: AuditRecord, expectedSeq: number, prev: string): Promise<{ seq: number; problem: Problem; message: string } | undefined> {
    if (r.seq > expectedSeq) {
      return { seq: expectedSeq, problem: 'deleted', message: `record ${expectedSeq}${r.seq > expectedSeq + 1 ? `-${r.seq - 1}` : ''} is missing (the next present is ${r.seq})` }
    }
    if (r.seq < expectedSeq) return { seq: r.seq, problem: 'reordered', message: `record ${r.seq} appears twice` }
    const { hash, ...rest } = r
    const intact = recordHash(rest) === hash
    if (r.prev_hash !== prev) {
      // Which record was this one written after? If another, records were moved.
      const [after] = await queryRows<{ seq: number }>(this.client, 'SELECT seq FROM audit_trail WHERE hash = {h:String} LIMIT 1', { h: r.prev_hash })
      if (after && Number(after.seq) !== r.seq - 1) {
        return { seq: r.seq, problem: 'reordered', message: `record ${r.seq} (${r.action} by ${r.actor} at ${r.at}) is out of place: it was written right after the record now numbered ${after.seq}` }
      }
      if (intact) {
        return { seq: r.seq - 1, problem: 'changed', message: `record ${r.seq - 1} was changed and its hash recomputed: record ${r.seq} was chained to a different hash` }
      }
    }
    if (!intact) return { seq: r.seq, problem: 'changed', message: `record ${r.seq} (${r.action} by ${r.actor} at ${r.at}) was changed: its hash does not match its content` }
    return undefined
  }

  private async endOfChain(records: number, head: string, signedThrough: number, unverified: number, fingerprint: string | undefined): Promise<VerifyResult> {
    if (fingerprint) {
      // A checkpoint beyond the last record: the end of the trail was cut off.
      const [beyond] = await queryRows<Checkpoint>(
        this.client,
        'SELECT seq, toString(at) AS at FROM audit_checkpoints WHERE seq > {n:UInt64} AND key_fingerprint = {fp:String} ORDER BY seq DESC LIMIT 1',
        { n: records, fp: fingerprint },
      )
      if (beyond) {
        return { ok: false, records, seq: records + 1, problem: 'deleted', message: `records ${records + 1}-${beyond.seq} are missing: the trail ends at record ${records}, but keywatch signed record ${beyond.seq} at ${beyond.at}` }
      }
    }
    return { ok: true, records, head, signed_through: signedThrough, unsigned: records - signedThrough, unverified_checkpoints: unverified, anchors: 0 }
  }

  private async readHead(): Promise<{ seq: number; hash: string }> {
    const [row] = await queryRows<{ seq: number; hash: string }>(this.client, 'SELECT seq, hash FROM audit_trail ORDER BY seq DESC LIMIT 1')
    return row ? { seq: Number(row.seq), hash: row.hash } : { seq: 0, hash: GENESIS }
  }

  private async readLastSignedSeq(): Promise<number> {
    const [row] = await queryRows<{ seq: number }>(this.client, 'SELECT max(seq) AS seq FROM audit_checkpoints')
    return Number(row?.seq ?? 0)
  }

  /** Several instances (issue 16): forget the cached head, read again before the next append (a new leader's first). */
  resync(): void {
    this.head = undefined
    this.lastSignedSeq = undefined
  }

  /** The current head (seq, hash), for anchoring the chain outside ClickHouse (export manifests). */
  async currentHead(): Promise<{ seq: number; hash: string }> {
    return this.head ?? (await this.readHead())
  }
}

/** 3, 4, 5, 9 -> "3-5, 9" (the first ten runs). */
function summarize(seqs: number[]): string {
  const sorted = [...seqs].sort((a, b) => a - b)
  const runs: string[] = []
  for (let i = 0; i < sorted.length; ) {
    let j = i
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j]! + 1) j++
    runs.push(i === j ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`)
    i = j + 1
  }
  return runs.slice(0, 10).join(', ') + (runs.length > 10 ? ', …' : '')
}
