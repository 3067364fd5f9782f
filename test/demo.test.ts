// `keywatch demo` as a newcomer runs it: on the embedded engine, from nothing, it shows its first automatic
// revocation on the dashboard within 90 seconds, and its alerts on the Alerts page.
import { join } from 'node:path'
import { chromium } from 'playwright-core'
import { afterAll, describe, expect, it } from 'vitest'
import type { Action } from '../response/actions.ts'
import { ensureChromium } from './browser/chromium.ts'
import { repoRoot, startKeywatch, tempDir } from './helpers.ts'
import { waitFor } from './kafka/admin.ts'

let stop: (() => Promise<unknown>) | undefined
afterAll(async () => {
  await stop?.()
})

describe('keywatch demo', () => {
  it('revokes the first leaked key within 90 s of starting and shows it on the dashboard', async () => {
    const started = Date.now()
    const demo = await startKeywatch({}, ['demo', '--data-dir', join(tempDir(), 'demo')])
    stop = async () => {
      demo.child.kill('SIGTERM')
      await demo.exited
    }
    const token = await waitFor('the printed token', async () => /sign in with this admin token: (kw_\w+)/.exec(demo.logs())?.[1])
    const auth = { authorization: `Bearer ${token}` }
    const revoked = await waitFor(
      'the first automatic revocation',
      async () => (((await (await fetch(`${demo.url}/v1/actions`, { headers: auth })).json()) as { actions: Action[] }).actions ?? []).find((a) => a.requested_by === 'auto:leak.public_report' && a.status === 'confirmed'),
      90_000,
      500,
    )
    const seconds = (Date.now() - started) / 1000
    expect(seconds).toBeLessThan(90)

    const browser = await chromium.launch({ executablePath: ensureChromium(), headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage'] })
    try {
      const page = await browser.newPage({ viewport: { width: 1400, height: 900 } })
      await page.goto(`${demo.url}/`)
      await page.fill('#token', token)
      await page.click('button[type=submit]')
      await page.waitForSelector('main[data-ready="#/"]')
      await page.screenshot({ path: join(repoRoot, 'test-artifacts', 'demo-overview.png'), fullPage: true })
      await page.evaluate(() => (location.hash = '#/actions'))
      await page.waitForSelector('main[data-ready="#/actions"]')
      const row = await page.locator('[data-testid=action-row]', { hasText: revoked.key_prefix }).innerText()
      expect(row).toContain('auto:leak.public_report')
      expect(row).toContain('confirmed')
      await page.screenshot({ path: join(repoRoot, 'test-artifacts', 'demo-actions.png'), fullPage: true })
      await page.evaluate(() => (location.hash = '#/alerts'))
      await page.waitForSelector('main[data-ready="#/alerts"]')
      expect(await page.locator('[data-testid=alert-row]', { hasText: 'found in public' }).count()).toBeGreaterThan(0)
      await page.screenshot({ path: join(repoRoot, 'test-artifacts', 'demo-alerts.png'), fullPage: true })
      await page.evaluate(() => (location.hash = '#/keys?stale=true'))
      await page.waitForSelector('main[data-ready="#/keys?stale=true"]')
      expect(await page.locator('[data-testid=key-row]').count()).toBeGreaterThan(0)
    } finally {
      await browser.close()
    }
  }, 150_000)
})
