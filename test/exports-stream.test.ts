// An HTTP export streams while the engine writes it: on 1,000,000 key-usage rows over a real loopback connection,
// the first bytes arrive before the export is finished (its manifest is not written yet), and the digest and row
// count that follow as trailers match the bytes received and the signed manifest. (The time to the first byte on
// 10,000,000 rows is measured by `npm run bench:export`.)
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { request } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildApi } from '../api/server.ts'
import { apiDepsOf, type Runtime } from '../app/runtime.ts'
import type { Manifest } from '../exports/export.ts'
import { bearer, openTestRuntime, tempDir } from './helpers.ts'

const ROWS = 1_000_000
let rt: Runtime
let api: FastifyInstance
let base: string
const exportDir = join(tempDir('keywatch-export-stream-'), 'exports')

beforeAll(async () => {
  rt = await openTestRuntime({ EXPORT_DIR: exportDir })
  await rt.storage.client.command({
    query: `INSERT INTO key_usage (event_id, occurred_at, account_id, key_id, key_prefix, key_kind, mode, request_id, method, endpoint, scope, status, ip, user_agent)
            SELECT generateUUIDv4(), now64(3) - toIntervalMillisecond(number * 7 % 86400000), concat('acct_', leftPad(toString(number % 50), 6, '0')),
                   concat('key_', leftPad(toString(number % 1000), 8, '0')), 'sk_live_Ab12', 'secret', 'live', concat('req_', toString(number)),
                   'GET', '/v1/payments', 'payments', 200, '10.0.0.1', 'paykore-node/3.2.1 node/22.11.0'
            FROM numbers({n:UInt64})`,
    query_params: { n: ROWS },
  })
  api = await buildApi(apiDepsOf(rt))
  await api.listen({ host: '127.0.0.1', port: 0 })
  base = `http://127.0.0.1:${(api.server.address() as AddressInfo).port}`
}, 120_000)

afterAll(async () => {
  await api?.close()
  await rt?.close()
})

describe('GET /v1/exports/key-usage over HTTP', () => {
  it('sends its first bytes while the engine is still writing, then the digest as a trailer', async () => {
    const { authorization } = await bearer(rt, 'auditor')
    const from = new Date(Date.now() - 2 * 86_400_000).toISOString()
    const to = new Date(Date.now() + 60_000).toISOString()
    const result = await new Promise<{ headers: Record<string, unknown>; trailers: Record<string, string | undefined>; body: Buffer; manifestAtFirstByte: boolean }>((resolve, reject) => {
      const req = request(`${base}/v1/exports/key-usage?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}&format=csv`, { headers: { authorization } }, (res) => {
        const chunks: Buffer[] = []
        let manifestAtFirstByte: boolean | undefined
        const id = String(res.headers['x-keywatch-export-id'])
        res.on('data', (c: Buffer) => {
          manifestAtFirstByte ??= existsSync(join(exportDir, 'api', `${id}.csv.manifest.json`))
          chunks.push(c)
        })
        res.on('end', () => resolve({ headers: res.headers, trailers: res.trailers, body: Buffer.concat(chunks), manifestAtFirstByte: manifestAtFirstByte ?? true }))
        res.on('error', reject)
      })
      req.on('error', reject)
      req.end()
    })
    expect(result.headers['transfer-encoding']).toBe('chunked')
    expect(result.manifestAtFirstByte).toBe(false)
    expect(result.trailers['repr-digest']).toBe(`sha-256=:${createHash('sha256').update(result.body).digest('base64')}:`)
    expect(Number(result.trailers['x-keywatch-rows'])).toBe(ROWS)
    const manifest = (await api.inject({ method: 'GET', url: `/v1/exports/${String(result.headers['x-keywatch-export-id'])}/manifest`, headers: { authorization } })).json<Manifest>()
    expect(manifest).toMatchObject({ rows: ROWS, bytes: result.body.length, sha256: createHash('sha256').update(result.body).digest('hex') })
    expect(result.body.subarray(0, 40).toString()).toMatch(/^"occurred_at","event_id","account_id"/)
  }, 120_000)
})
