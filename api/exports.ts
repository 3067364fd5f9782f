// Compliance exports over HTTP, for auditors. The engine writes the export to a file under the export directory
// (flat memory, and it stays there as evidence beside its signed manifest) and the answer streams that file while it
// is being written, so the first byte leaves within moments however large the export. The headers carry its id and a
// link to the manifest; its row count and SHA-256 follow as HTTP trailers (and are in the signed manifest, served by
// GET /v1/exports/{id}/manifest), since they are known only once the last byte is written.
import { randomBytes } from 'node:crypto'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { open } from 'node:fs/promises'
import { Readable } from 'node:stream'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import type { ZodTypeProvider } from 'fastify-type-provider-zod'
import { z } from 'zod'
import type { Storage } from '../clickhouse/client.ts'
import { DATASETS, exportFilter, FORMATS, unsupportedFilter } from '../exports/datasets.ts'
import { exportToFile, fingerprint } from '../exports/export.ts'
import { createPublicKey, type KeyObject } from 'node:crypto'
import type { AuditTrail } from '../audit/trail.ts'
import { principalOf } from './auth.ts'
import { ApiError } from './errors.ts'

export interface ExportApiDeps {
  storage: Storage
  dir: string
  signingKey: () => KeyObject
  version: string
  /** For verifying keywatch's own audit trail. */
  trail: AuditTrail
}

const CONTENT_TYPE = { csv: 'text/csv; charset=utf-8', ndjson: 'application/x-ndjson', parquet: 'application/vnd.apache.parquet' }

export async function exportRoutes(app: FastifyInstance, deps: ExportApiDeps): Promise<void> {
  const r = app.withTypeProvider<ZodTypeProvider>()
  const apiDir = join(deps.dir, 'api')

  r.get(
    '/v1/exports/:dataset',
    {
      config: { permission: 'export', audit: 'export.read' },
      schema: {
        tags: ['exports'],
        summary: 'Export the security log or key usage for a time range (CSV, NDJSON or Parquet), with a signed manifest',
        params: z.strictObject({ dataset: z.enum(DATASETS) }),
        querystring: exportFilter.extend({ format: z.enum(FORMATS).default('csv') }),
      },
    },
    async (request, reply) => {
      const { format, ...filter } = request.query
      const unsupported = unsupportedFilter(request.params.dataset, filter)
      if (unsupported) throw new ApiError(400, 'invalid_input', `query.${unsupported}`)
      const exportId = `exp_${randomBytes(10).toString('hex')}`
      const out = join(apiDir, `${exportId}.${format}`)
      const writing = exportToFile(deps.storage, { dataset: request.params.dataset, format, filter, actor: principalOf(request).actor, exportId }, out, deps.signingKey(), deps.version)
      const manifestOf = writing.then((manifest) => {
        request.auditDetail = { export_id: exportId, dataset: manifest.dataset, format, rows: manifest.rows, sha256: manifest.sha256, from: manifest.range.from, to: manifest.range.to, filters: manifest.filters }
        return manifest
      })
      // A request the export refuses (a wrong range) is refused before the first byte; after it, a failure cuts the
      // answer short (no trailers, so no digest: the client cannot mistake it for a complete export).
      await Promise.race([fileAppears(out), manifestOf])
      manifestOf.catch((err) => {
        request.auditDetail = { export_id: exportId, dataset: request.params.dataset, format, error: String(err).slice(0, 300) }
        request.log.error({ err: String(err), export_id: exportId }, 'export failed while streaming')
      })
      return reply
        .header('content-type', CONTENT_TYPE[format])
        .header('content-disposition', `attachment; filename="${request.params.dataset}-${filter.from.slice(0, 10)}-${filter.to.slice(0, 10)}.${format}"`)
        .header('x-keywatch-export-id', exportId)
        .header('link', `</v1/exports/${exportId}/manifest>; rel="describedby"`)
        .trailer('x-keywatch-rows', async () => String((await manifestOf).rows))
        .trailer('repr-digest', async () => `sha-256=:${Buffer.from((await manifestOf).sha256, 'hex').toString('base64')}:`)
        .send(Readable.from(followFile(out, manifestOf)))
    },
  )

  r.get(
    '/v1/exports/:id/manifest',
    { config: { permission: 'export' }, schema: { tags: ['exports'], summary: "An export's signed manifest", params: z.strictObject({ id: z.string().regex(/^exp_[a-f0-9]{20}$/, 'must be an export id (exp_…)') }) } },
    async (request) => {
      const file = existsSync(apiDir) ? readdirSync(apiDir).find((f) => f.startsWith(`${request.params.id}.`) && f.endsWith('.manifest.json')) : undefined
      if (!file) throw new ApiError(404, 'not_found', `no export ${request.params.id}`)
      return JSON.parse(readFileSync(join(apiDir, file), 'utf8')) as object
    },
  )

  r.get(
    '/v1/audit/verify',
    { config: { permission: 'export', audit: 'audit.verify' }, schema: { tags: ['exports'], summary: "Walk keywatch's own audit trail and report the first changed, deleted or reordered record" } },
    async () => deps.trail.verify(),
  )

  r.get('/v1/exports/signing-key', { config: { permission: 'export' }, schema: { tags: ['exports'], summary: 'The public key that signs export manifests' } }, async () => {
    const key = createPublicKey(deps.signingKey())
    return { algorithm: 'Ed25519', public_key: key.export({ type: 'spki', format: 'pem' }).toString(), key_fingerprint: fingerprint(key) }
  })
}

/** Resolves once the engine has created the file (it does so before writing the first block). */
async function fileAppears(path: string): Promise<void> {
  while (!existsSync(path)) await new Promise((r) => setTimeout(r, 20))
}

/**
 * The file's bytes as the engine appends them, until the export is done and every byte has been read. The engine
 * only appends (the file is new), so what was read never changes; a failed export ends the stream with its error.
 */
async function* followFile(path: string, done: Promise<unknown>): AsyncGenerator<Buffer> {
  let finished = false
  let failure: unknown
  done.then(
    () => (finished = true),
    (err: unknown) => ((failure = err), (finished = true)),
  )
  while (!existsSync(path) && !finished) await new Promise((r) => setTimeout(r, 20))
  if (failure) throw failure
  const file = await open(path, 'r')
  try {
    let position = 0
    for (;;) {
      const wasFinished = finished
      const buf = Buffer.allocUnsafe(1 << 20)
      const { bytesRead } = await file.read(buf, 0, buf.length, position)
      if (bytesRead > 0) {
        position += bytesRead
        yield buf.subarray(0, bytesRead)
        continue
      }
      if (failure) throw failure
      // Finished before this read found nothing more: the whole file has been sent.
      if (wasFinished) return
      await new Promise((r) => setTimeout(r, 25))
    }
  } finally {
    await file.close()
  }
}
