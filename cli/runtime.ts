// What every command that touches data shares: the config, a logger, storage (migrated) and the ingest pipeline.
import pino, { type Logger } from 'pino'
import { openStorage, type Storage } from '../clickhouse/client.ts'
import { migrate } from '../clickhouse/migrate.ts'
import { recoverViews } from '../clickhouse/recovery.ts'
import type { Config } from '../config/config.ts'
import { IngestPipeline } from '../ingest/pipeline.ts'
import { EventWriter } from '../ingest/writer.ts'
import { DetectionEngine } from '../detectors/engine.ts'
import { FindingStore } from '../detectors/findings.ts'

export interface Runtime {
  config: Config
  log: Logger
  storage: Storage
  writer: EventWriter
  pipeline: IngestPipeline
  findings: FindingStore
  detection: DetectionEngine
  close(): Promise<void>
}

/** Logs go to stderr as JSON lines, leaving stdout to command output. */
export function createLogger(config: Config): Logger {
  return pino({ level: config.logLevel, base: { service: 'keywatch' } }, pino.destination({ fd: 2, sync: false }))
}

export async function openRuntime(config: Config, log: Logger): Promise<Runtime> {
  const storage = await openStorage(config.clickhouse)
  try {
    const result = await migrate(storage.client)
    if (result.applied.length) log.info({ applied: result.applied }, 'migrations applied')
    const recovered = await recoverViews(storage)
    if (recovered.eventIdsRestored || recovered.usageKeyDaysRebuilt || recovered.ratelimitKeyBucketsRebuilt) {
      log.warn(recovered, 'repaired views left incomplete by an unclean stop')
    }
  } catch (err) {
    await storage.close()
    throw err
  }
  const writer = new EventWriter(storage, {
    maxRows: config.ingest.batchMaxRows,
    maxWaitMs: config.ingest.batchMaxWaitMs,
    maxInflight: config.ingest.maxInflightBatches,
    onFlush: (table, s) => log.debug({ table, ...s }, 'batch stored'),
  })
  const pipeline = new IngestPipeline(storage.client, writer)
  const findings = new FindingStore(storage.client)
  const detection = new DetectionEngine(storage.client, findings, log, config.detectorOverrides)
  // A leaked key is raised as its report is stored, not at the next tick.
  pipeline.onStored((type) => {
    if (type !== 'leak.reported') return
    for (const id of ['leak.public_report', 'leak.unmatched_report']) {
      void detection.runFresh(id).then(
        (run) => run.findings.filter((f) => f.change !== 'updated').forEach((f) => log.warn({ finding: f.finding.finding_id, detector: id, title: f.finding.title }, 'finding raised')),
        (err) => log.error({ err: String(err), detector: id }, 'leak detection failed'),
      )
    }
  })
  return {
    config,
    log,
    storage,
    writer,
    pipeline,
    findings,
    detection,
    async close() {
      await writer.drain()
      await detection.stop()
      await storage.close()
    },
  }
}
