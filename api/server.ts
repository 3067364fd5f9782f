// The HTTP API. Registered in a fixed order: validation and errors, OpenAPI, auth, rate limit, audit, then the
// routes, each group in its own plugin. zod schemas validate every input, type the handlers and make the OpenAPI
// document at /docs; every failure has one shape: { error: { code, message } }.
import { randomUUID } from 'node:crypto'
import { createRequire } from 'node:module'
import { dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import fastifyStatic from '@fastify/static'
import rateLimit from '@fastify/rate-limit'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply } from 'fastify'
import { hasZodFastifySchemaValidationErrors, jsonSchemaTransform, serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod'
import type { AuditLog } from '../audit/audit-log.ts'
import type { ClickHouseClient } from '../clickhouse/client.ts'
import type { DetectionEngine } from '../detectors/engine.ts'
import type { FindingStore } from '../detectors/findings.ts'
import { ingestNdjson } from '../ingest/ndjson.ts'
import type { IngestPipeline } from '../ingest/pipeline.ts'
import type { ActionStore } from '../response/actions.ts'
import type { ResponseEngine } from '../response/engine.ts'
import { registerAudit } from './audit.ts'
import { registerAuth } from './auth.ts'
import { registerBodyDecoding } from './body.ts'
import { registerAnonymousLimit } from './limits.ts'
import { registerStepUp, type StepUp } from './step-up.ts'
import { detectorRoutes } from './detectors.ts'
import { HTTP_STATUS_OF_KIND, KeywatchError } from '../core/errors.ts'
import { ApiError } from './errors.ts'
import { exportRoutes, type ExportApiDeps } from './exports.ts'
import { findingRoutes } from './findings.ts'
import { incidentRoutes } from './incidents.ts'
import type { IncidentStore } from '../incidents/store.ts'
import { keyRoutes } from './keys.ts'
import type { KeyInventory } from '../inventory/keys.ts'
import { leakRoutes, type GithubPublicKey } from './leaks.ts'
import type { Metrics } from './metrics.ts'
import { responseRoutes } from './response.ts'
import { statsRoutes } from './stats.ts'
import { tokenRoutes } from './token-routes.ts'
import type { TokenStore } from './tokens.ts'

export interface ApiDeps {
  log: FastifyBaseLogger
  /** Reports whether storage answers; /readyz fails while it does not. */
  storageReady: () => Promise<boolean>
  client: ClickHouseClient
  pipeline: IngestPipeline
  /** The key inventory, with the detectors' clocks (GET /v1/keys). */
  inventory: KeyInventory
  findings: FindingStore
  /** Findings grouped into incidents (GET /v1/incidents). */
  incidents?: IncidentStore
  detection: DetectionEngine
  actions: ActionStore
  response: ResponseEngine
  tokens: TokenStore
  /** The running instance's own token for its command line (see api/auth.ts). */
  localToken?: string
  githubKeys: GithubPublicKey[]
  /** Records every call that changes something or reads an export. */
  audit?: AuditLog
  /** Serves /metrics (to any token that may read) unless metrics have a port of their own. */
  metrics?: Metrics
  /** Compliance exports (GET /v1/exports/…). */
  exports?: ExportApiDeps
  /** Requests per minute per token (per IP without one). */
  rateLimitPerMinute?: number
  /** Bytes a POST /v1/events body may have, decoded (default 16 MiB). */
  eventsBodyLimit?: number
  /** Step-up for sensitive actions (routes with `config.stepUp`); undefined: off (STEP_UP=off, behind an SSO). */
  stepUp?: StepUp
  /** More route groups (exports, Slack interactions), each registered in its own scope after the core routes. */
  plugins?: ((scope: FastifyInstance) => Promise<void>)[]
}

export { ApiError }

const CODE_OF_STATUS: Record<number, string> = {
  400: 'bad_request',
  401: 'unauthorized',
  403: 'forbidden',
  404: 'not_found',
  405: 'method_not_allowed',
  409: 'conflict',
  413: 'payload_too_large',
  415: 'unsupported_media_type',
  429: 'rate_limited',
}

const DASHBOARD_DIR = fileURLToPath(new URL('../dashboards/web/', import.meta.url))
const UPLOT_DIR = dirname(createRequire(import.meta.url).resolve('uplot'))

const WHERE: Record<string, string> = { body: 'body', querystring: 'query', params: 'path', headers: 'header' }

const NDJSON_TYPES = ['application/x-ndjson', 'application/ndjson', 'text/plain']
const BODY_LIMIT = 1024 * 1024
export const DEFAULT_EVENTS_BODY_LIMIT = 16 * 1024 * 1024

/** The headers of every answer: nothing is sniffed, no referrer leaves, and pages get a strict CSP. */
const SECURITY_HEADERS = { 'x-content-type-options': 'nosniff', 'referrer-policy': 'no-referrer' }
export const CONTENT_SECURITY_POLICY = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"

/** An error's name, code and first line, for the log: never its stack (it may quote input, and says nothing to a reader). */
export const errorSummary = (err: unknown) => {
  const e = err as { name?: string; code?: string; message?: string }
  return { type: e?.name ?? typeof err, code: e?.code, message: String(e?.message ?? err).split('\n')[0]!.slice(0, 300) }
}

export async function buildApi(deps: ApiDeps): Promise<FastifyInstance> {
  // Requests are not logged one by one (the audit trail and the metrics cover them); failures are.
  const app = Fastify({
    loggerInstance: deps.log,
    bodyLimit: BODY_LIMIT,
    requestIdHeader: false,
    genReqId: () => randomUUID(),
    logController: new LogController({ disableRequestLogging: true }),
    // A malformed URL or a bad Content-Type is answered in the one error shape too.
    frameworkErrors: (err, _request, reply: FastifyReply) => {
      void reply.status(err.statusCode && err.statusCode < 500 ? err.statusCode : 400).send({ error: { code: CODE_OF_STATUS[err.statusCode ?? 400] ?? 'bad_request', message: err.message } })
    },
  })
  app.setValidatorCompiler(validatorCompiler)
  app.setSerializerCompiler(serializerCompiler)

  // One error shape. A 400 names the field and what is wrong with it; unknown errors never leak internals.
  app.setErrorHandler((err: Error & { statusCode?: number; code?: string; validation?: unknown; validationContext?: string }, request, reply) => {
    // The one place an error becomes an HTTP answer: its kind says the status, its code and message go as they are.
    if (err instanceof ApiError) return reply.status(err.statusCode).send({ error: { code: err.code, message: err.message } })
    if (err instanceof KeywatchError && err.kind !== 'internal') {
      if (err.retriable) reply.header('retry-after', '5')
      return reply.status(HTTP_STATUS_OF_KIND[err.kind]).send({ error: { code: err.code, message: err.message } })
    }
    if (hasZodFastifySchemaValidationErrors(err)) {
      const issue = err.validation[0]!
      const field = [WHERE[err.validationContext ?? ''] ?? err.validationContext, ...issue.instancePath.split('/').filter(Boolean)].join('.')
      return reply.status(400).send({ error: { code: 'invalid_input', message: `${field}: ${issue.message}` } })
    }
    if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
      return reply.status(415).send({ error: { code: 'unsupported_media_type', message: `unsupported Content-Type ${JSON.stringify(request.headers['content-type'] ?? '')}: send events as NDJSON (application/x-ndjson), everything else as application/json` } })
    }
    if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) {
      return reply.status(err.statusCode).send({ error: { code: CODE_OF_STATUS[err.statusCode] ?? 'bad_request', message: err.message } })
    }
    request.log.error({ err: errorSummary(err), route: request.routeOptions.url }, 'request failed')
    return reply.status(500).send({ error: { code: 'internal', message: 'internal error; see the server log for request ' + request.id } })
  })
  app.setNotFoundHandler((request, reply) => reply.status(404).send({ error: { code: 'not_found', message: `no route ${request.method} ${request.url.split('?')[0]}` } }))

  await app.register(swagger, {
    openapi: {
      info: { title: 'keywatch', description: 'Security monitoring and audit analytics for API keys', version: '1' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'an API token: keywatch token create --role …' } } },
      security: [{ bearer: [] }],
    },
    transform: jsonSchemaTransform,
  })
  await app.register(swaggerUi, { routePrefix: '/docs' })

  for (const [name, value] of Object.entries(SECURITY_HEADERS)) app.addHook('onRequest', async (_request, reply) => void reply.header(name, value))
  // Before auth: anonymous and refused traffic is limited by IP before it costs a token lookup or an audit record.
  registerAnonymousLimit(app, { perMinute: deps.rateLimitPerMinute ?? 600 })
  registerAuth(app, { tokens: deps.tokens, localToken: deps.localToken })
  registerBodyDecoding(app, { defaultLimit: BODY_LIMIT })
  await app.register(rateLimit, {
    global: true,
    hook: 'preHandler', // after auth: the limit is per token
    max: deps.rateLimitPerMinute ?? 600,
    timeWindow: '1 minute',
    keyGenerator: (request) => request.principal?.token_id ?? request.ip,
    errorResponseBuilder: (_request, context) => new ApiError(429, 'rate_limited', `more than ${context.max} requests a minute: retry in ${context.after}`),
  })
  if (deps.audit) registerAudit(app, deps.audit)
  if (deps.stepUp) registerStepUp(app, deps.stepUp)

  app.get('/healthz', { schema: { hide: true } }, async () => ({ status: 'ok' }))
  app.get('/readyz', { schema: { hide: true } }, async (_request, reply) => {
    const ok = await deps.storageReady().catch(() => false)
    return reply.status(ok ? 200 : 503).send({ status: ok ? 'ready' : 'storage unavailable' })
  })
  if (deps.metrics) {
    const metrics = deps.metrics
    app.get('/metrics', { config: { permission: 'read' }, schema: { hide: true } }, async (_request, reply) =>
      reply.header('content-type', metrics.registry.contentType).send(await metrics.registry.metrics()),
    )
  }

  // NDJSON bodies are streamed through the pipeline, never buffered whole.
  await app.register(async (scope) => {
    scope.addContentTypeParser(NDJSON_TYPES, (_request, payload, done) => done(null, payload))
    const eventsLimit = deps.eventsBodyLimit ?? DEFAULT_EVENTS_BODY_LIMIT
    const summary = `Ingest contract events (NDJSON, one per line; gzip or deflate welcome); at most ${eventsLimit} bytes decoded, else 413`
    scope.post('/v1/events', { config: { permission: 'ingest', streamedBodyLimit: eventsLimit }, schema: { tags: ['ingest'], summary } }, async (request, reply) => {
      const type = request.headers['content-type']?.split(';')[0]?.trim().toLowerCase()
      if (!type || !NDJSON_TYPES.includes(type)) throw new ApiError(415, 'unsupported_media_type', 'send events as NDJSON (Content-Type: application/x-ndjson), one event per line')
      const report = await ingestNdjson(request.body as NodeJS.ReadableStream & AsyncIterable<Uint8Array>, deps.pipeline, { source: 'http' })
      // 200 with the summary even when some lines were rejected: the valid ones are stored, and the summary says which were not.
      return reply.status(200).send(report)
    })
  })
  // Its own scope: JSON bodies arrive as raw bytes there (GitHub's signature is over the exact body).
  await app.register(async (scope) => leakRoutes(scope, { pipeline: deps.pipeline, client: deps.client, githubKeys: deps.githubKeys }))
  await app.register(async (scope) => keyRoutes(scope, deps))
  await app.register(async (scope) => findingRoutes(scope, deps))
  await app.register(async (scope) => incidentRoutes(scope, deps))
  await app.register(async (scope) => detectorRoutes(scope, deps))
  await app.register(async (scope) => responseRoutes(scope, deps))
  await app.register(async (scope) => tokenRoutes(scope, { tokens: deps.tokens, stepUp: deps.stepUp }))
  await app.register(async (scope) => statsRoutes(scope, deps))
  const exports = deps.exports
  if (exports) await app.register(async (scope) => exportRoutes(scope, exports))
  for (const plugin of deps.plugins ?? []) await app.register(plugin)

  // The built-in dashboard: static files (it signs in with an API token and reads everything through /v1).
  await app.register(fastifyStatic, { root: DASHBOARD_DIR, prefix: '/', wildcard: false, index: 'index.html', schemaHide: true })
  await app.register(fastifyStatic, { root: UPLOT_DIR, prefix: '/assets/uplot/', decorateReply: false, wildcard: false, schemaHide: true })
  app.addHook('onSend', async (_request, reply, payload) => {
    if (String(reply.getHeader('content-type') ?? '').startsWith('text/html')) reply.header('content-security-policy', CONTENT_SECURITY_POLICY)
    return payload
  })
  return app
}
