// What a failed storage call means for whoever retries it, the same for the server and the embedded engine. The
// errors arrive as @clickhouse/client's ClickHouseError (a copy of which chdb bundles: `instanceof` fails across
// copies), as chdb's own errors (ChdbInsertError with the engine's "Code: 252. DB::Exception: ..." text) or as
// socket errors; they are read by their code and name, never by their class.

/** A storage failure that trying again later may cure: the engine is busy, out of memory for now, or unreachable. */
export class StorageBusyError extends Error {
  readonly retriable = true
  constructor(
    message: string,
    readonly code: string | undefined,
    options?: ErrorOptions,
  ) {
    super(message, options)
    this.name = 'StorageBusyError'
  }
}

/** The engine refused the data for good: the same rows will fail the same way (a bad value, a limit they overrun). */
export class StorageRejectedError extends Error {
  readonly retriable = false
  constructor(
    message: string,
    readonly code: string | undefined,
    options?: ErrorOptions,
  ) {
    super(message, options)
    this.name = 'StorageRejectedError'
  }
}

// ClickHouse error codes of conditions that pass with time (timeouts, load, memory, network, keeper).
const RETRIABLE_CODES = new Set(['159', '164', '202', '203', '209', '210', '236', '241', '242', '243', '252', '319', '394', '425', '999'])
const NETWORK_CODES = /^(ECONNRESET|ECONNREFUSED|ETIMEDOUT|EPIPE|EAI_AGAIN|UND_ERR_SOCKET|UND_ERR_CONNECT_TIMEOUT|ECONNABORTED|EHOSTUNREACH|ENETUNREACH)$/
// chdb's names for a timed-out call or a connection closed under it (at a stop): not the rows' fault, never a
// reason to dead-letter them; the batch fails and comes again.
const RETRIABLE_NAMES = new Set(['ChdbTimeoutError', 'TimeoutError', 'ChdbClosedError', 'ChdbConnectionError'])

/** The ClickHouse error code of an error from either engine ("252"), if it carries one. */
export function engineErrorCode(err: unknown): string | undefined {
  const e = err as { code?: unknown; message?: unknown } | null
  if (e && (typeof e.code === 'string' || typeof e.code === 'number') && /^\d+$/.test(String(e.code))) return String(e.code)
  const m = typeof e?.message === 'string' ? /\bCode: (\d+)\b/.exec(e.message) : null
  return m?.[1]
}

export function isRetriable(err: unknown): boolean {
  if (err instanceof StorageBusyError) return true
  if (err instanceof StorageRejectedError) return false
  const e = err as { code?: unknown; name?: unknown; message?: unknown; cause?: unknown } | null
  if (!e || typeof e !== 'object') return false
  const code = engineErrorCode(e)
  if (code !== undefined) {
    // 252 is both "too many parts" (merges catch up) and "too many partitions for single INSERT block" (never will).
    if (code === '252' && typeof e.message === 'string' && /partitions for single INSERT block/i.test(e.message)) return false
    return RETRIABLE_CODES.has(code)
  }
  if (typeof e.code === 'string' && NETWORK_CODES.test(e.code)) return true
  if (typeof e.name === 'string' && RETRIABLE_NAMES.has(e.name)) return true
  if (typeof e.message === 'string' && /connection is closed/i.test(e.message)) return true
  return e.cause !== undefined && e.cause !== err ? isRetriable(e.cause) : false
}

/** The error as one of the two classes, keeping the engine's message and code. */
export function classifyStorageError(err: unknown, context: string): StorageBusyError | StorageRejectedError {
  if (err instanceof StorageBusyError || err instanceof StorageRejectedError) return err
  const message = `${context}: ${engineMessage(err)}`
  const code = engineErrorCode(err) ?? (typeof (err as { code?: unknown })?.code === 'string' ? String((err as { code: string }).code) : undefined)
  return isRetriable(err) ? new StorageBusyError(message, code, { cause: err }) : new StorageRejectedError(message, code, { cause: err })
}

/** The engine's own words, without its stack trace or build id (short enough for a dead-letter header). */
export function engineMessage(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err)
  return text.replace(/\s*Stack trace[\s\S]*$/i, '').replace(/\s*\(version [^)]*\)\s*$/, '').trim().slice(0, 1000)
}
