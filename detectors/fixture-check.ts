// Runs detectors' fixtures on a real engine and says, per detector, whether every attack fired once with what it
// expects and every look-alike stayed quiet (`keywatch detectors test`; detectors.test.ts asserts the same).
import type { Fixtures } from './detector.ts'
import type { DetectionEngine } from './engine.ts'

export interface FixtureReport {
  detector: string
  ok: boolean
  fires: number
  quiet: number
  durationMs: number
  failures: string[]
}

/** Whether `actual` holds every field of `expected` (nested objects compared the same way). */
export function partialMatch(actual: unknown, expected: unknown): boolean {
  if (expected !== null && typeof expected === 'object' && !Array.isArray(expected)) {
    if (actual === null || typeof actual !== 'object') return false
    return Object.entries(expected).every(([k, v]) => partialMatch((actual as Record<string, unknown>)[k], v))
  }
  if (Array.isArray(expected)) return Array.isArray(actual) && expected.length === actual.length && expected.every((v, i) => partialMatch(actual[i], v))
  return actual === expected || (typeof actual === 'number' && typeof expected === 'string' && String(actual) === expected)
}

const accountsOf = (events: Record<string, unknown>[]) => new Set(events.map((e) => e.account_id as string))

/** Runs one detector as of its fixtures' moment; its fixture events must be stored already. */
export async function checkFixtures(engine: DetectionEngine, id: string, fixtures: Fixtures): Promise<FixtureReport> {
  const started = performance.now()
  const failures: string[] = []
  const run = await engine.run(id, new Date(fixtures.at))
  if (run.error) failures.push(`the query failed: ${run.error.split('\n')[0]}`)
  const own = run.findings.filter((f) => f.finding.detector === id)
  for (const c of fixtures.fires) {
    const accounts = accountsOf(c.events)
    const found = own.filter((f) => accounts.has(f.finding.account_id))
    if (found.length !== 1) {
      failures.push(`fires: ${c.name}: expected 1 finding, got ${found.length}`)
      continue
    }
    const f = found[0]!.finding
    const { evidence, ...fields } = c.expect
    for (const [k, v] of Object.entries(fields)) {
      if (!partialMatch((f as unknown as Record<string, unknown>)[k], v)) failures.push(`fires: ${c.name}: ${k} is ${JSON.stringify((f as unknown as Record<string, unknown>)[k])}, expected ${JSON.stringify(v)}`)
    }
    for (const [k, v] of Object.entries(evidence ?? {})) {
      if (!partialMatch(f.evidence[k], v)) failures.push(`fires: ${c.name}: evidence.${k} is ${JSON.stringify(f.evidence[k])}, expected ${JSON.stringify(v)}`)
    }
  }
  for (const c of fixtures.quiet) {
    const accounts = accountsOf(c.events)
    const found = own.filter((f) => accounts.has(f.finding.account_id))
    if (found.length) failures.push(`quiet: ${c.name}: fired ${found.length}× (${found[0]!.finding.title})`)
  }
  return { detector: id, ok: failures.length === 0, fires: fixtures.fires.length, quiet: fixtures.quiet.length, durationMs: performance.now() - started, failures }
}
