// What every command shares: exit codes, the config, and the choice between a running instance's API and opening
// the data locally.
import { randomUUID } from 'node:crypto'
import { userInfo } from 'node:os'
import { loadEnv, parseConfig, type Config } from '../config/config.ts'
import { readInstance, type RunningInstance } from './instance.ts'
import { createLogger, openRuntime, type Runtime } from '../app/runtime.ts'

/** Exit codes: 0 done, 1 done but input was rejected or the work failed, 2 bad invocation or configuration. */
export class ExitError extends Error {
  readonly retriable = false
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message)
    this.name = 'ExitError'
  }
}

export function config(): Config {
  return parseConfig(loadEnv())
}

/** The running `keywatch start` that holds the embedded data directory, if any. */
export function runningInstance(cfg: Config): RunningInstance | undefined {
  return cfg.clickhouse.mode === 'embedded' ? readInstance(cfg.clickhouse.dataDir) : undefined
}

export function dataDirOf(cfg: Config): string {
  return cfg.clickhouse.mode === 'embedded' ? cfg.clickhouse.dataDir : cfg.clickhouse.url
}

/** Opens the data for a command that cannot go through a running instance, or says who holds it. */
export async function openForCommand(cfg: Config, what: string): Promise<Runtime> {
  const instance = runningInstance(cfg)
  if (instance) {
    throw new ExitError(`keywatch (pid ${instance.pid}, ${instance.url}) holds ${dataDirOf(cfg)}; stop it to ${what} from the command line`, 1)
  }
  return openRuntime(cfg, createLogger(cfg))
}

/** Who a command-line user is, for the records of what they did. */
export function cliActor(): string {
  return `cli:${userInfo().username}`
}

/**
 * Runs `work` as the command line's own change on locally opened data, recorded in the audit trail whatever its
 * outcome (through a running instance, the API records it instead).
 */
export async function auditedLocally<T>(rt: Runtime, action: string, target: string, work: () => Promise<T>, detail: Record<string, unknown> = {}): Promise<T> {
  const entry = { actor: cliActor(), action, target, request_id: `cli-${randomUUID()}`, detail }
  try {
    const result = await work()
    await rt.audit.record({ ...entry, outcome: 'ok' })
    return result
  } catch (err) {
    const status = (err as { status?: number }).status
    await rt.audit.record({ ...entry, outcome: status === 409 || status === 422 ? 'refused' : 'failed', detail: { ...detail, error: (err as Error).message } })
    throw err
  }
}

/**
 * Runs a command through the running instance's API when there is one (it owns the embedded engine), else on the
 * data opened locally. An API refusal becomes an ExitError with the API's message.
 */
export async function throughInstanceOrLocal<T>(cfg: Config, viaApi: (call: ApiCall) => Promise<T>, local: (rt: Runtime) => Promise<T>): Promise<T> {
  const instance = runningInstance(cfg)
  if (instance) return viaApi(apiCaller(instance))
  return withLocalRuntime(cfg, local)
}

/** Opens the data here for the length of `work`. */
export async function withLocalRuntime<T>(cfg: Config, work: (rt: Runtime) => Promise<T>): Promise<T> {
  const rt = await openRuntime(cfg, createLogger(cfg))
  try {
    return await work(rt)
  } finally {
    await rt.close()
  }
}

export type ApiCall = <R>(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown) => Promise<{ status: number; json: R; text: string }>

/** How this machine's command line signs in to the running instance (its token, and who is at the keyboard). */
export function instanceHeaders(instance: RunningInstance): Record<string, string> {
  return { authorization: `Bearer ${instance.cliToken ?? ''}`, 'x-keywatch-cli-user': userInfo().username }
}

function apiCaller(instance: RunningInstance): ApiCall {
  const baseUrl = instance.url
  return async <R>(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown) => {
    const response = await fetch(`${baseUrl}${path}`, {
      method,
      headers: { ...instanceHeaders(instance), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    })
    const text = await response.text()
    if (!response.ok) {
      let message = text
      try {
        message = (JSON.parse(text) as { error: { message: string } }).error.message
      } catch {
        /* not our error shape: show it as is */
      }
      throw new ExitError(`keywatch at ${baseUrl}: ${response.status} ${message}`, response.status >= 500 ? 1 : response.status === 400 ? 2 : 1)
    }
    let json = undefined as R
    try {
      json = JSON.parse(text) as R
    } catch {
      /* CSV and other text answers */
    }
    return { status: response.status, json, text }
  }
}
