// Every route of the API fuzzed on the real engine: bodies derived from each route's own schema (the OpenAPI
// document) and mutated, random bodies, hostile headers (Content-Type and Content-Encoding variants, junk tokens and
// signatures), random path parameters and query strings, with and without valid tokens of every role. Bounded in
// count and time (it runs in CI with the suite) and seeded, so a failure names the request that reproduces it.
// Asserted for every answer: never a 500, an error always in the one shape { error: { code, message } }, and no
// stack trace in any answer or in any log line.
import { generateKeyPairSync } from 'node:crypto'
import { gzipSync } from 'node:zlib'
import { Writable } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildApi } from '../api/server.ts'
import { ROLES } from '../api/tokens.ts'
import { apiDepsOf, type Runtime } from '../app/runtime.ts'
import { bearer, openTestRuntime } from './helpers.ts'

const REQUESTS = Number(process.env.FUZZ_REQUESTS ?? 2500)
const BUDGET_MS = Number(process.env.FUZZ_BUDGET_MS ?? 90_000)
const STACK = /\n\s+at |\bat [^\s()]+ \([^)]*:\d+:\d+\)|node:internal|\.ts:\d+:\d+/

let seed = Number(process.env.FUZZ_SEED ?? 0xf022)
const rand = () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = seed
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}
const int = (n: number) => Math.floor(rand() * n)
const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!
const chance = (p: number) => rand() < p

const logLines: string[] = []
const log = pino({ level: 'info' }, new Writable({ write: (chunk, _e, done) => (logLines.push(String(chunk)), done()) }))

let rt: Runtime
let api: FastifyInstance
const tokens: Record<string, string> = {}

interface Operation {
  method: string
  path: string
  parameters: { name: string; in: string; schema?: Schema; required?: boolean }[]
  body?: Schema
}
type Schema = { type?: string | string[]; properties?: Record<string, Schema>; required?: string[]; items?: Schema; enum?: unknown[]; anyOf?: Schema[]; oneOf?: Schema[]; minimum?: number; maximum?: number; minLength?: number; maxLength?: number; default?: unknown; const?: unknown; pattern?: string; format?: string }

beforeAll(async () => {
  rt = await openTestRuntime({ SLACK_SIGNING_SECRET: 'fuzz_slack_signing_secret_0001' })
  api = await buildApi(apiDepsOf(rt, { log, rateLimitPerMinute: 1_000_000_000, githubKeys: [{ key_identifier: 'fuzzkey', key: generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey.export({ type: 'spki', format: 'pem' }).toString(), is_current: true }] }))
  await api.ready()
  for (const role of ROLES) tokens[role] = (await bearer(rt, role, `fuzz-${role}`)).authorization
})
afterAll(async () => {
  await api?.close()
  await rt?.close()
})

/** Every documented operation, plus the routes hidden from the document. */
function operations(): Operation[] {
  const doc = (api as unknown as { swagger: () => { paths: Record<string, Record<string, { parameters?: Operation['parameters']; requestBody?: { content: Record<string, { schema: Schema }> } }>> } }).swagger()
  const ops: Operation[] = []
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const body = op.requestBody ? Object.values(op.requestBody.content)[0]?.schema : undefined
      ops.push({ method: method.toUpperCase(), path, parameters: op.parameters ?? [], body })
    }
  }
  for (const path of ['/healthz', '/readyz', '/metrics', '/', '/index.html', '/app.js', '/app.css', '/assets/uplot/uPlot.min.css', '/docs', '/docs/json', '/nope']) ops.push({ method: 'GET', path, parameters: [] })
  return ops
}

const WEIRD_STRINGS = ['', ' ', 'null', '0', '-1', '1e309', 'NaN', 'true', '%', '%00', '%ZZ', '..%2f..%2fetc%2fpasswd', "' OR 1=1 --", '{{7*7}}', '<script>alert(1)</script>', '\u0000', '\ud800', '😀'.repeat(50), 'x'.repeat(5000), 'key_' + 'A'.repeat(70), 'fnd_' + 'a'.repeat(24), 'act_' + 'f'.repeat(24), 'exp_' + '0'.repeat(20), 'acct_Fuzz0001', '2026-11-24T10:00:00Z', '2026-13-45T99:99:99Z', '__proto__', 'constructor']
const randomString = () => (chance(0.5) ? pick(WEIRD_STRINGS) : Array.from({ length: int(40) }, () => String.fromCharCode(chance(0.9) ? 32 + int(95) : int(0xffff))).join(''))
const randomJson = (depth = 0): unknown => {
  const r = int(depth > 3 ? 5 : 8)
  if (r === 0) return null
  if (r === 1) return chance(0.5)
  if (r === 2) return pick([0, -1, 1.5, 1e308, -1e308, 2 ** 53 + 1, 600])
  if (r === 3 || r === 4) return randomString()
  if (r === 5) return Array.from({ length: int(4) }, () => randomJson(depth + 1))
  return Object.fromEntries(Array.from({ length: int(4) }, () => [pick(['reason', 'role', 'name', 'force', 'incident', 'token', 'type', '__proto__', 'constructor', randomString()]), randomJson(depth + 1)]))
}

/** A value for a schema: usually valid, sometimes at or past a boundary, sometimes of the wrong type. */
function fromSchema(s: Schema | undefined, depth = 0): unknown {
  if (!s || depth > 6) return randomJson(depth)
  if (chance(0.08)) return randomJson(depth)
  if (s.const !== undefined) return s.const
  if (s.enum) return chance(0.9) ? pick(s.enum) : randomString()
  const variants = s.anyOf ?? s.oneOf
  if (variants) return fromSchema(pick(variants), depth + 1)
  const type = Array.isArray(s.type) ? pick(s.type) : s.type
  switch (type) {
    case 'object': {
      const out: Record<string, unknown> = {}
      for (const [k, v] of Object.entries(s.properties ?? {})) if ((s.required ?? []).includes(k) ? chance(0.95) : chance(0.5)) out[k] = fromSchema(v, depth + 1)
      if (chance(0.1)) out[randomString()] = randomJson(depth + 1)
      return out
    }
    case 'array':
      return Array.from({ length: chance(0.05) ? 1200 : int(4) }, () => fromSchema(s.items, depth + 1))
    case 'string':
      if (s.format === 'date-time') return chance(0.8) ? new Date(Date.now() - int(1e10)).toISOString() : randomString()
      return chance(0.3) ? 'x'.repeat(pick([0, 1, s.minLength ?? 1, s.maxLength ?? 64, (s.maxLength ?? 64) + 1])) : randomString()
    case 'integer':
    case 'number':
      return pick([s.minimum ?? 0, s.maximum ?? 100, (s.minimum ?? 0) - 1, (s.maximum ?? 100) + 1, 0.5, -0, int(1000)])
    case 'boolean':
      return chance(0.9) ? chance(0.5) : 'true'
    case 'null':
      return null
    default:
      return randomJson(depth)
  }
}

/** encodeURIComponent, with a lone surrogate sent as the bytes a careless client would send. */
const enc = (v: string) => {
  try {
    return encodeURIComponent(v)
  } catch {
    return '%ED%A0%80'
  }
}

function pathFor(op: Operation): string {
  return op.path.replace(/\{([^}]+)\}/g, (_m, name: string) => {
    const param = op.parameters.find((p) => p.in === 'path' && p.name === name)
    const value = chance(0.6) ? fromSchema(param?.schema) : randomString()
    return enc(String(value)).replace(chance(0.2) ? /%25/g : /$^/, '%')
  })
}

function queryFor(op: Operation): string {
  const pairs: string[] = []
  for (const p of op.parameters.filter((x) => x.in === 'query')) if (chance(0.5)) pairs.push(`${enc(p.name)}=${enc(String(fromSchema(p.schema)))}`)
  if (chance(0.1)) pairs.push(`${enc(randomString())}=${enc(randomString())}`)
  if (chance(0.03)) pairs.push('a=%E0%A4%A')
  return pairs.length ? `?${pairs.join('&')}` : ''
}

const CONTENT_TYPES = ['application/json', 'APPLICATION/JSON', 'application/json; charset=utf-8', 'application/json; charset=utf-16', 'application/x-ndjson', 'Application/X-NDJSON', 'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=zz', 'application/xml', 'garbage', '', ';;;', 'application/json;', '*/*']

function bodyFor(op: Operation): string | Buffer | undefined {
  if (op.method === 'GET' && !chance(0.05)) return undefined
  const r = rand()
  if (r < 0.55 && op.body) return JSON.stringify(fromSchema(op.body))
  if (r < 0.7) return JSON.stringify(randomJson())
  if (r < 0.8) return Buffer.from(Array.from({ length: int(300) }, () => int(256)))
  if (r < 0.85) return '['.repeat(5000) + ']'.repeat(5000)
  if (r < 0.9) return '{"__proto__":{"polluted":1},"constructor":{"prototype":{"x":1}}}'
  if (r < 0.95) return Array.from({ length: 3 }, () => JSON.stringify(randomJson())).join('\n') + '\n'
  return randomString()
}

function headersFor(): Record<string, string> {
  const h: Record<string, string> = {}
  const auth = rand()
  if (auth < 0.45) h.authorization = tokens[pick(ROLES)]!
  else if (auth < 0.6) h.authorization = pick(['Bearer ', 'Bearer kw_' + 'A'.repeat(32), 'Basic Zm9vOmJhcg==', 'bearer ' + randomString(), 'Bearer kw_x y'])
  if (chance(0.7)) h['content-type'] = pick(CONTENT_TYPES)
  if (chance(0.1)) h['content-encoding'] = pick(['gzip', 'deflate', 'br', 'identity', 'gzip, gzip', 'x-gzip', 'GZIP'])
  if (chance(0.1)) h['x-keywatch-otp'] = pick(['000000', '123456', 'abc', '', '1'.repeat(100)])
  if (chance(0.1)) {
    h['github-public-key-identifier'] = pick(['fuzzkey', randomString()])
    h['github-public-key-signature'] = pick(['MEUCIQ==', '!!!', 'MEQCIBvZ+sE2rMZ6R6hKZgXmCjoYcD6tOrZ5wYz1d8X7fJ9kAiA4z6W1u2Y0QZf2vJ8cH9k1m3n5p7r9t1v3x5z7b9d1fw==', randomString()])
  }
  if (chance(0.1)) {
    h['x-slack-request-timestamp'] = pick([String(Math.floor(Date.now() / 1000)), '0', 'x', '99999999999999999999'])
    h['x-slack-signature'] = pick(['v0=' + 'a'.repeat(64), 'v0=', randomString()])
  }
  if (chance(0.05)) h['x-keywatch-cli-user'] = randomString()
  return h
}

describe('every route, fuzzed', () => {
  it(`answers ${REQUESTS} hostile requests without a 500, in the one error shape, with no stack anywhere`, async () => {
    const ops = operations()
    expect(ops.length).toBeGreaterThan(30)
    const started = Date.now()
    const failures: string[] = []
    const seen = new Map<string, number>()
    let sent = 0
    for (; sent < REQUESTS && Date.now() - started < BUDGET_MS && failures.length < 5; sent++) {
      const op = pick(ops)
      const method = chance(0.03) ? pick(['PUT', 'PATCH', 'DELETE', 'OPTIONS', 'HEAD']) : op.method
      const url = pathFor(op) + queryFor(op)
      const headers = headersFor()
      let payload = bodyFor(op)
      if (payload !== undefined && headers['content-encoding'] && chance(0.6)) payload = gzipSync(payload)
      const res = await api.inject({ method: method as 'GET', url, headers, payload, remoteAddress: `198.51.100.${int(250)}` })
      seen.set(`${op.method} ${op.path}`, (seen.get(`${op.method} ${op.path}`) ?? 0) + 1)
      const what = `${method} ${url.slice(0, 200)} ${JSON.stringify(headers).slice(0, 300)} body=${JSON.stringify(String(payload ?? '')).slice(0, 200)}`
      if (res.statusCode >= 500) failures.push(`${res.statusCode} for ${what}: ${res.body.slice(0, 300)}`)
      if (STACK.test(res.body)) failures.push(`a stack in the answer to ${what}: ${res.body.slice(0, 300)}`)
      if (res.statusCode >= 400 && method !== 'HEAD') {
        let shaped = false
        try {
          const body = res.json() as { error?: { code?: unknown; message?: unknown } }
          shaped = typeof body.error?.code === 'string' && typeof body.error?.message === 'string' && Object.keys(body).length === 1
        } catch {
          shaped = false
        }
        if (!shaped) failures.push(`not the error shape (${res.statusCode}) for ${what}: ${res.body.slice(0, 300)}`)
      }
    }
    expect(failures).toEqual([])
    // Bounded, but not trivially: most documented operations were tried, and a fair number of requests went out.
    expect(sent).toBeGreaterThan(Math.min(REQUESTS, 300))
    expect(seen.size).toBeGreaterThan(ops.length * 0.8)
    const stacked = logLines.filter((l) => STACK.test(l) || l.includes('"stack"'))
    expect(stacked.slice(0, 3)).toEqual([])
    console.log(`fuzz: ${sent} requests over ${seen.size} of ${ops.length} operations in ${Date.now() - started} ms; ${logLines.length} log lines, none with a stack`)
  }, 180_000)
})
