// An HTTP server on loopback standing in for Slack's Web API (the client's `slackApiUrl`): it records every call
// with its decoded fields, answers like Slack, and can be told to answer 429 with Retry-After, or 500, for a while,
// or an error of Slack's own (`{ ok: false, error }` with 200). Like Slack, it refuses Block Kit over its limits
// (invalid_blocks): a section's text over 3,000 characters, a field's over 2,000, a header's over 150.
// It keeps what was posted: conversations.history (a channel's top-level messages) and conversations.replies (a
// thread) answer from it, newest first, with each message's `metadata` when asked with include_all_metadata.
// Those reads are recorded in `reads`, not `calls` (the messages sent).
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'

export interface SlackCall {
  method: string
  at: number
  token: string
  fields: Record<string, string>
  blocks: unknown
  /** The ts Slack gave a posted message. */
  ts?: string
}

export interface SlackStandIn {
  apiUrl: string
  calls: SlackCall[]
  /** Answers to give before the real ones: 429 (with Retry-After seconds), 500, or a Slack error such as invalid_blocks. */
  script: ({ status: 429; retryAfter: number } | { status: 500 } | { status: 200; error: string })[]
  /** Calls refused (a scripted Slack error, or blocks over Slack's limits), with the error given. */
  refused: (SlackCall & { error: string })[]
  /** While true, every call gets 500. */
  down: boolean
  /** conversations.history / conversations.replies calls. */
  reads: SlackCall[]
  /** Called with each call before it is answered (a test can kill the caller there); the answer waits for it. */
  beforeAnswer?: (call: SlackCall) => void | Promise<void>
  close(): Promise<void>
}

export async function startSlackStandIn(): Promise<SlackStandIn> {
  // Like Slack's: the posting time in seconds, then a sequence that keeps it unique.
  let seq = 0
  const state: Omit<SlackStandIn, 'apiUrl' | 'close'> = { calls: [], refused: [], script: [], down: false, reads: [] }
  const server = createServer((req, res) => {
    let body = ''
    req.on('data', (d) => (body += d))
    req.on('end', () => {
      const method = (req.url ?? '').replace(/^\/api\//, '')
      const fields = Object.fromEntries(new URLSearchParams(body))
      const reply = (status: number, payload: object, headers: Record<string, string> = {}) => res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(payload))
      if (state.down) return reply(500, { ok: false, error: 'internal_error' })
      const scripted = state.script.shift()
      if (scripted?.status === 429) return reply(429, { ok: false, error: 'ratelimited' }, { 'retry-after': String(scripted.retryAfter) })
      if (scripted?.status === 500) return reply(500, { ok: false, error: 'internal_error' })
      const call: SlackCall = { method, at: Date.now(), token: String(req.headers.authorization ?? ''), fields, blocks: fields.blocks ? JSON.parse(fields.blocks) : undefined }
      const error = scripted?.status === 200 ? scripted.error : blocksOverLimits(call.blocks) ? 'invalid_blocks' : undefined
      if (error) {
        state.refused.push({ ...call, error })
        return reply(200, { ok: false, error })
      }
      if (method === 'conversations.history' || method === 'conversations.replies') {
        state.reads.push(call)
        return reply(200, { ok: true, messages: read(state.calls, method, fields), has_more: false, response_metadata: { next_cursor: '' } })
      }
      if (method === 'chat.postMessage') call.ts = `${Math.floor(Date.now() / 1000)}.${String(seq++).padStart(6, '0')}`
      state.calls.push(call)
      void Promise.resolve(state.beforeAnswer?.(call)).finally(() => {
        if (method === 'chat.postMessage') return reply(200, { ok: true, channel: fields.channel, ts: call.ts })
        if (method === 'chat.update') return reply(200, { ok: true, channel: fields.channel, ts: fields.ts })
        reply(200, { ok: false, error: 'unknown_method' })
      })
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  return Object.assign(state, {
    apiUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}/api/`,
    close: () => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))),
  })
}

/** A channel's top-level messages (history) or one thread (replies), newest first, since `oldest`. */
function read(calls: SlackCall[], method: string, fields: Record<string, string>): object[] {
  const oldest = Number(fields.oldest ?? 0)
  const withMetadata = fields.include_all_metadata === 'true'
  return calls
    .filter((c) => c.method === 'chat.postMessage' && c.fields.channel === fields.channel && Number(c.ts) >= oldest)
    .filter((c) => (method === 'conversations.history' ? !c.fields.thread_ts : c.ts === fields.ts || c.fields.thread_ts === fields.ts))
    .reverse()
    .map((c) => ({ type: 'message', ts: c.ts, text: c.fields.text, ...(c.fields.thread_ts ? { thread_ts: c.fields.thread_ts } : {}), ...(withMetadata && c.fields.metadata ? { metadata: JSON.parse(c.fields.metadata) as object } : {}) }))
}

function blocksOverLimits(blocks: unknown): boolean {
  if (!Array.isArray(blocks)) return false
  return blocks.some((b: { type?: string; text?: { text?: string }; fields?: { text?: string }[] }) => {
    const text = b.text?.text ?? ''
    if (b.type === 'header') return text.length > 150
    return text.length > 3_000 || (b.fields ?? []).some((f) => (f.text ?? '').length > 2_000)
  })
}
