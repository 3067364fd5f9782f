// Synthetic, contract-valid events for tests, benchmarks and the demo.
import { randomUUID } from 'node:crypto'
import type { KeyUsage } from './events.ts'

export interface UsageOptions {
  accounts?: number
  keys?: number
  /** occurred_at is spread over [from, to). */
  from?: number
  to?: number
}

const ENDPOINTS = ['/v1/payments', '/v1/payments/{id}', '/v1/refunds', '/v1/customers', '/v1/balance'] as const
const METHODS = ['GET', 'POST', 'GET', 'GET', 'DELETE'] as const

/** The i-th usage event of a deterministic population of keys (ids and times vary with i). */
export function usageEvent(i: number, opts: UsageOptions = {}): KeyUsage {
  const keys = opts.keys ?? 1_000
  const accounts = opts.accounts ?? 50
  const to = opts.to ?? Date.now() - 60_000
  const from = opts.from ?? to - 3_600_000
  const k = i % keys
  const e = i % ENDPOINTS.length
  const status = i % 97 === 0 ? 429 : i % 31 === 0 ? 402 : 200
  return {
    event_id: randomUUID(),
    type: 'key.usage',
    schema_version: 1,
    occurred_at: new Date(from + ((i * 7919) % Math.max(1, to - from))).toISOString(),
    account_id: `acct_${String(k % accounts).padStart(6, '0')}`,
    key_id: `key_${String(k).padStart(8, '0')}`,
    key_prefix: `sk_live_${String(k % 10_000).padStart(4, '0')}`,
    key_kind: 'secret',
    mode: 'live',
    request_id: `req_${i}`,
    method: METHODS[e]!,
    endpoint: ENDPOINTS[e]!,
    scope: 'payments',
    status,
    error_code: status === 429 ? 'RATE_LIMIT_EXCEEDED' : null,
    ip: `10.${(k >> 8) & 255}.${k & 255}.${i % 7}`,
    country: 'PH',
    asn: 64500 + (k % 20),
    user_agent: 'paykore-node/3.2.1 node/22.11.0',
    origin: null,
    sdk: 'paykore-node/3.2.1',
    client_env: 'production',
    latency_ms: 20 + (i % 200),
    amount_minor: METHODS[e] === 'POST' && status === 200 ? 1_000 + (i % 100_000) : null,
    currency: METHODS[e] === 'POST' && status === 200 ? 'PHP' : null,
  }
}
