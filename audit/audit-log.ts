// What keywatch's own audit trail records: every call that reads an export or changes anything (finding status,
// suppressions, revokes, tokens, policies, Slack clicks). Producers depend on this interface only; the
// hash-chained store that implements it lives in audit/trail.ts.
export interface AuditEntry {
  /** Who: `token:<name>`, `slack:<user id>`, `cli:<os user>`, or `keywatch` for automatic actions. */
  actor: string
  /** What, as a dotted verb: `finding.acknowledge`, `key.revoke`, `export.read`, `token.create`, … */
  action: string
  /** What it was done to: a finding id, key id, export range, token name… never a secret. */
  target: string
  /** The HTTP request id (or a generated id for CLI and scheduled work), to join with the server log. */
  request_id: string
  /** ok | denied | failed | refused, and why in `detail`. */
  outcome: 'ok' | 'denied' | 'failed' | 'refused'
  detail?: Record<string, unknown>
}

export interface AuditLog {
  record(entry: AuditEntry): Promise<void>
}
