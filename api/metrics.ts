// Prometheus metrics (prom-client) on a registry of keywatch's own: ingest, dead letters, detector runs, findings
// and actions. The runtime's listeners feed it; /metrics serves it.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { RunResult } from '../detectors/engine.ts'
import type { Recorded } from '../detectors/findings.ts'
import type { IngestSummary, Rejection } from '../ingest/pipeline.ts'
import type { Action } from '../response/actions.ts'

export class Metrics {
  readonly registry = new Registry()
  private readonly events = new Counter({ name: 'keywatch_events_total', help: 'Events handled by ingest, by result', labelNames: ['result'], registers: [this.registry] })
  private readonly rejected = new Counter({ name: 'keywatch_events_rejected_total', help: 'Events rejected, by reason', labelNames: ['reason', 'source'], registers: [this.registry] })
  private readonly deadLetters = new Counter({ name: 'keywatch_dead_letters_total', help: 'Kafka messages sent to the dead-letter topic', labelNames: ['reason'], registers: [this.registry] })
  private readonly lastIngest = new Gauge({ name: 'keywatch_last_ingest_timestamp_seconds', help: 'When events were last stored', registers: [this.registry] })
  private readonly lag = new Gauge({ name: 'keywatch_kafka_consumer_lag', help: 'Messages of a partition not yet handed to ingest, when its latest batch was fetched', labelNames: ['topic', 'partition'], registers: [this.registry] })
  private readonly runs = new Histogram({
    name: 'keywatch_detector_run_seconds',
    help: 'Detector run durations',
    labelNames: ['detector', 'outcome'],
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  })
  private readonly rowsRead = new Counter({ name: 'keywatch_detector_rows_read_total', help: 'Rows read by detector runs', labelNames: ['detector'], registers: [this.registry] })
  private readonly findings = new Counter({ name: 'keywatch_findings_total', help: 'Findings raised or reopened', labelNames: ['detector', 'severity', 'change'], registers: [this.registry] })
  private readonly detectorProblems = new Counter({ name: 'keywatch_detector_problems_total', help: 'Detector runs that failed or timed out, and custom detector files refused at load', labelNames: ['detector', 'kind'], registers: [this.registry] })
  private readonly actions = new Counter({ name: 'keywatch_actions_total', help: 'Key actions by command and status reached', labelNames: ['command', 'status'], registers: [this.registry] })

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'keywatch_' })
  }

  ingested(summary: IngestSummary, rejections: Rejection[]): void {
    this.events.inc({ result: 'accepted' }, summary.accepted)
    this.events.inc({ result: 'duplicate' }, summary.duplicates)
    this.events.inc({ result: 'rejected' }, summary.rejected)
    if (summary.accepted > 0) this.lastIngest.setToCurrentTime()
    for (const r of rejections) {
      this.rejected.inc({ reason: r.reason, source: r.message.origin.source })
      if (r.message.origin.source === 'kafka') this.deadLetters.inc({ reason: r.reason })
    }
  }

  consumerLag(topic: string, partition: number, lag: number): void {
    this.lag.set({ topic, partition: String(partition) }, lag)
  }

  detectorRun(run: RunResult): void {
    this.runs.observe({ detector: run.detector, outcome: run.error ? 'error' : 'ok' }, run.durationMs / 1000)
    this.rowsRead.inc({ detector: run.detector }, run.rowsRead)
    if (run.error) this.detectorProblems.inc({ detector: run.detector, kind: run.timedOut ? 'timeout' : 'error' })
  }

  /** A custom detector file skipped at load: `kind` invalid (its fields) or refused (its SQL). */
  detectorFileProblem(file: string, kind: string): void {
    this.detectorProblems.inc({ detector: file, kind })
  }

  findingsRecorded(recorded: Recorded[]): void {
    for (const r of recorded) if (r.change !== 'updated') this.findings.inc({ detector: r.finding.detector, severity: r.finding.severity, change: r.change })
  }

  action(action: Action): void {
    this.actions.inc({ command: action.command, status: action.status })
  }
}
