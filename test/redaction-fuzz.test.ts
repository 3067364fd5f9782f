// Redaction of rejected input, fuzzed: real-looking secrets of every kind keywatch knows, spelled with JSON, JS,
// percent and HTML escapes (in random places, escapes of escapes too), inside valid JSON, broken JSON and plain
// text, in UTF-8 and UTF-16, with the field name escaped too. What is kept must not hold the secret in any spelling:
// checked by undoing every escape of what is kept and looking for the secret's tail. Seeded: a failure reproduces.
import { describe, expect, it } from 'vitest'
import { redactSecrets, unescapeAll } from '../ingest/redact.ts'

let seed = 0x15eed
const rand = () => {
  // mulberry32
  seed = (seed + 0x6d2b79f5) | 0
  let t = seed
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!
const chars = (alphabet: string, n: number) => Array.from({ length: n }, () => pick(alphabet.split(''))).join('')
const AN = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'
const UP = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'

/** A fresh secret of each kind, as such secrets really look. */
const SECRETS: Record<string, () => string> = {
  sk_live: () => `sk_live_51${chars(AN, 22)}${chars(AN, 70)}`,
  sk_test: () => `sk_test_4eC39H${chars(AN, 18)}`,
  rk_live: () => `rk_live_51${chars(AN, 40)}`,
  rk_test: () => `rk_test_${chars(AN, 24)}`,
  pk_live: () => `pk_live_51${chars(AN, 40)}`,
  pk_test: () => `pk_test_TYooMQauvd${chars(AN, 14)}`,
  whsec: () => `whsec_${chars(AN, 32)}`,
  slack_bot: () => `xoxb-${chars('0123456789', 12)}-${chars('0123456789', 13)}-${chars(AN, 24)}`,
  slack_user: () => `xoxp-${chars('0123456789', 12)}-${chars('0123456789', 12)}-${chars('0123456789', 13)}-${chars('abcdef0123456789', 32)}`,
  slack_app: () => `xapp-1-A${chars(UP, 10)}-${chars('0123456789', 13)}-${chars('abcdef0123456789', 64)}`,
  slack_webhook: () => `https://hooks.slack.com/services/T${chars(UP, 8)}/B${chars(UP, 10)}/${chars(AN, 24)}`,
  github_pat: () => `ghp_${chars(AN, 36)}`,
  github_fine: () => `github_pat_11${chars(UP, 20)}_${chars(AN, 59)}`,
  keywatch: () => `kw_${chars(AN, 32)}`,
  aws: () => `AKIA${chars(UP, 16)}`,
  google: () => `AIza${chars(AN + '_-', 35)}`,
  jwt: () => `eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIx${chars(AN, 20)}.${chars(AN + '_-', 43)}`,
}

/** One character spelled another way. */
const ESCAPES: ((c: string) => string)[] = [
  (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0').toUpperCase()}`,
  (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`,
  (c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0').toUpperCase()}`,
  (c) => `&#${c.charCodeAt(0)};`,
  (c) => `&#x${c.charCodeAt(0).toString(16)};`,
  (c) => `\\u00${'25'}${c.charCodeAt(0).toString(16).padStart(2, '0')}`, // an escaped percent escape
  (c) => (c === '/' ? '\\/' : c === '_' ? '&lowbar;' : c),
  (c) => `${c}\u200b`, // a zero-width space after it
]

const spell = (s: string, rate: number) => s.split('').map((c) => (rand() < rate ? pick(ESCAPES)(c) : c)).join('')

/** A message around the secret: valid JSON, broken JSON, or text; the field name perhaps escaped too. */
const CONTEXTS: ((secret: string) => string)[] = [
  (s) => `{"event_id":"e1","type":"leak.reported","schema_version":1,"token":"${s}","source":"github"}`,
  (s) => `{"type":"leak.reported","${spell('token', 0.5)}":"${s}","source":"github"`, // cut short
  (s) => `{"type":"leak.reported","token":"${s}`, // cut inside the value
  (s) => `{"type":"key.usage","note":"found ${s} in a gist", "status": 2OO}`, // not JSON
  (s) => `{"type":"key.usage","user_agent":"curl ${s}"}`, // valid JSON, a secret in another field
  (s) => `token=${s}&source=pastebin`,
  (s) => `Authorization: Bearer ${s}`,
  (s) => `${s}`,
  (s) => `[{"token": "${s}", "type": "x"}, {`,
  (s) => `{'token': '${s}'}`,
]

type Encoding = 'utf8' | 'utf16le' | 'utf16be'
const encode = (text: string, encoding: Encoding): Buffer => {
  if (encoding === 'utf8') return Buffer.from(text)
  const le = Buffer.from(text, 'utf16le')
  return encoding === 'utf16le' ? le : Buffer.from(le).swap16()
}

describe('redaction of rejected input', () => {
  it('finds secrets of every kind however they are escaped, encoded or broken', () => {
    const failures: string[] = []
    let cases = 0
    for (const [kind, make] of Object.entries(SECRETS)) {
      for (let i = 0; i < 120; i++) {
        const secret = make()
        const spelled = spell(secret, pick([0, 0.05, 0.2, 0.6, 1]))
        const message = pick(CONTEXTS)(spelled)
        const encoding = pick(['utf8', 'utf8', 'utf8', 'utf16le', 'utf16be'] as const)
        const kept = Buffer.from(redactSecrets(encode(message, encoding))).toString('utf8')
        // What a reader could recover from what is kept: every escape undone.
        const recovered = unescapeAll(kept)
        const tail = secret.slice(-14)
        if (recovered.includes(tail) || kept.includes(tail)) failures.push(`${kind} in ${encoding}: ${JSON.stringify(message).slice(0, 200)} -> ${JSON.stringify(kept).slice(0, 200)}`)
        cases++
      }
    }
    expect(cases).toBe(Object.keys(SECRETS).length * 120)
    expect(failures.slice(0, 5)).toEqual([])
  })

  it('finds a secret-named field of any value, its name escaped or not', () => {
    for (const name of ['token', 'tok\\u0065n', 'secret', 'api_key', 'password', 'client\\u005fsecret']) {
      const value = chars(AN, 30)
      for (const message of [`{"${name}":"${value}"`, `{"${name}": "${spell(value, 0.3)}", "x": 1}`, `${name}=${value}`]) {
        const kept = unescapeAll(Buffer.from(redactSecrets(Buffer.from(message))).toString('utf8'))
        expect(kept, message).not.toContain(value.slice(-12))
      }
    }
  })

  it('keeps the exact bytes of input without a secret, even when not UTF-8', () => {
    for (const raw of [Buffer.from('{"type":"key.usage","key_id":"key_01JProdApi02","status":200'), Buffer.from([0xff, 0xfe, 0x00, 0x41, 0xc3, 0x28]), Buffer.from('plain text, nothing to hide: sk_live_ is a prefix')]) {
      expect(Buffer.from(redactSecrets(raw)).equals(raw)).toBe(true)
    }
  })

  it('keeps valid JSON valid, with the secret replaced by its prefix and hash', () => {
    const secret = SECRETS.sk_live!()
    const kept = JSON.parse(Buffer.from(redactSecrets(Buffer.from(JSON.stringify({ type: 'key.usage', user_agent: `x ${secret}` })))).toString('utf8')) as { user_agent: string }
    expect(kept.user_agent).toMatch(new RegExp(`^x ${secret.slice(0, 12)}\\[redacted sha256:[0-9a-f]{16}\\]$`))
  })

  it('gets through long runs that a careless pattern would try at every position (the test timeout is the bound)', () => {
    for (const body of ['z'.repeat(300_000), 'eyJ'.repeat(100_000), 'token:'.repeat(50_000), 'sk_live_'.repeat(40_000), '\\u00'.repeat(100_000), '-----BEGIN PRIVATE KEY-----'.repeat(10_000)]) {
      expect(redactSecrets(Buffer.from(body)).byteLength).toBeGreaterThan(0)
    }
  })
})
