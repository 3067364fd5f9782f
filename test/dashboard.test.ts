// The built-in dashboard in a real browser (Chromium from Debian, driven by playwright-core) over seeded data: each
// page's figures equal what the API returns, a responder acknowledges a finding through the page, a viewer is not
// offered what it may not do, no secret is rendered, and every page is saved as a screenshot in test-artifacts/.
import { mkdirSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { chromium, type Browser, type Page } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildApi } from '../api/server.ts'
import { apiDepsOf, type Runtime } from '../app/runtime.ts'
import { startStandInKeyService, type StandInKeyService } from '../demo/key-service.ts'
import { ago, auth, lifecycle, ratelimited, sha256, usage } from '../detectors/fixtures/events.ts'
import { ensureChromium } from './browser/chromium.ts'
import { bearer, openTestRuntime, repoRoot } from './helpers.ts'

const ARTIFACTS = join(repoRoot, 'test-artifacts')
const SECRET_MARK = 'sk_live_DashSECRETnever0rendered'
let rt: Runtime
let api: FastifyInstance
let keys: StandInKeyService
let browser: Browser
let url = ''
let tokens: { viewer: string; responder: string }

const now = new Date().toISOString()
const key = (i: number, account = `acct_Dash${String(i % 3).padStart(4, '0')}`) => ({ account_id: account, key_id: `key_Dash${String(i).padStart(4, '0')}`, key_prefix: `sk_live_D${String(i).padStart(3, '0')}`, key_kind: 'secret' as const, mode: (i % 5 === 0 ? 'test' : 'live') as 'live' | 'test' })

async function apiGet<T>(path: string): Promise<T> {
  return (await api.inject({ method: 'GET', url: path, headers: { authorization: `Bearer ${tokens.viewer}` } })).json() as T
}

async function signedIn(token: string): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } })
  await page.goto(url)
  await page.fill('#token', token)
  await page.click('button[type=submit]')
  await page.waitForSelector('main[data-ready="#/"]')
  return page
}

async function show(page: Page, hash: string): Promise<void> {
  await page.evaluate((h) => (location.hash = h), hash)
  await page.waitForSelector(`main[data-ready="${hash}"]`)
}

const text = (page: Page, testId: string) => page.locator(`[data-testid="${testId}"]`).first().innerText()
const n = (s: string) => Number(s.replace(/[^0-9.]/g, ''))

beforeAll(async () => {
  ensureChromium()
  mkdirSync(ARTIFACTS, { recursive: true })
  keys = await startStandInKeyService({ secret: 'dashboard_key_service_secret' })
  rt = await openTestRuntime({ KEY_SERVICE_URL: keys.url, KEY_SERVICE_SECRET: 'dashboard_key_service_secret' })
  const events: object[] = []
  for (let i = 0; i < 30; i++) {
    const k = key(i)
    keys.keys.set(k.key_id, { ...k, state: 'active' })
    events.push(lifecycle(k, 'created', ago(now, { days: i * 7 }), { secret_sha256: sha256(`${SECRET_MARK}${i}`), label: `service-${i}` }))
    if (i % 4 !== 3) for (let j = 0; j < 5 + i; j++) events.push(usage(k, ago(now, { minutes: 2 + j * 3 }), { ip: `203.0.113.${j % 7}`, country: j % 2 ? 'PH' : 'SG', status: j % 6 === 0 ? 429 : 200 }))
  }
  for (let j = 0; j < 40; j++) events.push(ratelimited(key(1), ago(now, { minutes: 1 + j })))
  events.push(auth('acct_Dash0001', 'login.succeeded', ago(now, { minutes: 5 })))
  const { rejections } = await rt.pipeline.ingest(events.map((e) => ({ raw: Buffer.from(JSON.stringify(e)), origin: { source: 'file' as const } })))
  expect(rejections.map((r) => r.detail)).toEqual([])
  await rt.detection.runAll(new Date(), ['key.stale', 'key.rotation_overdue', 'key.mode_mismatch'])
  await rt.response.manual({ command: 'revoke', key_id: key(3).key_id, reason: 'unused and old', actor: 'token:seed', force: true })
  api = await buildApi(apiDepsOf(rt))
  await api.listen({ host: '127.0.0.1', port: 0 })
  url = `http://127.0.0.1:${(api.server.address() as AddressInfo).port}/`
  tokens = {
    viewer: (await rt.tokens.create('viewer', 'dash-viewer', 'test')).token,
    responder: (await rt.tokens.create('responder', 'dash-responder', 'test')).token,
  }
  browser = await chromium.launch({ executablePath: ensureChromium(), headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage'] })
}, 180_000)

afterAll(async () => {
  await browser?.close()
  await api?.close()
  await rt?.close()
  await keys?.close()
})

describe('the dashboard in Chromium', () => {
  it('refuses a wrong token and shows the overview with the API’s figures', async () => {
    const page = await browser.newPage()
    await page.goto(url)
    await page.fill('#token', 'kw_' + 'x'.repeat(32))
    await page.click('button[type=submit]')
    await page.waitForSelector('#signin-error:has-text("refused")')
    await page.close()

    const viewer = await signedIn(tokens.viewer)
    const o = await apiGet<{ events_per_minute: { events: number }[]; open_findings: { severity: string; findings: number }[]; actions_24h: { actions: number }[] }>('/v1/stats/overview')
    expect(n(await text(viewer, 'events-last-hour'))).toBe(o.events_per_minute.reduce((s, r) => s + Number(r.events), 0))
    expect(n(await text(viewer, 'open-findings'))).toBe(o.open_findings.reduce((s, r) => s + Number(r.findings), 0))
    expect(n(await text(viewer, 'open-low'))).toBe(Number(o.open_findings.find((f) => f.severity === 'low')?.findings ?? 0))
    expect(n(await text(viewer, 'actions-24h'))).toBe(1)
    expect(await viewer.locator('#events-chart canvas').count()).toBe(1)
    expect(await viewer.locator('#ratelimit-chart canvas').count()).toBe(1)
    await viewer.screenshot({ path: join(ARTIFACTS, 'dashboard-overview.png'), fullPage: true })
    expect(await viewer.content()).not.toContain(SECRET_MARK)
    await viewer.close()
  })

  it('lists the keys with their filters as the API does, and shows a key’s page', async () => {
    const page = await signedIn(tokens.viewer)
    await show(page, '#/keys')
    const all = await apiGet<{ total: number }>('/v1/keys')
    expect(n(await text(page, 'keys-total'))).toBe(all.total)
    expect(await page.locator('[data-testid=key-row]').count()).toBe(30)
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-keys.png'), fullPage: true })

    await page.check('input[name=stale]')
    await page.click('#key-filters button[type=submit]')
    await page.waitForSelector('main[data-ready="#/keys?stale=true"]')
    const stale = await apiGet<{ keys: { key_id: string }[] }>('/v1/keys?stale=true')
    expect(stale.keys.length).toBeGreaterThan(0)
    expect(await page.locator('[data-testid=key-row]').evaluateAll((rows) => rows.map((r) => (r as HTMLElement).dataset.key))).toEqual(stale.keys.map((k) => k.key_id))

    await show(page, `#/keys/${key(2).key_id}`)
    const exposure = await apiGet<{ totals: { requests: number } }>(`/v1/keys/${key(2).key_id}/exposure`)
    expect(n(await text(page, 'key-requests'))).toBe(exposure.totals.requests)
    expect(await page.locator('#usage-chart canvas').count()).toBe(1)
    expect(await page.locator('#revoke').count()).toBe(0) // a viewer is not offered a revoke
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-key.png'), fullPage: true })
    expect(await page.content()).not.toContain(SECRET_MARK)
    await page.close()
  })

  it('lets a responder acknowledge a finding, and offers a viewer no buttons', async () => {
    const viewer = await signedIn(tokens.viewer)
    await show(viewer, '#/findings')
    expect(await viewer.locator('[data-ack]').count()).toBe(0)
    await viewer.close()

    const page = await signedIn(tokens.responder)
    await show(page, '#/findings')
    const open = await apiGet<{ findings: { finding_id: string }[] }>('/v1/findings?status=open&limit=500')
    expect(n(await text(page, 'findings-count'))).toBe(open.findings.length)
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-findings.png'), fullPage: true })
    const first = await page.locator('[data-testid=finding-row]').first().getAttribute('data-finding')
    await page.click(`[data-ack="${first}"]`)
    await page.waitForFunction((id) => !document.querySelector(`[data-finding="${id}"]`), first)
    const after = await apiGet<{ finding: { status: string; status_changed_by: string } }>(`/v1/findings/${first}`)
    expect(after.finding).toMatchObject({ status: 'acknowledged', status_changed_by: 'token:dash-responder' })
    expect(n(await text(page, 'findings-count'))).toBe(open.findings.length - 1)

    await show(page, '#/actions')
    expect(n(await text(page, 'actions-count'))).toBe(1)
    expect(await page.locator('[data-testid=action-row]').innerText()).toContain('sk_live_D003')
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-actions.png'), fullPage: true })
    await page.close()
  })
})
