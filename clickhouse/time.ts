// Time in and out of storage. Every time the contract accepts, as milliseconds since the epoch: RFC 3339 with any offset, 1 to 6 (or, for the
// looser `format: date-time` fields, more) fraction digits, lower-case t/z, and leap seconds. Date.parse refuses
// a leap second (NaN) and reads years 0000-0099 as 19xx: neither may reach a row.
const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$/

const CANONICAL = /^[1-9]\d{3}-\d{2}-\d{2}T\d{2}:\d{2}:[0-5]\d\.\d{3}Z$/

/**
 * The instant an RFC 3339 date-time names, in ms (fractions below a millisecond are dropped, as DateTime64(3) does).
 * A leap second (:60) is read as the last millisecond of its minute: it stays on its day and in order, which is all
 * a millisecond column can say of it. NaN for anything else that is not an RFC 3339 date-time.
 */
export function parseTimestamp(s: string): number {
  // What producers send nearly always (toISOString's form, years 1000-9999, no leap second): Date.parse reads it
  // right at half the cost.
  if (CANONICAL.test(s)) return Date.parse(s)
  const m = RFC3339.exec(s)
  if (!m) return NaN
  const [, y, mo, d, h, mi, sec, frac, z, sign, oh, om] = m
  const leap = sec === '60'
  const date = new Date(0)
  date.setUTCFullYear(Number(y), Number(mo) - 1, Number(d)) // setUTCFullYear keeps years 0000-0099 as written
  date.setUTCHours(Number(h), Number(mi), leap ? 59 : Number(sec), leap ? 999 : frac ? Number(frac.slice(0, 3).padEnd(3, '0')) : 0)
  const offsetMin = z ? 0 : (sign === '-' ? -1 : 1) * (Number(oh) * 60 + Number(om))
  return date.getTime() - offsetMin * 60_000
}

// DateTime64(3)'s range: a time outside it would be stored as another time.
export const MIN_STORABLE_MS = Date.UTC(1900, 0, 1)
export const MAX_STORABLE_MS = Date.UTC(2299, 11, 31, 23, 59, 59, 999)

/** ClickHouse's own DateTime64(3) text form, in UTC: parsed at insert without guessing. */
export function chTime(ms: number): string {
  return chTimeOfIso(new Date(ms).toISOString())
}

/**
 * chTime of a time already in toISOString's form (`2026-12-02T00:15:42.118Z`), without a Date: the ingest hot path
 * stores most occurred_at values as they came. Anything else goes through chTime.
 */
export function chTimeOf(rfc3339: string, ms: number): string {
  return CANONICAL.test(rfc3339) ? chTimeOfIso(rfc3339) : chTime(ms)
}

function chTimeOfIso(iso: string): string {
  return `${iso.slice(0, 10)} ${iso.slice(11, 23)}`
}
