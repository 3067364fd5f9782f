// Request bodies as platforms send them: gzip or deflate (Content-Encoding), decoded with a limit on the decoded size
// (a small zip bomb must not become a large body), and a limit on what one request may carry. Runs in preParsing,
// after auth, so the limit can spare the instance's own command line (`keywatch ingest` of a large file).
import { Transform, type Readable } from 'node:stream'
import { createGunzip, createInflate } from 'node:zlib'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { ApiError } from './errors.ts'

export interface BodyOptions {
  /** Bytes a decoded body may have on routes without a limit of their own (Fastify's bodyLimit). */
  defaultLimit: number
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** This route's decoded body limit in bytes, above Fastify's (streamed routes: /v1/events). */
    streamedBodyLimit?: number
  }
}

const ENCODINGS = new Set(['gzip', 'x-gzip', 'deflate'])

const tooLarge = (limit: number) => new ApiError(413, 'payload_too_large', `the request body is over ${limit} bytes${limit >= 1 << 20 ? ` (${Math.round(limit / (1 << 20))} MiB)` : ''}: send it in smaller parts`)

/** The decoded body limit of a request. */
export function bodyLimitOf(request: FastifyRequest, options: BodyOptions): number | undefined {
  // The running instance's own command line (the data directory's owner) may send a file of any size.
  if (request.principal?.token_id === 'local') return undefined
  return request.routeOptions.config?.streamedBodyLimit ?? options.defaultLimit
}

export function registerBodyDecoding(app: FastifyInstance, options: BodyOptions): void {
  app.addHook('preParsing', async (request, _reply, payload) => {
    // No body (a GET, most often): nothing to decode or count.
    if (request.headers['content-length'] === undefined && request.headers['transfer-encoding'] === undefined) return payload
    const limit = bodyLimitOf(request, options)
    const declared = Number(request.headers['content-length'])
    if (limit !== undefined && declared > limit && !request.headers['content-encoding']) throw tooLarge(limit)
    const encoding = String(request.headers['content-encoding'] ?? '').trim().toLowerCase()
    if (!encoding || encoding === 'identity') return limit === undefined ? payload : limited(payload, limit, false)
    if (!ENCODINGS.has(encoding)) throw new ApiError(415, 'unsupported_encoding', `Content-Encoding ${JSON.stringify(encoding.slice(0, 40))} is not supported: send gzip, deflate or none`)
    const decoder = encoding === 'deflate' ? createInflate() : createGunzip()
    return limited(payload, limit ?? Number.MAX_SAFE_INTEGER, decoder)
  })
}

/**
 * `payload` (decoded by `decoder` if given) with at most `limit` bytes; errors become ApiErrors (413, or 400 for a
 * body that is not what its Content-Encoding says). `receivedEncodedLength` tells Fastify the bytes on the wire.
 */
function limited(payload: Readable, limit: number, decoder: Transform | false): Readable {
  let decoded = 0
  const out = new Transform({
    transform(chunk: Buffer, _enc, done) {
      decoded += chunk.length
      if (decoded > limit) return done(tooLarge(limit))
      done(null, chunk)
    },
  }) as Transform & { receivedEncodedLength: number }
  out.receivedEncodedLength = 0
  payload.on('data', (chunk: Buffer) => (out.receivedEncodedLength += chunk.length))
  const fail = (err: unknown) => out.destroy(err instanceof ApiError ? err : new ApiError(400, 'bad_encoding', `the body is not valid ${decoder ? 'gzip/deflate' : 'data'}: ${(err as Error).message}`))
  payload.on('error', fail)
  if (decoder) {
    decoder.on('error', fail)
    payload.pipe(decoder).pipe(out)
  } else payload.pipe(out)
  out.on('error', () => {
    payload.unpipe()
    payload.resume() // drain what the client still sends
  })
  return out
}
