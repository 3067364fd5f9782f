// Detection from the command line: a replayed NDJSON history, `keywatch detect --once --at T` raising what each
// detector would have raised at T, `keywatch findings`, and a leak report raised as it is ingested.
import { randomUUID } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { ago, leak, lifecycle, sha256 } from '../detectors/fixtures/events.ts'
import * as abuse from '../detectors/fixtures/abuse.ts'
import * as keys from '../detectors/fixtures/keys.ts'
import * as leaks from '../detectors/fixtures/leak.ts'
import type { Fixtures } from '../detectors/detector.ts'
import { runCli, tempDir } from './helpers.ts'

const FIXTURES: Record<string, Fixtures> = {
  'leak.public_report': leaks.publicReport,
  'abuse.ratelimit_spike': abuse.ratelimitSpike,
  'auth.mfa_bruteforce': abuse.mfaBruteforce,
  'key.used_after_revocation': keys.usedAfterRevocation,
  'key.stale': keys.stale,
  'key.rotation_stalled': keys.rotationStalled,
}
const AT = '2026-11-22T15:00:00.000Z'

interface JsonRun {
  detector: string
  error?: string
  findings: { detector: string; account_id: string; severity: string; change: string }[]
}

describe('keywatch detect', () => {
  it('backtests a replayed history as of --at', async () => {
    for (const f of Object.values(FIXTURES)) expect(f.at).toBe(AT)
    const dir = tempDir()
    const file = join(dir, 'history.ndjson')
    const events = Object.values(FIXTURES).flatMap((f) => [...f.fires, ...f.quiet].flatMap((c) => c.events))
    writeFileSync(file, events.map((e) => JSON.stringify(e)).join('\n'))
    const env = { KEYWATCH_DATA_DIR: join(dir, 'data') }
    expect((await runCli(['ingest', file], env)).code).toBe(0)

    const r = await runCli(['detect', '--once', '--at', AT, '--only', Object.keys(FIXTURES).join(','), '--json'], env)
    expect(r.code, r.stderr).toBe(0)
    const runs = JSON.parse(r.stdout) as JsonRun[]
    expect(runs.map((x) => x.detector).sort()).toEqual(Object.keys(FIXTURES).sort())
    for (const [id, f] of Object.entries(FIXTURES)) {
      const run = runs.find((x) => x.detector === id)!
      expect(run.error).toBeUndefined()
      const raisedAccounts = new Set(run.findings.map((x) => x.account_id))
      for (const c of f.fires) expect(raisedAccounts.has(c.events[0]!.account_id as string), `${id} fires: ${c.name}`).toBe(true)
      for (const c of f.quiet) expect(raisedAccounts.has(c.events[0]!.account_id as string), `${id} quiet: ${c.name}`).toBe(false)
    }

    // Run again: the same findings are updated, not duplicated.
    const again = JSON.parse((await runCli(['detect', '--once', '--at', AT, '--only', 'key.stale', '--json'], env)).stdout) as JsonRun[]
    expect(again[0]!.findings.every((x) => x.change === 'updated')).toBe(true)
    const listed = await runCli(['findings', '--json', '--detector', 'key.stale'], env)
    // (other fixtures' keys may be stale too: the auto-generated key of the leak fixture has never been used)
    const staleAccounts = new Set(keys.stale.fires.map((c) => c.events[0]!.account_id))
    const stale = (JSON.parse(listed.stdout) as { account_id: string; occurrences: number }[]).filter((x) => staleAccounts.has(x.account_id))
    expect(stale).toHaveLength(keys.stale.fires.length)
    expect(stale.every((x) => x.occurrences === 2)).toBe(true)
  })

  it('raises a leaked key as the report is ingested, without waiting for a schedule', async () => {
    const dir = tempDir()
    const env = { KEYWATCH_DATA_DIR: join(dir, 'data') }
    const now = new Date().toISOString()
    const key = { account_id: 'acct_LiveLeak01', key_id: 'key_LiveLeak01' }
    const secret = `sk_live_${randomUUID().replaceAll('-', '')}`
    const file = join(dir, 'leak.ndjson')
    writeFileSync(file, [lifecycle(key, 'created', ago(now, { days: 5 }), { secret_sha256: sha256(secret) }), leak(key.account_id, ago(now, { seconds: 5 }), secret)].map((e) => JSON.stringify(e)).join('\n'))
    const ingest = await runCli(['ingest', file], env)
    expect(ingest.code).toBe(0)
    expect(ingest.stderr).toContain('finding raised')
    expect(ingest.stderr).not.toContain(secret)
    const listed = JSON.parse((await runCli(['findings', '--json', '--status', 'open'], env)).stdout) as { detector: string; key_id: string; severity: string }[]
    expect(listed).toEqual([expect.objectContaining({ detector: 'leak.public_report', key_id: key.key_id, severity: 'critical' })])
  })

  it('explains wrong options', async () => {
    const env = { KEYWATCH_DATA_DIR: tempDir() }
    expect((await runCli(['detect'], env)).stderr).toContain('--once')
    expect((await runCli(['detect', '--once', '--at', 'yesterday'], env)).code).toBe(2)
    const unknown = await runCli(['detect', '--once', '--only', 'no.such'], env)
    expect(unknown.code).toBe(2)
    expect(unknown.stderr).toContain('no detector no.such')
    const params = await runCli(['detect', '--once'], { ...env, DETECTOR_PARAMS: '{"key.stale":{"stale_dayz":30}}' })
    expect(params.code).toBe(2)
    expect(params.stderr).toContain('has no parameter stale_dayz')
  })
})
