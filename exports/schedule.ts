// Scheduled exports: every day (00:20 UTC) the day before, every month (the 1st, 01:00 UTC) the month before, of
// every dataset, written with their signed manifests under the export directory: daily/ and monthly/.
import type { KeyObject } from 'node:crypto'
import { join } from 'node:path'
import cron, { type ScheduledTask } from 'node-cron'
import type { Storage } from '../clickhouse/client.ts'
import { DATASETS, type ExportFormat } from './datasets.ts'
import { exportToFile, type Manifest } from './export.ts'

export interface ScheduleOptions {
  storage: Storage
  dir: string
  format: ExportFormat
  signingKey: () => KeyObject
  version: string
  log: { info(obj: object, msg?: string): void; error(obj: object, msg?: string): void }
}

const EXTENSION: Record<ExportFormat, string> = { csv: 'csv', ndjson: 'ndjson', parquet: 'parquet' }

/** Exports one period of every dataset: `daily` for the UTC day before `now`, `monthly` for the month before. */
export async function exportPeriod(options: ScheduleOptions, period: 'daily' | 'monthly', now = new Date()): Promise<Manifest[]> {
  const to = period === 'daily' ? Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate()) : Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)
  const from = period === 'daily' ? to - 86_400_000 : Date.UTC(new Date(to - 1).getUTCFullYear(), new Date(to - 1).getUTCMonth(), 1)
  const label = period === 'daily' ? new Date(from).toISOString().slice(0, 10) : new Date(from).toISOString().slice(0, 7)
  const manifests: Manifest[] = []
  for (const dataset of DATASETS) {
    const out = join(options.dir, period, `${dataset}-${label}.${EXTENSION[options.format]}`)
    manifests.push(
      await exportToFile(options.storage, { dataset, format: options.format, filter: { from: new Date(from).toISOString(), to: new Date(to).toISOString() }, actor: 'keywatch' }, out, options.signingKey(), options.version),
    )
  }
  return manifests
}

export function scheduleExports(options: ScheduleOptions): () => Promise<void> {
  const run = (period: 'daily' | 'monthly') => () =>
    void exportPeriod(options, period).then(
      (ms) => options.log.info({ period, files: ms.map((m) => m.file), rows: ms.map((m) => m.rows) }, 'scheduled export written'),
      (err) => options.log.error({ period, err: String(err) }, 'scheduled export failed'),
    )
  const tasks: ScheduledTask[] = [cron.schedule('20 0 * * *', run('daily'), { timezone: 'UTC' }), cron.schedule('0 1 1 * *', run('monthly'), { timezone: 'UTC' })]
  return async () => {
    for (const t of tasks) await t.stop()
  }
}
