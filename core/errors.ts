// The one error vocabulary. Every error keywatch raises on purpose carries a kind (what went wrong, in terms a
// caller can act on), a stable code, and whether trying again later may work. The API maps kinds to HTTP statuses
// in its one error handler; the CLI maps them to exit codes in one place. Nothing matches on messages.
// This module is a leaf: it imports nothing of keywatch's, so every layer may use it.

export type ErrorKind = 'invalid' | 'unauthorized' | 'forbidden' | 'not_found' | 'conflict' | 'unprocessable' | 'too_large' | 'unavailable' | 'internal'

export interface KeywatchErrorOptions extends ErrorOptions {
  /** Defaults to true for `unavailable` (the engine, the broker, a peer), false for everything else. */
  retriable?: boolean
}

export class KeywatchError extends Error {
  readonly retriable: boolean
  constructor(
    readonly kind: ErrorKind,
    readonly code: string,
    message: string,
    options: KeywatchErrorOptions = {},
  ) {
    super(message, options)
    this.name = 'KeywatchError'
    this.retriable = options.retriable ?? kind === 'unavailable'
  }
}

export const HTTP_STATUS_OF_KIND: Record<ErrorKind, number> = {
  invalid: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  unprocessable: 422,
  too_large: 413,
  unavailable: 503,
  internal: 500,
}

/** CLI exit codes: 2 for a wrong invocation or input, 1 for everything else that failed. */
export const EXIT_CODE_OF_KIND: Record<ErrorKind, number> = {
  invalid: 2,
  unauthorized: 1,
  forbidden: 1,
  not_found: 1,
  conflict: 1,
  unprocessable: 1,
  too_large: 2,
  unavailable: 1,
  internal: 1,
}

const KIND_OF_STATUS: Record<number, ErrorKind> = {
  400: 'invalid',
  401: 'unauthorized',
  403: 'forbidden',
  404: 'not_found',
  409: 'conflict',
  413: 'too_large',
  415: 'invalid',
  422: 'unprocessable',
  503: 'unavailable',
}

/** For the classes that predate the vocabulary and still take an HTTP-like status. */
export function kindOfStatus(status: number): ErrorKind {
  return KIND_OF_STATUS[status] ?? (status >= 500 ? 'unavailable' : 'invalid')
}

/** A configuration that cannot work: startup stops with every problem named. */
export class ConfigError extends KeywatchError {
  constructor(readonly problems: string[]) {
    super('invalid', 'invalid_configuration', `invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`)
    this.name = 'ConfigError'
  }
}
