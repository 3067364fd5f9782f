// The current secret hash of every key that is not revoked or expired, in memory: what a leak decision needs, so a
// leak report is decided in microseconds instead of several engine round trips. Loaded from the inventory at start
// and kept fresh from lifecycle rows as they are decoded (before they are stored), so it is never behind storage.
// Out-of-order lifecycle events are folded like the inventory view does: the latest secret wins, revoked and
// expired are terminal.
import { queryRows, type ClickHouseClient } from '../clickhouse/client.ts'
import type { Row } from '../ingest/rows.ts'

export interface IndexedKey {
  account_id: string
  key_id: string
  key_prefix: string
  key_kind: string
  mode: string
  auto_generated: boolean
  secret_sha256: string
  /** When the secret was set (created or reset), ms: an older event never replaces a newer secret. */
  secret_set_at: number
}

export class SecretIndex {
  private readonly bySecret = new Map<string, IndexedKey>()
  private readonly byKey = new Map<string, IndexedKey>()
  /** Keys revoked or expired: a late `created` never brings them back. */
  private readonly ended = new Set<string>()
  private loaded = false

  get ready(): boolean {
    return this.loaded
  }

  get size(): number {
    return this.bySecret.size
  }

  async load(client: ClickHouseClient): Promise<void> {
    const rows = await queryRows<{ account_id: string; key_id: string; key_prefix: string; key_kind: string; mode: string; auto_generated: boolean; secret_sha256: string | null; status: string; secret_set_at: string | null }>(
      client,
      `SELECT account_id, key_id, key_prefix, key_kind, mode, auto_generated, secret_sha256, status, toString(secret_set_at) AS secret_set_at FROM key_inventory`,
    )
    for (const r of rows) {
      // Expired keys stay: past its deadline the platform may still accept one, so a leak of it is still acted on.
      if (r.status === 'revoked' || r.status === 'deleted') {
        this.end(r.key_id)
        continue
      }
      if (!r.secret_sha256 || this.ended.has(r.key_id)) continue
      // A lifecycle row decoded while this was loading is newer than what storage said.
      const seen = this.byKey.get(r.key_id)
      if (seen && seen.secret_set_at >= (r.secret_set_at ? msOf(r.secret_set_at) : 0)) continue
      this.put({ account_id: r.account_id, key_id: r.key_id, key_prefix: r.key_prefix, key_kind: r.key_kind, mode: r.mode, auto_generated: Boolean(r.auto_generated), secret_sha256: r.secret_sha256, secret_set_at: r.secret_set_at ? msOf(r.secret_set_at) : 0 })
    }
    this.loaded = true
  }

  /** The key whose current secret this is, if it is still live. */
  lookup(secretSha256: string): IndexedKey | undefined {
    return this.bySecret.get(secretSha256)
  }

  /** Folds key_lifecycle rows (as ingest/rows.ts makes them) in. */
  applyLifecycle(rows: Row[]): void {
    for (const row of rows) {
      const r = row.values
      const keyId = String(r.key_id)
      const action = String(r.action)
      if (action === 'revoked') {
        this.end(keyId)
        continue
      }
      // A rollback deletes the replacement key; the kept key stays as it was.
      if (action === 'rolled_back' && typeof r.replacement_key_id === 'string' && r.replacement_key_id) {
        this.end(r.replacement_key_id)
        continue
      }
      if (this.ended.has(keyId)) continue
      const current = this.byKey.get(keyId)
      const at = row.occurredAtMs
      if ((action === 'created' || action === 'reset') && typeof r.secret_sha256 === 'string' && r.secret_sha256) {
        if (current && current.secret_set_at > at) continue // an older event arriving late
        this.put({
          account_id: String(r.account_id),
          key_id: keyId,
          key_prefix: String(r.key_prefix),
          key_kind: String(r.key_kind),
          mode: String(r.mode),
          auto_generated: action === 'created' ? r.auto_generated === true : (current?.auto_generated ?? false),
          secret_sha256: r.secret_sha256,
          secret_set_at: at,
        })
      } else if (action === 'reset' && current && current.secret_set_at <= at) {
        // A reset whose new secret we do not know: the known one is superseded.
        this.drop(keyId)
      }
    }
  }

  private put(k: IndexedKey): void {
    this.drop(k.key_id)
    this.bySecret.set(k.secret_sha256, k)
    this.byKey.set(k.key_id, k)
  }

  private drop(keyId: string): void {
    const old = this.byKey.get(keyId)
    if (old && this.bySecret.get(old.secret_sha256) === old) this.bySecret.delete(old.secret_sha256)
    this.byKey.delete(keyId)
  }

  private end(keyId: string): void {
    this.drop(keyId)
    this.ended.add(keyId)
  }
}

function msOf(chDateTime: string): number {
  return Date.parse(chDateTime.includes('T') ? chDateTime : chDateTime.replace(' ', 'T') + 'Z')
}
