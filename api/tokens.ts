// API tokens and roles. A token is `kw_` and 32 random base62 characters; only its SHA-256 is stored, and it is shown
// once. Roles grant permissions; `ingest` is for the platform's services that post events and leak reports.
import { createHash, randomBytes, randomUUID } from 'node:crypto'
import { queryRows, type ClickHouseClient } from '../clickhouse/client.ts'
import { chTime } from '../clickhouse/time.ts'
import { KeywatchError, kindOfStatus } from '../core/errors.ts'

import { ROLES, type Role } from '../core/roles.ts'

export { GRANTS, ROLES, type Permission, type Role } from '../core/roles.ts'

export interface TokenInfo {
  token_id: string
  name: string
  role: Role
  prefix: string
  created_at: string
  created_by: string
  revoked_at: string | null
  revoked_by: string
}

export class TokenError extends KeywatchError {
  constructor(
    readonly status: 400 | 404 | 409,
    message: string,
  ) {
    super(kindOfStatus(status), status === 404 ? 'not_found' : status === 409 ? 'conflict' : 'invalid_input', message)
    this.name = 'TokenError'
  }
}

const BASE62 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'
const CACHE_MS = 30_000

export const hashToken = (token: string): string => createHash('sha256').update(token).digest('hex')

function newToken(): string {
  // 32 characters of base62 from rejection-sampled random bytes: about 190 bits.
  let out = ''
  while (out.length < 32) for (const b of randomBytes(48)) if (b < 248 && out.length < 32) out += BASE62[b % 62]
  return `kw_${out}`
}

const SELECT_TOKEN = `SELECT token_id, name, role, prefix, toString(created_at) AS created_at, created_by,
  if(revoked_at IS NULL, NULL, toString(revoked_at)) AS revoked_at, revoked_by`

export class TokenStore {
  /** Verified tokens by hash, for a while: a revocation by this process applies at once, by another within 30 s. */
  private readonly cache = new Map<string, { info: TokenInfo | null; until: number }>()
  private lastVersion = 0

  constructor(private readonly client: ClickHouseClient) {}

  async create(role: Role, name: string, createdBy: string): Promise<{ token: string; info: TokenInfo }> {
    if (!/^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}$/.test(name)) throw new TokenError(400, 'a token name is 1-64 letters, digits, spaces and . _ @ -')
    if ((await this.list()).some((t) => t.name === name && !t.revoked_at)) throw new TokenError(409, `an active token is already named ${JSON.stringify(name)}`)
    const token = newToken()
    const info: TokenInfo = {
      token_id: `tok_${randomUUID().replaceAll('-', '').slice(0, 16)}`,
      name,
      role,
      prefix: token.slice(0, 10),
      created_at: chTime(Date.now()),
      created_by: createdBy,
      revoked_at: null,
      revoked_by: '',
    }
    await this.write({ ...info, token_hash: hashToken(token) })
    return { token, info }
  }

  async list(): Promise<TokenInfo[]> {
    return queryRows<TokenInfo>(this.client, `${SELECT_TOKEN} FROM (SELECT * FROM api_tokens FINAL) ORDER BY created_at, token_id`)
  }

  /** Revokes by id or by name. */
  async revoke(idOrName: string, revokedBy: string): Promise<TokenInfo> {
    const rows = await queryRows<TokenInfo & { token_hash: string }>(
      this.client,
      `${SELECT_TOKEN}, token_hash FROM (SELECT * FROM api_tokens FINAL WHERE (token_id = {v:String} OR name = {v:String}) AND revoked_at IS NULL)`,
      { v: idOrName },
    )
    if (rows.length === 0) throw new TokenError(404, `no active token ${JSON.stringify(idOrName)}`)
    if (rows.length > 1) throw new TokenError(409, `${JSON.stringify(idOrName)} names several tokens: revoke by id`)
    const { token_hash, ...info } = rows[0]!
    const revoked: TokenInfo = { ...info, revoked_at: chTime(Date.now()), revoked_by: revokedBy }
    await this.write({ ...revoked, token_hash })
    this.cache.delete(token_hash)
    return revoked
  }

  /** The active token a bearer string is, or null. */
  async verify(token: string): Promise<TokenInfo | null> {
    if (!/^kw_[A-Za-z0-9]{32}$/.test(token)) return null
    const hash = hashToken(token)
    const cached = this.cache.get(hash)
    if (cached && cached.until > Date.now()) return cached.info
    const [row] = await queryRows<TokenInfo>(this.client, `${SELECT_TOKEN} FROM (SELECT * FROM api_tokens FINAL WHERE token_hash = {h:String}) WHERE revoked_at IS NULL`, { h: hash })
    const info = row ?? null
    if (this.cache.size > 10_000) this.cache.clear()
    this.cache.set(hash, { info, until: Date.now() + CACHE_MS })
    return info
  }

  private async write(row: TokenInfo & { token_hash: string }): Promise<void> {
    this.lastVersion = Math.max(this.lastVersion + 1, Date.now() * 1000)
    await this.client.insert({ table: 'api_tokens', format: 'JSONEachRow', values: [{ ...row, version: this.lastVersion }] })
  }
}
