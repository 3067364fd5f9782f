// The HTTP API. Plugins and routes are registered in a fixed order: error handling, health, then /v1 routes.
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import { ingestNdjson } from '../ingest/ndjson.ts'
import { ApiError } from './errors.ts'
import { leakRoutes, type LeakIntakeDeps } from './leaks.ts'
import { responseRoutes, type ResponseApiDeps } from './response.ts'
import type { IngestPipeline } from '../ingest/pipeline.ts'

export interface ApiDeps {
  pipeline: IngestPipeline
  log: FastifyBaseLogger
  /** Reports whether storage answers; /readyz fails while it does not. */
  storageReady: () => Promise<boolean>
  /** Leak intake (POST /v1/leaks, /v1/leaks/github). */
  leaks?: LeakIntakeDeps
  /** Manual revokes, actions, exposure reports and the kill switch. */
  response?: ResponseApiDeps
}

export { ApiError }

const CODE_OF_STATUS: Record<number, string> = {
  400: 'bad_request',
  401: 'unauthorized',
  403: 'forbidden',
  404: 'not_found',
  413: 'payload_too_large',
  415: 'unsupported_media_type',
  429: 'rate_limited',
}

export async function buildApi(deps: ApiDeps): Promise<FastifyInstance> {
  const app = Fastify({ loggerInstance: deps.log, bodyLimit: 1024 * 1024 })

  // One error shape for every failure: { error: { code, message } }. Unknown errors never leak internals.
  app.setErrorHandler((err: Error & { statusCode?: number; code?: string; validation?: unknown }, request, reply) => {
    if (err instanceof ApiError) return reply.status(err.statusCode).send({ error: { code: err.code, message: err.message } })
    if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
      return reply.status(415).send({ error: { code: 'unsupported_media_type', message: `unsupported Content-Type ${JSON.stringify(request.headers['content-type'] ?? '')}: send events as NDJSON (application/x-ndjson), leak reports as application/json` } })
    }
    if (err.validation || (err.statusCode && err.statusCode < 500)) {
      const status = err.statusCode ?? 400
      return reply.status(status).send({ error: { code: CODE_OF_STATUS[status] ?? 'bad_request', message: err.message } })
    }
    request.log.error({ err }, 'request failed')
    return reply.status(500).send({ error: { code: 'internal', message: 'internal error; see the server log for request ' + request.id } })
  })
  app.setNotFoundHandler((request, reply) =>
    reply.status(404).send({ error: { code: 'not_found', message: `no route ${request.method} ${request.url}` } }),
  )

  app.get('/healthz', async () => ({ status: 'ok' }))
  app.get('/readyz', async (_request, reply) => {
    const ok = await deps.storageReady().catch(() => false)
    return reply.status(ok ? 200 : 503).send({ status: ok ? 'ready' : 'storage unavailable' })
  })

  // NDJSON bodies are streamed through the pipeline, never buffered whole.
  app.addContentTypeParser(['application/x-ndjson', 'application/ndjson', 'text/plain'], (_request, payload, done) => done(null, payload))
  app.post('/v1/events', async (request, reply) => {
    const type = request.headers['content-type']?.split(';')[0]?.trim()
    if (!type || !['application/x-ndjson', 'application/ndjson', 'text/plain'].includes(type)) {
      throw new ApiError(415, 'unsupported_media_type', 'send events as NDJSON (Content-Type: application/x-ndjson), one event per line')
    }
    const report = await ingestNdjson(request.body as NodeJS.ReadableStream & AsyncIterable<Uint8Array>, deps.pipeline, { source: 'http' })
    // 200 with the summary even when some lines were rejected: the valid ones are stored, and the summary says which were not.
    return reply.status(200).send(report)
  })

  if (deps.leaks) {
    const leaks = deps.leaks
    // Its own scope: JSON bodies arrive as raw bytes there (signatures are over the exact body).
    await app.register(async (scope) => leakRoutes(scope, leaks))
  }

  if (deps.response) {
    const response = deps.response
    await app.register(async (scope) => responseRoutes(scope, response))
  }

  return app
}
