// One way to ClickHouse for all of keywatch: `@clickhouse/client`, talking either to a server (CLICKHOUSE_URL)
// or to the engine embedded in-process by chdb (the default), so every query runs the same code path.
import { closeSync, existsSync, openSync, readFileSync, rmSync, writeSync, writevSync } from 'node:fs'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { createClient, type ClickHouseClient } from '@clickhouse/client'
import { KeywatchError } from '../core/errors.ts'
import { encodeLines } from './lines.ts'

export { encodeLines }

/**
 * The embedded engine shares this process's cores with the JS thread that feeds it, and under load that thread
 * is what limits ingest: an insert reads its file and runs its views on one thread, leaving the other core to the
 * JS thread (bench:ingest, alternately: 71,171 and 63,676 events/s against 50,392 and 60,426 with the engine's
 * default of a thread per core). A server has cores of its own and keeps its defaults.
 */
const ONE_CORE_INSERT = { max_threads: 1, max_insert_threads: '1' } as const

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

/**
 * The text formats a body of lines may be in. JSONCompactEachRow for rows encoded generically; TabSeparated for
 * key_usage lines (ingest/rows.ts), which the engine parses for about a sixth less (bench:engine).
 */
export type LineFormat = 'JSONCompactEachRow' | 'TabSeparated'
const LINE_FORMATS: readonly LineFormat[] = ['JSONCompactEachRow', 'TabSeparated']

export interface Storage {
  client: ClickHouseClient
  database: string
  mode: 'server' | 'embedded'
  /**
   * Bulk insert for the ingest hot path; every row has the same keys in the same order, one block per call (so
   * `insert_deduplication_token` covers exactly these rows). Sent as JSONCompactEachRow (arrays: a quarter less to
   * parse than objects). Embedded, the batch is written to a file in memory (/dev/shm) and read by
   * `INSERT … SELECT FROM file()`, which costs the engine about half of the same bytes sent inline (small batches
   * still go inline); on a server it
   * is `client.insert`. Errors carry the engine's message.
   */
  insertRows(table: string, rows: Record<string, unknown>[], settings: Record<string, string | number>): Promise<void>
  /**
   * The same, for rows already encoded: one line per row in `format`, cells in `columns` order; or those lines
   * already joined into the body (each ending in a newline), built while an earlier insert ran.
   */
  /** `lines` as strings, or as a body already encoded: one buffer, or its pieces in order (written as they are). */
  insertLines(table: string, columns: readonly string[], lines: readonly string[] | Buffer | readonly Buffer[], settings: Record<string, string | number>, format?: LineFormat): Promise<void>
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
    const insertLines = bodyInsert(client)
    return {
      client,
      database: config.database,
      mode: 'server',
      insertLines,
      insertRows: (table, rows, settings) => insertLines(table, rows[0] ? Object.keys(rows[0]) : [], rows.map((r) => JSON.stringify(Object.values(r))), settings),
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
  const settle = trackInFlight(client, engine)
  const spool = await insertSpool()
  const structures = new Map<string, Promise<string>>()
  let sequence = 0
  const insertLines: Storage['insertLines'] = async (table, columns, lines, settings, format = 'JSONCompactEachRow') => {
    const pieces = piecesOf(lines)
    const size = pieces.reduce((n, p) => n + p.length, 0)
    if (!size) return
    // A small batch costs less inline than a file written, read and removed.
    if (size < FILE_INSERT_MIN_BYTES) return void (await engine.rawInsert({ table, values: pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces), columns: [...columns], format: lineFormat(format), settings }))
    let structure = structures.get(`${table}:${columns.join(',')}`)
    if (!structure) structures.set(`${table}:${columns.join(',')}`, (structure = fileStructure(client, table, columns)))
    structure.catch(() => structures.delete(`${table}:${columns.join(',')}`))
    const file = join(spool, `${sequence++}.jsonl`)
    // Written synchronously: the file is in memory (tmpfs), a few ms for 100,000 rows. An async write goes to libuv's
    // pool in 512 KiB pieces, each queued behind the engine's calls that hold the pool's threads (measured: 0.3 to
    // 1.6 s for one batch, during which the engine sat idle).
    // The pieces are written as they are (a batch's bodies, made as its rows arrived), not joined into one more copy.
    writePieces(file, pieces)
    try {
      // Identifiers cannot be query parameters in a column list: they are checked names of the table's own columns.
      await client.command({
        query: `INSERT INTO ${identifier(table)} (${columns.map(identifier).join(', ')}) SELECT * FROM file({file:String}, {format:String}, {structure:String})`,
        query_params: { file, format: lineFormat(format), structure: await structure },
        clickhouse_settings: { ...settings, ...ONE_CORE_INSERT },
      })
    } finally {
      rmSync(file, { force: true })
    }
  }
  return {
    client,
    database: config.database,
    mode: 'embedded',
    insertLines,
    insertRows: (table, rows, settings) => insertLines(table, rows[0] ? Object.keys(rows[0]) : [], rows.map((r) => JSON.stringify(Object.values(r))), settings),
    close: async () => {
      // Closing the engine under a statement still running crashes the process (a native fault, not an error):
      // let what is in flight (a timer's query, a last insert) finish first.
      await settle(10_000)
      await client.close()
      await rm(spool, { recursive: true, force: true })
    },
  }
}

/**
 * Counts the statements running on the embedded engine (through the client and chdb's own insert), so close can
 * wait for them. Returns a function that resolves once none runs, or after `timeoutMs`.
 */
function trackInFlight(client: ClickHouseClient, engine: { rawInsert: (...args: never[]) => Promise<unknown> }): (timeoutMs: number) => Promise<void> {
  const running = new Set<Promise<unknown>>()
  const wrap = <T extends object>(target: T, method: string) => {
    const original = (target as Record<string, (...args: unknown[]) => Promise<unknown>>)[method]!.bind(target)
    ;(target as Record<string, unknown>)[method] = (...args: unknown[]) => {
      const p = original(...args)
      running.add(p)
      void p.finally(() => running.delete(p)).catch(() => undefined)
      return p
    }
  }
  for (const m of ['query', 'command', 'insert', 'exec']) wrap(client, m)
  wrap(engine, 'rawInsert')
  return async (timeoutMs) => {
    const until = Date.now() + timeoutMs
    while (running.size && Date.now() < until) {
      let timer: NodeJS.Timeout | undefined
      await Promise.race([Promise.allSettled([...running]), new Promise((r) => (timer = setTimeout(r, Math.max(0, until - Date.now()))))])
      clearTimeout(timer)
    }
  }
}

/**
 * A server's insert of rows already encoded: the lines are the body of the INSERT, not encoded again by the client
 * (its `insert` wants objects for JSON formats).
 */
export function bodyInsert(client: ClickHouseClient): Storage['insertLines'] {
  return async (table, columns, lines, settings, format = 'JSONCompactEachRow') => {
    const pieces = piecesOf(lines)
    if (!pieces.some((p) => p.length)) return
    // Identifiers cannot be query parameters in a column list: they are checked names of the table's own columns;
    // the format is one of LINE_FORMATS.
    const result = await client.exec({
      query: `INSERT INTO ${identifier(table)} (${columns.map(identifier).join(', ')}) FORMAT ${lineFormat(format)}`,
      values: Readable.from(pieces),
      clickhouse_settings: settings,
    })
    result.stream.resume()
    await new Promise((resolve, reject) => result.stream.once('end', resolve).once('error', reject))
  }
}

/** From this size on (about 5,000 usage rows), an embedded insert goes through a file (measured by bench:ingest --stages). */
const FILE_INSERT_MIN_BYTES = 1_500_000

function lineFormat(format: LineFormat): LineFormat {
  if (!LINE_FORMATS.includes(format)) throw new Error(`not a line format: ${JSON.stringify(format)}`)
  return format
}

function writePieces(file: string, pieces: readonly Buffer[]): void {
  const fd = openSync(file, 'w')
  try {
    for (let i = 0; i < pieces.length; i += 64) {
      const group = pieces.slice(i, i + 64)
      let written = writevSync(fd, group)
      // writev may write less than asked: the rest of the group one piece at a time.
      for (const piece of group) {
        if (written >= piece.length) written -= piece.length
        else {
          writeAll(fd, piece.subarray(written))
          written = 0
        }
      }
    }
  } finally {
    closeSync(fd)
  }
}

function writeAll(fd: number, bytes: Buffer): void {
  for (let at = 0; at < bytes.length; ) at += writeSync(fd, bytes, at)
}

/** Lines as the pieces of one body, in order, each line ending in a newline. */
export function piecesOf(lines: readonly string[] | Buffer | readonly Buffer[]): readonly Buffer[] {
  if (Buffer.isBuffer(lines)) return [lines]
  if (lines.length && Buffer.isBuffer(lines[0])) return lines as readonly Buffer[]
  return [encodeLines(lines as readonly string[]).body]
}


/**
 * A directory in memory for insert files, named after this process; ones left by processes that died are removed
 * (a file there is only ever read by the insert that wrote it).
 */
async function insertSpool(): Promise<string> {
  const base = existsSync('/dev/shm') ? '/dev/shm' : tmpdir()
  for (const name of await readdir(base).catch(() => [] as string[])) {
    const pid = /^keywatch-insert-(\d+)-/.exec(name)?.[1]
    if (pid && Number(pid) !== process.pid && !isAlive(Number(pid))) await rm(join(base, name), { recursive: true, force: true }).catch(() => undefined)
  }
  return mkdtemp(join(base, `keywatch-insert-${process.pid}-`))
}

/**
 * The type file() reads a column as: LowCardinality columns as their plain type, cast to the table's type by the
 * insert. The text parser fills a LowCardinality column one value at a time through its dictionary; the cast builds
 * it for the whole block at once, which cost the engine 1-2.5 µs less per key_usage row (11 such columns) in
 * bench:engine. The values stored are the same.
 */
export function readAs(type: string): string {
  return /^LowCardinality\((.*)\)$/.exec(type)?.[1] ?? type
}

/** `name Type, …` of these columns of a table, in this order, for file()'s structure argument. */
async function fileStructure(client: ClickHouseClient, table: string, columns: readonly string[]): Promise<string> {
  const types = new Map(
    (await queryRows<{ name: string; type: string }>(client, 'SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = {table:String}', { table })).map((c) => [c.name, c.type]),
  )
  return columns
    .map((c) => {
      const type = types.get(c)
      if (!type) throw new Error(`table ${table} has no column ${c}`)
      return `${identifier(c)} ${readAs(type)}`
    })
    .join(', ')
}

function identifier(name: string): string {
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new Error(`not a plain identifier: ${JSON.stringify(name)}`)
  return `\`${name}\``
}

/** Whether a process runs with this pid (one of another user's counts: it cannot be signalled, yet it runs). */
export function isAlive(pid: number): boolean {
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
