// A stand-in for the platform's key service (../shared/contract, "Commands sent by the pipeline"), on loopback:
// it checks what the contract asks of a caller (a fresh HMAC signature over "<t>.<raw body>", the Idempotency-Key)
// and answers as the real one would: 200, 409 already revoked, 422 not revocable (auto-generated), 404 unknown.
// Used by the tests, `npm run bench:revoke` and `keywatch demo`.
import { createHmac, timingSafeEqual } from 'node:crypto'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'

export interface StandInKey {
  account_id: string
  key_prefix: string
  key_kind: 'secret' | 'publishable' | 'restricted'
  mode: 'live' | 'test'
  auto_generated?: boolean
  state: 'active' | 'revoked'
}

export interface KeyServiceCall {
  key_id: string
  command: string
  idempotency_key: string
  signature_ok: boolean
  body: Record<string, unknown>
  status: number
  received_at: number
}

/** A revoke or reset the service carried out: the platform publishes the matching key.lifecycle event. */
export interface AppliedCommand {
  key_id: string
  key: StandInKey
  command: 'revoke' | 'reset'
  command_id: string
  at: string
  requested_by: string
  reason: string
}

export interface StandInKeyService {
  url: string
  keys: Map<string, StandInKey>
  calls: KeyServiceCall[]
  /** Statuses to answer before the real answer (e.g. 503, 429), one per call. */
  script: number[]
  close(): Promise<void>
}

export async function startStandInKeyService(options: { secret: string; onApplied?: (applied: AppliedCommand) => void | Promise<void> }): Promise<StandInKeyService> {
  const keys = new Map<string, StandInKey>()
  const calls: KeyServiceCall[] = []
  const script: number[] = []
  const answered = new Map<string, { status: number; body: string }>() // Idempotency-Key -> first answer

  const verify = (header: string | undefined, body: string): boolean => {
    const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(header ?? '')
    if (!m || Math.abs(Date.now() / 1000 - Number(m[1])) > 300) return false
    const expected = createHmac('sha256', options.secret).update(`${m[1]}.${body}`).digest()
    const given = Buffer.from(m[2]!, 'hex')
    return given.length === expected.length && timingSafeEqual(given, expected)
  }

  const server = createServer((req, res) => {
    const received_at = Date.now()
    const chunks: Buffer[] = []
    req.on('data', (d: Buffer) => chunks.push(d))
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8')
      const m = /^\/keys\/([^/]+)\/(revoke|reset)$/.exec(req.url ?? '')
      const idempotencyKey = String(req.headers['idempotency-key'] ?? '')
      const signatureOk = verify(req.headers['monitor-signature'] as string | undefined, raw)
      let body: Record<string, unknown> = {}
      try {
        body = JSON.parse(raw) as Record<string, unknown>
      } catch {
        /* answered 400 below */
      }
      const answer = (status: number, payload: unknown, headers: Record<string, string> = {}) => {
        calls.push({ key_id: m?.[1] ?? '', command: m?.[2] ?? '', idempotency_key: idempotencyKey, signature_ok: signatureOk, body, status, received_at })
        res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(typeof payload === 'string' ? payload : JSON.stringify(payload))
      }
      if (req.method !== 'POST' || !m) return answer(404, { error: 'no such route' })
      if (!signatureOk) return answer(401, { error: 'bad or stale Monitor-Signature' })
      if (!idempotencyKey || body.command_id !== idempotencyKey) return answer(400, { error: 'Idempotency-Key must be the command_id' })
      const scripted = script.shift()
      if (scripted) return answer(scripted, { error: 'busy' }, scripted === 429 ? { 'retry-after': '0' } : {})
      const earlier = answered.get(idempotencyKey)
      if (earlier) return answer(earlier.status, earlier.body)

      const [keyId, command] = [m[1]!, m[2] as 'revoke' | 'reset']
      const key = keys.get(keyId)
      let status = 200
      let payload: unknown
      if (!key) (status = 404), (payload = { error: 'no such key' })
      else if (key.state === 'revoked') (status = 409), (payload = { error: 'already revoked' })
      else if (command === 'revoke' && key.auto_generated) (status = 422), (payload = { error: 'an auto-generated key can be reset, not revoked' })
      else {
        const at = new Date().toISOString()
        if (command === 'revoke') key.state = 'revoked'
        payload = { key_id: keyId, status: command === 'revoke' ? 'revoked' : 'reset', at }
        const applied: AppliedCommand = { key_id: keyId, key: { ...key }, command, command_id: idempotencyKey, at, requested_by: String(body.requested_by ?? ''), reason: String(body.reason ?? '') }
        void Promise.resolve(options.onApplied?.(applied)).catch(() => undefined)
      }
      answered.set(idempotencyKey, { status, body: JSON.stringify(payload) })
      answer(status, payload)
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    keys,
    calls,
    script,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections()
        server.close(() => r())
      }),
  }
}

/** The key.lifecycle event the platform publishes once it applied a command. */
export function lifecycleEventFor(applied: AppliedCommand, eventId: string, secretSha256?: string): Record<string, unknown> {
  const base = {
    event_id: eventId,
    type: 'key.lifecycle',
    schema_version: 1,
    occurred_at: applied.at,
    account_id: applied.key.account_id,
    key_id: applied.key_id,
    key_prefix: applied.key.key_prefix,
    key_kind: applied.key.key_kind,
    mode: applied.key.mode,
    actor: { type: 'monitor', id: applied.requested_by || null },
  }
  return applied.command === 'revoke' ? { ...base, action: 'revoked', reason: applied.reason.slice(0, 200) || null } : { ...base, action: 'reset', secret_sha256: secretSha256 }
}
