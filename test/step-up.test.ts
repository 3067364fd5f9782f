// Step-up on the real engine: a person enrols an authenticator with `keywatch token create … --totp` (a QR code in
// the terminal and an otpauth URI, once); sensitive actions then need a current code in X-Keywatch-OTP, checked
// with RFC 6238 (each code good once, five wrong ones lock the token for a while); every refusal is audited; any
// route can ask for it with `config: { stepUp: true }`; STEP_UP=off turns it off.
import type { FastifyInstance } from 'fastify'
import * as OTPAuth from 'otpauth'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildApi } from '../api/server.ts'
import { apiDepsOf, type Runtime } from '../app/runtime.ts'
import { queryRows } from '../clickhouse/client.ts'
import { bearer, openTestRuntime, runCli, tempDir } from './helpers.ts'
import { waitFor } from './kafka/admin.ts'

const env = { KEYWATCH_DATA_DIR: tempDir() }
let rt: Runtime
let api: FastifyInstance
let token: string
let secret: string
let enrolmentOutput: string

const code = (offsetSeconds = 0) => new OTPAuth.TOTP({ secret: OTPAuth.Secret.fromBase32(secret), digits: 6, period: 30, algorithm: 'SHA1' }).generate({ timestamp: Date.now() + offsetSeconds * 1000 })
const otp = (c: string) => ({ authorization: `Bearer ${token}`, 'x-keywatch-otp': c })

beforeAll(async () => {
  // Enrolment as a person does it, from the command line on keywatch's host.
  const created = await runCli(['token', 'create', '--role', 'admin', '--name', 'ops-otp', '--totp'], env)
  expect(created.code, created.stderr).toBe(0)
  token = created.stdout.trim()
  enrolmentOutput = created.stderr
  secret = /secret=([A-Z2-7]+)/.exec(created.stderr)![1]!
  rt = await openTestRuntime(env)
  api = await buildApi(
    apiDepsOf(rt, {
      // A route of another group asking for step-up the same way (as POST /v1/actions/:id/approve does).
      plugins: [async (scope) => void scope.post('/v1/test/approve', { config: { permission: 'respond', audit: 'action.approve', stepUp: true } }, async () => ({ approved: true }))],
    }),
  )
})
afterAll(async () => {
  await api?.close()
  await rt?.close()
})

describe('enrolment', () => {
  it('shows the authenticator enrolment once: a QR code in the terminal and an otpauth URI', () => {
    expect(token).toMatch(/^kw_[A-Za-z0-9]{32}$/)
    expect(enrolmentOutput).toMatch(/^otpauth:\/\/totp\/keywatch:ops-otp\?issuer=keywatch&secret=[A-Z2-7]{32}&algorithm=SHA1&digits=6&period=30$/m)
    expect(enrolmentOutput.match(/[▀▄█]/g)!.length).toBeGreaterThan(300) // the QR code's blocks
  })

  it('stores the secret sealed, never as it is', async () => {
    const rows = await queryRows<{ secret_sealed: string }>(rt.storage.client, 'SELECT secret_sealed FROM token_totp')
    expect(rows).toHaveLength(1)
    expect(rows[0]!.secret_sealed).toMatch(/^v1\./)
    expect(JSON.stringify(rows)).not.toContain(secret)
  })
})

describe('a sensitive action', () => {
  it('needs a current code: none, a wrong one or a reused one get 401 step_up_required; each refusal is audited', async () => {
    const resume = (headers: Record<string, string>) => api.inject({ method: 'POST', url: '/v1/response/resume', payload: { reason: 'fixed' }, headers })
    const none = await resume({ authorization: `Bearer ${token}` })
    expect(none.statusCode).toBe(401)
    expect(none.json()).toEqual({ error: { code: 'step_up_required', message: expect.stringContaining('X-Keywatch-OTP') } })
    const wrong = String((Number(code()) + 1) % 1_000_000).padStart(6, '0')
    expect((await resume(otp(wrong))).json().error.code).toBe('step_up_required')
    const good = code(-30)
    expect((await resume(otp(good))).statusCode).toBe(200)
    const again = await resume(otp(good))
    expect(again.statusCode).toBe(401)
    expect(again.json().error.message).toContain('used already')
    // The audit hook writes its record once the response is sent (onResponse), so the last one can trail inject().
    const trail = await waitFor('the four records of the step-up', async () => {
      const rows = await queryRows<{ action: string; outcome: string; detail: string }>(rt.storage.client, "SELECT action, outcome, detail FROM audit_trail WHERE actor = 'token:ops-otp' ORDER BY seq")
      return rows.length >= 4 && rows
    }, 10_000)
    expect(trail.map((r) => [r.action, r.outcome, (JSON.parse(r.detail) as { step_up: string }).step_up])).toEqual([
      ['response.resume', 'denied', 'missing'],
      ['response.resume', 'denied', 'invalid'],
      ['response.resume', 'ok', 'totp'],
      ['response.resume', 'denied', 'reused'],
    ])
  })

  it('is any route with config.stepUp, and the verifier serves other channels too', async () => {
    expect((await api.inject({ method: 'POST', url: '/v1/test/approve', headers: { authorization: `Bearer ${token}` } })).json().error.code).toBe('step_up_required')
    expect((await api.inject({ method: 'POST', url: '/v1/test/approve', headers: otp(code(0)) })).json()).toEqual({ approved: true })
    const [info] = (await rt.tokens.list()).filter((t) => t.name === 'ops-otp')
    expect(await rt.stepUp.verifyStepUp(info!, code(30))).toEqual({ ok: true })
    expect(await rt.stepUp.verifyStepUp(info!, code(30))).toMatchObject({ ok: false, reason: 'reused' })
  })

  it('is refused to a token without an authenticator, and not needed for a viewer token or a plain revoke', async () => {
    const plain = await bearer(rt, 'admin', 'no-authenticator')
    const res = await api.inject({ method: 'POST', url: '/v1/tokens', payload: { role: 'admin', name: 'escalated' }, headers: plain })
    expect(res.statusCode).toBe(401)
    expect(res.json().error.message).toContain('--totp')
    expect((await api.inject({ method: 'POST', url: '/v1/tokens', payload: { role: 'viewer', name: 'a-viewer' }, headers: plain })).statusCode).toBe(201)
    expect((await api.inject({ method: 'DELETE', url: '/v1/tokens/a-viewer', headers: plain })).statusCode).toBe(200)
    expect((await api.inject({ method: 'DELETE', url: '/v1/tokens/ops-otp', headers: plain })).json().error.code).toBe('step_up_required')
  })

  it('locks a token out after five wrong codes', async () => {
    const [info] = (await rt.tokens.list()).filter((t) => t.name === 'ops-otp')
    for (let i = 0; i < 5; i++) expect(await rt.stepUp.verifyStepUp(info!, '000000')).toMatchObject({ ok: false })
    expect(await rt.stepUp.verifyStepUp(info!, code(0))).toMatchObject({ ok: false, reason: 'locked' })
  })

  it('is off with STEP_UP=off (behind an SSO)', async () => {
    const sso = await buildApi(apiDepsOf(rt, { stepUp: undefined }))
    try {
      const plain = await bearer(rt, 'admin', 'behind-sso')
      expect((await sso.inject({ method: 'POST', url: '/v1/response/resume', payload: { reason: 'sso' }, headers: plain })).statusCode).toBe(200)
    } finally {
      await sso.close()
    }
    const { parseConfig } = await import('../config/config.ts')
    expect(parseConfig({ STEP_UP: 'off' }).security.stepUp).toBe('off')
    expect(parseConfig({}).security.stepUp).toBe('totp')
  })
})
