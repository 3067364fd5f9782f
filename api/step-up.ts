// Step-up for sensitive actions: a current TOTP code (RFC 6238, via the maintained `otpauth` library) from the
// authenticator of the person the token belongs to, sent as `X-Keywatch-OTP`. A bearer token alone can be stolen
// from a shell history or a browser; the code proves the person is there now.
//
// - `StepUp` is the application-level verifier: enrolment (a secret per token, sealed with a key derived from
//   keywatch's signing key, so a reader of ClickHouse cannot mint codes) and `verifyStepUp(token, code)`, which
//   other ways in (Slack approvals) use too.
// - `registerStepUp` is the API's hook: a route says `config: { stepUp: true }` (or a predicate of the request, for
//   "an admin token" or "a forced revoke"); without a valid code it answers 401 `step_up_required`, and the route's
//   audit record says so. The command line on keywatch's own host (its local token) needs none: whoever can read
//   the data directory holds everything already. `STEP_UP=off` turns it off for deployments behind their own SSO.
import { createCipheriv, createDecipheriv, createPrivateKey, hkdfSync, randomBytes, type KeyObject } from 'node:crypto'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import * as OTPAuth from 'otpauth'
import { queryRows, type ClickHouseClient } from '../clickhouse/client.ts'
import { chTime } from '../clickhouse/time.ts'
import { ApiError } from './errors.ts'

export type StepUpRule = boolean | ((request: FastifyRequest) => boolean | Promise<boolean>)

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The route is a sensitive action: it needs a current TOTP code (always, or when the predicate says so). */
    stepUp?: StepUpRule
  }
  interface FastifyRequest {
    /** How step-up went, for the audit record: `totp`, or why it failed. */
    stepUp?: string
  }
}

/** What a step-up check needs of a token (or of a person acting through another channel, mapped to one). */
export interface StepUpSubject {
  token_id: string
  name?: string
}

export type StepUpFailure = 'not_enrolled' | 'missing' | 'malformed' | 'invalid' | 'reused' | 'locked'
export type StepUpResult = { ok: true } | { ok: false; reason: StepUpFailure; message: string }

export interface Enrolment {
  /** The otpauth:// URI an authenticator app reads (shown once, as a QR code and as text). */
  uri: string
  /** The base32 secret, for typing in by hand. */
  secret: string
}

const ISSUER = 'keywatch'
const PERIOD = 30
const DIGITS = 6
const MAX_FAILURES = 5

const totpOf = (secret: string, label: string) => new OTPAuth.TOTP({ issuer: ISSUER, label, algorithm: 'SHA1', digits: DIGITS, period: PERIOD, secret: OTPAuth.Secret.fromBase32(secret) })

export interface StepUpOptions {
  /** The key the TOTP secrets are sealed with is derived from this one (keywatch's Ed25519 signing key). */
  sealingKey: () => KeyObject
  now?: () => number
}

export class StepUp {
  /** The last time step accepted per token: a code is good once (RFC 6238 section 5.2). */
  private readonly lastStep = new Map<string, number>()
  /** Wrong codes per token in the current 5 minutes: past 5 the token must wait (a million codes cannot be tried). */
  private readonly failures = new Map<string, { window: number; n: number }>()
  private sealKey?: Buffer

  constructor(
    private readonly client: ClickHouseClient,
    private readonly options: StepUpOptions,
  ) {}

  private now(): number {
    return (this.options.now ?? Date.now)()
  }

  /** Enrols a token: a new TOTP secret, stored sealed; the URI and secret are returned once. */
  async enroll(token: StepUpSubject, by: string): Promise<Enrolment> {
    const secret = new OTPAuth.Secret({ size: 20 }).base32
    await this.client.insert({
      table: 'token_totp',
      format: 'JSONEachRow',
      values: [{ token_id: token.token_id, secret_sealed: this.seal(secret), enrolled_at: chTime(this.now()), enrolled_by: by, version: this.now() * 1000 }],
    })
    return { uri: totpOf(secret, token.name ?? token.token_id).toString(), secret }
  }

  async isEnrolled(tokenId: string): Promise<boolean> {
    return (await this.secretOf(tokenId)) !== undefined
  }

  /** Whether `code` is a current TOTP code of the token's authenticator, not used before. */
  async verifyStepUp(token: StepUpSubject, code: string | undefined): Promise<StepUpResult> {
    const secret = await this.secretOf(token.token_id)
    if (!secret) return { ok: false, reason: 'not_enrolled', message: `token ${token.name ?? token.token_id} has no authenticator enrolled; sensitive actions need one: keywatch token create … --totp` }
    if (code === undefined || code === '') return { ok: false, reason: 'missing', message: 'this action needs a current code from your authenticator: send it as X-Keywatch-OTP' }
    const digits = code.replace(/\s/g, '')
    if (!/^\d{6}$/.test(digits)) return { ok: false, reason: 'malformed', message: 'X-Keywatch-OTP must be the 6-digit code from your authenticator' }
    const totp = totpOf(secret, token.token_id)
    const now = this.now()
    const window = Math.floor(now / 300_000)
    const failed = this.failures.get(token.token_id)
    if (failed && failed.window === window && failed.n >= MAX_FAILURES) return { ok: false, reason: 'locked', message: `${MAX_FAILURES} wrong codes in 5 minutes: try again in ${Math.ceil(((window + 1) * 300_000 - now) / 60_000)} minutes` }
    const delta = totp.validate({ token: digits, timestamp: now, window: 1 })
    // A code used already is told as such even once it has left the window (a replay, not a typo).
    const replayed = delta === null ? totp.validate({ token: digits, timestamp: now, window: 4 }) : null
    if (replayed !== null && totp.counter({ timestamp: now }) + replayed <= (this.lastStep.get(token.token_id) ?? -1)) {
      return { ok: false, reason: 'reused', message: 'this code was used already: wait for the next one' }
    }
    if (delta === null) {
      this.failures.set(token.token_id, { window, n: failed?.window === window ? failed.n + 1 : 1 })
      return { ok: false, reason: 'invalid', message: 'the code is not current for this token: use the code your authenticator shows now' }
    }
    const step = totp.counter({ timestamp: now }) + delta
    if (step <= (this.lastStep.get(token.token_id) ?? -1)) return { ok: false, reason: 'reused', message: 'this code was used already: wait for the next one' }
    this.lastStep.set(token.token_id, step)
    return { ok: true }
  }

  private async secretOf(tokenId: string): Promise<string | undefined> {
    const [row] = await queryRows<{ secret_sealed: string }>(this.client, 'SELECT secret_sealed FROM token_totp FINAL WHERE token_id = {t:String} LIMIT 1', { t: tokenId })
    if (!row) return undefined
    try {
      return this.unseal(row.secret_sealed)
    } catch {
      return undefined // sealed with another key: as good as not enrolled
    }
  }

  private key(): Buffer {
    if (!this.sealKey) {
      const material = createPrivateKey(this.options.sealingKey().export({ type: 'pkcs8', format: 'pem' })).export({ type: 'pkcs8', format: 'der' })
      this.sealKey = Buffer.from(hkdfSync('sha256', material, 'keywatch', 'totp-secret-seal:v1', 32))
    }
    return this.sealKey
  }

  private seal(secret: string): string {
    const iv = randomBytes(12)
    const cipher = createCipheriv('aes-256-gcm', this.key(), iv)
    const body = Buffer.concat([cipher.update(secret, 'utf8'), cipher.final()])
    return `v1.${Buffer.concat([iv, cipher.getAuthTag(), body]).toString('base64')}`
  }

  private unseal(sealed: string): string {
    const raw = Buffer.from(sealed.replace(/^v1\./, ''), 'base64')
    const decipher = createDecipheriv('aes-256-gcm', this.key(), raw.subarray(0, 12))
    decipher.setAuthTag(raw.subarray(12, 28))
    return Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]).toString('utf8')
  }
}

/** The step-up hook: after auth and validation (a predicate may read the body), before the handler. */
export function registerStepUp(app: FastifyInstance, stepUp: StepUp): void {
  app.addHook('preHandler', async (request) => {
    const rule = request.routeOptions.config?.stepUp
    if (!rule) return
    if (rule !== true && !(await rule(request))) return
    const p = request.principal
    if (p?.token_id === 'local') return void (request.stepUp = 'local')
    if (!p) throw new ApiError(401, 'step_up_required', 'this action needs an API token and a current code from its authenticator')
    const header = request.headers['x-keywatch-otp']
    const result = await stepUp.verifyStepUp({ token_id: p.token_id, name: p.actor.replace(/^token:/, '') }, typeof header === 'string' ? header : undefined)
    if (!result.ok) {
      request.stepUp = result.reason
      throw new ApiError(401, 'step_up_required', result.message)
    }
    request.stepUp = 'totp'
  })
}
