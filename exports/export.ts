// A compliance export: the dataset written to a file by ClickHouse itself (the embedded engine writes it directly;
// a server streams it), with flat memory however large; then a manifest (range, filters, row count, size, SHA-256,
// who and when) signed with Ed25519, which `keywatch verify-export` checks offline.
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto'
import { createReadStream, createWriteStream, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { open } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { queryRows, type Storage } from '../clickhouse/client.ts'
import { chTime } from '../clickhouse/time.ts'
import { CLICKHOUSE_FORMAT, datasetQuery, type Dataset, type ExportFilter, type ExportFormat } from './datasets.ts'
import { KeywatchError, type ErrorKind } from '../core/errors.ts'

export interface ExportRequest {
  dataset: Dataset
  format: ExportFormat
  filter: ExportFilter
  /** Who asked: `token:<name>`, `cli:<user>` or `keywatch` (scheduled). */
  actor: string
  /** Chosen by the caller when it must name the file before it exists; else derived from the file. */
  exportId?: string
}

export interface Manifest {
  manifest_version: 1
  export_id: string
  dataset: Dataset
  format: ExportFormat
  range: { from: string; to: string }
  filters: { account: string | null; actor: string | null; action: string | null }
  /** Rows received up to this moment are in the export. */
  snapshot_at: string
  rows: number
  bytes: number
  sha256: string
  file: string
  generated_by: string
  generated_at: string
  keywatch_version: string
  /**
   * The head of keywatch's own audit trail when the export was made: signed here and kept by the auditor, it
   * anchors the chain outside ClickHouse (`AuditTrail.verify({ anchors })` checks the chain still has it).
   */
  audit_head: { seq: number; hash: string } | null
  signature: { algorithm: 'Ed25519'; public_key: string; key_fingerprint: string; value: string }
}

export class ExportError extends KeywatchError {
  constructor(message: string, kind: ErrorKind = 'invalid') {
    super(kind, kind === 'invalid' ? 'invalid_input' : 'export_failed', message)
    this.name = 'ExportError'
  }
}

/** The Ed25519 key that signs manifests: from a PEM file, or made once and kept beside the exports. */
export function loadSigningKey(path: string): KeyObject {
  if (!existsSync(path)) {
    mkdirSync(dirname(path), { recursive: true })
    const { privateKey, publicKey } = generateKeyPairSync('ed25519')
    writeFileSync(path, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 })
    writeFileSync(path.replace(/(\.pem)?$/, '.pub.pem'), publicKey.export({ type: 'spki', format: 'pem' }))
  }
  const key = createPrivateKey(readFileSync(path))
  if (key.asymmetricKeyType !== 'ed25519') throw new ExportError(`${path} is a ${key.asymmetricKeyType} key; manifests are signed with Ed25519`)
  return key
}

export function fingerprint(publicKey: KeyObject): string {
  return createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest('hex')
}

/** The bytes a signature covers: the manifest without its signature value, keys in a fixed order. */
export function signedBytes(manifest: Omit<Manifest, 'signature'> & { signature?: unknown }): Buffer {
  const { signature: _s, ...rest } = manifest
  return Buffer.from(canonicalJson(rest))
}

function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`
  if (value && typeof value === 'object') {
    return `{${Object.keys(value)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`)
      .join(',')}}`
  }
  return JSON.stringify(value)
}

/**
 * Writes the export to `outPath` and returns its signed manifest (also written to `outPath.manifest.json`).
 * The embedded engine writes the file itself; a ClickHouse server streams it here. Neither holds it in memory.
 */
export async function exportToFile(storage: Storage, request: ExportRequest, outPath: string, signingKey: KeyObject, version: string, onProgress?: (bytes: number) => void): Promise<Manifest> {
  const from = Date.parse(request.filter.from)
  const to = Date.parse(request.filter.to)
  if (!(from < to)) throw new ExportError(`from ${request.filter.from} must be before to ${request.filter.to}`)
  const snapshot = Date.now()
  const params = {
    from: chTime(from),
    to: chTime(to),
    snapshot: chTime(snapshot),
    account: request.filter.account ?? '',
    actor: request.filter.actor ?? '',
    action: request.filter.action ?? '',
  }
  const query = datasetQuery(request.dataset, request.format)
  // The head of keywatch's own audit trail at the snapshot, signed below: an anchor outside ClickHouse.
  const [auditHead] = await queryRows<{ seq: number; hash: string }>(storage.client, 'SELECT seq, hash FROM audit_trail ORDER BY seq DESC LIMIT 1')
  // A Parquet file's rows are counted by a query when the engine cannot read the file back (a server elsewhere).
  const counted = request.format === 'parquet' && storage.mode === 'server' ? await queryRows<{ n: number }>(storage.client, `SELECT count() AS n FROM (${query})`, params) : []
  mkdirSync(dirname(outPath), { recursive: true })
  const watch = onProgress && watchSize(outPath, onProgress)
  try {
    await writeExport(storage, query, params, request.format, outPath)
  } finally {
    if (watch) clearInterval(watch)
  }
  const { sha256, bytes, rows: textRows } = await digest(outPath, request.format)
  onProgress?.(bytes)
  const rows = textRows ?? (counted[0] ? Number(counted[0].n) : await parquetRows(storage, outPath))
  const publicKey = createPublicKey(signingKey)
  const unsigned: Omit<Manifest, 'signature'> = {
    manifest_version: 1,
    export_id: request.exportId ?? `exp_${createHash('sha256').update(`${outPath}${snapshot}${sha256}`).digest('hex').slice(0, 20)}`,
    dataset: request.dataset,
    format: request.format,
    range: { from: new Date(from).toISOString(), to: new Date(to).toISOString() },
    filters: { account: request.filter.account ?? null, actor: request.filter.actor ?? null, action: request.filter.action ?? null },
    snapshot_at: new Date(snapshot).toISOString(),
    rows,
    bytes,
    sha256,
    file: outPath.split('/').pop()!,
    generated_by: request.actor,
    generated_at: new Date().toISOString(),
    keywatch_version: version,
    audit_head: auditHead ? { seq: Number(auditHead.seq), hash: auditHead.hash } : null,
  }
  const manifest: Manifest = {
    ...unsigned,
    signature: {
      algorithm: 'Ed25519',
      public_key: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
      key_fingerprint: fingerprint(publicKey),
      value: sign(null, signedBytes(unsigned), signingKey).toString('base64'),
    },
  }
  writeFileSync(`${outPath}.manifest.json`, JSON.stringify(manifest, null, 2) + '\n')
  return manifest
}

/** The engine writes the file itself when it runs in this process; a server streams it here. */
async function writeExport(storage: Storage, query: string, params: Record<string, string>, format: ExportFormat, outPath: string): Promise<void> {
  if (storage.mode === 'embedded') {
    // chdb's client connection materialises a whole result before handing it over, so the export is not read
    // through it: the engine writes the file (INSERT INTO FUNCTION file), block by block.
    await storage.client.command({
      query: `INSERT INTO FUNCTION file({out:String}, {format:String}) ${query}`,
      query_params: { ...params, out: outPath, format: CLICKHOUSE_FORMAT[format] },
      // The engine runs in this process: a sort that outgrows 64 MB spills to disk, and Parquet's row groups stay
      // small, so the export's memory stays flat however many rows it has.
      clickhouse_settings: {
        engine_file_truncate_on_insert: 1,
        max_bytes_before_external_sort: 64 * 1024 * 1024,
        max_bytes_ratio_before_external_sort: 0,
        max_threads: 1,
        max_block_size: 16_384,
        // Parallel formatting keeps several formatted blocks of text in memory at once (about 170 MB for CSV).
        output_format_parallel_formatting: 0,
        output_format_parquet_compression_method: 'zstd',
        output_format_parquet_row_group_size: 100_000,
        output_format_parquet_row_group_size_bytes: 16 * 1024 * 1024,
      } as never,
    })
  } else {
    const result = await storage.client.exec({ query: `${query} FORMAT ${CLICKHOUSE_FORMAT[format]}`, query_params: params })
    await pipeline(result.stream as unknown as Readable, createWriteStream(outPath))
  }
}

/** Reports the file's size as the engine writes it. */
function watchSize(path: string, onProgress: (bytes: number) => void): NodeJS.Timeout {
  return setInterval(() => {
    try {
      onProgress(statSync(path).size)
    } catch {
      // Not created yet.
    }
  }, 250)
}

/** A Parquet file's row count, from its footer (the engine reads only the metadata). */
async function parquetRows(storage: Storage, path: string): Promise<number> {
  const [row] = await queryRows<{ n: number }>(storage.client, `SELECT count() AS n FROM file({p:String}, 'Parquet')`, { p: path })
  return Number(row?.n ?? 0)
}

/**
 * One pass over the file: its SHA-256, its size and, for text formats, its rows. The rows are counted in the file,
 * not by a second query, so the manifest always agrees with the file. An NDJSON row is a line; a CSV row ends at a
 * line break outside quotes (a quoted cell may hold line breaks; a quote inside one is doubled, RFC 4180).
 */
async function digest(path: string, format?: ExportFormat): Promise<{ sha256: string; bytes: number; rows?: number }> {
  const hash = createHash('sha256')
  let bytes = 0
  let lines = 0
  let quoted = false
  // One buffer, reused: a stream would allocate a new one per chunk and leave them to the garbage collector, which
  // lets tens of MB of them pile up over a multi-GB file.
  const buf = Buffer.allocUnsafe(1 << 20)
  const file = await open(path, 'r')
  try {
    for (;;) {
      const { bytesRead } = await file.read(buf, 0, buf.length, null)
      if (bytesRead === 0) break
      const chunk = buf.subarray(0, bytesRead)
      hash.update(chunk)
      bytes += bytesRead
      if (format === 'ndjson') lines += countByte(chunk, 10)
      else if (format === 'csv') {
        for (let i = 0; i < bytesRead; i++) {
          const b = chunk[i]!
          if (b === 34) quoted = !quoted
          else if (b === 10 && !quoted) lines++
        }
      }
    }
  } finally {
    await file.close()
  }
  const rows = format === 'ndjson' ? lines : format === 'csv' ? Math.max(0, lines - 1) : undefined
  return { sha256: hash.digest('hex'), bytes, rows }
}

function countByte(buf: Buffer, byte: number): number {
  let n = 0
  for (let i = buf.indexOf(byte); i !== -1; i = buf.indexOf(byte, i + 1)) n++
  return n
}

export interface VerifyOutcome {
  ok: boolean
  problems: string[]
  /** Whose key signed it: the fingerprint, and whether it is the key the verifier trusts. */
  signedBy: string
  trustedKey: boolean
}

/**
 * Checks an export against its manifest: size, SHA-256, the row count (CSV and NDJSON), and the signature. Without a
 * trusted public key the signature is checked against the key in the manifest, which proves integrity, not origin.
 */
export async function verifyExport(file: string, manifestPath: string, trustedPublicKey?: string): Promise<VerifyOutcome> {
  const problems: string[] = []
  let manifest: Manifest
  try {
    manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as Manifest
  } catch (err) {
    return { ok: false, problems: [`the manifest is not readable JSON: ${(err as Error).message}`], signedBy: '', trustedKey: false }
  }
  if (!existsSync(file)) return { ok: false, problems: [`no file ${file}`], signedBy: '', trustedKey: false }
  const size = statSync(file).size
  if (size !== manifest.bytes) problems.push(`size: the file has ${size} bytes, the manifest says ${manifest.bytes}`)
  const { sha256, rows } = await digest(file, manifest.format)
  if (sha256 !== manifest.sha256) problems.push(`sha256: the file hashes to ${sha256}, the manifest says ${manifest.sha256}`)
  if (rows !== undefined && rows !== manifest.rows) problems.push(`rows: the file has ${rows} rows, the manifest says ${manifest.rows}`)
  let signedBy = ''
  let trustedKey = false
  try {
    const key = createPublicKey(trustedPublicKey ?? manifest.signature.public_key)
    signedBy = fingerprint(key)
    trustedKey = Boolean(trustedPublicKey)
    if (trustedPublicKey && signedBy !== manifest.signature.key_fingerprint) problems.push(`signature: made with key ${manifest.signature.key_fingerprint.slice(0, 16)}…, not the trusted key ${signedBy.slice(0, 16)}…`)
    else if (!verify(null, signedBytes(manifest), key, Buffer.from(manifest.signature.value, 'base64'))) problems.push('signature: does not match the manifest (the manifest was changed after it was signed)')
  } catch (err) {
    problems.push(`signature: cannot be checked: ${(err as Error).message}`)
  }
  return { ok: problems.length === 0, problems, signedBy, trustedKey }
}

/**
 * The audit heads in the signed manifests under `dir` (any depth), as anchors of the audit trail: a copy of the head
 * kept outside ClickHouse each time an export was made. Only manifests signed by `publicKey` count.
 */
export function manifestAnchors(dir: string, publicKey: KeyObject): { seq: number; hash: string; source: string }[] {
  if (!existsSync(dir)) return []
  const trusted = fingerprint(publicKey)
  const out: { seq: number; hash: string; source: string }[] = []
  for (const entry of readdirSync(dir, { recursive: true, encoding: 'utf8' })) {
    if (!entry.endsWith('.manifest.json')) continue
    try {
      const m = JSON.parse(readFileSync(join(dir, entry), 'utf8')) as Manifest
      if (!m.audit_head || m.signature?.key_fingerprint !== trusted) continue
      if (!verify(null, signedBytes(m), publicKey, Buffer.from(m.signature.value, 'base64'))) continue
      out.push({ seq: Number(m.audit_head.seq), hash: m.audit_head.hash, source: `the manifest of ${m.export_id}` })
    } catch {
      // Not a manifest of ours: not an anchor.
    }
  }
  return out
}
