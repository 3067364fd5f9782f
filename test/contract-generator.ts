// Random contract events from the contract's own JSON Schemas (../shared/contract/*.schema.json), seeded.
// json-schema-faker makes a pool of events per type; events are then bred from the pool (each property taken from
// one pool member or another) with fresh ids and times drawn from everywhere the schema allows (years 0000-9999,
// any offset, 0-6 fraction digits, leap seconds), and each one is checked against its schema with ajv: what the
// schema says is valid is the oracle, not keywatch's mirror. Mutations that break the schema (checked by ajv too)
// make the mirror test's input. Building from a pool keeps 50,000 events to seconds (the faker alone makes tens a
// second here).
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js'
import addFormatsModule from 'ajv-formats'
import { createGeneratorSync } from 'json-schema-faker'
import { contractDir } from './helpers.ts'

export const TYPES = ['key.usage', 'key.ratelimited', 'auth.event', 'key.lifecycle', 'leak.reported'] as const
export type EventType = (typeof TYPES)[number]
type Json = Record<string, unknown>

const DAY = 86_400_000
/** Days each type is kept (ingest/rows.ts RETENTION_DAYS): the generator keeps a day clear of each edge. */
const RETENTION_DAYS: Record<EventType, number> = { 'key.usage': 399, 'key.ratelimited': 399, 'auth.event': 399, 'key.lifecycle': 1824, 'leak.reported': 399 }
const FUTURE_SKEW_MS = 5 * 60_000

/** Mulberry32: small, seeded, and the same on every machine. */
export function rng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export interface Generated {
  type: EventType
  event: Json
  line: string
  /** What keywatch must answer: stored, or rejected for its time (a policy on valid events, with its own reason). */
  expect: 'accepted' | 'outside_retention' | 'future_timestamp'
}

export class ContractGenerator {
  private readonly validators = new Map<EventType, ValidateFunction>()
  private readonly pools = new Map<EventType, Json[]>()
  private readonly random: () => number

  constructor(seed: number, poolSize = 40) {
    this.random = rng(seed)
    const ajv = new Ajv2020({ strict: false, allErrors: false })
    const addFormats = (addFormatsModule as unknown as { default?: (a: Ajv2020) => void }).default ?? (addFormatsModule as unknown as (a: Ajv2020) => void)
    addFormats(ajv)
    for (const type of TYPES) {
      const schema = JSON.parse(readFileSync(join(contractDir, `${type}.schema.json`), 'utf8')) as Json
      const validate = ajv.compile(schema)
      this.validators.set(type, validate)
      const faker = createGeneratorSync({ seed: seed * 31 + TYPES.indexOf(type), optionalsProbability: 0.6 })
      const pool: Json[] = []
      for (let tries = 0; pool.length < poolSize && tries < poolSize * 20; tries++) {
        const e = faker.generate(schema) as Json
        if (validate(e)) pool.push(e)
      }
      if (pool.length < poolSize / 2) throw new Error(`json-schema-faker made too few valid ${type} events (${pool.length})`)
      this.pools.set(type, pool)
    }
  }

  valid(type: EventType, event: unknown): boolean {
    return this.validators.get(type)!(event) === true
  }

  /** The i-th event: a type in turn, properties bred from the pool, a fresh id and a time from anywhere. */
  next(i: number, now: number): Generated {
    const type = TYPES[i % TYPES.length]!
    const pool = this.pools.get(type)!
    const pick = () => pool[Math.floor(this.random() * pool.length)]!
    for (let attempt = 0; ; attempt++) {
      const base = pick()
      let event: Json = { ...base }
      // Crossover: each property from another pool member half the time (present there or absent there).
      if (attempt < 3) {
        const other = pick()
        for (const key of new Set([...Object.keys(base), ...Object.keys(other)])) {
          if (key === 'type' || this.random() < 0.5) continue
          if (key in other) event[key] = other[key]
          else delete event[key]
        }
      }
      const { text, ms } = this.time(now, type)
      event = { ...event, event_id: this.uuid(), occurred_at: text }
      if (!this.valid(type, event)) continue // a bred event broke an if/then of the schema: breed again
      const expect = ms > now + FUTURE_SKEW_MS ? 'future_timestamp' : ms < now - RETENTION_DAYS[type] * DAY ? 'outside_retention' : 'accepted'
      return { type, event, line: JSON.stringify(event), expect }
    }
  }

  private uuid(): string {
    const hex = Array.from({ length: 32 }, () => Math.floor(this.random() * 16).toString(16))
    hex[12] = '4'
    hex[16] = '89ab'[Math.floor(this.random() * 4)]!
    const h = hex.join('')
    const id = `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
    return this.random() < 0.1 ? id.toUpperCase() : id
  }

  /** A time as RFC 3339 text and its instant: 70% inside retention, 10% near now, 20% anywhere in 0000-9999. */
  private time(now: number, type: EventType): { text: string; ms: number } {
    const r = this.random()
    const keep = RETENTION_DAYS[type] * DAY
    let ms: number
    if (r < 0.7) ms = now - DAY / 2 - this.random() * (keep - 2 * DAY) // clear of both edges
    else if (r < 0.8) ms = now - 60_000 - this.random() * 3_600_000
    else ms = Date.UTC(2000, 0, 1) + (this.random() * 2 - 1) * 2000 * 365.25 * DAY
    ms = Math.floor(ms)
    const d = new Date(0)
    d.setTime(ms)
    const leap = this.random() < 0.03
    if (leap) {
      // 23:59:60 UTC of the instant's day: the last second of it. Before the edges are kept clear below: an event of
      // the last hour made a leap second lands minutes from now in the hour before midnight UTC.
      d.setUTCHours(23, 59, 59, 999)
      ms = d.getTime()
    }
    // Never on the retention edge, nor just past the future-skew edge: the test decodes minutes after `now`, and an
    // event there would come in under the edge by then. Whole days keep a leap second's time of day.
    if (Math.abs(ms - (now - keep)) < DAY) ms -= 2 * DAY
    const edge = now + FUTURE_SKEW_MS
    if (ms > edge - 120_000 && ms < edge + 30 * 60_000) ms += leap ? DAY : 40 * 60_000
    d.setTime(ms)
    if (d.getUTCFullYear() < 0 || d.getUTCFullYear() > 9999) return this.time(now, type)
    const digits = Math.floor(this.random() * 7) // 0-6 fraction digits
    const offsetMin = leap || this.random() < 0.5 ? 0 : Math.round((this.random() * 2 - 1) * (23 * 60 + 59))
    const local = new Date(ms + offsetMin * 60_000)
    const pad = (n: number, w = 2) => String(n).padStart(w, '0')
    const msPart = pad(local.getUTCMilliseconds(), 3)
    const frac = digits === 0 ? '' : '.' + (msPart + pad(Math.floor(this.random() * 1000), 3)).slice(0, digits)
    const sec = leap ? '60' : pad(local.getUTCSeconds())
    const off = offsetMin === 0 ? (this.random() < 0.8 ? 'Z' : '+00:00') : `${offsetMin < 0 ? '-' : '+'}${pad(Math.floor(Math.abs(offsetMin) / 60))}:${pad(Math.abs(offsetMin) % 60)}`
    const text = `${pad(local.getUTCFullYear(), 4)}-${pad(local.getUTCMonth() + 1)}-${pad(local.getUTCDate())}T${pad(local.getUTCHours())}:${pad(local.getUTCMinutes())}:${sec}${frac}${off}`
    // The instant the text names, to the millisecond (fractions below it dropped; no fraction: the whole second).
    const named = Math.floor(ms / 1000) * 1000 + (digits === 0 ? 0 : Math.floor(Number(frac.slice(1).padEnd(3, '0').slice(0, 3))))
    return { text, ms: leap ? ms : named } // a leap second is read as the last millisecond of its minute
  }

  /** A mutation of a valid event that breaks its schema (checked), or undefined when this one happened not to. */
  mutate(g: Generated): { line: string; mutation: string } | undefined {
    const e: Json = structuredClone(g.event)
    const keys = Object.keys(e).filter((k) => k !== 'type')
    const key = keys[Math.floor(this.random() * keys.length)]!
    const mutations: [string, () => void][] = [
      [`${key} removed`, () => delete e[key]],
      [`${key} a number`, () => (e[key] = 12345.5)],
      [`${key} an object`, () => (e[key] = { nested: true })],
      [`${key} a long string`, () => (e[key] = 'x'.repeat(5_000))],
      ['event_id not a UUID', () => (e.event_id = 'not-a-uuid')],
      ['schema_version 2', () => (e.schema_version = 2)],
      ['occurred_at 2026-02-30', () => (e.occurred_at = '2026-02-30T10:00:00Z')],
      ['occurred_at hour 24', () => (e.occurred_at = '2026-11-30T24:00:00Z')],
      ['occurred_at without zone', () => (e.occurred_at = '2026-11-30T10:00:00')],
      ['occurred_at 7 fraction digits', () => (e.occurred_at = '2026-11-30T10:00:00.1234567Z')],
      ['account_id malformed', () => (e.account_id = 'acct-1')],
      ['type unknown', () => (e.type = 'key.used')],
    ]
    const [mutation, apply] = mutations[Math.floor(this.random() * mutations.length)]!
    apply()
    if (this.valid(g.type, e)) return undefined
    return { line: JSON.stringify(e), mutation }
  }
}
