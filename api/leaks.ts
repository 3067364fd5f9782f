// Leak intake over HTTP: the contract's `leak.reported` (POST /v1/leaks) and GitHub's secret-scanning partner format
// (POST /v1/leaks/github), both into the ingest pipeline, where the token is hashed and the leak detector runs at once.
import { createHash, verify as verifySignature } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { z } from 'zod'
import { queryRows, type ClickHouseClient } from '../clickhouse/client.ts'
import type { IngestPipeline } from '../ingest/pipeline.ts'
import { chTime } from '../clickhouse/time.ts'
import { canonicalSignature } from './ecdsa.ts'
import { ApiError } from './errors.ts'

/** GitHub's published signing keys: { key_identifier, key (PEM), is_current }. */
export interface GithubPublicKey {
  key_identifier: string
  key: string
  is_current: boolean
}

export interface LeakIntakeDeps {
  pipeline: IngestPipeline
  client: ClickHouseClient
  githubKeys: GithubPublicKey[]
}

// `source` (content, commit, pull_request…) came later: GitHub's older partner payload has none.
const githubReport = z.array(
  z.object({ token: z.string().min(8).max(512), type: z.string().max(128), url: z.string().max(2048).nullable().optional(), source: z.string().max(64).default('github') }),
).min(1).max(1000)

/** A body as bytes, whatever parser the Content-Type chose. */
const bytesOf = (body: unknown): Buffer => (Buffer.isBuffer(body) ? body : typeof body === 'string' ? Buffer.from(body) : Buffer.alloc(0))

const sha256 = (s: string | Buffer) => createHash('sha256').update(s).digest('hex')

/** A stable event id for a report, so a redelivered report is stored once. */
function reportId(tokenHash: string, url: string | null | undefined, source: string): string {
  const h = sha256(`${tokenHash}\u0000${url ?? ''}\u0000${source}`)
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-8${h.slice(17, 20)}-${h.slice(20, 32)}`
}

export async function leakRoutes(app: FastifyInstance, deps: LeakIntakeDeps): Promise<void> {
  // Raw bytes: the GitHub signature is over the exact body.
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_request, body, done) => done(null, body))

  // Deliveries accepted in the last minute, so two copies sent at once are not both taken for the first.
  const inFlight = new Set<string>()

  app.post('/v1/leaks', { config: { permission: 'ingest' }, schema: { tags: ['ingest'], summary: 'Report a leaked secret (the contract\'s leak.reported)' } }, async (request, reply) => {
    const raw = bytesOf(request.body)
    const { summary, rejections } = await deps.pipeline.ingest([{ raw, origin: { source: 'http' } }], 'leak.reported')
    if (rejections[0]) throw new ApiError(400, rejections[0].reason, rejections[0].detail)
    return reply.status(202).send({ accepted: summary.accepted, duplicate: summary.duplicates > 0 })
  })

  // No token: GitHub signs the body instead.
  app.post('/v1/leaks/github', { schema: { tags: ['ingest'], summary: "GitHub secret-scanning partner reports (ECDSA-signed)", security: [] } }, async (request, reply) => {
    const raw = bytesOf(request.body)
    const keyId = request.headers['github-public-key-identifier']
    const signature = request.headers['github-public-key-signature']
    if (typeof keyId !== 'string' || typeof signature !== 'string') throw new ApiError(401, 'unsigned', 'Github-Public-Key-Identifier and Github-Public-Key-Signature are required')
    const key = deps.githubKeys.find((k) => k.key_identifier === keyId)
    if (!key) throw new ApiError(401, 'unknown_key', 'the signing key is not one of the configured GitHub keys')
    const canonical = canonicalSignature(signature)
    if ('problem' in canonical) throw new ApiError(401, 'bad_signature', canonical.problem)
    let valid = false
    try {
      valid = verifySignature('sha256', raw, { key: key.key, dsaEncoding: 'ieee-p1363' }, canonical.signature)
    } catch {
      valid = false
    }
    if (!valid) throw new ApiError(401, 'bad_signature', 'the signature does not match the body')
    // The replay guard judges what was sent (the key and the body), not how the signature was spelled; it is in
    // ClickHouse, so it holds across instances and restarts.
    const delivery = sha256(`${keyId}\u0000${sha256(raw)}`)
    const [seen] = await queryRows<{ n: number }>(deps.client, 'SELECT count() AS n FROM github_delivery_digests WHERE delivery_sha256 = {h:String}', { h: delivery })
    if (Number(seen?.n ?? 0) > 0 || inFlight.has(delivery)) throw new ApiError(401, 'replayed', 'this signed payload was already delivered')
    // Remembered here for a minute too: a copy whose lookup ran before this insert landed is refused all the same.
    inFlight.add(delivery)
    setTimeout(() => inFlight.delete(delivery), 60_000).unref()
    await deps.client.insert({ table: 'github_delivery_digests', format: 'JSONEachRow', values: [{ delivery_sha256: delivery, key_identifier: keyId, received_at: chTime(Date.now()) }] })

    let items: z.infer<typeof githubReport>
    try {
      items = githubReport.parse(JSON.parse(raw.toString('utf8')))
    } catch (err) {
      throw new ApiError(400, 'invalid_report', `expected a JSON array of {token, type, url, source}: ${(err as Error).message.slice(0, 300)}`)
    }
    // The token is hashed here and only its hash travels further.
    const hashed = items.map((i) => ({ ...i, token_sha256: sha256(i.token) }))
    const owners = new Map(
      (
        await queryRows<{ secret: string; account_id: string }>(
          deps.client,
          `SELECT secret_sha256 AS secret, account_id FROM key_inventory WHERE secret_sha256 IN {hashes:Array(String)}`,
          { hashes: hashed.map((h) => h.token_sha256) },
        )
      ).map((r) => [r.secret, r.account_id]),
    )
    const occurred_at = new Date().toISOString()
    const messages = hashed.map((h) => ({
      raw: Buffer.from(
        JSON.stringify({
          event_id: reportId(h.token_sha256, h.url, h.source),
          type: 'leak.reported',
          schema_version: 1,
          occurred_at,
          account_id: owners.get(h.token_sha256) ?? 'acct_unmatched',
          token_sha256: h.token_sha256,
          token_type: h.type,
          source: h.source,
          url: h.url ?? null,
        }),
      ),
      origin: { source: 'http' as const },
    }))
    const { rejections } = await deps.pipeline.ingest(messages, 'leak.reported')
    if (rejections[0]) throw new ApiError(400, rejections[0].reason, rejections[0].detail)
    return reply.send(hashed.map((h) => ({ token_hash: h.token_sha256, token_type: h.type, label: owners.has(h.token_sha256) ? 'true_positive' : 'false_positive' })))
  })
}
