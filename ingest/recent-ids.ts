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
// Packed per id: occurred_at in ms * 8 + the type's index (ms times stay far under 2^53 / 8). -1: maybe stored.
const MAYBE = -1

export class RecentIds {
  private readonly ids = new Map<string, number>()
  /** Ids by the minute of their occurred_at: the oldest minutes are evicted first, and the horizon moves past them. */
  private readonly minutes = new Map<number, string[]>()
  private readonly types: string[] = []
  /** Events older than this (ms) may be stored without the index knowing. */
  private horizonMs = -Infinity
  private loading?: Promise<void>

  constructor(
    private readonly client: ClickHouseClient,
    /** How many ids it holds (about 100 bytes each). */
    readonly capacity: number,
  ) {}

  get size(): number {
    return this.ids.size
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
    this.ids.clear()
    this.minutes.clear()
    this.horizonMs = -Infinity
    this.loading = undefined
  }

  /**
   * Whether an event is stored: `{stored: true, …}` or `{stored: false}` when the index is sure, `undefined` when
   * the engine must be asked (an event older than the horizon, or an id whose insert ended in doubt).
   */
  lookup(id: string, occurredAtMs: number): IdAnswer {
    const packed = this.ids.get(id)
    if (packed === MAYBE) return undefined
    if (packed !== undefined) return { stored: true, at: Math.floor(packed / 8), type: this.types[packed % 8]! }
    return occurredAtMs >= this.horizonMs ? { stored: false } : undefined
  }

  /** Records ids the engine acknowledged (or that the engine said were stored). */
  stored(type: string, rows: readonly { eventId: string; occurredAtMs: number }[]): void {
    let t = this.types.indexOf(type)
    if (t < 0) t = this.types.push(type) - 1
    for (const r of rows) {
      // Below the horizon the index keeps nothing: its answers there come from the engine anyway.
      if (r.occurredAtMs < this.horizonMs) continue
      const known = this.ids.get(r.eventId)
      if (known !== undefined && known !== MAYBE) continue // the first stored version stays
      this.ids.set(r.eventId, r.occurredAtMs * 8 + t)
      if (known === undefined) this.remember(r.eventId, r.occurredAtMs)
    }
    this.evict()
  }

  /**
   * An insert failed in a way that leaves its rows in doubt (a timeout may have landed): until the engine says,
   * these ids are asked of the engine.
   */
  inDoubt(rows: readonly { eventId: string; occurredAtMs: number }[]): void {
    for (const r of rows) {
      if (r.occurredAtMs < this.horizonMs || this.ids.has(r.eventId)) continue
      this.ids.set(r.eventId, MAYBE)
      this.remember(r.eventId, r.occurredAtMs)
    }
    this.evict()
  }

  /** The engine answered for ids in doubt: what it found stored is known, the rest is known not stored. */
  settled(found: Map<string, { at: number; type: string }>, asked: readonly { eventId: string }[]): void {
    for (const { eventId } of asked) {
      if (this.ids.get(eventId) !== MAYBE) continue
      const f = found.get(eventId)
      if (!f) this.ids.delete(eventId)
      else {
        let t = this.types.indexOf(f.type)
        if (t < 0) t = this.types.push(f.type) - 1
        this.ids.set(eventId, f.at * 8 + t)
      }
    }
  }

  private remember(id: string, at: number): void {
    const minute = Math.floor(at / MINUTE_MS)
    let list = this.minutes.get(minute)
    if (!list) this.minutes.set(minute, (list = []))
    list.push(id)
  }

  /** Over capacity: drop whole minutes, oldest first, to 90% of it, and move the horizon past them. */
  private evict(): void {
    if (this.ids.size <= this.capacity) return
    const target = Math.floor(this.capacity * 0.9)
    const order = [...this.minutes.keys()].sort((a, b) => a - b)
    for (const minute of order) {
      if (this.ids.size <= target) break
      for (const id of this.minutes.get(minute)!) this.ids.delete(id)
      this.minutes.delete(minute)
      this.horizonMs = Math.max(this.horizonMs, (minute + 1) * MINUTE_MS)
    }
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
    return { ids: this.ids.size, capacity: this.capacity, horizon: Number.isFinite(this.horizonMs) ? chTime(this.horizonMs) : null }
  }
}
