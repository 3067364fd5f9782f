// `keywatch detectors test [DIR]`: every detector's fixtures (built-in and DIR's) on a fresh embedded engine, a line
// per detector, exit 1 on any failure (the CI step of a security team's own repository of rules).
// `keywatch detectors backtest ID --from --to`: the detector run over stored history, recording nothing.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { Readable } from 'node:stream'
import type { Command } from 'commander'
import { openStorage } from '../clickhouse/client.ts'
import { migrate } from '../clickhouse/migrate.ts'
import { loadCustomDetectors, problemText } from '../detectors/custom.ts'
import { SEVERITY_RANK, type FindingDraft, type Fixtures } from '../detectors/detector.ts'
import { DetectionEngine } from '../detectors/engine.ts'
import { checkFixtures } from '../detectors/fixture-check.ts'
import { FindingStore } from '../detectors/findings.ts'
import { DETECTORS } from '../detectors/index.ts'
import { ingestNdjson } from '../ingest/ndjson.ts'
import { IngestPipeline } from '../ingest/pipeline.ts'
import { EventWriter } from '../ingest/writer.ts'
import { config, ExitError, openForCommand } from './context.ts'

const quiet = { info: () => {}, error: () => {} }

async function runTest(dir: string | undefined, opts: { customOnly?: boolean; json?: boolean }): Promise<void> {
  const cfg = config()
  const detectorsDir = dir ? resolve(dir) : cfg.detectorsDir
  if (opts.customOnly && !detectorsDir) throw new ExitError('--custom-only needs a DIR (or DETECTORS_DIR)', 2)
  const out = (line: string) => void (opts.json || process.stdout.write(line + '\n'))
  // A fresh engine of its own: the fixtures never touch keywatch's data, and a running instance is no obstacle.
  const dataDir = mkdtempSync(join(tmpdir(), 'keywatch-detectors-test-'))
  const storage = await openStorage({ mode: 'embedded', dataDir, database: 'keywatch' })
  let failed = 0
  const lines: { detector: string; ok: boolean; failures: string[] }[] = []
  try {
    await migrate(storage.client)
    const custom = detectorsDir ? await loadCustomDetectors(storage.client, detectorsDir, DETECTORS.map((d) => d.id)) : { detectors: [], fixtures: {}, problems: [] }
    for (const p of custom.problems) {
      failed++
      lines.push({ detector: p.file, ok: false, failures: [problemText(p)] })
      out(`FAIL  ${p.file.padEnd(40)} ${p.kind === 'refused' ? 'refused' : 'invalid'}: ${p.field}: ${p.message}`)
    }
    const detectors = [...(opts.customOnly ? [] : DETECTORS), ...custom.detectors]
    // The built-in fixtures (some thousands of events) are built only here, not in every command that loads the CLI.
    const builtin = opts.customOnly ? {} : (await import('../detectors/fixtures/index.ts')).BUILTIN_FIXTURES
    const fixtures: Record<string, Fixtures> = { ...builtin, ...custom.fixtures }
    const writer = new EventWriter(storage, { maxRows: 20_000, maxWaitMs: 10, maxInflight: 2 })
    const events = Object.values(fixtures).flatMap((f) => [...f.fires, ...f.quiet].flatMap((c) => c.events))
    const report = await ingestNdjson(Readable.from([Buffer.from(events.map((e) => JSON.stringify(e)).join('\n'))]), new IngestPipeline(storage.client, writer), { source: 'file' })
    await writer.drain()
    for (const e of report.errors) out(`WARN  fixture event refused by ingest: line ${e.line}: ${e.reason}: ${e.detail}`)
    const engine = new DetectionEngine(storage.client, new FindingStore(storage.client), quiet, {}, detectors)
    for (const d of detectors) {
      const f = fixtures[d.id]
      if (!f) {
        failed++
        lines.push({ detector: d.id, ok: false, failures: ['no fixtures'] })
        out(`FAIL  ${d.id.padEnd(40)} no fixtures (add them to detectors/fixtures/index.ts)`)
        continue
      }
      const r = await checkFixtures(engine, d.id, f)
      lines.push({ detector: d.id, ok: r.ok, failures: r.failures })
      const what = `${r.fires} fire, ${r.quiet} quiet, ${r.durationMs.toFixed(0)} ms${d.custom ? `  (${d.custom.file})` : ''}`
      if (r.ok) out(`PASS  ${d.id.padEnd(40)} ${what}`)
      else {
        failed++
        out(`FAIL  ${d.id.padEnd(40)} ${what}`)
        for (const x of r.failures) out(`        ${x}`)
      }
    }
    if (report.rejected > 0 && !failed) out(`note: ${report.rejected} fixture events were refused by ingest (see above)`)
  } finally {
    await storage.close()
    rmSync(dataDir, { recursive: true, force: true })
  }
  if (opts.json) process.stdout.write(JSON.stringify({ ok: failed === 0, detectors: lines }) + '\n')
  else out(`${failed === 0 ? 'ok' : 'FAILED'}: ${lines.length - failed} passed, ${failed} failed`)
  if (failed) process.exitCode = 1
}

const UNIT_MS: Record<string, number> = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }

function instant(name: string, value: string): Date {
  const d = new Date(value)
  if (!/^\d{4}-\d{2}-\d{2}T/.test(value) || Number.isNaN(d.getTime())) throw new ExitError(`${name} ${JSON.stringify(value)} is not an RFC 3339 date-time`, 2)
  return d
}

async function runBacktest(id: string, opts: { from: string; to: string; every: string; json?: boolean }): Promise<void> {
  const from = instant('--from', opts.from)
  const to = instant('--to', opts.to)
  if (from >= to) throw new ExitError('--from must be before --to', 2)
  const step = /^(\d+)(s|m|h|d)$/.exec(opts.every)
  if (!step || Number(step[1]) === 0) throw new ExitError(`--every ${JSON.stringify(opts.every)} must be like 15m, 1h or 1d`, 2)
  const stepMs = Number(step[1]) * UNIT_MS[step[2]!]!
  const runs = Math.floor((to.getTime() - from.getTime()) / stepMs) + 1
  if (runs > 10_000) throw new ExitError(`${runs} runs from --from to --to every ${opts.every}: at most 10,000 (use a larger --every)`, 2)
  const cfg = config()
  const rt = await openForCommand(cfg, 'backtest a detector')
  try {
    let d
    try {
      d = rt.detection.get(id)
    } catch (err) {
      throw new ExitError((err as Error).message, 2)
    }
    // Each moment as the schedule would have seen it; a finding that fires at several moments is one, as it would be.
    const raised = new Map<string, { draft: FindingDraft; first: string; last: string; times: number }>()
    let rowsRead = 0
    for (let t = from.getTime(); t <= to.getTime(); t += stepMs) {
      const at = new Date(t)
      const { drafts, rowsRead: rows } = await rt.detection.evaluate(d, at).catch((err: Error) => {
        throw new ExitError(`${id} failed as of ${at.toISOString()}: ${err.message.split('\n')[0]}`, 1)
      })
      rowsRead += rows
      for (const draft of drafts) {
        const seen = raised.get(draft.dedupKey)
        if (!seen) raised.set(draft.dedupKey, { draft, first: at.toISOString(), last: at.toISOString(), times: 1 })
        else {
          seen.last = at.toISOString()
          seen.times++
          if (SEVERITY_RANK[draft.severity] > SEVERITY_RANK[seen.draft.severity]) seen.draft = { ...seen.draft, severity: draft.severity }
        }
      }
    }
    const list = [...raised.values()]
    if (opts.json) {
      process.stdout.write(JSON.stringify({ detector: id, from: from.toISOString(), to: to.toISOString(), every: opts.every, runs, rows_read: rowsRead, findings: list.map((r) => ({ ...r.draft, first_at: r.first, last_at: r.last, times: r.times })) }) + '\n')
    } else {
      process.stdout.write(`${id}: ${runs} runs from ${from.toISOString()} to ${to.toISOString()} every ${opts.every}, ${rowsRead} rows read: ${list.length} findings would have been raised\n`)
      for (const r of list) {
        const subject = r.draft.key_id || r.draft.user_id || r.draft.ip || r.draft.account_id
        process.stdout.write(`  ${r.first}  ${r.draft.severity.padEnd(8)} ${r.draft.account_id}  ${subject}  ${r.draft.title}  (fired at ${r.times} of the runs, last ${r.last})\n`)
      }
    }
  } finally {
    await rt.close()
  }
}

export function registerDetectorCommands(program: Command): void {
  const detectors = program.command('detectors').description('test detectors against their fixtures, or backtest one over stored history')
  detectors
    .command('test')
    .description("run every detector's fixtures (built-in, and DIR's or DETECTORS_DIR's files) on a fresh engine; exit 1 on a failure")
    .argument('[dir]', 'a folder of custom detector files (default: DETECTORS_DIR)')
    .option('--custom-only', "only DIR's detectors")
    .option('--json', 'print the result as JSON')
    .action(runTest)
  detectors
    .command('backtest')
    .description('what a detector would have raised over stored history (records nothing)')
    .argument('<id>', 'a detector id')
    .requiredOption('--from <time>', 'RFC 3339 start')
    .requiredOption('--to <time>', 'RFC 3339 end')
    .option('--every <step>', 'how often it would have run: 30s, 15m, 1h, 1d', '1h')
    .option('--json', 'print the findings as JSON')
    .action(runBacktest)
}
