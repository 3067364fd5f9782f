// The hot path's compiled checks (ingest/fast-check.ts) against zod, the contract's one source of truth: generated
// valid and invalid events of every compiled type must be accepted or rejected alike, with the same output when
// accepted and a field zod also names when rejected.
import { existsSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { auth, keyNamed, ratelimited, usage } from '../contract/builders.ts'
import { inboundSchemas, type InboundType } from '../contract/events.ts'
import { usageEvent } from '../contract/synthetic.ts'
import { decodeEvent } from '../ingest/decode.ts'
import { compileFastCheck } from '../ingest/fast-check.ts'
import { contractDir, contractExamples } from './helpers.ts'

/** A small deterministic PRNG (mulberry32), so a failure is reproducible. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const NOW = Date.parse('2026-11-22T14:00:00Z')
const k = keyNamed('fastcheck')

function seeds(type: InboundType): Record<string, unknown>[] {
  // The contract's own examples, where the checkout sits beside ../shared (a worktree elsewhere has built ones only).
  const examples = (existsSync(contractDir) ? contractExamples() : [])
    .filter((e) => e.type === type)
    .map((e) => JSON.parse(e.line) as Record<string, unknown>)
  const built: Record<string, unknown>[] =
    type === 'key.usage'
      ? [...Array.from({ length: 50 }, (_, i) => usageEvent(i) as unknown as Record<string, unknown>), usage(k, '2026-11-22T13:00:00Z', { origin: 'https://shop.example', country: null, asn: null })]
      : type === 'key.ratelimited'
        ? [ratelimited(k, '2026-11-22T13:00:00Z'), ratelimited(k, '2026-11-22T13:00:00.5+02:00', { retry_after_seconds: 3 })]
        : type === 'auth.event'
          ? [auth('acct_fastcheck', 'login.failed', '2026-11-22T13:00:00Z'), auth('acct_fastcheck', 'member.role_changed', '2026-11-22T13:00:00Z', { role: 'admin', previous_role: 'viewer' })]
          : []
  return [...examples, ...built]
}

/** Values worth trying in any field: every type JSON has, and the schema's own bounds and their neighbours. */
function interestingValues(schemaDef: unknown): unknown[] {
  const bounds = new Set<number>()
  const walk = (d: any): void => {
    if (!d || typeof d !== 'object') return
    for (const c of d.checks ?? []) {
      const cd = c._zod?.def ?? {}
      for (const n of [cd.minimum, cd.maximum, cd.value]) if (typeof n === 'number') for (const x of [n - 1, n, n + 1]) bounds.add(x)
    }
    if (d.innerType) walk(d.innerType.def)
    if (d.shape) for (const s of Object.values(d.shape) as any[]) walk(s.def)
  }
  walk(schemaDef)
  const strings = [...bounds].filter((n) => n >= 0 && n < 5000).flatMap((n) => ['a'.repeat(n), 'Z'.repeat(n)])
  return [
    undefined, null, true, false, 0, -1, 0.5, 1, 1.5, 2 ** 53, -(2 ** 53), 1e300, {}, [], [1], ...bounds, ...strings,
    '', 'x', 'key.usage', 'GET', 'get', 'live', 'secret', 'production', 'PH', 'ph', 'PHP', 'php', 'USDX',
    'acct_abc1', 'acct_ab', 'key_abcd', 'key_ab', 'sk_live_abcd', 'sk_live_abc', 'xx_live_abcd', 'usr_abcd',
    '10.0.0.1', '256.0.0.1', '::1', '2001:db8::1', 'fe80::1%eth0', '1.2.3', 'x'.repeat(46),
    '8a6e0804-2bd0-4672-b79d-d97027f9071a', '8A6E0804-2BD0-4672-B79D-D97027F9071A', '8a6e0804-2bd0-4672-b79d-d97027f9071', '8a6e08042bd04672b79dd97027f9071a',
    '2026-11-22T13:00:00Z', '2026-11-22T13:00:00.123456Z', '2026-11-22T13:00:00.1234567Z', '2026-02-29T00:00:00Z', '2024-02-29T00:00:00Z',
    '2026-11-22T24:00:00Z', '2026-11-22T13:00:60Z', '2026-11-22t13:00:00z', '2026-11-22T13:00:00+24:00', '2026-11-22T13:00:00+05:30', '2026-11-22 13:00:00Z',
    'login.failed', 'member.invited', 'owner', 'nobody',
  ]
}

describe.each(['key.usage', 'key.ratelimited', 'auth.event'] as const)('the compiled check of %s', (type) => {
  const schema = inboundSchemas[type]
  const fast = compileFastCheck(schema)!
  const fields = Object.keys((schema as any).shape)
  const values = interestingValues((schema as any).def)

  function agree(event: Record<string, unknown>): 'accepted' | 'rejected' {
    const record = JSON.parse(JSON.stringify(event)) as Record<string, unknown>
    const byZod = schema.safeParse(record)
    const byFast = fast(record)
    if (byFast.ok !== byZod.success) {
      expect.fail(`${JSON.stringify(record)}: the compiled check says ${byFast.ok ? 'valid' : `invalid (${byFast.field})`}, zod ${byZod.success ? 'valid' : JSON.stringify(byZod.error.issues)}`)
    }
    if (byFast.ok && byZod.success) expect(byFast.value).toEqual(byZod.data)
    if (!byFast.ok && !byZod.success) expect(byZod.error.issues.map((i) => String(i.path[0]))).toContain(byFast.field)
    return byFast.ok ? 'accepted' : 'rejected'
  }

  it('is compiled (the hot path does not fall back to zod)', () => {
    expect(fast).toBeTypeOf('function')
  })

  it('agrees with zod on every field set to every interesting value', () => {
    const outcomes = { accepted: 0, rejected: 0 }
    for (const base of seeds(type).slice(0, 6)) {
      for (const field of fields) {
        for (const v of values) outcomes[agree({ ...base, [field]: v })]++
        const { [field]: _dropped, ...without } = base
        outcomes[agree(without)]++
      }
    }
    // Both kinds were exercised, so the test could fail either way.
    expect(outcomes.accepted).toBeGreaterThan(100)
    expect(outcomes.rejected).toBeGreaterThan(1000)
  })

  it('agrees with zod on random events of several changes at once, and extra fields are dropped as zod drops them', () => {
    const random = prng(type.length * 7919)
    const bases = seeds(type)
    const outcomes = { accepted: 0, rejected: 0 }
    for (let i = 0; i < 4000; i++) {
      const event: Record<string, unknown> = { ...bases[Math.floor(random() * bases.length)]! }
      const changes = 1 + Math.floor(random() * 3)
      for (let c = 0; c < changes; c++) {
        // Mostly valid values taken from other seeds, so accepted events with varied fields come out too.
        const field = random() < 0.1 ? `extra_${c}` : fields[Math.floor(random() * fields.length)]!
        const fromSeed = bases[Math.floor(random() * bases.length)]![field]
        event[field] = random() < 0.6 && fromSeed !== undefined ? fromSeed : values[Math.floor(random() * values.length)]
        if (event[field] === undefined) delete event[field]
      }
      outcomes[agree(event)]++
    }
    expect(outcomes.accepted).toBeGreaterThan(300)
    expect(outcomes.rejected).toBeGreaterThan(300)
  })

  it('leaves decodeEvent reasons and details as zod words them', () => {
    const base = seeds(type)[0]!
    const bad = { ...base, ip: '256.0.0.1' }
    const d = decodeEvent(Buffer.from(JSON.stringify(bad)), NOW)
    expect(d.ok).toBe(false)
    if (!d.ok) {
      expect(d.reason).toBe('schema_violation')
      expect(d.detail).toMatch(/^ip: must be an IPv4 or IPv6 address/)
    }
  })
})
