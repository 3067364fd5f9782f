// A security team's own detectors from DETECTORS_DIR, on the real engine: the example loads beside the built-ins,
// fires, is alerted in Slack and drives a response policy like a built-in one; a broken file stops nothing and
// names its file and field; writing SQL, a second statement, a table outside the detector tables and a colliding id
// are refused; a slow one is stopped, reported (finding + metric) and the built-ins run on. Through the command
// line: `keywatch detectors test` (the example and every built-in pass; broken files fail naming file and field)
// and `keywatch detectors backtest`.
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Runtime } from '../app/runtime.ts'
import { startStandInKeyService, type StandInKeyService } from '../demo/key-service.ts'
import { ago, lifecycle, usage } from '../detectors/fixtures/events.ts'
import { DETECTORS } from '../detectors/index.ts'
import { waitFor } from './kafka/admin.ts'
import { openTestRuntime, repoRoot, runCli, tempDir } from './helpers.ts'
import { startSlackStandIn, type SlackStandIn } from './stand-ins/slack.ts'

const EXAMPLES = join(repoRoot, 'examples', 'detectors')
const EXAMPLE = 'partner.endpoint_outside_allowlist'
const example = readFileSync(join(EXAMPLES, 'partner-endpoint-allowlist.yaml'), 'utf8')
const partner = { account_id: 'acct_PartnerLive1', key_id: 'key_PartnerLive1', key_prefix: 'sk_live_PaRt', key_kind: 'secret' as const, mode: 'live' as const }

/** The example with a few lines changed: each broken file is one mistake a person makes. */
const variant = (id: string, replace: [string | RegExp, string][] = []) => replace.reduce<string>((s, [a, b]) => s.replace(a, b), example.replace(`id: ${EXAMPLE}`, `id: ${id}`))
const QUERY = /query: \|\n(  .*\n)+/

const BROKEN: Record<string, string> = {
  'wrong-field.yaml': variant('partner.wrong_field', [['severity: high', 'severity: urgent']]),
  'collide.yaml': variant('key.stale'),
  'writes.yaml': variant('partner.writes', [[QUERY, 'query: INSERT INTO findings SELECT * FROM findings\n']]),
  'two-statements.yaml': variant('partner.two_statements', [[QUERY, "query: SELECT account_id, key_id FROM key_usage; DROP TABLE findings\n"]]),
  'tokens.yaml': variant('partner.tokens', [[QUERY, 'query: SELECT account_id, token_id AS key_id FROM api_tokens\n']]),
  'outside.yaml': variant('partner.outside', [[QUERY, "query: SELECT * FROM url('http://127.0.0.1:9/x', CSV, 'account_id String')\n"]]),
  'outfile.yaml': variant('partner.outfile', [[QUERY, "query: SELECT account_id, key_id FROM key_usage INTO OUTFILE '/tmp/keywatch-outfile-probe.csv'\n"]]),
  'bad-column.yaml': variant('partner.bad_column', [['  key_id: key_id\n  severity: severity', '  key_id: the_key\n  severity: severity']]),
  'not-yaml.json': '{ "id": "partner.not_json", ',
}
// Valid, but sleeps past its 1-second limit.
const SLOW = variant('partner.slow_sleeper', [
  ['timeout_seconds: 10', 'timeout_seconds: 1'],
  [QUERY, "query: SELECT 'acct_SlowSleep1' AS account_id, 'key_SlowSleep1' AS key_id, '' AS key_prefix, '' AS endpoint, 0 AS requests, 0 AS accepted, 'high' AS severity, '' AS first_request, '' AS last_request, [''] AS ips, sleep(3) AS slept\n"],
])

let slack: SlackStandIn
let keys: StandInKeyService
let rt: Runtime
let dir: string

beforeAll(async () => {
  dir = tempDir()
  copyFileSync(join(EXAMPLES, 'partner-endpoint-allowlist.yaml'), join(dir, 'partner-endpoint-allowlist.yaml'))
  for (const [name, text] of Object.entries(BROKEN)) writeFileSync(join(dir, name), text)
  writeFileSync(join(dir, 'slow.yaml'), SLOW)
  writeFileSync(join(dir, 'README.md'), 'not a detector: ignored')
  ;[slack, keys] = await Promise.all([startSlackStandIn(), startStandInKeyService({ secret: 'custom_key_service_secret' })])
  keys.keys.set(partner.key_id, { ...partner, state: 'active' })
  const policy = join(dir, '..', `policy-${Date.now()}.json`)
  writeFileSync(policy, JSON.stringify({ rules: [{ name: 'revoke-partner-keys-off-contract', detectors: [EXAMPLE], severities: ['high'], action: 'revoke' }] }))
  rt = await openTestRuntime({
    DETECTORS_DIR: dir,
    SLACK_BOT_TOKEN: 'xoxb-test-token',
    SLACK_API_URL: slack.apiUrl,
    SLACK_CHANNEL: 'C0SECURITY',
    KEY_SERVICE_URL: keys.url,
    KEY_SERVICE_SECRET: 'custom_key_service_secret',
    RESPONSE_POLICY_FILE: policy,
  })
  await rt.startServices()
}, 120_000)

afterAll(async () => {
  await rt?.close()
  await Promise.all([slack?.close(), keys?.close()])
})

describe('custom detectors in DETECTORS_DIR', () => {
  it('load beside the built-in ones; each broken file is skipped, naming its file and field', async () => {
    expect(rt.customDetectors.ids).toEqual([EXAMPLE, 'partner.slow_sleeper'])
    expect(rt.detection.list().map((d) => d.id)).toEqual([...DETECTORS.map((d) => d.id), EXAMPLE, 'partner.slow_sleeper'])
    const problems = rt.customDetectors.problems.map((p) => ({ file: p.file, field: p.field, kind: p.kind, message: p.message }))
    const of = (file: string) => problems.filter((p) => p.file === file)
    expect(of('wrong-field.yaml')).toEqual([expect.objectContaining({ field: 'severity', kind: 'invalid' })])
    expect(of('collide.yaml')).toEqual([expect.objectContaining({ field: 'id', message: expect.stringContaining('already a detector') })])
    expect(of('writes.yaml')).toEqual([expect.objectContaining({ field: 'query', kind: 'refused', message: expect.stringContaining('only a SELECT') })])
    expect(of('two-statements.yaml')).toEqual([expect.objectContaining({ field: 'query', kind: 'refused', message: expect.stringContaining('one statement') })])
    expect(of('tokens.yaml')).toEqual([expect.objectContaining({ field: 'query', kind: 'refused', message: expect.stringContaining('reads api_tokens') })])
    expect(of('outside.yaml')).toEqual([expect.objectContaining({ field: 'query', kind: 'refused', message: expect.stringContaining('table function url()') })])
    expect(of('outfile.yaml')).toEqual([expect.objectContaining({ field: 'query', kind: 'refused', message: expect.stringContaining('INTO OUTFILE') })])
    expect(existsSync('/tmp/keywatch-outfile-probe.csv')).toBe(false)
    expect(of('bad-column.yaml')).toEqual([expect.objectContaining({ field: 'finding.key_id', message: expect.stringContaining('column the_key is not in the query') })])
    expect(of('not-yaml.json')).toEqual([expect.objectContaining({ field: '(file)', message: expect.stringContaining('does not parse') })])
    // The refused statements never ran: the table the second statement drops is there, and nothing was inserted.
    const [row] = await (await rt.storage.client.query({ query: "SELECT count() AS n FROM system.tables WHERE database = currentDatabase() AND name = 'findings'", format: 'JSONEachRow' })).json<{ n: number }>()
    expect(Number(row!.n)).toBe(1)

    // Reported as findings (one per file) and counted in the metrics.
    const invalid = await waitFor('the findings about skipped files', async () => {
      const list = await rt.findings.list({ detector: 'detector.custom_invalid' })
      return list.length === Object.keys(BROKEN).length ? list : undefined
    })
    expect(invalid.find((f) => f.evidence.file === 'writes.yaml')).toMatchObject({ severity: 'medium', evidence: { refused: true } })
    expect(invalid.find((f) => f.evidence.file === 'wrong-field.yaml')!.title).toContain('severity')
    const metrics = await rt.metrics.registry.metrics()
    expect(metrics).toContain('keywatch_detector_problems_total{detector="writes.yaml",kind="refused"} 1')
    expect(metrics).toContain('keywatch_detector_problems_total{detector="wrong-field.yaml",kind="invalid"} 1')
  })

  it('the example fires, dedups, is alerted in Slack and drives the response policy like a built-in', async () => {
    const now = new Date().toISOString()
    const { rejections } = await rt.pipeline.ingest(
      [
        lifecycle(partner, 'created', ago(now, { days: 20 }), { label: 'partner-acme' }),
        usage(partner, ago(now, { minutes: 6 }), { endpoint: '/v1/payments' }),
        usage(partner, ago(now, { minutes: 4 }), { endpoint: '/v1/payouts', method: 'POST', amount_minor: 500000, currency: 'EUR' }),
        usage(partner, ago(now, { minutes: 3 }), { endpoint: '/v1/payouts', method: 'POST', amount_minor: 500000, currency: 'EUR' }),
      ].map((e) => ({ raw: Buffer.from(JSON.stringify(e)), origin: { source: 'file' as const } })),
    )
    expect(rejections).toEqual([])
    await rt.writer.drain()
    const run = await rt.detection.run(EXAMPLE)
    expect(run.error).toBeUndefined()
    expect(run.findings.map((f) => f.finding)).toEqual([
      expect.objectContaining({ detector: EXAMPLE, severity: 'high', account_id: partner.account_id, key_id: partner.key_id, evidence: expect.objectContaining({ endpoint: '/v1/payouts', requests: 2, accepted: 2 }) }),
    ])
    expect(run.findings[0]!.finding.title).toBe('Partner key sk_live_PaRt called /v1/payouts, outside its allow-list (2 requests, 2 accepted)')
    const post = await waitFor('the Slack alert', async () => slack.calls.find((c) => c.method === 'chat.postMessage' && JSON.stringify(c.blocks).includes(EXAMPLE)))
    expect(post.fields.channel).toBe('C0SECURITY')
    const revoke = await waitFor('the revoke at the key service', async () => keys.calls.find((c) => c.key_id === partner.key_id && c.command === 'revoke'))
    expect(revoke.signature_ok).toBe(true)
    const [action] = await rt.actions.forFindings([run.findings[0]!.finding.finding_id])
    expect(action).toMatchObject({ requested_by: `auto:${EXAMPLE}`, policy: 'revoke-partner-keys-off-contract' })

    const again = await rt.detection.run(EXAMPLE)
    expect(again.findings.map((f) => [f.change, f.finding.occurrences, f.finding.finding_id])).toEqual([['updated', 2, run.findings[0]!.finding.finding_id]])
  })

  it('a slow one is stopped at its limit and reported; the built-in ones keep running', async () => {
    // The scheduler started by startServices may run the slow one too, so count what this run adds.
    const timeouts = async () => Number((await rt.metrics.registry.metrics()).match(/keywatch_detector_problems_total\{detector="partner\.slow_sleeper",kind="timeout"\} (\d+)/)?.[1] ?? 0)
    const before = await timeouts()
    const runs = await rt.detection.runAll()
    const slow = runs.find((r) => r.detector === 'partner.slow_sleeper')!
    expect(slow).toMatchObject({ timedOut: true, error: expect.stringMatching(/Timeout exceeded/) })
    expect(slow.findings.map((f) => f.finding)).toEqual([expect.objectContaining({ detector: 'detector.custom_failed', severity: 'medium', evidence: expect.objectContaining({ detector: 'partner.slow_sleeper', timed_out: true, timeout_seconds: 1 }) })])
    expect(runs.filter((r) => r.detector !== 'partner.slow_sleeper' && r.error)).toEqual([])
    expect(runs).toHaveLength(DETECTORS.length + 2)
    expect(await timeouts()).toBeGreaterThanOrEqual(before + 1)
  })
})

describe('keywatch detectors test', () => {
  it('passes every built-in detector and the example, a line each', async () => {
    const r = await runCli(['detectors', 'test', EXAMPLES], { KEYWATCH_DATA_DIR: tempDir() })
    expect(r.code, r.stdout + r.stderr).toBe(0)
    const lines = r.stdout.trim().split('\n')
    for (const id of [...DETECTORS.map((d) => d.id), EXAMPLE]) expect(lines.filter((l) => new RegExp(`^PASS  ${id.replace(/\./g, '\\.')}\\s`).test(l)), id).toHaveLength(1)
    expect(lines.at(-1)).toBe(`ok: ${DETECTORS.length + 1} passed, 0 failed`)
  }, 180_000)

  it('fails naming the file and field of a broken file, a refused statement and a fixture that does not hold', async () => {
    const broken = tempDir()
    writeFileSync(join(broken, 'wrong-field.yaml'), BROKEN['wrong-field.yaml']!)
    writeFileSync(join(broken, 'writes.yaml'), BROKEN['writes.yaml']!)
    writeFileSync(join(broken, 'wrong-expect.yaml'), variant('partner.wrong_expect', [['requests: 3, accepted: 3', 'requests: 4, accepted: 3']]))
    const r = await runCli(['detectors', 'test', broken, '--custom-only'], { KEYWATCH_DATA_DIR: tempDir() })
    expect(r.code, r.stdout + r.stderr).toBe(1)
    expect(r.stdout).toMatch(/^FAIL  wrong-field\.yaml\s+invalid: severity: /m)
    expect(r.stdout).toMatch(/^FAIL  writes\.yaml\s+refused: query: only a SELECT is allowed; the engine parsed a Insert statement/m)
    expect(r.stdout).toMatch(/^FAIL  partner\.wrong_expect\s/m)
    expect(r.stdout).toContain('fires: a partner key moving money through /v1/payouts: evidence.requests is 3, expected 4')
    expect(r.stdout.trim().split('\n').at(-1)).toBe('FAILED: 0 passed, 3 failed')
  }, 120_000)
})

describe('keywatch detectors backtest', () => {
  it('replays stored history and prints what the example would have raised, recording nothing', async () => {
    const data = tempDir()
    const now = Date.now()
    const t = (minutesAgo: number) => new Date(now - minutesAgo * 60_000).toISOString()
    const events = [
      lifecycle(partner, 'created', t(60 * 24 * 10), { label: 'partner-acme' }),
      usage(partner, t(180), { endpoint: '/v1/payouts', method: 'POST' }),
      usage(partner, t(178), { endpoint: '/v1/payouts', method: 'POST' }),
      usage(partner, t(60), { endpoint: '/v1/payments' }),
    ]
    const file = join(data, 'events.ndjson')
    mkdirSync(data, { recursive: true })
    writeFileSync(file, events.map((e) => JSON.stringify(e)).join('\n') + '\n')
    const env = { KEYWATCH_DATA_DIR: join(data, 'kw'), DETECTORS_DIR: EXAMPLES }
    expect((await runCli(['ingest', file], env)).code).toBe(0)
    const r = await runCli(['detectors', 'backtest', EXAMPLE, '--from', t(240), '--to', t(30), '--every', '5m', '--json'], env)
    expect(r.code, r.stderr).toBe(0)
    const out = JSON.parse(r.stdout) as { runs: number; findings: { key_id: string; severity: string; times: number; evidence: { endpoint: string } }[] }
    expect(out.runs).toBe(43)
    expect(out.findings).toEqual([expect.objectContaining({ key_id: partner.key_id, severity: 'high', evidence: expect.objectContaining({ endpoint: '/v1/payouts' }) })])
    // The 15-minute window holds the payouts for three 5-minute steps.
    expect(out.findings[0]!.times).toBeGreaterThanOrEqual(3)
    const text = await runCli(['detectors', 'backtest', EXAMPLE, '--from', t(240), '--to', t(30), '--every', '5m'], env)
    expect(text.stdout).toContain('1 findings would have been raised')
    const listed = await runCli(['findings', '--json', '--detector', EXAMPLE], env)
    expect(JSON.parse(listed.stdout)).toEqual([]) // a backtest records nothing
    const unknown = await runCli(['detectors', 'backtest', 'partner.nope', '--from', t(240), '--to', t(30)], env)
    expect(unknown.code).toBe(2)
    expect(unknown.stderr).toContain('no detector partner.nope')
  }, 180_000)
})
