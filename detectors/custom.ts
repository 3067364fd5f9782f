// Detectors as data: a security team's own rules, one YAML or JSON file each in DETECTORS_DIR, with the same parts
// as a built-in detector (query as of {at}, typed parameters, the finding mapping, a runbook, fixtures). A file is
// checked at startup: its fields by zod (a problem names the file and the field), its id against the built-in ones,
// and its SQL by the engine's own parser (EXPLAIN AST: one SELECT, over the detector tables only, no SETTINGS) and
// analyzer (DESCRIBE: it compiles, and the columns the mapping names exist). A broken file is reported and skipped.
import { readdirSync, readFileSync } from 'node:fs'
import { basename, join } from 'node:path'
import cron from 'node-cron'
import { parse as parseYaml } from 'yaml'
import { z } from 'zod'
import type { ClickHouseClient } from '../clickhouse/client.ts'
import { auth, lifecycle, leak, ratelimited, usage } from '../contract/builders.ts'
import { inboundSchemas, type InboundType } from '../contract/events.ts'
import { chTime } from '../clickhouse/time.ts'
import type { Detector, FindingDraft, Fixtures, Params, Severity } from './detector.ts'

/** The tables and views a custom detector may read: the ones the built-in detectors read. Not tokens, audit, alerts. */
export const READABLE_TABLES = [
  'key_usage',
  'key_ratelimits',
  'auth_events',
  'key_lifecycle',
  'leak_reports',
  'key_usage_hourly',
  'key_usage_daily',
  'key_last_used',
  'key_ratelimits_5m',
  'key_inventory',
  'key_inventory_at',
  'findings',
] as const

/** Ids keywatch raises itself about custom detectors (and its response engine): never a file's. */
export const RESERVED_IDS = ['detector.custom_invalid', 'detector.custom_failed', 'response.guard_rail']

const severity = z.enum(['critical', 'high', 'medium', 'low', 'info'])
// The API's detector-id pattern (api/detectors.ts), with at least one dot: team.what_it_finds.
const detectorId = z.string().regex(/^[a-z_]+(\.[a-z_]+)+$/, 'must be lower-case words joined by dots and underscores, e.g. partner.endpoint_outside_allowlist').max(64)
const column = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must be a column of the query result')
const paramValue = z.union([z.number().int().nonnegative(), z.string().max(512), z.array(z.string().max(512)).max(1000)])
// A relative time: -20m, -2h, -3d, -30s (before the fixtures' `at`); or an RFC 3339 date-time.
const RELATIVE = /^-(\d+(?:\.\d+)?)(s|m|h|d)$/

const fixtureEvent = z
  .looseObject({
    type: z.enum(Object.keys(inboundSchemas) as [InboundType, ...InboundType[]]),
    account_id: z.string(),
    occurred_at: z.string().optional().describe('-20m, -2h, -3d before `at`, or an RFC 3339 date-time; default -1m'),
    repeat: z.number().int().min(1).max(10_000).optional().describe('this many copies, `every` apart going back in time'),
    every: z.string().regex(/^\d+(s|m|h|d)$/, 'must be like 30s, 5m, 1h').optional(),
  })
  .refine((e) => !e.occurred_at || RELATIVE.test(e.occurred_at) || !Number.isNaN(Date.parse(e.occurred_at)), { message: 'occurred_at: must be -20m, -2h, -3d, -30s or an RFC 3339 date-time', path: ['occurred_at'] })

const fileSchema = z.strictObject({
  id: detectorId,
  title: z.string().min(1).max(200),
  severity,
  schedule: z.string().refine((s) => cron.validate(s), 'must be a cron expression such as "* * * * *" or "*/5 * * * *"').default('* * * * *'),
  lookback: z.string().min(1).max(200),
  timeout_seconds: z.number().int().min(1).max(300).default(10).describe('a run taking longer is stopped and reported'),
  params: z.record(z.string().regex(/^[a-z][a-z0-9_]*$/, 'a parameter name is lower-case letters, digits and _'), paramValue).default({}),
  query: z.string().min(1).max(20_000),
  finding: z.strictObject({
    account_id: column.default('account_id'),
    key_id: column.optional(),
    user_id: column.optional(),
    ip: column.optional(),
    /** A column holding the severity; the file's severity otherwise. */
    severity: column.optional(),
    title: z.string().min(1).max(300).describe('a template: {column} and {param} are filled in'),
    evidence: z.array(column).default([]),
    dedup_key: z.string().min(1).max(300).describe('a template; the detector id is put in front'),
  }),
  runbook: z.string().min(1).max(1000),
  fixtures: z.strictObject({
    at: z.iso.datetime({ offset: true, message: 'must be an RFC 3339 date-time' }),
    fires: z.array(z.strictObject({ name: z.string().min(1), events: z.array(fixtureEvent).min(1), expect: z.record(z.string(), z.unknown()).default({}) })).min(1, 'needs at least one case that must fire'),
    quiet: z.array(z.strictObject({ name: z.string().min(1), events: z.array(fixtureEvent).min(1) })).min(1, 'needs at least one look-alike that must stay quiet'),
  }),
})

export type CustomDetectorFile = z.infer<typeof fileSchema>

export interface LoadProblem {
  /** The file's name in the directory. */
  file: string
  /** The field at fault, as a path (`finding.key_id`), or '(file)'. */
  field: string
  message: string
  /** invalid: the file does not parse or validate; refused: its SQL writes or reaches outside the detector tables. */
  kind: 'invalid' | 'refused'
}

export interface LoadedDetectors {
  detectors: Detector<Params, Record<string, unknown>>[]
  fixtures: Record<string, Fixtures>
  problems: LoadProblem[]
}

export const problemText = (p: LoadProblem) => `${p.file}: ${p.field}: ${p.message}`

/**
 * Reads every *.yaml, *.yml and *.json file of `dir`. `reserved` are the ids already taken (built-in detectors).
 * Never throws for a file's content: each broken file becomes a problem and is skipped.
 */
export async function loadCustomDetectors(client: ClickHouseClient, dir: string, reserved: string[]): Promise<LoadedDetectors> {
  const out: LoadedDetectors = { detectors: [], fixtures: {}, problems: [] }
  let names: string[]
  try {
    names = readdirSync(dir).filter((f) => /\.(ya?ml|json)$/i.test(f)).sort()
  } catch (err) {
    out.problems.push({ file: dir, field: '(directory)', message: `cannot read DETECTORS_DIR: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, kind: 'invalid' })
    return out
  }
  const taken = new Set([...reserved, ...RESERVED_IDS])
  for (const name of names) {
    const problems: LoadProblem[] = []
    const problem = (field: string, message: string, kind: LoadProblem['kind'] = 'invalid') => problems.push({ file: name, field, message, kind })
    const parsed = parseFile(join(dir, name), problem)
    if (parsed) {
      if (taken.has(parsed.id)) problem('id', `${parsed.id} is already a detector's id (built-in or another file): choose another`)
      checkParams(parsed, problem)
      checkFixtureEvents(parsed, problem)
      if (!problems.length) await checkSql(client, parsed, problem)
    }
    if (problems.length || !parsed) {
      out.problems.push(...problems)
      continue
    }
    taken.add(parsed.id)
    out.detectors.push(toDetector(parsed, name))
    out.fixtures[parsed.id] = toFixtures(parsed)
  }
  return out
}

function parseFile(path: string, problem: (field: string, message: string) => void): CustomDetectorFile | undefined {
  let doc: unknown
  try {
    const text = readFileSync(path, 'utf8')
    doc = /\.json$/i.test(path) ? JSON.parse(text) : parseYaml(text)
  } catch (err) {
    problem('(file)', `does not parse: ${(err as Error).message.split('\n')[0]!.slice(0, 200)}`)
    return undefined
  }
  const parsed = fileSchema.safeParse(doc)
  if (!parsed.success) {
    for (const i of parsed.error.issues) problem(i.path.join('.') || '(document)', i.message)
    return undefined
  }
  return parsed.data
}

/** `{name:Type}` in the query: each names a parameter of the file (or `at`), and each parameter's type fits its value. */
function checkParams(f: CustomDetectorFile, problem: (field: string, message: string) => void): void {
  for (const m of f.query.matchAll(/\{([A-Za-z_][A-Za-z0-9_]*):([^}]+)\}/g)) {
    const [, name, type] = m as unknown as [string, string, string]
    if (name === 'at') {
      if (!/^DateTime64/.test(type.trim())) problem('query', `{at} is bound as DateTime64(3, 'UTC'), not ${type}`)
      continue
    }
    const value = f.params[name]
    if (value === undefined) {
      problem('query', `uses {${name}:${type}} but params has no ${name} (params: ${Object.keys(f.params).join(', ') || 'none'})`)
      continue
    }
    const t = type.trim()
    const fits = Array.isArray(value) ? /^Array\(/.test(t) : typeof value === 'number' ? /^(U?Int\d+|Float\d+)$/.test(t) : /^(String|LowCardinality\(String\))$/.test(t)
    if (!fits) problem(`params.${name}`, `its value (${JSON.stringify(value).slice(0, 60)}) does not fit the query's type ${t}`)
  }
}

/** The fixtures' events must be valid contract events (after the defaults are filled in), so ingest takes them. */
function checkFixtureEvents(f: CustomDetectorFile, problem: (field: string, message: string) => void): void {
  const cases = [...f.fixtures.fires.map((c, i) => ({ c, path: `fixtures.fires.${i}` })), ...f.fixtures.quiet.map((c, i) => ({ c, path: `fixtures.quiet.${i}` }))]
  const accounts = new Map<string, string>()
  for (const { c, path } of cases) {
    c.events.forEach((e, j) => {
      const [event] = expandEvent(e, f.fixtures.at)
      const parsed = inboundSchemas[e.type].safeParse(event)
      if (!parsed.success) for (const i of parsed.error.issues) problem(`${path}.events.${j}.${i.path.join('.')}`, i.message)
    })
    // Cases are told apart by account (as the built-in fixtures are): two cases sharing one would see each other.
    for (const account of new Set(c.events.map((e) => e.account_id))) {
      const other = accounts.get(account)
      if (other && other !== path) problem(`${path}.events`, `account ${account} is also used by ${other}: give every case an account of its own`)
      accounts.set(account, path)
    }
  }
}

/** The engine parses the statement (EXPLAIN AST) and works out its columns (DESCRIBE): a writing statement is refused. */
async function checkSql(client: ClickHouseClient, f: CustomDetectorFile, problem: (field: string, message: string, kind?: LoadProblem['kind']) => void): Promise<void> {
  const query = f.query.trim().replace(/;\s*$/, '')
  // Nothing reaches the engine with a second statement in it (the embedded engine runs every statement it is given).
  if (query.includes(';')) {
    problem('query', 'only one statement is allowed: no ; inside the query (write char(59) in a string literal)', 'refused')
    return
  }
  const params = { ...f.params, at: chTime(Date.parse(f.fixtures.at)) }
  let ast: string
  try {
    const rs = await client.query({ query: `EXPLAIN AST ${query}`, query_params: params, format: 'TabSeparatedRaw' })
    ast = await rs.text()
  } catch (err) {
    problem('query', `does not parse: ${firstLine(err)}`)
    return
  }
  const refusal = refuseUnlessReadOnly(ast, query)
  if (refusal) {
    problem('query', refusal, 'refused')
    return
  }
  let columns: string[]
  try {
    const rs = await client.query({ query: `DESCRIBE (${query})`, query_params: params, format: 'JSONEachRow' })
    columns = (await rs.json<{ name: string }>()).map((c) => c.name)
  } catch (err) {
    problem('query', `the engine refuses it: ${firstLine(err)}`)
    return
  }
  const has = (c: string) => columns.includes(c)
  const fields = ['account_id', 'key_id', 'user_id', 'ip', 'severity'] as const
  for (const field of fields) {
    const c = f.finding[field]
    if (c && !has(c)) problem(`finding.${field}`, `column ${c} is not in the query's result (it has ${columns.join(', ')})`)
  }
  f.finding.evidence.forEach((c, i) => {
    if (!has(c)) problem(`finding.evidence.${i}`, `column ${c} is not in the query's result (it has ${columns.join(', ')})`)
  })
  for (const [field, template] of [['finding.title', f.finding.title], ['finding.dedup_key', f.finding.dedup_key]] as const) {
    for (const name of placeholders(template)) if (!has(name) && !(name in f.params)) problem(field, `{${name}} is neither a column of the query's result nor a parameter`)
  }
}

/**
 * What the engine's parser made of the statement: one SELECT (a second statement after `;` is not parsed, so the
 * FORMAT clause the client appends must be the last thing it saw), reading only the detector tables, through no
 * table function but key_inventory_at, writing no file (INTO OUTFILE) and changing no settings.
 */
export function refuseUnlessReadOnly(ast: string, query: string): string | undefined {
  const lines = ast.split('\n').map((l) => l.replace(/^"|"$/g, '')).filter((l) => l.trim())
  const root = lines[0]?.trim().split(' ')[0] ?? ''
  if (root !== 'SelectWithUnionQuery') return `only a SELECT is allowed; the engine parsed a ${root.replace(/Query$/, '') || 'nothing'} statement`
  if (!/^ Identifier TabSeparatedRaw$/.test(lines.at(-1) ?? '')) return 'only one statement is allowed (nothing after a ;)'
  // The root holds the statement and the FORMAT the client appends; anything else there (INTO OUTFILE '…') writes.
  const extra = lines.slice(1, -1).find((l) => l.length - l.trimStart().length === 1 && !l.trim().startsWith('ExpressionList'))
  if (extra) return `only a plain SELECT is allowed (no INTO OUTFILE or other clause that writes): the engine parsed ${extra.trim().slice(0, 80)}`
  const ctes = new Set([...query.matchAll(/\b([A-Za-z_][A-Za-z0-9_]*)\s+AS\s*\(/gi)].map((m) => m[1]!))
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!
    const depth = line.length - line.trimStart().length
    const node = line.trim()
    if (node === 'Set' || node.startsWith('Set ')) return 'SETTINGS are not allowed in a detector query (keywatch sets its limits)'
    if (!node.startsWith('TableExpression')) continue
    const child = lines[i + 1]?.trim() ?? ''
    const childDepth = (lines[i + 1]?.length ?? 0) - (lines[i + 1]?.trimStart().length ?? 0)
    if (childDepth !== depth + 1) continue
    const table = /^TableIdentifier (\S+)/.exec(child)?.[1]
    const fn = /^Function (\S+)/.exec(child)?.[1]
    if (table && !(READABLE_TABLES as readonly string[]).includes(table) && !ctes.has(table)) return `reads ${table}; a detector may read ${READABLE_TABLES.join(', ')}`
    if (fn && fn !== 'key_inventory_at') return `uses the table function ${fn}(); only key_inventory_at() is allowed`
  }
  return undefined
}

const firstLine = (err: unknown) => (err as Error).message.split('\n')[0]!.slice(0, 300)
const placeholders = (template: string) => [...template.matchAll(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g)].map((m) => m[1]!)

function fill(template: string, row: Record<string, unknown>, params: Record<string, unknown>): string {
  return template.replace(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_, name: string) => {
    const v = name in row ? row[name] : params[name]
    return v === null || v === undefined ? '' : Array.isArray(v) ? v.join(',') : String(v)
  })
}

const SEVERITIES: Severity[] = ['critical', 'high', 'medium', 'low', 'info']

function toDetector(f: CustomDetectorFile, file: string): Detector<Params, Record<string, unknown>> {
  const m = f.finding
  return {
    id: f.id,
    title: f.title,
    severity: f.severity,
    schedule: f.schedule,
    lookback: f.lookback,
    // Strings and lists are bound as typed parameters too; only numbers can be overridden by DETECTOR_PARAMS.
    params: f.params as unknown as Params,
    query: f.query.trim().replace(/;\s*$/, ''),
    runbook: f.runbook,
    custom: { file, timeoutSeconds: f.timeout_seconds },
    toFinding(row, params): FindingDraft {
      const chosen = m.severity ? String(row[m.severity] ?? '') : ''
      const text = (c: string | undefined) => (c && row[c] !== null && row[c] !== undefined ? String(row[c]) : undefined)
      return {
        detector: f.id,
        severity: (SEVERITIES as string[]).includes(chosen) ? (chosen as Severity) : f.severity,
        account_id: text(m.account_id) ?? '',
        key_id: text(m.key_id),
        user_id: text(m.user_id),
        ip: text(m.ip),
        title: fill(m.title, row, params),
        evidence: Object.fromEntries(m.evidence.map((c) => [c, row[c] ?? null])),
        dedupKey: `${f.id}:${fill(m.dedup_key, row, params)}`,
      }
    },
  }
}

function toFixtures(f: CustomDetectorFile): Fixtures {
  const at = f.fixtures.at
  return {
    at: new Date(Date.parse(at)).toISOString(),
    fires: f.fixtures.fires.map((c) => ({ name: c.name, events: c.events.flatMap((e) => expandEvent(e, at)), expect: c.expect as Fixtures['fires'][number]['expect'] })),
    quiet: f.fixtures.quiet.map((c) => ({ name: c.name, events: c.events.flatMap((e) => expandEvent(e, at)) })),
  }
}

const UNIT_MS = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const

/** A fixture event as a file writes it (type, account, what matters) made whole with the contract builders' defaults. */
export function expandEvent(e: z.infer<typeof fixtureEvent>, at: string): Record<string, unknown>[] {
  const { type, occurred_at, repeat, every, ...fields } = e
  const atMs = Date.parse(at)
  const rel = occurred_at ? RELATIVE.exec(occurred_at) : null
  const start = !occurred_at ? atMs - 60_000 : rel ? atMs - Number(rel[1]) * UNIT_MS[rel[2] as keyof typeof UNIT_MS] : Date.parse(occurred_at)
  const step = every ? Number(every.slice(0, -1)) * UNIT_MS[every.slice(-1) as keyof typeof UNIT_MS] : 60_000
  return Array.from({ length: repeat ?? 1 }, (_, i) => {
    const when = new Date(start - i * step).toISOString()
    const key = { account_id: String(fields.account_id), key_id: String(fields.key_id ?? `key_${String(fields.account_id).replace(/^acct_/, '')}`), key_prefix: fields.key_prefix as string | undefined, key_kind: fields.key_kind as never, mode: fields.mode as never }
    switch (type) {
      case 'key.usage':
        return usage(key, when, fields)
      case 'key.ratelimited':
        return ratelimited(key, when, fields)
      case 'key.lifecycle':
        return lifecycle(key, (fields.action ?? 'created') as never, when, fields)
      case 'auth.event':
        return auth(key.account_id, String(fields.action ?? 'login.succeeded'), when, fields)
      case 'leak.reported':
        return leak(key.account_id, when, String(fields.token ?? 'x'.repeat(12)), fields)
    }
  })
}

/** The file name a detector came from, for messages (the path is the operator's). */
export const fileOf = (d: Detector<Params, unknown>) => (d.custom ? basename(d.custom.file) : '')
