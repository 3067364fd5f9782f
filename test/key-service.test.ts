// The HTTP key service client against a key service on loopback that checks what the contract asks of a caller:
// the HMAC signature over timestamp and raw body, a fresh timestamp, and the Idempotency-Key.
import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { KeyServiceClient, KeyServiceError, type KeyCommandRequest } from '../response/key-service.ts'

const SECRET = 'whsec_test_only_secret'
const keys = new Map<string, 'active' | 'revoked' | 'auto'>()
const seen = new Map<string, { status: number; body: string }>() // idempotency: command_id -> first answer
const calls: { key: string; command: string; idempotencyKey: string; signatureOk: boolean }[] = []
const script: number[] = [] // statuses to answer before the real one (e.g. 503, 429)
let server: Server
let baseUrl = ''

function verify(header: string | undefined, body: string): boolean {
  const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(header ?? '')
  if (!m) return false
  if (Math.abs(Date.now() / 1000 - Number(m[1])) > 300) return false
  const expected = createHmac('sha256', SECRET).update(`${m[1]}.${body}`).digest()
  const given = Buffer.from(m[2]!, 'hex')
  return given.length === expected.length && timingSafeEqual(given, expected)
}

beforeAll(async () => {
  server = createServer((req, res) => {
    let body = ''
    req.on('data', (d) => (body += d))
    req.on('end', () => {
      const [, , key, command] = (req.url ?? '').split('/') // /keys/:id/:command
      const idempotencyKey = String(req.headers['idempotency-key'] ?? '')
      const signatureOk = verify(req.headers['monitor-signature'] as string | undefined, body)
      calls.push({ key: key!, command: command!, idempotencyKey, signatureOk })
      const send = (status: number, payload: unknown, headers: Record<string, string> = {}) => {
        res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(payload))
      }
      if (!signatureOk) return send(401, { error: 'bad signature' })
      const scripted = script.shift()
      if (scripted) return send(scripted, { error: 'busy' }, scripted === 429 ? { 'retry-after': '0' } : {})
      const earlier = seen.get(idempotencyKey)
      if (earlier) return res.writeHead(earlier.status, { 'content-type': 'application/json' }).end(earlier.body)
      const state = keys.get(key!)
      let status = 200
      let answer: unknown
      if (!state) (status = 404), (answer = { error: 'no such key' })
      else if (command === 'revoke' && state === 'auto') (status = 422), (answer = { error: 'auto-generated keys can only be reset' })
      else if (command === 'revoke' && state === 'revoked') (status = 409), (answer = { error: 'already revoked' })
      else {
        if (command === 'revoke') keys.set(key!, 'revoked')
        answer = { key_id: key, status: command === 'revoke' ? 'revoked' : 'reset', at: new Date().toISOString() }
      }
      seen.set(idempotencyKey, { status, body: JSON.stringify(answer) })
      send(status, answer)
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
})
afterAll(() => new Promise<void>((r) => server.close(() => r())))

const request = (key: string, command: 'revoke' | 'reset' = 'revoke'): KeyCommandRequest => ({
  command,
  key_id: key,
  command_id: randomUUID(),
  reason: 'secret found in public repository (github)',
  finding_id: 'fnd_1',
  requested_by: 'auto:leak.public_report',
})

describe('KeyServiceClient', () => {
  const client = () => new KeyServiceClient({ baseUrl, secret: SECRET, backoffMs: 5, retries: 3 })

  it('revokes with a valid signature and the command id as Idempotency-Key', async () => {
    keys.set('key_Active0001', 'active')
    const req = request('key_Active0001')
    expect(await client().send(req)).toMatchObject({ outcome: 'done', status: 'revoked', attempts: 1 })
    expect(calls.at(-1)).toEqual({ key: 'key_Active0001', command: 'revoke', idempotencyKey: req.command_id, signatureOk: true })
    expect(keys.get('key_Active0001')).toBe('revoked')
  })

  it('treats 409 as already revoked, 422 as not revocable and 404 as an unknown key', async () => {
    keys.set('key_Revoked001', 'revoked')
    keys.set('key_AutoGen001', 'auto')
    expect(await client().send(request('key_Revoked001'))).toMatchObject({ outcome: 'already_revoked' })
    expect(await client().send(request('key_AutoGen001'))).toMatchObject({ outcome: 'not_revocable' })
    expect(await client().send(request('key_AutoGen001', 'reset'))).toMatchObject({ outcome: 'done', status: 'reset' })
    expect(await client().send(request('key_Nobody0001'))).toMatchObject({ outcome: 'unknown_key' })
  })

  it('retries 503 and 429 (honouring Retry-After) with the same Idempotency-Key, re-signed each time', async () => {
    keys.set('key_Busy000001', 'active')
    script.push(503, 429, 502)
    const req = request('key_Busy000001')
    const before = calls.length
    expect(await client().send(req)).toMatchObject({ outcome: 'done', attempts: 4 })
    const attempts = calls.slice(before)
    expect(attempts).toHaveLength(4)
    expect(attempts.every((c) => c.idempotencyKey === req.command_id && c.signatureOk)).toBe(true)
  })

  it('gives up with a retriable error when the service stays down', async () => {
    keys.set('key_Down000001', 'active')
    script.push(503, 503, 503, 503, 503)
    const err = await client().send(request('key_Down000001')).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(KeyServiceError)
    expect((err as KeyServiceError).retriable).toBe(true)
    expect(keys.get('key_Down000001')).toBe('active')
  })

  it('is refused (401, not retried) when signed with the wrong secret', async () => {
    keys.set('key_Forged0001', 'active')
    const forged = new KeyServiceClient({ baseUrl, secret: 'not-the-secret', backoffMs: 5 })
    const err = await forged.send(request('key_Forged0001')).catch((e: unknown) => e)
    expect(err).toMatchObject({ retriable: false, status: 401 })
    expect(keys.get('key_Forged0001')).toBe('active')
  })

  it('is refused when its clock is off by more than the replay window', async () => {
    keys.set('key_Stale00001', 'active')
    const stale = new KeyServiceClient({ baseUrl, secret: SECRET, now: () => Date.now() - 10 * 60_000 })
    expect(await stale.send(request('key_Stale00001')).catch((e: unknown) => e)).toMatchObject({ status: 401 })
  })

  it('is idempotent: the same command sent twice revokes once and answers the same', async () => {
    keys.set('key_Twice00001', 'active')
    const req = request('key_Twice00001')
    const first = await client().send(req)
    const second = await client().send(req)
    expect(first).toMatchObject({ outcome: 'done', status: 'revoked' })
    expect(second).toMatchObject({ outcome: 'done', status: 'revoked' })
  })
})
