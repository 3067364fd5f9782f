// The contract's date-time check (contract/events.ts isRealDateTime): toISOString's form is checked digit by digit
// on the hot path, every other RFC 3339 form by the regex. Both must say what the calendar says, and the same of
// one instant however it is written.
import { describe, expect, it } from 'vitest'
import { isRealDateTime } from '../contract/events.ts'

/** A small deterministic PRNG (mulberry32), so a failure is reproducible. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const pad = (n: number, width: number) => String(n).padStart(width, '0')

/** The calendar's answer, from the Date of the same fields (a leap second is real where :59 of its minute is). */
function calendarSays(year: number, month: number, day: number, hour: number, minute: number, second: number): boolean {
  if (month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 || second > 60) return false
  const d = new Date(0)
  d.setUTCFullYear(year, month - 1, day) // keeps years 0000-0099 as written, unlike Date.UTC
  return d.getUTCFullYear() === year && d.getUTCMonth() === month - 1 && d.getUTCDate() === day
}

describe('isRealDateTime', () => {
  it('says what the calendar says of 20,000 generated date-times, in toISOString form and in others', () => {
    const random = prng(12)
    const pick = (max: number) => Math.floor(random() * (max + 1))
    let real = 0
    for (let i = 0; i < 20_000; i++) {
      // Years around the edges of the rules (0000, 1900, 2000, 2100), fields a little past their ranges.
      const year = Math.min(9999, [0, 4, 100, 400, 1900, 1999, 2000, 2024, 2026, 2100, 9996][pick(10)]! + (random() < 0.3 ? pick(4) : 0))
      const month = pick(13)
      const day = pick(32)
      const hour = pick(25)
      const minute = pick(61)
      const second = pick(61)
      const fields = `${pad(year, 4)}-${pad(month, 2)}-${pad(day, 2)}T${pad(hour, 2)}:${pad(minute, 2)}:${pad(second, 2)}`
      const expected = calendarSays(year, month, day, hour, minute, second)
      if (expected) real++
      const forms = [`${fields}.${pad(pick(999), 3)}Z`, `${fields}Z`, `${fields}.5+00:00`, `${fields.replace('T', 't')}.123456z`, `${fields}-05:30`]
      for (const form of forms) expect([form, isRealDateTime(form)]).toEqual([form, expected])
    }
    expect(real).toBeGreaterThan(5_000) // the generator makes plenty of both
    expect(real).toBeLessThan(15_000)
  })

  it('knows the leap years: 0000 and 2000 are, 1900 and 2100 are not', () => {
    for (const [year, leap] of [['0000', true], ['2000', true], ['2024', true], ['1900', false], ['2100', false], ['2026', false]] as const) {
      expect(isRealDateTime(`${year}-02-29T00:00:00.000Z`)).toBe(leap)
      expect(isRealDateTime(`${year}-02-29T00:00:00+01:00`)).toBe(leap)
    }
  })

  it('refuses what is not a date-time at all, in the fast form too', () => {
    for (const s of ['2026-11-22T14:03:05.123', '2026-11-22 14:03:05.123Z', '2026-1a-22T14:03:05.123Z', '+26-11-22T14:03:05.123Z', '2026-11-22T14:03:05.123Z ', '']) {
      expect([s, isRealDateTime(s)]).toEqual([s, false])
    }
    expect(isRealDateTime('2026-11-22T14:03:05+24:00')).toBe(false)
  })
})
