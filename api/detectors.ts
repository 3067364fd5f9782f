// The detectors: what each looks for, its thresholds and schedule, its latest run; and running one now.
import type { FastifyInstance } from 'fastify'
import type { ZodTypeProvider } from 'fastify-type-provider-zod'
import { z } from 'zod'
import { queryRows, type ClickHouseClient } from '../clickhouse/client.ts'
import type { DetectionEngine } from '../detectors/engine.ts'
import { ApiError } from './errors.ts'

export async function detectorRoutes(app: FastifyInstance, deps: { client: ClickHouseClient; detection: DetectionEngine }): Promise<void> {
  const r = app.withTypeProvider<ZodTypeProvider>()
  const detectorParams = z.strictObject({ id: z.string().regex(/^[a-z_.]{1,64}$/, 'must be a detector id') })

  r.get('/v1/detectors', { config: { permission: 'read' }, schema: { tags: ['detectors'], summary: 'The detectors and their latest runs' } }, async () => {
    const runs = await queryRows<{ detector: string; last_started_at: string; last_duration_ms: number; last_rows_read: number; last_findings: number; last_error: string }>(
      deps.client,
      // Aliases differ from the columns they are computed from: an alias would shadow its column in the aggregates.
      `SELECT detector, toString(max(started_at)) AS last_started_at, argMax(duration_ms, started_at) AS last_duration_ms,
              argMax(rows_read, started_at) AS last_rows_read, argMax(findings, started_at) AS last_findings, argMax(error, started_at) AS last_error
       FROM detector_runs WHERE started_at > now64(3) - INTERVAL 7 DAY GROUP BY detector`,
    )
    const last = new Map(runs.map((run) => [run.detector, { started_at: run.last_started_at, duration_ms: run.last_duration_ms, rows_read: run.last_rows_read, findings: run.last_findings, error: run.last_error }]))
    return {
      detectors: deps.detection.list().map((d) => ({
        id: d.id,
        title: d.title,
        severity: d.severity,
        schedule: d.schedule,
        lookback: d.lookback,
        params: d.params,
        runbook: d.runbook,
        // A security team's own detector says which file it came from.
        source: d.custom ? 'custom' : 'built-in',
        ...(d.custom ? { file: d.custom.file, timeout_seconds: d.custom.timeoutSeconds } : {}),
        last_run: last.get(d.id) ?? null,
      })),
    }
  })

  r.post(
    '/v1/detectors/:id/run',
    { config: { permission: 'respond', audit: 'detector.run' }, schema: { tags: ['detectors'], summary: 'Run a detector now', params: detectorParams } },
    async (request) => {
      if (!deps.detection.list().some((d) => d.id === request.params.id)) throw new ApiError(404, 'not_found', `no detector ${request.params.id}`)
      const run = await deps.detection.runFresh(request.params.id)
      return { ...run, findings: run.findings.map((f) => ({ ...f.finding, change: f.change })) }
    },
  )
}
