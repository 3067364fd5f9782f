// An account takeover, then the taken-over user revealing a live key, then that key used from a new network and
// moving money: one incident (linked by the reveal), one Slack thread (the later findings reply in the first one's
// thread), one row on the Incidents page and the key's page in Chromium, with its timeline, and in the incidents
// export. Unrelated findings stay apart.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { chromium, type Browser, type Page } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildApi } from '../api/server.ts'
import { apiDepsOf, type Runtime } from '../app/runtime.ts'
import { ago, auth, lifecycle, usage } from '../detectors/fixtures/events.ts'
import type { Recorded } from '../detectors/findings.ts'
import { exportToFile } from '../exports/export.ts'
import { waitFor } from './kafka/admin.ts'
import { ensureChromium } from './browser/chromium.ts'
import { openTestRuntime, repoRoot, tempDir } from './helpers.ts'
import { startSlackStandIn, type SlackStandIn } from './stand-ins/slack.ts'
import { startStandInKeyService, type StandInKeyService } from '../demo/key-service.ts'

const ARTIFACTS = join(repoRoot, 'test-artifacts')
const account = 'acct_IncShop0001'
const victim = 'usr_IncVictim01'
const key = { account_id: account, key_id: 'key_IncLive0001', key_prefix: 'sk_live_InCa', key_kind: 'secret' as const, mode: 'live' as const }
const otherKey = { account_id: account, key_id: 'key_IncOther001', key_prefix: 'sk_live_InOt', key_kind: 'secret' as const, mode: 'live' as const }

let slack: SlackStandIn
let keyService: StandInKeyService
let rt: Runtime
let api: FastifyInstance
let browser: Browser
let url = ''
let viewerToken = ''
const at = (minutesAgo: number) => new Date(Date.now() - minutesAgo * 60_000)

async function ingest(events: object[]): Promise<void> {
  const { rejections } = await rt.pipeline.ingest(events.map((e) => ({ raw: Buffer.from(JSON.stringify(e)), origin: { source: 'file' as const } })))
  expect(rejections.map((r) => r.detail)).toEqual([])
}

/** A finding recorded and announced as a detector run would (the response, incidents and alerts listen). */
async function raise(draft: Parameters<Runtime['raise']>[0][number], when: Date): Promise<Recorded> {
  const [recorded] = await rt.raise([draft], when)
  return recorded!
}

const posts = () => slack.calls.filter((c) => c.method === 'chat.postMessage')

beforeAll(async () => {
  slack = await startSlackStandIn()
  keyService = await startStandInKeyService({ secret: 'incidents_key_service_secret' })
  keyService.keys.set(key.key_id, { ...key, state: 'active' })
  // Money moving out of a key is revoked at once: the incident's timeline says so.
  const policy = join(tempDir(), 'policy.json')
  writeFileSync(policy, JSON.stringify({ rules: [{ name: 'revoke-payout-spikes', detectors: ['key.payout_spike'], action: 'revoke' }] }))
  rt = await openTestRuntime({
    SLACK_BOT_TOKEN: 'xoxb-test-token',
    SLACK_API_URL: slack.apiUrl,
    SLACK_CHANNEL: 'C0SECURITY',
    KEYWATCH_PUBLIC_URL: 'https://keywatch.example',
    KEY_SERVICE_URL: keyService.url,
    KEY_SERVICE_SECRET: 'incidents_key_service_secret',
    RESPONSE_POLICY_FILE: policy,
  })
  await rt.startServices()
  const now = new Date().toISOString()
  await ingest([
    lifecycle(key, 'created', ago(now, { days: 60 }), { actor: { type: 'user', id: 'usr_IncAdmin001' } }),
    lifecycle(otherKey, 'created', ago(now, { days: 60 }), { actor: { type: 'user', id: 'usr_IncAdmin001' } }),
    auth(account, 'login.succeeded', ago(now, { minutes: 50 }), { user_id: victim, ip: '185.220.101.7', country: 'NL' }),
    // The taken-over user reveals the live key: this links the user's incident to the key.
    auth(account, 'apikey.revealed', ago(now, { minutes: 40 }), { user_id: victim, key_id: key.key_id, ip: '185.220.101.7', country: 'NL' }),
    ...Array.from({ length: 3 }, (_, i) => usage(key, ago(now, { minutes: 20 - i }), { ip: '185.220.101.7', country: 'NL', asn: 60729, method: 'POST', endpoint: '/v1/payouts', amount_minor: 990000, currency: 'EUR' })),
  ])
  mkdirSync(ARTIFACTS, { recursive: true })
  api = await buildApi(apiDepsOf(rt))
  await api.listen({ host: '127.0.0.1', port: 0 })
  url = `http://127.0.0.1:${(api.server.address() as AddressInfo).port}/`
  viewerToken = (await rt.tokens.create('viewer', 'inc-viewer', 'test')).token
  browser = await chromium.launch({ executablePath: ensureChromium(), headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage'] })
}, 180_000)

afterAll(async () => {
  await browser?.close()
  await api?.close()
  await rt?.close()
  await slack?.close()
  await keyService?.close()
})

async function signedIn(): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } })
  await page.goto(url)
  await page.fill('#token', viewerToken)
  await page.click('button[type=submit]')
  await page.waitForSelector('main[data-ready="#/"]')
  return page
}

async function show(page: Page, hash: string): Promise<void> {
  await page.evaluate((h) => (location.hash = h), hash)
  await page.waitForSelector(`main[data-ready="${hash}"]`)
}

describe('takeover → reveal → new network', () => {
  let takeover: Recorded
  let newNetwork: Recorded
  let moneyOut: Recorded
  let incidentId = ''

  it('is one incident, alerted as one Slack thread', async () => {
    takeover = await raise(
      { detector: 'auth.account_takeover', severity: 'high', account_id: account, user_id: victim, ip: '185.220.101.7', title: `Account takeover of ${victim}: login from a new country after a password reset`, evidence: { country: 'NL' }, dedupKey: `auth.account_takeover:${victim}` },
      at(45),
    )
    const root = await waitFor('the takeover alert', async () => posts().find((c) => c.fields.text!.includes('Account takeover')))
    expect(root.fields.thread_ts).toBeUndefined()
    expect(JSON.stringify(root.blocks)).toContain('Opens incident')

    newNetwork = await raise(
      { detector: 'key.new_network', severity: 'high', account_id: account, key_id: key.key_id, title: `${key.key_prefix} used from a network it never used (AS60729, NL)`, evidence: { key_prefix: key.key_prefix, asn: 60729 }, dedupKey: `key.new_network:${key.key_id}:60729` },
      at(19),
    )
    moneyOut = await raise(
      { detector: 'key.payout_spike', severity: 'critical', account_id: account, key_id: key.key_id, title: `${key.key_prefix} moved 29,700.00 EUR in payouts in 3 minutes`, evidence: { key_prefix: key.key_prefix, amount_minor: 2970000 }, dedupKey: `key.payout_spike:${key.key_id}` },
      at(17),
    )
    const replies = await waitFor('both replies', async () => {
      const r = posts().filter((c) => c.fields.text!.includes(key.key_prefix))
      return r.length === 2 ? r : undefined
    })
    const rootTs = (await rt.alerts.outbox.forFindings([takeover.finding.finding_id])).find((a) => a.channel === 'slack')!.slack_ts
    expect(rootTs).toMatch(/^\d+\.\d+$/)
    for (const r of replies) expect(r.fields.thread_ts, r.fields.text).toBe(rootTs)
    expect(JSON.stringify(replies[1]!.blocks)).toMatch(/Part of incident .*\(3 findings\)/)

    const incidents = await rt.incidents.list({ account_id: account })
    expect(incidents).toHaveLength(1)
    incidentId = incidents[0]!.incident_id
    expect(incidents[0]).toMatchObject({ findings: 3, severity: 'critical', status: 'open', title: takeover.finding.title })
    expect(incidents[0]!.subjects.sort()).toEqual([`key:${key.key_id}`, `user:${victim}`])
  })

  it('has a timeline: what fired, when, the reveal that links them, and what was done', async () => {
    await rt.findings.setStatus(newNetwork.finding.finding_id, 'acknowledged', 'token:oncall', 'looking at it')
    const found = await rt.incidents.get(incidentId)
    expect(found!.members.map((m) => m.detector)).toEqual(['auth.account_takeover', 'key.new_network', 'key.payout_spike'])
    expect(found!.members[1]!.linked_by).toBe(`${victim} revealed ${key.key_id}`)
    expect(found!.members[2]!.linked_by).toBe(`the same key ${key.key_id}`)
    const kinds = found!.timeline.map((t) => `${t.kind}:${t.detector ?? t.text}`)
    expect(kinds).toContain(`link:${victim} apikey.revealed ${key.key_id} from 185.220.101.7 (NL)`)
    expect(kinds).toContain('status:finding acknowledged by token:oncall: looking at it')
    // What keywatch did: the alerts it sent, and the revoke the policy asked for.
    expect(kinds).toContain('action:alerted to Slack C0SECURITY')
    expect(kinds.find((k) => k.startsWith(`action:revoke of ${key.key_prefix} requested by auto:`))).toMatch(/: (requested|confirmed)/)
    const times = found!.timeline.map((t) => t.at)
    expect(times).toEqual([...times].sort())
    // The reveal comes before the new network in the timeline.
    expect(kinds.indexOf(`link:${victim} apikey.revealed ${key.key_id} from 185.220.101.7 (NL)`)).toBeLessThan(kinds.indexOf('finding:key.new_network'))

    const res = await api.inject({ method: 'GET', url: `/v1/incidents/${incidentId}`, headers: { authorization: `Bearer ${viewerToken}` } })
    expect(res.statusCode).toBe(200)
    expect(res.json()).toMatchObject({ incident: { incident_id: incidentId, findings: 3 }, findings: [{ detector: 'auth.account_takeover' }, {}, {}] })
    const byKey = await api.inject({ method: 'GET', url: `/v1/incidents?key=${key.key_id}`, headers: { authorization: `Bearer ${viewerToken}` } })
    expect(byKey.json().incidents.map((i: { incident_id: string }) => i.incident_id)).toEqual([incidentId])
    expect((await api.inject({ method: 'GET', url: '/v1/incidents/inc_nope', headers: { authorization: `Bearer ${viewerToken}` } })).statusCode).toBe(400)
  })

  it('keeps an unrelated finding out, and a low one opens no incident', async () => {
    // Another key of the account, created by another user: no link to the victim or the key.
    await raise({ detector: 'key.mode_mismatch', severity: 'medium', account_id: account, key_id: otherKey.key_id, title: `${otherKey.key_prefix} used from staging`, evidence: {}, dedupKey: `key.mode_mismatch:${otherKey.key_id}` }, at(10))
    await raise({ detector: 'key.stale', severity: 'low', account_id: account, key_id: 'key_IncStale001', title: 'stale', evidence: {}, dedupKey: 'key.stale:key_IncStale001' }, at(9))
    const incidents = await waitFor('the second incident', async () => {
      const list = await rt.incidents.list({ account_id: account })
      return list.length === 2 ? list : undefined
    })
    expect(incidents.map((i) => i.findings).sort()).toEqual([1, 3])
    expect((await rt.incidents.list({ key_id: 'key_IncStale001' })).length).toBe(0)
  })

  it('shows on the Incidents page and the key’s page in Chromium', async () => {
    const page = await signedIn()
    await show(page, '#/incidents')
    const rows = page.locator(`[data-testid=incident-row][data-incident="${incidentId}"]`)
    expect(await rows.count()).toBe(1)
    expect(await rows.locator('[data-testid=incident-findings]').innerText()).toBe('3')
    expect(await page.locator('[data-testid=incidents-count]').innerText()).toBe('2')
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-incidents.png'), fullPage: true })

    await rows.locator('a').first().click()
    await page.waitForSelector(`main[data-ready="#/incidents/${incidentId}"]`)
    expect(await page.locator('[data-testid=incident-finding]').count()).toBe(3)
    const timeline = await page.locator('[data-testid=timeline-entry]').allInnerTexts()
    expect(timeline.join('\n')).toContain('auth.account_takeover')
    expect(timeline.join('\n')).toContain(`${victim} apikey.revealed ${key.key_id}`)
    expect(timeline.join('\n')).toContain('key.payout_spike')
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-incident.png'), fullPage: true })

    await show(page, `#/keys/${key.key_id}`)
    expect(await page.locator(`#key-incidents [data-incident="${incidentId}"]`).count()).toBe(1)
    await page.close()
  })

  it('is exported with the incidents dataset', async () => {
    const out = join(tempDir(), 'incidents.ndjson')
    const manifest = await exportToFile(rt.storage, { dataset: 'incidents', format: 'ndjson', filter: { from: at(24 * 60).toISOString(), to: new Date(Date.now() + 60_000).toISOString(), account }, actor: 'test' }, out, rt.exportSigningKey(), rt.version)
    const rows = readFileSync(out, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, string>)
    expect(manifest.rows).toBe(4)
    expect(rows.filter((r) => r.incident_id === incidentId).map((r) => r.detector)).toEqual(['auth.account_takeover', 'key.new_network', 'key.payout_spike'])
    expect(rows[0]).toMatchObject({ incident_title: takeover.finding.title, subject: `user:${victim}` })
    expect(moneyOut.finding.finding_id).toBe(rows.find((r) => r.detector === 'key.payout_spike')!.finding_id)
  })
})
