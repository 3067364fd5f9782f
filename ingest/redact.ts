// Secrets out of what keywatch keeps of rejected input (ingest_errors). A rejected message is by definition not what
// it should be: broken JSON, a key spelled with escapes (`"tok\u0065n"`), a secret spelled with escapes, percent
// or HTML encoding, UTF-16. So secrets are looked for after unescaping, never in the raw spelling: the bytes are
// decoded, every escape undone (a few rounds, for escapes of escapes), and the result scanned for every kind of
// secret keywatch knows and for the values of secret-named fields. A message with nothing found keeps its exact
// bytes; one with a secret is kept as its unescaped text with each secret replaced by its display prefix and hash.
import { createHash } from 'node:crypto'

/** The kinds of secret looked for, each with how many leading characters may stay (its display prefix). */
export const SECRET_KINDS: { kind: string; pattern: RegExp; keep: number }[] = [
  // The platform's keys (Stripe-style): secret, restricted and publishable, live and test.
  { kind: 'platform_key', pattern: /(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{6,}/g, keep: 12 },
  { kind: 'webhook_secret', pattern: /whsec_[A-Za-z0-9+/=]{12,}/g, keep: 6 },
  { kind: 'slack_token', pattern: /xox[abposer]-[A-Za-z0-9-]{10,}/g, keep: 5 },
  { kind: 'slack_app_token', pattern: /xapp-\d-[A-Za-z0-9-]{10,}/g, keep: 7 },
  { kind: 'slack_webhook', pattern: /hooks\.slack\.com\/(?:services|workflows|triggers)\/[A-Za-z0-9/_-]{10,}/g, keep: 25 },
  { kind: 'github_token', pattern: /(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})/g, keep: 4 },
  { kind: 'keywatch_token', pattern: /kw_[A-Za-z0-9]{32}/g, keep: 3 },
  { kind: 'aws_access_key', pattern: /(?:AKIA|ASIA)[0-9A-Z]{16}/g, keep: 4 },
  { kind: 'google_api_key', pattern: /AIza[0-9A-Za-z_-]{35}/g, keep: 4 },
  // Only where a token starts, and bounded: a long run of `eyJ…` without dots must not be tried at every position.
  { kind: 'jwt', pattern: /(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,4096}\.[A-Za-z0-9_-]{8,4096}\.[A-Za-z0-9_-]{8,4096}/g, keep: 3 },
  { kind: 'private_key', pattern: /-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)/g, keep: 11 },
]

/** Fields whose value is a secret whatever it looks like. */
const SECRET_FIELDS = /^(?:token|secret|api_?key|apikey|password|passwd|client_secret|access_token|refresh_token|authorization|private_key)$/i

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex')
const INVISIBLE = /[\u00ad\u200b-\u200f\u2060-\u2064\ufeff]/g

/** Undoes one layer of every escape a producer or an attacker may use. */
function unescapeOnce(s: string): string {
  return s
    .replace(/\\u\{([0-9A-Fa-f]{1,6})\}/g, (_m, h: string) => safeChar(parseInt(h, 16)))
    .replace(/\\u([dD][89abAB][0-9A-Fa-f]{2})\\u([dD][c-fC-F][0-9A-Fa-f]{2})/g, (_m, hi: string, lo: string) => String.fromCharCode(parseInt(hi, 16), parseInt(lo, 16)))
    .replace(/\\u([0-9A-Fa-f]{4})/g, (_m, h: string) => safeChar(parseInt(h, 16)))
    .replace(/\\x([0-9A-Fa-f]{2})/g, (_m, h: string) => safeChar(parseInt(h, 16)))
    .replace(/\\([/"'\\_-])/g, '$1')
    .replace(/%([0-9A-Fa-f]{2})/g, (_m, h: string) => safeChar(parseInt(h, 16)))
    .replace(/&#[xX]([0-9A-Fa-f]{1,6});?/g, (_m, h: string) => safeChar(parseInt(h, 16)))
    .replace(/&#(\d{1,7});?/g, (_m, d: string) => safeChar(parseInt(d, 10)))
    .replace(/&(lowbar|UnderBar|period|colon|sol|hyphen|dash|amp|quot|apos);/g, (_m, n: string) => HTML_ENTITIES[n] ?? _m)
}

const HTML_ENTITIES: Record<string, string> = { lowbar: '_', UnderBar: '_', period: '.', colon: ':', sol: '/', hyphen: '-', dash: '-', amp: '&', quot: '"', apos: "'" }

function safeChar(code: number): string {
  return code <= 0x10ffff && !(code >= 0xd800 && code <= 0xdfff) ? String.fromCodePoint(code) : '\ufffd'
}

/** The text with every layer of escapes undone (at most a few rounds) and invisible characters dropped. */
export function unescapeAll(s: string): string {
  let text = s.replace(INVISIBLE, '')
  for (let round = 0; round < 4; round++) {
    const next = unescapeOnce(text).replace(INVISIBLE, '')
    if (next === text) break
    text = next
  }
  return text
}

/** The readings of some bytes worth scanning: UTF-8, and UTF-16 when they look like it. */
function readings(raw: Uint8Array): string[] {
  const bytes = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength)
  const out = [bytes.toString('utf8')]
  let zerosEven = 0
  let zerosOdd = 0
  for (let i = 0; i < bytes.length; i++) if (bytes[i] === 0) i % 2 ? zerosOdd++ : zerosEven++
  const half = bytes.length / 2
  if (half > 0 && (zerosOdd > half * 0.3 || (bytes[0] === 0xff && bytes[1] === 0xfe))) out.push(bytes.toString('utf16le'))
  if (half > 0 && (zerosEven > half * 0.3 || (bytes[0] === 0xfe && bytes[1] === 0xff))) {
    const swapped = Buffer.from(bytes.subarray(0, bytes.length - (bytes.length % 2)))
    out.push(swapped.swap16().toString('utf16le'))
  }
  return out
}

/** The text with every secret found replaced by its display prefix and hash; `found` counts them. */
export function redactText(text: string): { text: string; found: number } {
  let found = 0
  let out = text
  for (const { pattern, keep } of SECRET_KINDS) {
    out = out.replace(pattern, (secret) => {
      found++
      return `${secret.slice(0, keep)}[redacted sha256:${sha256(secret).slice(0, 16)}]`
    })
  }
  // A secret-named field's value, in JSON or something like it: "token": "…", token=…, 'token': '…'.
  // Names are tried only where a word starts, and are short: linear however long the input (a run of letters
  // would otherwise be split every way).
  out = out.replace(/(?<![A-Za-z_])(["']?)([A-Za-z_]{1,40})\1(\s{0,8}[:=]\s{0,8})(["']?)([^"'\s,;}&]{0,4096})/g, (m, q: string, name: string, sep: string, vq: string, value: string) => {
    if (!SECRET_FIELDS.test(name) || value.length < 6 || value.includes('[redacted')) return m
    found++
    return `${q}${name}${q}${sep}${vq}[redacted sha256:${sha256(value).slice(0, 16)}]`
  })
  return { text: out, found }
}

/** Replaces every secret in a parsed JSON value (strings unescaped by the parser, then unescaped again). */
function redactJson(value: unknown, field?: string): { value: unknown; found: number } {
  if (typeof value === 'string') {
    if (field && SECRET_FIELDS.test(field)) return { value: `[redacted sha256:${sha256(value)}]`, found: 1 }
    const { text, found } = redactText(unescapeAll(value))
    return found ? { value: text, found } : { value, found: 0 }
  }
  if (Array.isArray(value)) {
    let found = 0
    const out = value.map((v) => {
      const r = redactJson(v)
      found += r.found
      return r.value
    })
    return { value: out, found }
  }
  if (value && typeof value === 'object') {
    let found = 0
    const out: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(value)) {
      const r = redactJson(v, k)
      found += r.found
      out[k] = r.value
    }
    return { value: out, found }
  }
  return { value, found: 0 }
}

/**
 * What keywatch may keep of a rejected message: its exact bytes when no secret is found in any reading of them,
 * else its unescaped text (UTF-8) with every secret replaced.
 */
export function redactSecrets(raw: Uint8Array): Uint8Array {
  const [utf8, ...others] = readings(raw)
  try {
    // Valid JSON: keep its shape, redact inside it.
    const parsed = JSON.parse(utf8!) as unknown
    const { value, found } = redactJson(parsed)
    if (found) return Buffer.from(JSON.stringify(value))
  } catch {
    // Broken JSON or not JSON at all: scanned as text below.
  }
  for (const text of [utf8!, ...others]) {
    const { text: redacted, found } = redactText(unescapeAll(text))
    if (found) return Buffer.from(redacted)
  }
  return raw
}
