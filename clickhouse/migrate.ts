// Numbered SQL migrations (migrations/NNN_name.sql), applied in order, recorded in schema_migrations, safe to rerun:
// a recorded migration is skipped, and every statement is idempotent (IF NOT EXISTS) so a half-applied one resumes.
import { createHash } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { queryRows, type ClickHouseClient } from './client.ts'
import { KeywatchError } from '../core/errors.ts'

const MIGRATIONS_DIR = join(dirname(fileURLToPath(import.meta.url)), 'migrations')

export interface Migration {
  version: number
  name: string
  checksum: string
  statements: string[]
}

export class MigrationChangedError extends KeywatchError {
  constructor(readonly migration: string) {
    super('conflict', 'migration_changed', `migration ${migration} was changed after it was applied; add a new migration instead of editing an applied one`)
    this.name = 'MigrationChangedError'
  }
}

export function loadMigrations(dir = MIGRATIONS_DIR): Migration[] {
  return readdirSync(dir)
    .filter((f) => /^\d{3}_[a-z0-9_]+\.sql$/.test(f))
    .sort()
    .map((file) => {
      const sql = readFileSync(join(dir, file), 'utf8')
      return {
        version: Number(file.slice(0, 3)),
        name: file.replace(/\.sql$/, ''),
        checksum: createHash('sha256').update(sql).digest('hex'),
        statements: splitStatements(sql),
      }
    })
}

/** Splits on semicolons that end a line (so a comment line must not end with one); comment-only chunks are dropped. */
export function splitStatements(sql: string): string[] {
  return sql
    .split(/;[ \t]*(?:\r?\n|$)/)
    .map((s) => s.trim())
    .filter((s) => s.split('\n').some((line) => line.trim() !== '' && !line.trim().startsWith('--')))
}

export interface MigrationResult {
  applied: string[]
  alreadyApplied: string[]
}

/**
 * The statement for a ClickHouse cluster: every table and view created ON CLUSTER, every MergeTree-family engine
 * replicated (a replica path per table under /clickhouse/tables/{shard}/{database}/, the servers' macros filling in
 * shard and replica). The migration's checksum stays that of its file.
 */
export function forCluster(statement: string, cluster: string): string {
  if (!/^[A-Za-z0-9_]+$/.test(cluster)) throw new Error(`a cluster name is letters, digits and _: ${JSON.stringify(cluster)}`)
  // The statement's first words, after its leading comment lines.
  // CREATE … IF NOT EXISTS, CREATE OR REPLACE VIEW (a view redefined) and ALTER TABLE (a column added) name one table.
  const created = /^((?:\s*--[^\n]*\n)*\s*(?:CREATE\s+(?:TABLE|VIEW|MATERIALIZED\s+VIEW)\s+IF\s+NOT\s+EXISTS|CREATE\s+OR\s+REPLACE\s+VIEW|ALTER\s+TABLE)\s+)([A-Za-z_][A-Za-z0-9_]*)/i.exec(statement)
  if (!created) return statement
  const table = created[2]!
  return statement
    .replace(created[0], `${created[1]}${table} ON CLUSTER \`${cluster}\``)
    .replace(/ENGINE\s*=\s*(Replacing|Aggregating|Summing)?MergeTree(?:\(([^)]*)\))?/, (_m, kind: string | undefined, args: string | undefined) => {
      const replica = `'/clickhouse/tables/{shard}/{database}/${table}', '{replica}'`
      return `ENGINE = Replicated${kind ?? ''}MergeTree(${args?.trim() ? `${replica}, ${args.trim()}` : replica})`
    })
}

export async function migrate(client: ClickHouseClient, migrations = loadMigrations(), options: { cluster?: string } = {}): Promise<MigrationResult> {
  const adapt = (statement: string) => (options.cluster ? forCluster(statement, options.cluster) : statement)
  await client.command({
    query: adapt(`CREATE TABLE IF NOT EXISTS schema_migrations
            (version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3))
            ENGINE = MergeTree ORDER BY version`),
  })
  const recorded = new Map(
    (await queryRows<{ version: number; checksum: string }>(client, 'SELECT version, checksum FROM schema_migrations')).map((r) => [
      Number(r.version),
      r.checksum,
    ]),
  )
  const result: MigrationResult = { applied: [], alreadyApplied: [] }
  for (const m of migrations) {
    const checksum = recorded.get(m.version)
    if (checksum !== undefined) {
      if (checksum !== m.checksum) throw new MigrationChangedError(m.name)
      result.alreadyApplied.push(m.name)
      continue
    }
    for (const statement of m.statements) await client.command({ query: adapt(statement) })
    await client.insert({
      table: 'schema_migrations',
      values: [{ version: m.version, name: m.name, checksum: m.checksum }],
      format: 'JSONEachRow',
    })
    result.applied.push(m.name)
  }
  return result
}
