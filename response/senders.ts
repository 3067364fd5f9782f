// The two ways a command reaches the platform's key service (../shared/contract): a `key.command` message on
// `apikey.commands`, answered later by the matching lifecycle event; or a signed HTTP call, answered at once.
import { randomUUID } from 'node:crypto'
import { keyCommandSchema, type KeyCommand } from '../contract/events.ts'
import type { KafkaProducer } from '../ingest/kafka.ts'
import { KeyServiceError, type KeyServiceClient } from './key-service.ts'

export interface CommandToSend {
  command: 'revoke' | 'reset'
  command_id: string
  account_id: string
  key_id: string
  reason: string
  finding_id: string | null
  requested_by: string
}

/** What the key service said, or that the answer will come as a lifecycle event. */
export type SendResult =
  | { state: 'requested' } // on the commands topic; the lifecycle event confirms it
  | { state: 'confirmed'; detail: string; effective_at: string | null }
  | { state: 'not_revocable' } // 422: an auto-generated key; reset it instead
  | { state: 'failed'; detail: string }

export interface CommandSender {
  readonly transport: 'http' | 'kafka' | 'none'
  send(command: CommandToSend): Promise<SendResult>
  close?(): Promise<void>
}

export class HttpCommandSender implements CommandSender {
  readonly transport = 'http'

  constructor(private readonly client: KeyServiceClient) {}

  async send(c: CommandToSend): Promise<SendResult> {
    try {
      const answer = await this.client.send({ command: c.command, key_id: c.key_id, command_id: c.command_id, reason: c.reason, finding_id: c.finding_id, requested_by: c.requested_by })
      switch (answer.outcome) {
        case 'done':
          return { state: 'confirmed', detail: `key service: ${answer.status}`, effective_at: answer.at }
        case 'already_revoked':
          return { state: 'confirmed', detail: 'key service: already revoked (409)', effective_at: null }
        case 'not_revocable':
          return { state: 'not_revocable' }
        case 'unknown_key':
          return { state: 'failed', detail: 'key service: no such key (404)' }
      }
    } catch (err) {
      if (err instanceof KeyServiceError) return { state: 'failed', detail: err.message }
      throw err
    }
  }
}

export class KafkaCommandSender implements CommandSender {
  readonly transport = 'kafka'
  private producer?: Promise<KafkaProducer>

  /** Connects on the first command: commands that only read actions never open a producer. */
  constructor(
    private readonly connect: () => Promise<KafkaProducer>,
    private readonly topic: string,
  ) {}

  async close(): Promise<void> {
    const producer = this.producer
    this.producer = undefined
    if (producer) await (await producer.catch(() => undefined))?.disconnect()
  }

  async send(c: CommandToSend): Promise<SendResult> {
    const message: KeyCommand = keyCommandSchema.parse({
      event_id: randomUUID(),
      type: 'key.command',
      schema_version: 1,
      occurred_at: new Date().toISOString(),
      account_id: c.account_id,
      command_id: c.command_id,
      command: c.command,
      key_id: c.key_id,
      reason: c.reason.slice(0, 500),
      finding_id: c.finding_id,
      requested_by: c.requested_by.slice(0, 128),
    })
    try {
      // Keyed by key_id like every key event: the key service sees one key's commands in order.
      this.producer ??= this.connect().catch((err: unknown) => {
        this.producer = undefined // the next command tries again
        throw err
      })
      await (await this.producer).send(this.topic, [{ key: c.key_id, value: JSON.stringify(message) }])
      return { state: 'requested' }
    } catch (err) {
      return { state: 'failed', detail: `could not publish to ${this.topic}: ${(err as Error).message}` }
    }
  }
}

/** No key service configured: keywatch decides and records, and says why nothing was sent. */
export class NoCommandSender implements CommandSender {
  readonly transport = 'none'

  async send(): Promise<SendResult> {
    return { state: 'failed', detail: 'no key service configured: set KEY_SERVICE_URL and KEY_SERVICE_SECRET, or KAFKA_BROKERS for the commands topic' }
  }
}
