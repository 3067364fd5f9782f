// The one place keywatch reads its environment. Everything else receives a typed `Config`.
import { existsSync, readFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { parseEnv } from 'node:util'
import { z } from 'zod'
import { DEFAULT_POLICY, readPolicyFile, type Policy } from '../response/policy.ts'
import { defaultRoutes, readRoutes } from '../alerts/routing.ts'
import type { AlertsConfig } from '../alerts/service.ts'
import { userRolesSchema } from '../alerts/interactions.ts'
import type { Role } from '../core/roles.ts'
import type { ClickHouseConfig } from '../clickhouse/client.ts'
import { ConfigError } from '../core/errors.ts'

const port = z.coerce.number({ error: 'must be a port number (0-65535)' }).int('must be a port number (0-65535)').min(0, 'must be a port number (0-65535)').max(65535, 'must be a port number (0-65535)')
const positiveInt = z.coerce.number({ error: 'must be a positive integer' }).int('must be a positive integer').positive('must be a positive integer')
const topic = z.string().regex(/^[A-Za-z0-9._-]{1,249}$/, 'must be a Kafka topic name ([A-Za-z0-9._-], 1-249 chars)')
const brokerList = z
  .string()
  .transform((s) => s.split(',').map((b) => b.trim()).filter(Boolean))
  .pipe(z.array(z.string().regex(/^[^\s:]+:\d{1,5}$/, 'must be host:port')).min(1, 'needs at least one host:port'))

/** A variable holding JSON: parsed, or an issue saying what it must be. */
const json = (message: string) =>
  z.string().transform((s, ctx) => {
    try {
      return JSON.parse(s) as unknown
    } catch {
      ctx.addIssue({ code: 'custom', message })
      return z.NEVER
    }
  })

const envSchema = z.object({
  CLICKHOUSE_URL: z.url('must be an http(s) URL such as http://127.0.0.1:8123').optional(),
  CLICKHOUSE_USER: z.string().default('default'),
  CLICKHOUSE_PASSWORD: z.string().default(''),
  CLICKHOUSE_DATABASE: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,63}$/, 'must be an identifier ([A-Za-z_][A-Za-z0-9_]*)').default('keywatch'),
  CLICKHOUSE_CLUSTER: z.string().regex(/^[A-Za-z0-9_]+$/, 'must be the name of a cluster in the servers\' remote_servers').optional(),
  KEYWATCH_DATA_DIR: z.string().min(1).default('./data'),

  KAFKA_BROKERS: brokerList.optional(),
  KAFKA_CLIENT_ID: z.string().min(1).default('keywatch'),
  KAFKA_GROUP_ID: z.string().min(1).default('keywatch-ingest'),
  KAFKA_SESSION_TIMEOUT_MS: z.coerce.number({ error: 'must be a number of milliseconds' }).int().min(6_000, 'must be at least 6000 (the broker\'s group.min.session.timeout.ms)').default(15_000),
  KAFKA_TOPIC_USAGE: topic.default('apikey.usage'),
  KAFKA_TOPIC_RATELIMITS: topic.default('apikey.ratelimits'),
  KAFKA_TOPIC_AUTH: topic.default('auth.events'),
  KAFKA_TOPIC_LIFECYCLE: topic.default('apikey.lifecycle'),
  KAFKA_TOPIC_LEAKS: topic.default('security.leaks'),
  KAFKA_TOPIC_COMMANDS: topic.default('apikey.commands'),
  KAFKA_TOPIC_DEAD_LETTER: topic.default('keywatch.deadletter'),
  KAFKA_TOPIC_CONTROL: topic.default('keywatch.control'),

  INGEST_BATCH_MAX_ROWS: positiveInt.default(100_000),
  INGEST_BATCH_MAX_WAIT_MS: positiveInt.default(50),
  INGEST_MAX_INFLIGHT_BATCHES: positiveInt.default(4),
  INGEST_BATCH_MIN_ROWS: z.coerce.number().int().min(0).default(100_000),
  INGEST_BATCH_MAX_AGE_MS: positiveInt.default(2_000),
  INGEST_KAFKA_PENDING_BATCHES: positiveInt.default(12),
  INGEST_HANDOVER_MS: z.coerce.number().int().min(0).max(60_000).default(3_000),
  INGEST_DEDUP_INDEX_IDS: z.coerce.number().int().min(0).max(50_000_000).default(1_000_000),
  // Worker threads decoding large batches (0: on the main thread). On 2 cores a batch's trip to a worker costs more
  // CPU than it frees, and its heap 120-200 MB (bench:ingest: no faster with one worker): off there by default.
  INGEST_DECODE_WORKERS: z.coerce.number().int().min(0).max(64).default(availableParallelism() >= 4 ? availableParallelism() - 2 : 0),

  DETECTOR_PARAMS: json('must be JSON, e.g. {"abuse.ratelimit_spike":{"min_429s":80}}')
    .pipe(z.record(z.string(), z.record(z.string(), z.number({ error: 'must map detector ids to {parameter: whole number}' }).int().nonnegative())))
    .optional(),
  DETECTORS_DIR: z.string().min(1).optional(),
  INCIDENT_WINDOW_HOURS: positiveInt.max(24 * 30, 'must be at most 720 (30 days)').default(24),
  GITHUB_SECRET_SCANNING_KEYS_FILE: z.string().min(1).optional(),
  RESPONSE_POLICY_FILE: z.string().min(1).optional(),
  KEY_SERVICE_URL: z.url('must be the key service base URL, e.g. https://keys.internal').optional(),
  KEY_SERVICE_SECRET: z.string().min(16, 'must be the shared Monitor-Signature secret (16 characters or more)').optional(),
  RESPONSE_TRANSPORT: z.enum(['http', 'kafka']).optional(),
  HOST: z.string().min(1).default('127.0.0.1'),
  PORT: port.default(8080),
  EXPORT_DIR: z.string().min(1).optional(),
  EXPORT_SIGNING_KEY_FILE: z.string().min(1).optional(),
  EXPORT_SCHEDULE: z.enum(['on', 'off'], { error: 'must be on or off' }).default('on'),
  EXPORT_SCHEDULE_FORMAT: z.enum(['csv', 'ndjson', 'parquet']).default('csv'),
  SLACK_BOT_TOKEN: z.string().regex(/^xox[a-z]-/, 'must be a Slack bot token (xoxb-…)').optional(),
  SLACK_SIGNING_SECRET: z.string().min(16, "must be the Slack app's signing secret").optional(),
  SLACK_API_URL: z.url('must be a URL, e.g. https://slack.com/api/').optional(),
  SLACK_CHANNEL: z.string().min(1).optional(),
  SLACK_USER_ROLES: json('must be JSON mapping Slack user ids to roles, e.g. {"U024BE7LH":"responder"}').pipe(userRolesSchema).optional(),
  SMTP_URL: z.string().regex(/^smtps?:\/\//, 'must be an smtp:// or smtps:// URL').optional(),
  ALERT_MAIL_FROM: z.string().min(3).default('keywatch <keywatch@localhost>'),
  ALERT_MAIL_TO: z.string().optional(),
  ALERT_ROUTES_FILE: z.string().min(1).optional(),
  ALERT_DEDUP_HOURS: positiveInt.default(6),
  ALERT_CHANNEL_MAX_PER_MINUTE: positiveInt.default(10),
  KEYWATCH_PUBLIC_URL: z.url('must be the URL people open keywatch at').optional(),
  API_RATE_LIMIT_PER_MINUTE: positiveInt.default(600),
  // Security hardening (issue 15): the events body limit, the audit anchor file, the pinned export key, step-up.
  API_EVENTS_BODY_LIMIT_MB: positiveInt.default(16),
  AUDIT_ANCHOR_FILE: z.string().min(1).optional(),
  EXPORT_PUBLIC_KEY_FILE: z.string().min(1).optional(),
  STEP_UP: z.enum(['totp', 'off'], { error: 'must be totp (a TOTP code for sensitive actions) or off (behind your own SSO)' }).default('totp'),
  METRICS_PORT: port.optional(),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** auto: readable lines on a terminal, JSON lines otherwise. */
  LOG_FORMAT: z.enum(['auto', 'json', 'pretty']).default('auto'),
})

export type Env = z.input<typeof envSchema>

/** Every variable keywatch reads (the compose test checks deployments name only these). */
export const ENV_VARIABLES = Object.keys(envSchema.shape)

export interface Config {
  clickhouse: ClickHouseConfig
  kafka?: {
    brokers: string[]
    clientId: string
    groupId: string
    topics: Topics
    /** Single-partition topic whose partition 0's owner (in group `<groupId>.leader`) is the leader (cluster/leadership.ts). */
    controlTopic: string
    /** How long a crashed member holds its partitions before the group moves them. */
    sessionTimeoutMs: number
  }
  topics: Topics
  /** handoverMs: a partition newly assigned here waits this long for its previous owner's inserts (several instances). */
  ingest: { batchMaxRows: number; batchMaxWaitMs: number; maxInflightBatches: number; /** Rows a busy table's next insert waits for, at most batchMaxAgeMs. */ batchMinRows?: number; batchMaxAgeMs?: number; /** Kafka batches handed over and not yet committed, per partition. */ kafkaPendingBatches?: number; handoverMs?: number; /** Recent event ids kept in memory for the duplicate decision (embedded engine); 0: off. */ dedupIndexIds?: number; /** Worker threads decoding large batches; 0 or absent: inline. */ decodeWorkers?: number }
  /** The API; metrics on a port of their own (no token) when metricsPort is set, else at /metrics behind a token. */
  http: { host: string; port: number; rateLimitPerMinute: number; metricsPort?: number; eventsBodyLimit: number }
  /** Step-up (a TOTP code) for sensitive actions; off for deployments behind their own SSO. The anchor file. */
  security: { stepUp: 'totp' | 'off'; auditAnchorFile: string }
  /** GitHub's secret-scanning signing keys (from GITHUB_SECRET_SCANNING_KEYS_FILE); none: the GitHub intake refuses all. */
  githubKeys: { key_identifier: string; key: string; is_current: boolean }[]
  response: {
    policy: Policy
    /** How commands reach the key service: the signed HTTP call, the commands topic, or nowhere (decide and record only). */
    transport: 'http' | 'kafka' | 'none'
    keyService?: { url: string; secret: string }
  }
  /** Alerts: routes, Slack, mail, dedup window and per-destination cap; Slack users' roles for its buttons. */
  alerts: AlertsConfig & { signingSecret?: string; slackUserRoles: Record<string, Role> }
  /** Compliance exports: where files and manifests go, the Ed25519 key that signs manifests, the daily/monthly schedule. */
  exports: { dir: string; signingKeyFile: string; scheduled: boolean; scheduledFormat: 'csv' | 'ndjson' | 'parquet'; trustedPublicKeyFile?: string }
  /** Parameter overrides per detector id. */
  detectorOverrides: Record<string, Record<string, number>>
  /** The security team's own detector files (YAML or JSON), loaded beside the built-in ones. */
  detectorsDir?: string
  /** Findings on linked subjects (a key, its users) within this many hours of each other are one incident. */
  incidents: { windowHours: number }
  logLevel: z.infer<typeof envSchema>['LOG_LEVEL']
  logFormat: z.infer<typeof envSchema>['LOG_FORMAT']
}

export interface Topics {
  usage: string
  ratelimits: string
  auth: string
  lifecycle: string
  leaks: string
  commands: string
  deadLetter: string
}

/** A configuration value is wrong: startup stops with a message naming each variable and what it expects. */
export { ConfigError }

/** Reads `.env` (if present) under the given environment; real environment variables win. */
export function loadEnv(env: NodeJS.ProcessEnv = process.env, envFile = resolve('.env')): Record<string, string | undefined> {
  const fromFile = existsSync(envFile) ? parseEnv(readFileSync(envFile, 'utf8')) : {}
  return { ...fromFile, ...env }
}

export function parseConfig(raw: Record<string, string | undefined>): Config {
  // Empty strings mean "unset", as in most shells' `FOO= cmd`.
  const cleaned = Object.fromEntries(Object.entries(raw).filter(([, v]) => v !== undefined && v !== ''))
  const parsed = envSchema.safeParse(cleaned)
  if (!parsed.success) {
    throw new ConfigError(
      parsed.error.issues.map((i) => {
        const name = String(i.path[0] ?? '?')
        return `${name}=${JSON.stringify(cleaned[name] ?? '')}: ${i.message}`
      }),
    )
  }
  const e = parsed.data
  if (e.CLICKHOUSE_CLUSTER && !e.CLICKHOUSE_URL) throw new ConfigError(['CLICKHOUSE_CLUSTER: needs CLICKHOUSE_URL (the embedded engine is a single node)'])
  const topics: Topics = {
    usage: e.KAFKA_TOPIC_USAGE,
    ratelimits: e.KAFKA_TOPIC_RATELIMITS,
    auth: e.KAFKA_TOPIC_AUTH,
    lifecycle: e.KAFKA_TOPIC_LIFECYCLE,
    leaks: e.KAFKA_TOPIC_LEAKS,
    commands: e.KAFKA_TOPIC_COMMANDS,
    deadLetter: e.KAFKA_TOPIC_DEAD_LETTER,
  }
  return {
    clickhouse: e.CLICKHOUSE_URL
      ? { mode: 'server', url: e.CLICKHOUSE_URL, user: e.CLICKHOUSE_USER, password: e.CLICKHOUSE_PASSWORD, database: e.CLICKHOUSE_DATABASE, cluster: e.CLICKHOUSE_CLUSTER }
      : { mode: 'embedded', dataDir: resolve(e.KEYWATCH_DATA_DIR), database: e.CLICKHOUSE_DATABASE },
    kafka: e.KAFKA_BROKERS ? { brokers: e.KAFKA_BROKERS, clientId: e.KAFKA_CLIENT_ID, groupId: e.KAFKA_GROUP_ID, topics, controlTopic: e.KAFKA_TOPIC_CONTROL, sessionTimeoutMs: e.KAFKA_SESSION_TIMEOUT_MS } : undefined,
    topics,
    ingest: {
      batchMaxRows: e.INGEST_BATCH_MAX_ROWS,
      batchMaxWaitMs: e.INGEST_BATCH_MAX_WAIT_MS,
      maxInflightBatches: e.INGEST_MAX_INFLIGHT_BATCHES,
      batchMinRows: e.INGEST_BATCH_MIN_ROWS,
      batchMaxAgeMs: e.INGEST_BATCH_MAX_AGE_MS,
      kafkaPendingBatches: e.INGEST_KAFKA_PENDING_BATCHES,
      handoverMs: e.INGEST_HANDOVER_MS,
      dedupIndexIds: e.INGEST_DEDUP_INDEX_IDS,
      decodeWorkers: e.INGEST_DECODE_WORKERS,
    },
    http: { host: e.HOST, port: e.PORT, rateLimitPerMinute: e.API_RATE_LIMIT_PER_MINUTE, metricsPort: e.METRICS_PORT, eventsBodyLimit: e.API_EVENTS_BODY_LIMIT_MB * 1024 * 1024 },
    response: responseConfig(e),
    alerts: alertsConfig(e),
    exports: {
      dir: resolve(e.EXPORT_DIR ?? join(e.KEYWATCH_DATA_DIR, 'exports')),
      signingKeyFile: resolve(e.EXPORT_SIGNING_KEY_FILE ?? join(e.EXPORT_DIR ?? join(e.KEYWATCH_DATA_DIR, 'exports'), 'signing-key.pem')),
      scheduled: e.EXPORT_SCHEDULE === 'on',
      scheduledFormat: e.EXPORT_SCHEDULE_FORMAT,
      trustedPublicKeyFile: e.EXPORT_PUBLIC_KEY_FILE ? resolve(e.EXPORT_PUBLIC_KEY_FILE) : undefined,
    },
    security: securityConfig(e),
    detectorOverrides: e.DETECTOR_PARAMS ?? {},
    detectorsDir: e.DETECTORS_DIR ? resolve(e.DETECTORS_DIR) : undefined,
    incidents: { windowHours: e.INCIDENT_WINDOW_HOURS },
    githubKeys: e.GITHUB_SECRET_SCANNING_KEYS_FILE ? readGithubKeys(e.GITHUB_SECRET_SCANNING_KEYS_FILE) : [],
    logLevel: e.LOG_LEVEL,
    logFormat: e.LOG_FORMAT,
  }
}

const githubKeysFile = z.union([
  z.object({ public_keys: z.array(z.object({ key_identifier: z.string().min(1), key: z.string().includes('BEGIN PUBLIC KEY'), is_current: z.boolean() })) }),
  z.array(z.object({ key_identifier: z.string().min(1), key: z.string().includes('BEGIN PUBLIC KEY'), is_current: z.boolean() })),
])

/** GitHub publishes its keys as { public_keys: [{ key_identifier, key, is_current }] }; a bare array is accepted too. */
function readGithubKeys(path: string): Config['githubKeys'] {
  let parsed: z.infer<typeof githubKeysFile>
  try {
    parsed = githubKeysFile.parse(JSON.parse(readFileSync(path, 'utf8')))
  } catch (err) {
    throw new ConfigError([`GITHUB_SECRET_SCANNING_KEYS_FILE=${JSON.stringify(path)}: must be a readable JSON file of GitHub's public keys ({ public_keys: [{ key_identifier, key, is_current }] }): ${(err as Error).message.slice(0, 200)}`])
  }
  return Array.isArray(parsed) ? parsed : parsed.public_keys
}

/** The policy file, and which way commands go: HTTP when a key service URL is set, else Kafka when brokers are. */
function responseConfig(e: z.infer<typeof envSchema>): Config['response'] {
  const problems: string[] = []
  let policy = DEFAULT_POLICY
  if (e.RESPONSE_POLICY_FILE) {
    const read = readPolicyFile(e.RESPONSE_POLICY_FILE)
    if ('problems' in read) problems.push(...read.problems.map((p) => `RESPONSE_POLICY_FILE=${JSON.stringify(e.RESPONSE_POLICY_FILE)}: ${p}`))
    else policy = read.policy
  }
  if (Boolean(e.KEY_SERVICE_URL) !== Boolean(e.KEY_SERVICE_SECRET)) problems.push('KEY_SERVICE_URL and KEY_SERVICE_SECRET: set both (the key service URL and its Monitor-Signature secret) or neither')
  const transport = e.RESPONSE_TRANSPORT ?? (e.KEY_SERVICE_URL ? 'http' : e.KAFKA_BROKERS ? 'kafka' : 'none')
  if (transport === 'http' && !e.KEY_SERVICE_URL) problems.push('RESPONSE_TRANSPORT=http: needs KEY_SERVICE_URL and KEY_SERVICE_SECRET')
  if (transport === 'kafka' && !e.KAFKA_BROKERS) problems.push('RESPONSE_TRANSPORT=kafka: needs KAFKA_BROKERS')
  if (problems.length) throw new ConfigError(problems)
  return { policy, transport, keyService: e.KEY_SERVICE_URL && e.KEY_SERVICE_SECRET ? { url: e.KEY_SERVICE_URL, secret: e.KEY_SERVICE_SECRET } : undefined }
}

/** Anchors go beside the signing key by default: outside the data directory when the key is. */
function securityConfig(e: z.infer<typeof envSchema>): Config['security'] {
  const keyFile = resolve(e.EXPORT_SIGNING_KEY_FILE ?? join(e.EXPORT_DIR ?? join(e.KEYWATCH_DATA_DIR, 'exports'), 'signing-key.pem'))
  return { stepUp: e.STEP_UP, auditAnchorFile: resolve(e.AUDIT_ANCHOR_FILE ?? join(dirname(keyFile), 'audit-anchors.ndjson')) }
}

/** Routes from ALERT_ROUTES_FILE, or critical and high findings to SLACK_CHANNEL and critical ones to ALERT_MAIL_TO. */
function alertsConfig(e: z.infer<typeof envSchema>): Config['alerts'] {
  const mailTo = (e.ALERT_MAIL_TO ?? '').split(',').map((s) => s.trim()).filter(Boolean)
  let routes = defaultRoutes(e.SLACK_CHANNEL, mailTo)
  if (e.ALERT_ROUTES_FILE) {
    const read = readRoutes(e.ALERT_ROUTES_FILE)
    if ('problems' in read) throw new ConfigError(read.problems.map((p) => `ALERT_ROUTES_FILE=${JSON.stringify(e.ALERT_ROUTES_FILE)}: ${p}`))
    routes = read.routes
  }
  return {
    routes,
    slack: e.SLACK_BOT_TOKEN ? { token: e.SLACK_BOT_TOKEN, apiUrl: e.SLACK_API_URL } : undefined,
    smtp: e.SMTP_URL ? { url: e.SMTP_URL, from: e.ALERT_MAIL_FROM } : undefined,
    publicUrl: e.KEYWATCH_PUBLIC_URL ?? `http://${e.HOST}:${e.PORT}`,
    dedupHours: e.ALERT_DEDUP_HOURS,
    maxPerMinute: e.ALERT_CHANNEL_MAX_PER_MINUTE,
    signingSecret: e.SLACK_SIGNING_SECRET,
    slackUserRoles: e.SLACK_USER_ROLES ?? {},
  }
}
