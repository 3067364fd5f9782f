// Shared test helpers: temporary data directories, the real CLI as a child process, and the embedded engine.
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import pino from 'pino'
import { runtimeEnv } from '../bin/runtime-env.js'
import type { Role } from '../api/tokens.ts'
import { openRuntime, type Runtime } from '../app/runtime.ts'
import { isAlive, openStorage, queryRows, type Storage } from '../clickhouse/client.ts'
import { migrate } from '../clickhouse/migrate.ts'
import { parseConfig } from '../config/config.ts'

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..')
// Beside the checkout; KEYWATCH_CONTRACT_DIR for a checkout elsewhere (a worktree).
export const contractDir = process.env.KEYWATCH_CONTRACT_DIR ?? resolve(repoRoot, '..', 'shared', 'contract')
// The Node 24 that npm installed: keywatch runs on it directly, without bin/keywatch.js re-spawning itself
// (a signal sent to a re-spawning parent would not reach the real process).
export const nodeBinary = existsSync(join(repoRoot, 'node_modules', 'node', 'bin', 'node')) ? join(repoRoot, 'node_modules', 'node', 'bin', 'node') : process.execPath
const NODE = nodeBinary
const BIN = join(repoRoot, 'bin', 'keywatch.js')

/**
 * A temporary directory named after this process (`<prefix><pid>-XXXXXX`). The first call in a process removes the
 * ones whose process has ended, and so does the suite's teardown: a test's engine holds its directory until the
 * process ends, so no test can remove its own (2,751 were found in /tmp after some days of runs, 77 GB, and the
 * disk full). KEYWATCH_KEEP_TEMP=1 keeps them, for a look after a failure.
 */
export function tempDir(prefix = 'keywatch-test-'): string {
  if (!swept) removeTempDirsOfEndedProcesses()
  return mkdtempSync(join(tmpdir(), `${prefix}${process.pid}-`))
}

let swept = false
export function removeTempDirsOfEndedProcesses(): void {
  swept = true
  if (process.env.KEYWATCH_KEEP_TEMP) return
  for (const name of readdirSync(tmpdir())) {
    const pid = Number(/^keywatch-.*?-(\d+)-[A-Za-z0-9]{6}$/.exec(name)?.[1])
    if (pid && pid !== process.pid && !isAlive(pid)) rmSync(join(tmpdir(), name), { recursive: true, force: true })
  }
}

/** Every line of every example file of the contract, by event type. */
export function contractExamples(): { type: string; line: string }[] {
  const dir = join(contractDir, 'examples')
  return readdirSync(dir)
    .filter((f) => f.endsWith('.ndjson'))
    .flatMap((f) =>
      readFileSync(join(dir, f), 'utf8')
        .split('\n')
        .filter((l) => l.trim())
        .map((line) => ({ type: (JSON.parse(line) as { type: string }).type, line })),
    )
}

/** Opens (and migrates) the embedded engine in `dataDir`. One data directory per test process. */
export async function openTestStorage(dataDir: string): Promise<Storage> {
  const storage = await openStorage({ mode: 'embedded', dataDir, database: 'keywatch' })
  await migrate(storage.client)
  return storage
}

export async function count(storage: Storage, sql: string, params: Record<string, unknown> = {}): Promise<number> {
  const [row] = await queryRows<{ n: string | number }>(storage.client, sql, params)
  return Number(row?.n ?? 0)
}

export interface CliResult {
  code: number | null
  stdout: string
  stderr: string
}

/** Runs `keywatch ARGS` to completion. `env` is added to a minimal environment (no inherited KEYWATCH_/KAFKA_ vars). */
export function runCli(args: string[], env: Record<string, string>, input?: string | Buffer): Promise<CliResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(NODE, [BIN, ...args], { env: runtimeEnv(cleanEnv(env)), cwd: repoRoot })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code) => resolvePromise({ code, stdout, stderr }))
    if (input !== undefined) child.stdin.end(input)
    else child.stdin.end()
  })
}

// A failing test must not leave a keywatch holding a data directory or a consumer group (one was found still
// running 50 minutes after a failed CI run): every one started here is killed when this test process ends, also when
// vitest ends it with SIGTERM, which runs no 'exit' handlers.
const running = new Set<ChildProcess>()
const killRunning = () => {
  for (const child of running) child.kill('SIGKILL')
}
process.once('exit', killRunning)
process.once('SIGTERM', () => {
  killRunning()
  process.kill(process.pid, 'SIGTERM') // then as if this handler were not there
})

/** Starts `keywatch start` and resolves once its log says it started. */
export async function startKeywatch(env: Record<string, string>, args = ['start'], startTimeoutMs = 60_000): Promise<{ child: ChildProcess; url: string; logs: () => string; exited: Promise<number | null> }> {
  const child = spawn(NODE, [BIN, ...args], { env: runtimeEnv(cleanEnv({ PORT: '0', ...env })), cwd: repoRoot })
  running.add(child)
  child.once('exit', () => running.delete(child))
  let logs = ''
  child.stdout!.on('data', (d) => (logs += d))
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)))
  const url = await new Promise<string>((resolveUrl, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`keywatch did not start in ${startTimeoutMs / 1000} s:\n${logs}`))
    }, startTimeoutMs)
    child.stderr!.on('data', (d: Buffer) => {
      logs += d
      const m = /"url":"([^"]+)"[^\n]*"msg":"keywatch started"/.exec(logs)
      if (m) {
        clearTimeout(timer)
        resolveUrl(m[1]!)
      }
    })
    void exited.then((code) => {
      clearTimeout(timer)
      reject(new Error(`keywatch exited with ${code} before starting:\n${logs}`))
    })
  })
  return { child, url, logs: () => logs, exited }
}

function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const keep = ['PATH', 'HOME', 'TMPDIR', 'LANG', 'TZ']
  const env: NodeJS.ProcessEnv = {}
  for (const k of keep) if (process.env[k] !== undefined) env[k] = process.env[k]
  return { ...env, LOG_LEVEL: 'info', ...extra }
}

/** Everything a child process prints, and its exit code, once it has closed. */
export async function closedOutput(child: ChildProcess): Promise<{ code: number | null; stdout: string; stderr: string }> {
  let stdout = ''
  let stderr = ''
  child.stdout?.on('data', (d) => (stdout += d))
  child.stderr?.on('data', (d) => (stderr += d))
  const code = await new Promise<number | null>((resolveCode) => child.once('close', (c: number | null) => resolveCode(c)))
  return { code, stdout, stderr }
}

/** A whole keywatch runtime in this process on a fresh data directory (services not started). */
/** A runtime on a fresh data directory; its log is silent unless KW_TEST_LOG names a level (KW_TEST_LOG=warn). */
export function openTestRuntime(env: Record<string, string> = {}): Promise<Runtime> {
  return openRuntime(parseConfig({ KEYWATCH_DATA_DIR: tempDir(), LOG_LEVEL: 'silent', ...env }), pino({ level: process.env.KW_TEST_LOG ?? 'silent' }))
}

/** Authorization headers of a new API token with this role (named `name`: its actor is `token:<name>`). */
export async function bearer(rt: Runtime, role: Role, name = `${role}-${Math.random().toString(36).slice(2, 8)}`): Promise<{ authorization: string }> {
  const { token } = await rt.tokens.create(role, name, 'test')
  return { authorization: `Bearer ${token}` }
}
