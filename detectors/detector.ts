// What a detector is: one file per detector exports one of these (detection as code).
import type { Severity } from '../core/severity.ts'

export { SEVERITY_RANK, type Severity } from '../core/severity.ts'

/** What a query row turns into; the finding store deduplicates drafts by `dedupKey`. */
export interface FindingDraft {
  detector: string
  severity: Severity
  account_id: string
  key_id?: string
  user_id?: string
  ip?: string
  title: string
  /** The numbers that fired it. */
  evidence: Record<string, unknown>
  dedupKey: string
}

/** Parameters are whole numbers (counts, seconds, days, percents), bound as typed query parameters. */
export type Params = Record<string, number>

export interface Detector<P extends Params = Params, Row = Record<string, unknown>> {
  id: string
  title: string
  /** The default severity; `toFinding` may choose another (e.g. high when a request was accepted). */
  severity: Severity
  /** node-cron expression; every minute unless said otherwise. */
  schedule: string
  /** How far back the query looks, for people; the query itself uses `{at}` and the parameters. */
  lookback: string
  params: P
  /**
   * ClickHouse SQL. `{at:DateTime64(3, 'UTC')}` is the moment the detector runs as of (now, or a backtest's --at);
   * every parameter P is bound as `{name:UInt32}`. Never concatenate input into it.
   */
  query: string
  toFinding(row: Row, params: P): FindingDraft
  /** One line telling the on-call engineer what to do. */
  runbook: string
  /** Set on a detector loaded from a file in DETECTORS_DIR (detectors/custom.ts): runs read-only, with a time limit. */
  custom?: { file: string; timeoutSeconds: number }
}

/** Keeps P's literal keys while checking the definition. */
export function defineDetector<P extends Params, Row>(d: Detector<P, Row>): Detector<P, Row> {
  return d
}

/** An event as the fixtures write it: a contract event, with `occurred_at` relative to the moment of the run. */
export type FixtureEvent = Record<string, unknown>

/** Events that must make the detector fire, and look-alikes that must not, run against the real engine. */
export interface Fixtures {
  /** The moment the detector runs as of. */
  at: string
  fires: { name: string; events: FixtureEvent[]; expect: Partial<FindingDraft> & { evidence?: Record<string, unknown> } }[]
  quiet: { name: string; events: FixtureEvent[] }[]
}
