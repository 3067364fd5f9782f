// Runs detectors: on their node-cron schedules (a detector never overlaps itself), on demand, or as of a past
// moment for backtests. Each run's duration, rows read and findings are recorded in detector_runs.
import cron, { type ScheduledTask } from 'node-cron'
import type { ClickHouseClient } from '../clickhouse/client.ts'
import { ConfigError } from '../core/errors.ts'
import { chTime } from '../clickhouse/time.ts'
import type { Detector, FindingDraft, Params } from './detector.ts'
import type { FindingStore, Recorded } from './findings.ts'
import { DETECTORS } from './index.ts'

export interface RunResult {
  detector: string
  at: string
  durationMs: number
  /** Of durationMs, recording the findings (in runAll: this run's share of the batch, by findings). */
  recordMs: number
  rowsRead: number
  findings: Recorded[]
  error?: string
  /** A custom detector stopped at its time limit. */
  timedOut?: boolean
}

export interface Logger {
  info(obj: object, msg?: string): void
  error(obj: object, msg?: string): void
}

/** Parameter overrides per detector id, e.g. { "abuse.ratelimit_spike": { "min_429s": 80 } }. */
export type ParamOverrides = Record<string, Params>

/**
 * A password spray is failures from IPs each below the brute-force detector's per-IP bar: an override of that bar
 * moves the spray's with it, unless the spray's own is given too.
 */
function withSharedThresholds(overrides: ParamOverrides, detectors: Detector<any, any>[]): ParamOverrides {
  const perIp = overrides['auth.mfa_bruteforce']?.min_login_failures
  if (perIp === undefined || overrides['auth.password_spray']?.below_per_ip !== undefined) return overrides
  if (!detectors.some((d) => d.id === 'auth.password_spray')) return overrides
  return { ...overrides, 'auth.password_spray': { ...overrides['auth.password_spray'], below_per_ip: perIp } }
}

/** A run's query answered (or failed), before its findings are recorded. */
interface Queried {
  startedAt: Date
  queryMs: number
  rowsRead: number
  drafts: FindingDraft[]
  error?: string
}

/** Told after a run recorded its findings. Not awaited: a slow listener never delays the next run. */
export type RunListener = (result: RunResult) => void | Promise<void>

export class DetectionEngine {
  private readonly listeners: RunListener[] = []
  private readonly running = new Map<string, Promise<RunResult>>()
  private readonly rerun = new Map<string, Promise<RunResult>>()
  private tasks: ScheduledTask[] = []
  private readonly detectors: Detector<Params, unknown>[]

  constructor(
    private readonly client: ClickHouseClient,
    private readonly findings: FindingStore,
    private readonly log: Logger,
    overrides: ParamOverrides = {},
    detectors: Detector<any, any>[] = DETECTORS,
  ) {
    overrides = withSharedThresholds(overrides, detectors)
    const problems = Object.keys(overrides)
      .filter((id) => !detectors.some((d) => d.id === id))
      .map((id) => `DETECTOR_PARAMS: no detector ${id}; detectors: ${detectors.map((d) => d.id).join(', ')}`)
    this.detectors = detectors.map((d) => {
      const o = overrides[d.id]
      if (!o) return d
      for (const name of Object.keys(o)) {
        if (!(name in d.params)) problems.push(`DETECTOR_PARAMS: detector ${d.id} has no parameter ${name} (it has ${Object.keys(d.params).join(', ')})`)
      }
      return { ...d, params: { ...d.params, ...o } }
    })
    if (problems.length) throw new ConfigError(problems)
  }

  onRun(listener: RunListener): void {
    this.listeners.push(listener)
  }

  list(): Detector<Params, unknown>[] {
    return this.detectors
  }

  get(id: string): Detector<Params, unknown> {
    const d = this.detectors.find((x) => x.id === id)
    if (!d) throw new Error(`no detector ${id}; detectors: ${this.detectors.map((x) => x.id).join(', ')}`)
    return d
  }

  /**
   * Runs one detector as of `at`; a run already in progress is joined, not started twice. `narrow` overrides
   * parameters for this run only (e.g. the leak detectors' `received_after_ms`).
   */
  run(id: string, at = new Date(), narrow: Params = {}): Promise<RunResult> {
    const inProgress = this.running.get(id)
    if (inProgress) return inProgress
    const d = this.get(id)
    const run = this.execute({ ...d, params: { ...d.params, ...narrow } }, at).finally(() => this.running.delete(id))
    this.running.set(id, run)
    return run
  }

  /**
   * Runs a detector now and makes sure the run starts after this call: data stored just before (a leak report)
   * is seen even when a run is already in progress, by running once more after it. Calls during that wait share it.
   */
  runFresh(id: string, narrow: Params = {}): Promise<RunResult> {
    const pending = this.rerun.get(id)
    if (pending) return pending
    const inProgress = this.running.get(id)
    if (!inProgress) return this.run(id, new Date(), narrow)
    const next = inProgress
      .catch(() => undefined)
      .then(() => {
        this.rerun.delete(id)
        return this.run(id, new Date(), narrow)
      })
    this.rerun.set(id, next)
    return next
  }

  /**
   * Runs every detector (or `only` these) as of `at`: each query in turn, then all their findings recorded in one
   * batch (one look-up of the dedup keys, one insert) and all the runs in detector_runs in one insert. Each run's
   * duration is its query plus its share of the recording, by findings. A detector already running is joined.
   */
  async runAll(at = new Date(), only?: string[]): Promise<RunResult[]> {
    const chosen = this.detectors.filter((d) => !only || only.includes(d.id))
    const joined = new Map<string, Promise<RunResult>>()
    const mine: { d: Detector<Params, unknown>; done: (r: RunResult) => void; failed: (err: unknown) => void }[] = []
    for (const d of chosen) {
      const inProgress = this.running.get(d.id)
      if (inProgress) {
        joined.set(d.id, inProgress)
        continue
      }
      let done!: (r: RunResult) => void
      let failed!: (err: unknown) => void
      const run = new Promise<RunResult>((resolve, reject) => ((done = resolve), (failed = reject))).finally(() => this.running.delete(d.id))
      run.catch(() => undefined)
      this.running.set(d.id, run)
      joined.set(d.id, run)
      mine.push({ d, done, failed })
    }
    try {
      const queried: Queried[] = []
      for (const { d } of mine) queried.push(await this.query(d, at))
      const started = performance.now()
      let batches: Recorded[][] = queried.map(() => [])
      try {
        batches = await this.findings.recordBatches(queried.map((q) => q.drafts), at)
      } catch (err) {
        for (const q of queried) if (q.drafts.length && !q.error) q.error = (err as Error).message
        this.log.error({ err: String(err) }, 'could not record the detectors’ findings')
      }
      const recordMs = performance.now() - started
      const drafts = queried.reduce((n, q) => n + q.drafts.length, 0)
      const results: RunResult[] = []
      for (const [i, q] of queried.entries()) {
        results.push(await this.finish(mine[i]!.d, at, q, batches[i]!, drafts ? (recordMs * q.drafts.length) / drafts : 0))
      }
      await this.saveRuns(results.map((r, i) => ({ result: r, startedAt: queried[i]!.startedAt })))
      for (const [i, r] of results.entries()) mine[i]!.done(r)
    } catch (err) {
      for (const m of mine) m.failed(err)
    }
    const out: RunResult[] = []
    for (const d of chosen) out.push(await joined.get(d.id)!)
    return out
  }

  /** Starts every detector on its schedule. */
  schedule(): void {
    for (const d of this.detectors) {
      const task = cron.schedule(d.schedule, () => {
        if (this.running.has(d.id)) return // never overlaps itself
        void this.run(d.id).catch((err) => this.log.error({ err: String(err), detector: d.id }, 'detector run failed'))
      })
      this.tasks.push(task)
    }
  }

  async stop(): Promise<void> {
    for (const t of this.tasks) await t.stop()
    this.tasks = []
    await Promise.allSettled([...this.running.values()])
  }

  /**
   * Runs a detector's query as of `at` and maps its rows to drafts, recording nothing (backtests, and every run).
   * A custom detector runs read-only (readonly=2: no writes, whatever the SQL) and is stopped after its time limit.
   */
  async evaluate(d: Detector<Params, unknown>, at: Date): Promise<{ drafts: FindingDraft[]; rowsRead: number }> {
    // JSON (not JSONEachRow): both engines report rows read in its statistics.
    // The limits go in the query's own SETTINGS clause: the embedded engine is one session, where a client-side
    // setting would stay set for every later query. (A custom query has no SETTINGS of its own: refused at load.)
    // 'break' stops it at the limit without an error: the embedded engine hands a failed query's partial output to
    // the next query of the session, so a run stopped by an exception would garble someone else's answer.
    const query = d.custom ? `${d.query}\nSETTINGS max_execution_time = ${Math.floor(d.custom.timeoutSeconds)}, timeout_overflow_mode = 'break', readonly = 2` : d.query
    const rs = await this.client.query({ query, query_params: { ...d.params, at: chTime(at.getTime()) }, format: 'JSON' })
    const body = await rs.json<Record<string, unknown>>()
    const elapsed = Number(body.statistics?.elapsed ?? 0)
    // Stopped at the limit: its rows are a part of the answer, so none of them is a finding.
    if (d.custom && elapsed >= d.custom.timeoutSeconds * 0.99) throw new Error(`Timeout exceeded: ran ${elapsed.toFixed(2)} s, the limit is ${d.custom.timeoutSeconds} s`)
    return { rowsRead: Number(body.statistics?.rows_read ?? 0), drafts: body.data.map((row) => d.toFinding(row, d.params)) }
  }

  private async execute(d: Detector<Params, unknown>, at: Date): Promise<RunResult> {
    const q = await this.query(d, at)
    const started = performance.now()
    let findings: Recorded[] = []
    if (!q.error) {
      try {
        findings = await this.findings.record(q.drafts, at)
      } catch (err) {
        q.error = (err as Error).message
        this.log.error({ detector: d.id, err: q.error }, 'detector failed')
      }
    }
    const result = await this.finish(d, at, q, findings, performance.now() - started)
    await this.saveRuns([{ result, startedAt: q.startedAt }])
    return result
  }

  /** A run's query and its drafts, timed; an error is kept, not thrown. */
  private async query(d: Detector<Params, unknown>, at: Date): Promise<Queried> {
    const started = performance.now()
    const startedAt = new Date()
    try {
      const evaluated = await this.evaluate(d, at)
      return { startedAt, queryMs: performance.now() - started, rowsRead: evaluated.rowsRead, drafts: evaluated.drafts }
    } catch (err) {
      const error = (err as Error).message
      this.log.error({ detector: d.id, err: error }, 'detector failed')
      return { startedAt, queryMs: performance.now() - started, rowsRead: 0, drafts: [], error }
    }
  }

  /** A run after its findings were recorded (in `recordMs`): a custom detector's failure reported, listeners told. */
  private async finish(d: Detector<Params, unknown>, at: Date, q: Queried, recorded: Recorded[], recordMs: number): Promise<RunResult> {
    const started = performance.now()
    const error = q.error
    let findings = error ? [] : recorded
    const timedOut = Boolean(error && d.custom && /TIMEOUT_EXCEEDED|Timeout exceeded/i.test(error))
    // A custom detector that fails or runs too long is reported as a finding of its own; its run is skipped and
    // every other detector runs on (each has its own schedule).
    if (error && d.custom) {
      // A query that failed while running leaves its partial output in the embedded engine's session: the next
      // query would read it. This one takes it.
      await this.client.query({ query: 'SELECT 1', format: 'JSON' }).then((r) => r.text()).catch(() => undefined)
      findings = await this.reportCustomFailure(d, at, error, timedOut).catch((err) => {
        this.log.error({ detector: d.id, err: String(err) }, 'could not record the custom detector failure')
        return []
      })
    }
    const durationMs = q.queryMs + recordMs + (performance.now() - started)
    const result: RunResult = { detector: d.id, at: at.toISOString(), durationMs, recordMs, rowsRead: q.rowsRead, findings, ...(error ? { error } : {}), ...(timedOut ? { timedOut } : {}) }
    for (const listener of this.listeners) {
      void Promise.resolve()
        .then(() => listener(result))
        .catch((err) => this.log.error({ err: String(err), detector: d.id }, 'run listener failed'))
    }
    return result
  }

  private async saveRuns(runs: { result: RunResult; startedAt: Date }[]): Promise<void> {
    if (!runs.length) return
    await this.client
      .insert({
        table: 'detector_runs',
        format: 'JSONEachRow',
        values: runs.map(({ result: r, startedAt }) => ({
          detector: r.detector,
          started_at: chTime(startedAt.getTime()),
          as_of: chTime(Date.parse(r.at)),
          duration_ms: r.durationMs,
          rows_read: r.rowsRead,
          findings: r.error ? 0 : r.findings.length,
          error: r.error ?? '',
        })),
      })
      .catch((err) => this.log.error({ err: String(err) }, 'could not record the detector run'))
  }

  private reportCustomFailure(d: Detector<Params, unknown>, at: Date, error: string, timedOut: boolean): Promise<Recorded[]> {
    const why = timedOut ? `ran longer than its ${d.custom!.timeoutSeconds} s limit and was stopped` : 'failed'
    return this.findings.record(
      [
        {
          detector: 'detector.custom_failed',
          severity: 'medium',
          account_id: '',
          title: `Custom detector ${d.id} ${why}`,
          evidence: { detector: d.id, file: d.custom!.file, error: error.split('\n')[0]!.slice(0, 300), timed_out: timedOut, timeout_seconds: d.custom!.timeoutSeconds },
          dedupKey: `detector.custom_failed:${d.id}`,
        },
      ],
      at,
    )
  }
}
