// The writer's duplicate decision without a round trip to the engine (issue 12): the ids of the most recent events
// stored, in memory, bounded, rebuilt from `event_ids` when first needed. It answers exactly for every event whose
// occurred_at is at or after its horizon; for an older one it has no answer and the writer asks the engine, as
// before. Only one writer may feed it: the embedded engine's data directory belongs to one process, so that process
// sees every insert (a ClickHouse server shared by several instances keeps the engine lookup, which runs there in
// parallel with the inserts anyway).
import type { ClickHouseClient } from '../clickhouse/client.ts'
import { chTime } from '../clickhouse/time.ts'

/** What the index knows of an id: stored (with the stored version's time and type), or maybe (ask the engine). */
export type IdAnswer = { stored: true; at: number; type: string } | { stored: false } | undefined

const MINUTE_MS = 60_000
// A slot's state: empty, maybe stored (an insert in doubt: ask the engine), or stored with type index state - STORED.
const EMPTY = 0
const MAYBE = 1
const STORED = 2
const LOAD_FACTOR = 0.75
/** The usual answer, shared: one object per lookup of 100,000 would be garbage to collect. */
const NOT_STORED: IdAnswer = Object.freeze({ stored: false })

/** Each ASCII character's value as a lowercase hex digit, or -1. */
const HEX_VALUE = new Int8Array(128).fill(-1)
for (let i = 0; i < 16; i++) HEX_VALUE['0123456789abcdef'.charCodeAt(i)] = i

/** Set by `hexDigits` when a character was not a lowercase hex digit. */
let notHex = 0

/**
 * `word` followed by the hex digits of id[from, to). A table and no branch per character: digits and letters come in
 * no order a branch could predict (3 times faster than comparing each character's range, on random UUIDs).
 */
function hexDigits(id: string, from: number, to: number, word: number): number {
  for (let i = from; i < to; i++) {
    const c = id.charCodeAt(i)
    const v = HEX_VALUE[c & 127]!
    notHex |= (v >> 31) | (c >> 7)
    word = (word << 4) | (v & 15)
  }
  return word
}

/**
 * The 128 bits of a UUID in its canonical text form (as decode leaves it: lowercase, hyphenated) into `out`, or
 * false when it is not one (never for a valid event; such an id is then simply not indexed).
 */
function uuidWords(id: string, out: Int32Array): boolean {
  if (id.length !== 36 || id.charCodeAt(8) !== 45 || id.charCodeAt(13) !== 45 || id.charCodeAt(18) !== 45 || id.charCodeAt(23) !== 45) return false
  notHex = 0
  out[0] = hexDigits(id, 0, 8, 0)
  out[1] = hexDigits(id, 14, 18, hexDigits(id, 9, 13, 0))
  out[2] = hexDigits(id, 24, 28, hexDigits(id, 19, 23, 0))
  out[3] = hexDigits(id, 28, 36, 0)
  return notHex === 0
}

/**
 * The ids in one open-addressing table of typed arrays (linear probing, backward-shift deletion): 16 bytes of UUID,
 * 8 of time and 1 of state per slot, about 33 bytes per id at its load factor. A `Map` of id strings cost about
 * 113 bytes per id, 113 MB at the default million, most of it strings and boxed numbers for the garbage collector
 * to walk.
 */
export class RecentIds {
  private readonly slots: number
  private readonly words: Int32Array
  private readonly atMs: Float64Array
  private readonly state: Uint8Array
  private count = 0
  /** How many ids per minute of occurred_at: the oldest minutes are evicted first, and the horizon moves past them. */
  private readonly minutes = new Map<number, number>()
  private readonly types: string[] = []
  /** Events older than this (ms) may be stored without the index knowing. */
  private horizonMs = -Infinity
  private loading?: Promise<void>
  private readonly key = new Int32Array(4)

  constructor(
    private readonly client: ClickHouseClient,
    /** How many ids it holds (about 33 bytes each). */
    readonly capacity: number,
  ) {
    this.slots = Math.max(16, Math.ceil(capacity / LOAD_FACTOR) + 1)
    this.words = new Int32Array(this.slots * 4)
    this.atMs = new Float64Array(this.slots)
    this.state = new Uint8Array(this.slots)
  }

  get size(): number {
    return this.count
  }

  get horizon(): number {
    return this.horizonMs
  }

  /** Loads the most recent stored ids once (after the startup repair has restored any missing ones). */
  ready(): Promise<void> {
    this.loading ??= this.load().catch((err) => {
      this.loading = undefined
      throw err
    })
    return this.loading
  }

  /** Forgets everything and loads again when next needed (after a repair restored ids behind its back). */
  reset(): void {
    this.state.fill(EMPTY)
    this.count = 0
    this.minutes.clear()
    this.horizonMs = -Infinity
    this.loading = undefined
  }

  /**
   * Whether an event is stored: `{stored: true, …}` or `{stored: false}` when the index is sure, `undefined` when
   * the engine must be asked (an event older than the horizon, or an id whose insert ended in doubt).
   */
  lookup(id: string, occurredAtMs: number): IdAnswer {
    if (!uuidWords(id, this.key)) return undefined
    const slot = this.find()
    if (slot >= 0) {
      const s = this.state[slot]!
      return s === MAYBE ? undefined : { stored: true, at: this.atMs[slot]!, type: this.types[s - STORED]! }
    }
    return occurredAtMs >= this.horizonMs ? NOT_STORED : undefined
  }

  /** Records ids the engine acknowledged (or that the engine said were stored): `rows[from..to)`. */
  stored(type: string, rows: readonly { eventId: string; occurredAtMs: number }[], from = 0, to = rows.length): void {
    const state = STORED + this.typeIndex(type)
    for (let i = from; i < to; i++) {
      const r = rows[i]!
      // Below the horizon the index keeps nothing: its answers there come from the engine anyway.
      if (r.occurredAtMs < this.horizonMs || !uuidWords(r.eventId, this.key)) continue
      const slot = this.find()
      if (slot < 0) this.add(r.occurredAtMs, state, -slot - 1)
      else if (this.state[slot] === MAYBE) {
        // the first stored version stays: a maybe becomes it, a stored one is kept
        this.moveMinute(this.atMs[slot]!, r.occurredAtMs)
        this.state[slot] = state
        this.atMs[slot] = r.occurredAtMs
      }
    }
    this.evict()
  }

  /**
   * An insert failed in a way that leaves its rows in doubt (a timeout may have landed): until the engine says,
   * these ids are asked of the engine.
   */
  inDoubt(rows: readonly { eventId: string; occurredAtMs: number }[]): void {
    for (const r of rows) {
      if (r.occurredAtMs < this.horizonMs || !uuidWords(r.eventId, this.key)) continue
      const slot = this.find()
      if (slot < 0) this.add(r.occurredAtMs, MAYBE, -slot - 1)
    }
    this.evict()
  }

  /** The engine answered for ids in doubt: what it found stored is known, the rest is known not stored. */
  settled(found: Map<string, { at: number; type: string }>, asked: readonly { eventId: string }[]): void {
    for (const { eventId } of asked) {
      if (!uuidWords(eventId, this.key)) continue
      const slot = this.find()
      if (slot < 0 || this.state[slot] !== MAYBE) continue
      const f = found.get(eventId)
      if (!f) this.remove(slot)
      else {
        this.moveMinute(this.atMs[slot]!, f.at)
        this.state[slot] = STORED + this.typeIndex(f.type)
        this.atMs[slot] = f.at
      }
    }
  }

  private typeIndex(type: string): number {
    let t = this.types.indexOf(type)
    if (t < 0) t = this.types.push(type) - 1
    return t
  }

  /** The key's home slot: its four words mixed (ids need not be random: UUIDv7 leads with a clock). */
  private home(w0: number, w1: number, w2: number, w3: number): number {
    let h = Math.imul(w0, 0x9e3779b1) ^ Math.imul(w1, 0x85ebca6b) ^ Math.imul(w2, 0xc2b2ae35) ^ Math.imul(w3, 0x27d4eb2f)
    h ^= h >>> 16
    h = Math.imul(h, 0x7feb352d)
    h ^= h >>> 15
    return (h >>> 0) % this.slots
  }

  /** The slot holding `this.key`; if none, -1 - the empty slot where it would go. */
  private find(): number {
    const k = this.key
    const words = this.words
    for (let slot = this.home(k[0]!, k[1]!, k[2]!, k[3]!); ; slot = slot + 1 === this.slots ? 0 : slot + 1) {
      if (this.state[slot] === EMPTY) return -1 - slot
      const o = slot * 4
      if (words[o] === k[0] && words[o + 1] === k[1] && words[o + 2] === k[2] && words[o + 3] === k[3]) return slot
    }
  }

  /** Adds `this.key` (known absent) in `slot`, the empty one `find` gave. Eviction keeps the table at most at its load factor. */
  private add(at: number, state: number, slot: number): void {
    const k = this.key
    const o = slot * 4
    this.words[o] = k[0]!
    this.words[o + 1] = k[1]!
    this.words[o + 2] = k[2]!
    this.words[o + 3] = k[3]!
    this.atMs[slot] = at
    this.state[slot] = state
    this.count++
    const minute = Math.floor(at / MINUTE_MS)
    this.minutes.set(minute, (this.minutes.get(minute) ?? 0) + 1)
    // The table has room for a third more than the capacity, for a batch stored at once: near full, evict now.
    if (this.count > this.slots * 0.9) this.evict(true)
  }

  private moveMinute(from: number, to: number): void {
    this.uncount(from)
    const minute = Math.floor(to / MINUTE_MS)
    this.minutes.set(minute, (this.minutes.get(minute) ?? 0) + 1)
  }

  private uncount(at: number): void {
    const minute = Math.floor(at / MINUTE_MS)
    const n = (this.minutes.get(minute) ?? 1) - 1
    if (n > 0) this.minutes.set(minute, n)
    else this.minutes.delete(minute)
  }

  /** Empties a slot and shifts back the entries after it that probed past it (no tombstones). */
  private remove(slot: number): void {
    this.uncount(this.atMs[slot]!)
    this.count--
    const words = this.words
    let hole = slot
    for (let j = slot + 1 === this.slots ? 0 : slot + 1; this.state[j] !== EMPTY; j = j + 1 === this.slots ? 0 : j + 1) {
      const o = j * 4
      const h = this.home(words[o]!, words[o + 1]!, words[o + 2]!, words[o + 3]!)
      // The entry at j may fill the hole only if its home is not in (hole, j], cyclically.
      const stays = hole <= j ? hole < h && h <= j : hole < h || h <= j
      if (stays) continue
      words.copyWithin(hole * 4, o, o + 4)
      this.atMs[hole] = this.atMs[j]!
      this.state[hole] = this.state[j]!
      hole = j
    }
    this.state[hole] = EMPTY
  }

  /** Over capacity: drop whole minutes, oldest first, to 90% of it, and move the horizon past them. */
  private evict(force = false): void {
    if (this.count <= this.capacity && !force) return
    const target = Math.floor(this.capacity * 0.9)
    let left = this.count
    let cutoff = -Infinity
    for (const minute of [...this.minutes.keys()].sort((a, b) => a - b)) {
      if (left <= target) break
      left -= this.minutes.get(minute)!
      cutoff = (minute + 1) * MINUTE_MS
    }
    if (cutoff === -Infinity) return
    // One sweep: an entry shifted back into the slot just emptied is looked at again before moving on.
    for (let slot = 0; slot < this.slots; slot++) {
      while (this.state[slot] !== EMPTY && this.atMs[slot]! < cutoff) this.remove(slot)
    }
    this.horizonMs = Math.max(this.horizonMs, cutoff)
  }

  private async load(): Promise<void> {
    // The newest ids by occurred_at (event_ids is ordered by it: the engine reads its tail). If the table holds
    // more, the horizon is just past the oldest loaded millisecond (ids sharing that one may be cut off).
    const rs = await this.client.query({
      query: `SELECT toString(event_id) AS id, toUnixTimestamp64Milli(occurred_at) AS at, type FROM event_ids
              ORDER BY occurred_at DESC LIMIT {n:UInt64}`,
      query_params: { n: this.capacity + 1 },
      format: 'JSONCompactEachRow',
    })
    const rows = await rs.json<[string, number | string, string]>()
    const full = rows.length > this.capacity
    if (full) rows.pop()
    let oldest = Infinity
    const byType = new Map<string, { eventId: string; occurredAtMs: number }[]>()
    for (const [id, at, type] of rows) {
      const ms = Number(at)
      if (ms < oldest) oldest = ms
      let list = byType.get(type)
      if (!list) byType.set(type, (list = []))
      list.push({ eventId: id, occurredAtMs: ms })
    }
    this.horizonMs = full ? oldest + 1 : -Infinity
    for (const [type, list] of byType) this.stored(type, list)
  }

  /** For /metrics and the log: how much it holds and how far back it answers. */
  describe(): { ids: number; capacity: number; horizon: string | null } {
    return { ids: this.count, capacity: this.capacity, horizon: Number.isFinite(this.horizonMs) ? chTime(this.horizonMs) : null }
  }
}
