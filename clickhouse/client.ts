// One way to ClickHouse for all of keywatch: `@clickhouse/client`, talking either to a server (CLICKHOUSE_URL)
// or to the engine embedded in-process by chdb (the default), so every query runs the same code path.
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { createClient, type ClickHouseClient } from '@clickhouse/client'
import { KeywatchError } from '../core/errors.ts'

export type { ClickHouseClient }

/** The embedded data directory is owned by another process (one engine per directory). */
export class DataDirLockedError extends KeywatchError {
  constructor(readonly dataDir: string, readonly holderPid: number | undefined) {
    super(
      'conflict',
      'data_dir_locked',
      `the data directory ${dataDir} is held by another keywatch process` +
        (holderPid ? ` (pid ${holderPid})` : '') +
        '; stop it, point KEYWATCH_DATA_DIR elsewhere, or set CLICKHOUSE_URL to use a ClickHouse server',
    )
    this.name = 'DataDirLockedError'
  }
}

// The same answers from both engines: 64-bit counts as JSON numbers (the server would quote them, chdb does not).
const SETTINGS = { output_format_json_quote_64bit_integers: 0 } as const

export interface Storage {
  client: ClickHouseClient
  database: string
  mode: 'server' | 'embedded'
  /**
   * Bulk insert for the ingest hot path; every row has the same keys in the same order. Sent as JSONCompactEachRow
   * (arrays: a quarter less to parse than objects). Embedded, the batch goes to the engine as one buffer, parsed
   * off the JS thread; on a server it is `client.insert`.
   */
  insertRows(table: string, rows: Record<string, unknown>[], settings: Record<string, string | number>): Promise<void>
  close(): Promise<void>
}

/** Where the tables live: a ClickHouse server, or the embedded engine in a data directory. Owned here, read by config. */
export type ClickHouseConfig =
  | { mode: 'server'; url: string; user: string; password: string; database: string; cluster?: string }
  | { mode: 'embedded'; dataDir: string; database: string }

export async function openStorage(config: ClickHouseConfig): Promise<Storage> {
  if (config.mode === 'server') {
    // The database may not exist yet: create it with a client that does not select it.
    const bootstrap = createClient({ url: config.url, username: config.user, password: config.password })
    try {
      await bootstrap.command({ query: 'CREATE DATABASE IF NOT EXISTS {db:Identifier}', query_params: { db: config.database } })
    } finally {
      await bootstrap.close()
    }
    const client = createClient({ url: config.url, username: config.user, password: config.password, database: config.database, clickhouse_settings: SETTINGS })
    return {
      client,
      database: config.database,
      mode: 'server',
      insertRows: async (table, rows, settings) => {
        if (!rows[0]) return
        await client.insert({ table, values: rows.map(Object.values), columns: Object.keys(rows[0]) as [string, ...string[]], format: 'JSONCompactEachRow', clickhouse_settings: settings })
      },
      close: () => client.close(),
    }
  }

  const { createChdbConnection } = await import('chdb/connection')
  // Ask before the engine does: its own refusal is a native message on stderr and a generic error.
  const holder = enginePid(config.dataDir)
  if (holder !== undefined && holder !== process.pid && isAlive(holder)) throw new DataDirLockedError(config.dataDir, holder)
  let connection
  try {
    connection = createChdbConnection({ path: config.dataDir })
  } catch (err) {
    const pid = enginePid(config.dataDir)
    if (pid !== undefined && pid !== process.pid && isAlive(pid)) throw new DataDirLockedError(config.dataDir, pid)
    throw err
  }
  // chdb types its connection against @clickhouse/client-common, which @clickhouse/client now bundles: same shape.
  type ClientConnection = NonNullable<NonNullable<Parameters<typeof createClient>[0]>['connection']>
  const client = createClient({ connection: connection as unknown as ClientConnection, clickhouse_settings: SETTINGS })
  // The chdb connection is one session: USE sticks for every later query on it.
  await client.command({ query: 'CREATE DATABASE IF NOT EXISTS {db:Identifier}', query_params: { db: config.database } })
  await client.command({ query: 'USE {db:Identifier}', query_params: { db: config.database } })
  // The engine loads tables and their parts in the background after a restart; a query that runs before may see
  // part of the data (seen after a crash: a lookup missing stored events). Wait until everything is loaded.
  const tables = await queryRows<{ name: string }>(client, "SELECT name FROM system.tables WHERE database = currentDatabase() AND engine LIKE '%MergeTree'")
  for (const { name } of tables) await client.command({ query: 'SYSTEM WAIT LOADING PARTS {table:Identifier}', query_params: { table: name } })
  const engine = connection.chdb
  return {
    client,
    database: config.database,
    mode: 'embedded',
    insertRows: async (table, rows, settings) => {
      if (!rows[0]) return
      const body = Buffer.from(rows.map((r) => JSON.stringify(Object.values(r))).join('\n'))
      await engine.rawInsert({ table, values: body, columns: Object.keys(rows[0]), format: 'JSONCompactEachRow', settings })
    },
    close: () => client.close(),
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** The engine writes its pid into `status` while it holds the directory. */
function enginePid(dataDir: string): number | undefined {
  const status = join(dataDir, 'status')
  if (!existsSync(status)) return undefined
  const m = /PID:\s*(\d+)/.exec(readFileSync(status, 'utf8'))
  return m ? Number(m[1]) : undefined
}

/** Runs a query and returns its rows (JSONEachRow). */
export async function queryRows<T>(client: ClickHouseClient, query: string, params: Record<string, unknown> = {}): Promise<T[]> {
  const rs = await client.query({ query, query_params: params, format: 'JSONEachRow' })
  return rs.json<T>()
}
