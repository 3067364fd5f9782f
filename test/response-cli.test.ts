// The response commands as an operator runs them: on the data directory directly, and through a running instance.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startStandInKeyService, type StandInKeyService } from '../demo/key-service.ts'
import { ago, lifecycle, sha256, usage } from '../detectors/fixtures/events.ts'
import { runCli, startKeywatch, tempDir } from './helpers.ts'

const SECRET = 'cli_monitor_signature_secret'
const now = new Date().toISOString()
const quiet = { account_id: 'acct_CliResp01', key_id: 'key_CliQuiet01', key_prefix: 'sk_live_Cq01', key_kind: 'secret' as const, mode: 'live' as const }
const busy = { account_id: 'acct_CliResp01', key_id: 'key_CliBusy001', key_prefix: 'sk_live_Cb01', key_kind: 'secret' as const, mode: 'live' as const }
let service: StandInKeyService
let env: Record<string, string>

beforeAll(async () => {
  service = await startStandInKeyService({ secret: SECRET })
  for (const k of [quiet, busy]) service.keys.set(k.key_id, { ...k, state: 'active' })
  env = { KEYWATCH_DATA_DIR: tempDir(), KEY_SERVICE_URL: service.url, KEY_SERVICE_SECRET: SECRET }
  const events = [
    lifecycle(quiet, 'created', ago(now, { days: 10 }), { secret_sha256: sha256(randomUUID()) }),
    lifecycle(busy, 'created', ago(now, { days: 10 }), { secret_sha256: sha256(randomUUID()) }),
    usage(quiet, ago(now, { days: 2 }), { method: 'POST', endpoint: '/v1/payments', amount_minor: 2500, currency: 'USD' }),
    usage(busy, ago(now, { minutes: 2 })),
  ]
  const ingested = await runCli(['ingest', '-'], env, events.map((e) => JSON.stringify(e)).join('\n'))
  expect(ingested.stdout + ingested.stderr).toContain("rejected    0")
})

afterAll(() => service?.close())

describe('keywatch revoke, actions, exposure and response', () => {
  it('revokes with a reason, refuses a key in use, and lists the actions', async () => {
    const noReason = await runCli(['revoke', quiet.key_id], env)
    expect(noReason.code).toBe(2)
    expect(noReason.stderr).toContain('--reason')

    const revoked = await runCli(['revoke', quiet.key_id, '--reason', 'contractor offboarded'], env)
    expect(revoked.stdout).toMatch(/^revoke of sk_live_Cq01: confirmed/)
    expect(revoked.code).toBe(0)

    const refused = await runCli(['revoke', busy.key_id, '--reason', 'cleanup'], env)
    expect(refused.code).toBe(1)
    expect(refused.stderr).toContain('key_in_use')
    expect(service.calls.map((c) => c.key_id)).toEqual([quiet.key_id])

    const listed = await runCli(['actions', '--json'], env)
    const actions = JSON.parse(listed.stdout) as { key_id: string; status: string; requested_by: string; reason: string }[]
    expect(actions.map((a) => [a.key_id, a.status])).toEqual(expect.arrayContaining([[quiet.key_id, 'confirmed'], [busy.key_id, 'refused']]))
    expect(actions.every((a) => a.requested_by.startsWith('cli:'))).toBe(true)
    const bad = await runCli(['actions', '--status', 'done'], env)
    expect(bad.code).toBe(2)
  })

  it('prints the exposure report as text and CSV', async () => {
    const text = await runCli(['exposure', quiet.key_id, '--from', ago(now, { days: 5 })], env)
    expect(text.code).toBe(0)
    expect(text.stdout).toContain('Money moved 25.00 USD in 1')
    const csv = await runCli(['exposure', quiet.key_id, '--from', ago(now, { days: 5 }), '--format', 'csv'], env)
    expect(csv.stdout.split('\r\n')).toContain('money,,,,,,,USD,1,,2500,,,')
  })

  it('goes through the running instance, kill switch included', async () => {
    const kw = await startKeywatch(env)
    try {
      const paused = await runCli(['response', 'pause', '--reason', 'noisy detector'], env)
      expect(paused.code).toBe(0)
      expect(JSON.parse(paused.stdout)).toMatchObject({ paused: true, paused_reason: 'noisy detector' })
      const listed = await runCli(['actions', '--key', quiet.key_id, '--json'], env)
      expect(JSON.parse(listed.stdout)).toEqual([expect.objectContaining({ status: 'confirmed' })])
      const refused = await runCli(['revoke', busy.key_id, '--reason', 'cleanup'], env)
      expect(refused.code).toBe(1)
      expect(refused.stderr).toContain('409')
    } finally {
      kw.child.kill('SIGTERM')
      await kw.exited
    }
    // The switch survives the restart.
    const status = await runCli(['response', 'status'], env)
    expect(JSON.parse(status.stdout)).toMatchObject({ paused: true })
  })
})
