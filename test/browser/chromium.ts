// Chromium for the browser tests comes from Debian's packages (Playwright's own download does not work here). When
// it is missing and we may install packages (root with apt-get), it is installed, so `npm test` sets itself up.
import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'

export const CHROMIUM = '/usr/bin/chromium'

export function ensureChromium(): string {
  if (existsSync(CHROMIUM)) return CHROMIUM
  const root = process.getuid?.() === 0
  if (!root || !existsSync('/usr/bin/apt-get')) {
    throw new Error(`the browser tests need Chromium at ${CHROMIUM}: install it with \`sudo apt-get install -y chromium\``)
  }
  const apt = (...args: string[]) => execFileSync('apt-get', args, { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } })
  try {
    apt('install', '-y', '--no-install-recommends', 'chromium')
  } catch {
    apt('update') // a fresh machine may have no package lists yet
    apt('install', '-y', '--no-install-recommends', 'chromium')
  }
  if (!existsSync(CHROMIUM)) throw new Error(`apt-get install chromium did not provide ${CHROMIUM}`)
  return CHROMIUM
}
