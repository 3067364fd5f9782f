// The platform's key service over HTTP (../shared/contract, "Commands sent by the pipeline"): a signed, idempotent
// revoke or reset, retried with backoff on 429 and 5xx. 409 means already revoked (done); 422 means the key cannot be
// revoked (an auto-generated key: reset it instead); 404 means no such key.
import { createHmac } from 'node:crypto'
import { KeywatchError } from '../core/errors.ts'

export type KeyCommand = 'revoke' | 'reset'

export interface KeyCommandRequest {
  command: KeyCommand
  key_id: string
  command_id: string
  reason: string
  finding_id: string | null
  requested_by: string
}

export type KeyCommandOutcome =
  | { outcome: 'done'; status: 'revoked' | 'reset'; at: string | null; attempts: number }
  | { outcome: 'already_revoked'; attempts: number }
  | { outcome: 'not_revocable'; attempts: number }
  | { outcome: 'unknown_key'; attempts: number }

/** The key service did not accept the command; `retriable` says whether trying again later may work. */
export class KeyServiceError extends KeywatchError {
  constructor(
    message: string,
    retriable: boolean,
    readonly status?: number,
  ) {
    super(retriable ? 'unavailable' : 'unprocessable', 'key_service_failed', message, { retriable })
    this.name = 'KeyServiceError'
  }
}

export interface KeyServiceOptions {
  baseUrl: string
  /** Shared HMAC secret for Monitor-Signature. */
  secret: string
  retries?: number
  /** First backoff; doubles each retry, capped at 10 s; a Retry-After header wins. */
  backoffMs?: number
  timeoutMs?: number
  now?: () => number
}

/** `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>` */
export function monitorSignature(secret: string, body: string, unixSeconds: number): string {
  return `t=${unixSeconds},v1=${createHmac('sha256', secret).update(`${unixSeconds}.${body}`).digest('hex')}`
}

export class KeyServiceClient {
  constructor(private readonly options: KeyServiceOptions) {}

  async send(request: KeyCommandRequest): Promise<KeyCommandOutcome> {
    const body = JSON.stringify({ command_id: request.command_id, reason: request.reason, finding_id: request.finding_id, requested_by: request.requested_by })
    const url = `${this.options.baseUrl.replace(/\/$/, '')}/keys/${encodeURIComponent(request.key_id)}/${request.command}`
    const retries = this.options.retries ?? 5
    for (let attempt = 1; ; attempt++) {
      let response: Response
      try {
        // Signed per attempt: the timestamp must be fresh for the service's replay window.
        const t = Math.floor((this.options.now ?? Date.now)() / 1000)
        response = await fetch(url, {
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            'idempotency-key': request.command_id,
            'monitor-signature': monitorSignature(this.options.secret, body, t),
          },
          body,
          signal: AbortSignal.timeout(this.options.timeoutMs ?? 5_000),
        })
      } catch (err) {
        if (attempt > retries) throw new KeyServiceError(`key service unreachable after ${attempt} attempts: ${(err as Error).message}`, true)
        await this.backoff(attempt)
        continue
      }
      if (response.status === 200) {
        const answer = (await response.json().catch(() => ({}))) as { status?: string; at?: string }
        const status = answer.status === 'reset' ? 'reset' : 'revoked'
        return { outcome: 'done', status, at: answer.at ?? null, attempts: attempt }
      }
      if (response.status === 409) return { outcome: 'already_revoked', attempts: attempt }
      if (response.status === 422) return { outcome: 'not_revocable', attempts: attempt }
      if (response.status === 404) return { outcome: 'unknown_key', attempts: attempt }
      if (response.status === 429 || response.status >= 500) {
        if (attempt > retries) throw new KeyServiceError(`key service answered ${response.status} ${attempt} times`, true, response.status)
        await this.backoff(attempt, response.headers.get('retry-after'))
        continue
      }
      throw new KeyServiceError(`key service refused ${request.command} of ${request.key_id}: ${response.status} ${await response.text()}`, false, response.status)
    }
  }

  private async backoff(attempt: number, retryAfter?: string | null): Promise<void> {
    const seconds = retryAfter ? Number(retryAfter) : NaN
    const ms = Number.isFinite(seconds) ? seconds * 1000 : Math.min(10_000, (this.options.backoffMs ?? 200) * 2 ** (attempt - 1))
    await new Promise((r) => setTimeout(r, ms))
  }
}
