// Conformance with ../shared/contract: every example is accepted, every kind of invalid event is rejected with a
// reason and a detail naming the field.
import { randomUUID } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { keyCommandSchema } from '../contract/events.ts'
import { decodeEvent } from '../ingest/decode.ts'
import { contractExamples } from './helpers.ts'

const NOW = Date.parse('2026-11-23T00:00:00Z')
const examples = contractExamples()
const example = (type: string, i = 0) => JSON.parse(examples.filter((e) => e.type === type)[i]!.line) as Record<string, unknown>
const decode = (value: unknown, expectedType?: Parameters<typeof decodeEvent>[2]) =>
  decodeEvent(Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)), NOW, expectedType)

function omit(o: Record<string, unknown>, key: string): Record<string, unknown> {
  const { [key]: _omitted, ...rest } = o
  return rest
}

describe('contract examples', () => {
  it.each(examples.filter((e) => e.type !== 'key.command').map((e) => [e.type, e.line] as const))('accepts %s example', (_type, line) => {
    const d = decode(line)
    expect(d.ok ? 'ok' : `${d.reason}: ${d.detail}`).toBe('ok')
  })

  it('accepts the key.command examples', () => {
    for (const e of examples.filter((x) => x.type === 'key.command')) expect(keyCommandSchema.safeParse(JSON.parse(e.line)).success).toBe(true)
  })
})

const usage = example('key.usage')
const invalidUsage = example('key.usage', 2) // INVALID_KEY: key fields null
const ratelimited = example('key.ratelimited')
const auth = example('auth.event')
const created = example('key.lifecycle', 1)
const rotated = example('key.lifecycle', 2)
const revoked = example('key.lifecycle', 4)
const leakToken = example('leak.reported', 0)
const leakHash = example('leak.reported', 1)

describe('schema violations name the field', () => {
  const cases: [string, Record<string, unknown>, string][] = [
    ['event_id not a UUID', { ...usage, event_id: 'abc' }, 'event_id'],
    ['account_id without acct_', { ...usage, account_id: 'account_1234' }, 'account_id'],
    ['schema_version 2', { ...usage, schema_version: 2 }, 'schema_version'],
    ['occurred_at without a zone', { ...usage, occurred_at: '2026-11-22T14:03:05.123' }, 'occurred_at'],
    ['occurred_at on Feb 30', { ...usage, occurred_at: '2026-02-30T00:00:00Z' }, 'occurred_at'],
    ['occurred_at hour 24', { ...usage, occurred_at: '2026-11-22T24:00:00Z' }, 'occurred_at'],
    ['key_prefix malformed', { ...usage, key_prefix: 'sk_prod_4eC3' }, 'key_prefix'],
    ['key_kind outside the enum', { ...usage, key_kind: 'admin' }, 'key_kind'],
    ['method outside the enum', { ...usage, method: 'TRACE' }, 'method'],
    ['status 99', { ...usage, status: 99 }, 'status'],
    ['status 600', { ...usage, status: 600 }, 'status'],
    ['status not an integer', { ...usage, status: 200.5 }, 'status'],
    ['status as a string', { ...usage, status: '200' }, 'status'],
    ['ip 999.1.1.1', { ...usage, ip: '999.1.1.1' }, 'ip'],
    ['ip not an address', { ...usage, ip: 'not-an-ip' }, 'ip'],
    ['country lower case', { ...usage, country: 'ph' }, 'country'],
    ['asn -1', { ...usage, asn: -1 }, 'asn'],
    ['user_agent 1025 chars', { ...usage, user_agent: 'x'.repeat(1025) }, 'user_agent'],
    ['latency_ms negative', { ...usage, latency_ms: -1 }, 'latency_ms'],
    ['currency lower case', { ...usage, currency: 'php' }, 'currency'],
    ['client_env outside the enum', { ...usage, client_env: 'prod' }, 'client_env'],
    ['endpoint empty', { ...usage, endpoint: '' }, 'endpoint'],
    ['window_seconds 0', { ...ratelimited, window_seconds: 0 }, 'window_seconds'],
    ['window_seconds 86401', { ...ratelimited, window_seconds: 86401 }, 'window_seconds'],
    ['limit 0', { ...ratelimited, limit: 0 }, 'limit'],
    ['ratelimited key_id null', { ...ratelimited, key_id: null }, 'key_id'],
    ['auth action outside the enum', { ...auth, action: 'login.maybe' }, 'action'],
    ['auth user_id malformed', { ...auth, user_id: 'user_1' }, 'user_id'],
    ['created without label', omit(created, 'label'), 'label'],
    ['created without scopes', omit(created, 'scopes'), 'scopes'],
    ['created without expires_at', omit(created, 'expires_at'), 'expires_at'],
    ['created without auto_generated', omit(created, 'auto_generated'), 'auto_generated'],
    ['created with a bad secret hash', { ...created, secret_sha256: 'ABC' }, 'secret_sha256'],
    ['rotated without replacement_key_id', omit(rotated, 'replacement_key_id'), 'replacement_key_id'],
    ['rotated without old_key_expires_at', omit(rotated, 'old_key_expires_at'), 'old_key_expires_at'],
    ['reset without secret_sha256', { ...omit(revoked, 'reason'), action: 'reset' }, 'secret_sha256'],
    ['scopes_changed without scopes', { ...omit(revoked, 'reason'), action: 'scopes_changed' }, 'scopes'],
    ['scopes with a repeated access', { ...created, scopes: [{ scope: 'payments', access: ['read', 'read'] }] }, 'scopes'],
    ['scopes with an empty access', { ...created, scopes: [{ scope: 'payments', access: [] }] }, 'scopes'],
    ['actor type unknown', { ...revoked, actor: { type: 'robot', id: null } }, 'actor'],
    ['actor without id', { ...revoked, actor: { type: 'user' } }, 'actor'],
    ['leak with neither token nor hash', omit(leakToken, 'token'), 'token'],
    ['leak with both token and hash', { ...leakToken, token_sha256: leakHash.token_sha256 }, 'token'],
    ['leak token shorter than 8', { ...leakToken, token: 'sk_1234' }, 'token'],
    ['leak without source', omit(leakToken, 'source'), 'source'],
  ]
  for (const required of ['event_id', 'schema_version', 'occurred_at', 'account_id', 'key_id', 'request_id', 'method', 'endpoint', 'status', 'ip', 'user_agent', 'latency_ms', 'key_prefix', 'key_kind', 'mode']) {
    cases.push([`key.usage without ${required}`, omit(usage, required), required])
  }

  it.each(cases)('%s', (_name, event, field) => {
    const d = decode(event)
    expect(d.ok).toBe(false)
    if (d.ok) return
    expect(d.reason).toBe('schema_violation')
    expect(d.detail).toContain(field)
  })
})

describe('valid edge cases are accepted', () => {
  const cases: [string, Record<string, unknown>][] = [
    ['unknown extra fields', { ...usage, region: 'ap-southeast-1', nested: { a: 1 } }],
    ['INVALID_KEY usage with null key fields', invalidUsage],
    ['usage without any optional field', omit(omit(omit(omit(omit(omit(omit(omit(omit(omit(omit(usage, 'origin'), 'sdk'), 'amount_minor'), 'currency'), 'scope'), 'error_code'), 'country'), 'asn'), 'client_env'), 'origin'), 'sdk')],
    ['occurred_at with a +08:00 offset', { ...usage, occurred_at: '2026-11-22T22:03:05.123+08:00' }],
    ['occurred_at with 6 fractional digits', { ...usage, occurred_at: '2026-11-22T14:03:05.123456Z' }],
    ['occurred_at without fraction', { ...usage, occurred_at: '2026-11-22T14:03:05Z' }],
    ['IPv6 loopback', { ...usage, ip: '::1' }],
    ['IPv6 documentation address', { ...usage, ip: '2001:db8::1' }],
    ['latency_ms 0', { ...usage, latency_ms: 0 }],
    ['latency_ms fractional', { ...usage, latency_ms: 0.25 }],
    ['upper-case UUID', { ...usage, event_id: randomUUID().toUpperCase() }],
    ['auth user_id null (unknown user)', { ...auth, user_id: null }],
    ['created with scopes null and expires_at null', { ...created, scopes: null, expires_at: null }],
    ['created with an expiry', { ...created, expires_at: '2027-01-01T00:00:00Z' }],
    ['leak with only token_sha256', leakHash],
    ['leak url null', { ...leakToken, url: null }],
  ]
  it.each(cases)('%s', (_name, event) => {
    const d = decode(event)
    expect(d.ok ? 'ok' : `${d.reason}: ${d.detail}`).toBe('ok')
  })
})

describe('rejection reasons', () => {
  it('too_large above 64 KiB', () => {
    const d = decode({ ...usage, user_agent: 'x'.repeat(70_000) })
    expect(d).toMatchObject({ ok: false, reason: 'too_large' })
  })
  it.each([
    ['not JSON', 'not json'],
    ['a JSON array', '[1,2]'],
    ['a JSON string', '"key.usage"'],
    ['null', 'null'],
  ])('invalid_json for %s', (_name, text) => {
    expect(decode(text)).toMatchObject({ ok: false, reason: 'invalid_json' })
  })
  it('invalid_json for bytes that are not UTF-8', () => {
    expect(decodeEvent(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), NOW)).toMatchObject({ ok: false, reason: 'invalid_json' })
  })
  it('unknown_type for an unknown or missing type', () => {
    expect(decode({ ...usage, type: 'foo' })).toMatchObject({ ok: false, reason: 'unknown_type' })
    const missing = decode(omit(usage, 'type'))
    expect(missing).toMatchObject({ ok: false, reason: 'unknown_type' })
    if (!missing.ok) expect(missing.detail).toContain('missing')
  })
  it('future_timestamp beyond 5 minutes, not within', () => {
    const at = (ms: number) => ({ ...usage, occurred_at: new Date(NOW + ms).toISOString() })
    expect(decode(at(6 * 60_000))).toMatchObject({ ok: false, reason: 'future_timestamp' })
    expect(decode(at(4 * 60_000))).toMatchObject({ ok: true })
  })
  it('wrong_topic when the type is not the one its topic carries', () => {
    expect(decode(auth, 'key.usage')).toMatchObject({ ok: false, reason: 'wrong_topic' })
    expect(decode(auth, 'auth.event')).toMatchObject({ ok: true })
  })
  it('keeps the event id of a rejected event for the error record', () => {
    const d = decode({ ...usage, status: 'x' })
    expect(d).toMatchObject({ ok: false, eventId: usage.event_id, eventType: 'key.usage' })
  })
})
