// Compliance exports over HTTP, for auditors. The export is written to a file under the export directory first (flat
// memory, and it stays there as evidence beside its signed manifest), then streamed; the answer's headers carry its
// id, row count and SHA-256, and GET /v1/exports/{id}/manifest serves the signed manifest.
import { randomBytes } from 'node:crypto'
import { createReadStream, existsSync, readdirSync, readFileSync } from 'node:fs'
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
      const manifest = await exportToFile(deps.storage, { dataset: request.params.dataset, format, filter, actor: principalOf(request).actor, exportId }, out, deps.signingKey(), deps.version)
      request.auditDetail = { export_id: exportId, dataset: manifest.dataset, format, rows: manifest.rows, sha256: manifest.sha256, from: manifest.range.from, to: manifest.range.to, filters: manifest.filters }
      return reply
        .header('content-type', CONTENT_TYPE[format])
        .header('content-disposition', `attachment; filename="${request.params.dataset}-${manifest.range.from.slice(0, 10)}-${manifest.range.to.slice(0, 10)}.${format}"`)
        .header('x-keywatch-export-id', exportId)
        .header('x-keywatch-rows', String(manifest.rows))
        .header('repr-digest', `sha-256=:${Buffer.from(manifest.sha256, 'hex').toString('base64')}:`)
        .header('link', `</v1/exports/${exportId}/manifest>; rel="describedby"`)
        .send(createReadStream(out, { highWaterMark: 1 << 20 }))
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
