// Numbered SQL migrations (migrations/NNN_name.sql), applied in order, recorded in schema_migrations, safe to rerun:
// a recorded migration is skipped, and every statement is idempotent (IF NOT EXISTS) so a half-applied one resumes.
import { createHash } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { queryRows, type ClickHouseClient } from './client.ts'

const MIGRATIONS_DIR = join(dirname(fileURLToPath(import.meta.url)), 'migrations')

export interface Migration {
  version: number
  name: string
  checksum: string
  statements: string[]
}

export class MigrationChangedError extends Error {
  readonly retriable = false
  constructor(readonly migration: string) {
    super(`migration ${migration} was changed after it was applied; add a new migration instead of editing an applied one`)
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

export async function migrate(client: ClickHouseClient, migrations = loadMigrations()): Promise<MigrationResult> {
  await client.command({
    query: `CREATE TABLE IF NOT EXISTS schema_migrations
            (version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3))
            ENGINE = MergeTree ORDER BY version`,
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
    for (const statement of m.statements) await client.command({ query: statement })
    await client.insert({
      table: 'schema_migrations',
      values: [{ version: m.version, name: m.name, checksum: m.checksum }],
      format: 'JSONEachRow',
    })
    result.applied.push(m.name)
  }
  return result
}
