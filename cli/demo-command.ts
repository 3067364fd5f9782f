// `keywatch demo`: keywatch on the embedded engine with a simulated platform beside it (accounts, keys, history,
// steady traffic, an incident a minute) and a stand-in key service that honours revoke commands. Open the printed
// URL, sign in with the printed token, and watch the first leaked key get revoked within a minute.
import { randomBytes, randomUUID } from 'node:crypto'
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import type { Command } from 'commander'
import { loadEnv, parseConfig } from '../config/config.ts'
import { sha256 } from '../contract/builders.ts'
import { ExitError } from './context.ts'
import { announceInstance } from './instance.ts'
import { apiDepsOf, createLogger, openRuntime } from '../app/runtime.ts'

const MARKER = '.keywatch-demo'

/** The demo starts from nothing each time, but never wipes a directory it did not make. */
function freshDemoDir(dir: string): void {
  if (existsSync(dir) && readdirSync(dir).length > 0 && !existsSync(join(dir, MARKER))) {
    throw new ExitError(`${dir} holds data that is not a keywatch demo's: choose another --data-dir`, 2)
  }
  rmSync(dir, { recursive: true, force: true })
  mkdirSync(dir, { recursive: true })
  writeFileSync(join(dir, MARKER), 'made by keywatch demo; wiped at its next start\n')
}

async function runDemo(opts: { dataDir: string; accounts: string }): Promise<void> {
  // The demo's own parts and the API server load only when the demo runs (cli/main.ts: commands start lean).
  const [{ buildApi }, { lifecycleEventFor, startStandInKeyService }, { demoGithubKey, DemoPlatform }] = await Promise.all([
    import('../api/server.ts'),
    import('../demo/key-service.ts'),
    import('../demo/platform.ts'),
  ])
  const dataDir = resolve(opts.dataDir)
  freshDemoDir(dataDir)
  const github = demoGithubKey()
  const serviceSecret = randomBytes(24).toString('hex')
  let ingestLifecycle: (event: object) => Promise<void> = async () => {}
  // The platform's key service: it applies a revoke or reset and publishes the lifecycle event, as the real one does.
  const keyService = await startStandInKeyService({ secret: serviceSecret, onApplied: (applied) => ingestLifecycle(lifecycleEventFor(applied, randomUUID(), applied.command === 'reset' ? sha256(randomUUID()) : undefined)) })
  const config = parseConfig({ ...loadEnv(), KEYWATCH_DATA_DIR: dataDir, CLICKHOUSE_URL: '', KAFKA_BROKERS: '', KEY_SERVICE_URL: keyService.url, KEY_SERVICE_SECRET: serviceSecret, RESPONSE_TRANSPORT: 'http' })
  config.githubKeys = [{ key_identifier: github.keyId, key: github.publicKeyPem, is_current: true }]
  const log = createLogger(config)
  const rt = await openRuntime(config, log)
  ingestLifecycle = async (event) => void (await rt.pipeline.ingest([{ raw: Buffer.from(JSON.stringify(event)), origin: { source: 'http' } }]))
  const cliToken = randomBytes(32).toString('base64url')
  const api = await buildApi(apiDepsOf(rt, { localToken: cliToken }))
  await api.listen({ host: config.http.host, port: config.http.port })
  const address = api.server.address()
  const url = `http://${config.http.host}:${typeof address === 'object' && address ? address.port : config.http.port}`
  const release = announceInstance(dataDir, { pid: process.pid, url, startedAt: new Date().toISOString(), cliToken })
  await rt.startServices()
  const { token } = await rt.tokens.create('admin', 'demo', 'keywatch demo')
  const platform = new DemoPlatform(rt.pipeline, keyService, { url, github }, log, Number(opts.accounts))
  await platform.backfill()
  await rt.detection.runAll() // stale keys and overdue rotations show at once, not at the next hour
  platform.start()
  process.stdout.write(
    [
      '',
      `keywatch demo is running: ${url}/`,
      `sign in with this admin token: ${token}`,
      '',
      'Within a minute GitHub reports a leaked live secret key and keywatch revokes it (Actions, Findings);',
      'then, a minute apart: probing with the revoked key, a secret key used from a browser, a 429 storm,',
      'a stalled rotation and an MFA brute force. Keys shows stale keys and overdue rotations from the start.',
      'Alerts go to Slack and mail when configured (SLACK_BOT_TOKEN, SMTP_URL), else to the Alerts page.',
      'Ctrl-C stops it; the next `keywatch demo` starts afresh.',
      '',
    ].join('\n') + '\n',
  )
  log.info({ url, data: dataDir }, 'keywatch started')
  const shutdown = async () => {
    platform.stop()
    await api.close()
    await rt.close()
    await keyService.close()
    release()
    process.exit(0)
  }
  process.on('SIGINT', () => void shutdown())
  process.on('SIGTERM', () => void shutdown())
}

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('keywatch with a simulated platform and incidents every minute: open the dashboard and watch')
    .option('--data-dir <dir>', 'where the demo keeps its data (wiped at each start)', './demo-data')
    .option('--accounts <n>', 'merchant accounts to simulate', '36')
    .action(runDemo)
}
