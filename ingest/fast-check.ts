// The hot path's validation, compiled from the zod schemas themselves (zod stays the one source of truth): each
// field's type, nullability, enum, literal, lengths, bounds, patterns and refinements are read from the schema's
// definition and turned into plain checks, which cost a fraction of `safeParse`. Only flat object schemas are
// compiled; anything else the compiler does not know makes it give up, and that type is checked by zod.
// A rejection names the first failing field only; the caller asks zod for the full message (rejections are rare).
// test/fast-check.test.ts generates valid and invalid events and asserts both agree.
import type { z } from 'zod'

export type FastResult = { ok: true; value: Record<string, unknown> } | { ok: false; field: string }
export type FastCheck = (record: Record<string, unknown>) => FastResult

type ValueCheck = (v: unknown) => boolean

interface FieldPlan {
  name: string
  optional: boolean
  nullable: boolean
  check: ValueCheck
}

/* eslint-disable @typescript-eslint/no-explicit-any -- reading zod's definition objects */
interface Def {
  type: string
  innerType?: { def: Def }
  checks?: { _zod: { def: any } }[]
  values?: unknown[]
  entries?: Record<string, unknown>
  shape?: Record<string, { def: Def }>
  catchall?: unknown
}

class Unsupported extends Error {}

/** The check of an object schema, or undefined when it uses something this compiler does not handle. */
export function compileFastCheck(schema: z.ZodType): FastCheck | undefined {
  const def = (schema as unknown as { def: Def }).def
  try {
    if (def.type !== 'object' || !def.shape || def.catchall !== undefined || def.checks?.length) return undefined
    const fields = Object.entries(def.shape).map(([name, s]) => planField(name, s.def))
    const known = new Set(fields.map((f) => f.name))
    return (record) => {
      let present = 0
      for (const f of fields) {
        const v = record[f.name]
        if (v === undefined) {
          if (f.optional) continue
          return { ok: false, field: f.name }
        }
        if (v === null ? !f.nullable : !f.check(v)) return { ok: false, field: f.name }
        present++
      }
      // zod drops fields the schema does not know; a record with none is its own output (no copy on the hot path).
      let keys = 0
      for (const _ in record) keys++
      if (keys === present) return { ok: true, value: record }
      const value: Record<string, unknown> = {}
      for (const name in record) if (known.has(name) && record[name] !== undefined) value[name] = record[name]
      return { ok: true, value }
    }
  } catch (err) {
    if (err instanceof Unsupported) return undefined
    throw err
  }
}

function planField(name: string, def: Def): FieldPlan {
  let optional = false
  let nullable = false
  while (def.type === 'optional' || def.type === 'nullable') {
    if (def.type === 'optional') optional = true
    else nullable = true
    def = def.innerType!.def
  }
  return { name, optional, nullable, check: valueCheck(def) }
}

function valueCheck(def: Def): ValueCheck {
  switch (def.type) {
    case 'literal': {
      const values = def.values!
      return values.length === 1 ? (v) => v === values[0] : (v) => values.includes(v)
    }
    case 'enum': {
      const values = new Set(Object.values(def.entries!))
      return (v) => typeof v === 'string' && values.has(v)
    }
    case 'string': {
      const checks = (def.checks ?? []).map((c) => stringCheck(c._zod.def))
      return (v) => {
        if (typeof v !== 'string') return false
        for (const c of checks) if (!c(v)) return false
        return true
      }
    }
    case 'number': {
      const checks = (def.checks ?? []).map((c) => numberCheck(c._zod.def))
      return (v) => {
        if (typeof v !== 'number' || !Number.isFinite(v)) return false
        for (const c of checks) if (!c(v)) return false
        return true
      }
    }
    default:
      throw new Unsupported(def.type)
  }
}

function stringCheck(c: any): (s: string) => boolean {
  switch (c.check) {
    case 'min_length':
      return (s) => s.length >= c.minimum
    case 'max_length':
      return (s) => s.length <= c.maximum
    case 'string_format':
      if (c.format !== 'regex' || !(c.pattern instanceof RegExp) || c.pattern.global || c.pattern.sticky) throw new Unsupported(c.format)
      return (s) => c.pattern.test(s)
    case 'custom':
      return customCheck(c)
    default:
      throw new Unsupported(c.check)
  }
}

function numberCheck(c: any): (n: number) => boolean {
  switch (c.check) {
    case 'number_format':
      if (c.format !== 'safeint') throw new Unsupported(c.format)
      return (n) => Number.isSafeInteger(n)
    case 'greater_than':
      return c.inclusive ? (n) => n >= c.value : (n) => n > c.value
    case 'less_than':
      return c.inclusive ? (n) => n <= c.value : (n) => n < c.value
    case 'custom':
      return customCheck(c)
    default:
      throw new Unsupported(c.check)
  }
}

/** A `.refine(fn)`: synchronous predicates only (what the contract uses). */
function customCheck(c: any): (v: unknown) => boolean {
  if (typeof c.fn !== 'function' || c.when || c.abort) throw new Unsupported('custom')
  return (v) => {
    const r = c.fn(v)
    if (r instanceof Promise) throw new Error('an async refinement on the hot path')
    return !!r
  }
}
