// Builders of contract events: defaults that look like real traffic, times relative to a moment, and only what a
// case is about spelled out. The detector fixtures, the tests and the demo's simulated platform build with these.
import { createHash, randomUUID } from 'node:crypto'

export const sha256 = (s: string) => createHash('sha256').update(s).digest('hex')

export function ago(at: string, amount: { days?: number; hours?: number; minutes?: number; seconds?: number }): string {
  const ms = ((amount.days ?? 0) * 24 * 60 + (amount.hours ?? 0) * 60 + (amount.minutes ?? 0)) * 60_000 + (amount.seconds ?? 0) * 1000
  return new Date(Date.parse(at) - ms).toISOString()
}

export function after(at: string, amount: { days?: number; hours?: number; minutes?: number }): string {
  return ago(at, { days: -(amount.days ?? 0), hours: -(amount.hours ?? 0), minutes: -(amount.minutes ?? 0) })
}

/** A key of its own account, for a fixture case: keyNamed('StaleUsed1') is key_StaleUsed1 of acct_StaleUsed1. */
export function keyNamed(name: string, kind: 'secret' | 'publishable' | 'restricted' = 'secret', mode: 'live' | 'test' = 'live') {
  return { account_id: `acct_${name}`, key_id: `key_${name}`, key_kind: kind, mode }
}

interface KeyRef {
  account_id: string
  key_id: string
  key_prefix?: string
  key_kind?: 'secret' | 'publishable' | 'restricted'
  mode?: 'live' | 'test'
}

function keyFields(k: KeyRef) {
  const kind = k.key_kind ?? 'secret'
  const mode = k.mode ?? 'live'
  return { account_id: k.account_id, key_id: k.key_id, key_prefix: k.key_prefix ?? `${kind === 'secret' ? 'sk' : kind === 'publishable' ? 'pk' : 'rk'}_${mode}_Ab12`, key_kind: kind, mode }
}

const common = (type: string, occurred_at: string) => ({ event_id: randomUUID(), type, schema_version: 1, occurred_at })

export function usage(k: KeyRef, occurred_at: string, fields: Record<string, unknown> = {}) {
  return {
    ...common('key.usage', occurred_at),
    ...keyFields(k),
    request_id: `req_${randomUUID().slice(0, 8)}`,
    method: 'GET',
    endpoint: '/v1/payments',
    scope: 'payments',
    status: 200,
    error_code: null,
    ip: '203.0.113.10',
    country: 'PH',
    asn: 64500,
    user_agent: 'paykore-node/3.2.1 node/22.11.0',
    origin: null,
    sdk: 'paykore-node/3.2.1',
    client_env: 'production',
    latency_ms: 40,
    ...fields,
  }
}

/** `n` usage events spread evenly over the `minutes` before `end`. */
export function usageSeries(k: KeyRef, end: string, n: number, minutes: number, fields: Record<string, unknown> = {}) {
  return Array.from({ length: n }, (_, i) => usage(k, ago(end, { seconds: Math.floor(((i + 0.5) * minutes * 60) / n) }), fields))
}

export function ratelimited(k: KeyRef, occurred_at: string, fields: Record<string, unknown> = {}) {
  return {
    ...common('key.ratelimited', occurred_at),
    ...keyFields(k),
    request_id: `req_${randomUUID().slice(0, 8)}`,
    endpoint: '/v1/balance',
    ip: '198.51.100.77',
    limit: 100,
    window_seconds: 1,
    observed: 131,
    retry_after_seconds: 1,
    ...fields,
  }
}

export function ratelimitedSeries(k: KeyRef, end: string, n: number, minutes: number) {
  return Array.from({ length: n }, (_, i) => ratelimited(k, ago(end, { seconds: Math.floor(((i + 0.5) * minutes * 60) / n) })))
}

type Lifecycle = 'created' | 'rotated' | 'rolled_back' | 'reset' | 'revoked' | 'expired' | 'scopes_changed'

export function lifecycle(k: KeyRef, action: Lifecycle, occurred_at: string, fields: Record<string, unknown> = {}) {
  const defaults: Record<Lifecycle, Record<string, unknown>> = {
    created: { label: 'api', scopes: null, expires_at: null, auto_generated: false, secret_sha256: sha256(`${k.key_id}-secret`) },
    rotated: {},
    rolled_back: {},
    reset: { secret_sha256: sha256(`${k.key_id}-reset-${occurred_at}`) },
    revoked: { reason: null },
    expired: {},
    scopes_changed: { scopes: null },
  }
  return {
    ...common('key.lifecycle', occurred_at),
    ...keyFields(k),
    action,
    actor: { type: 'user', id: 'usr_Ana01' },
    ...defaults[action],
    ...fields,
  }
}

export function auth(account_id: string, action: string, occurred_at: string, fields: Record<string, unknown> = {}) {
  return {
    ...common('auth.event', occurred_at),
    account_id,
    user_id: 'usr_Ana01',
    actor_email: 'ana@merchant.example',
    action,
    ip: '203.0.113.10',
    country: 'PH',
    user_agent: 'Mozilla/5.0 (Macintosh) Safari/17.1',
    session_id: null,
    reason: null,
    ...fields,
  }
}

export function leak(account_id: string, occurred_at: string, token: string, fields: Record<string, unknown> = {}) {
  return { ...common('leak.reported', occurred_at), account_id, token, token_type: 'paykore_secret_key', source: 'github', url: 'https://github.com/example/shop/blob/0a1b2c/config.js', ...fields }
}
