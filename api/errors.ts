import { KeywatchError, kindOfStatus } from '../core/errors.ts'

/** An error raised by a route itself: a status, a stable code and a message naming what is wrong. */
export class ApiError extends KeywatchError {
  constructor(
    readonly statusCode: number,
    code: string,
    message: string,
  ) {
    super(kindOfStatus(statusCode), code, message)
    this.name = 'ApiError'
  }
}
