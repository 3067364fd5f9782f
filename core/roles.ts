// Who may do what: the roles an API token (or a Slack user) holds and the permissions each grants. A leaf, so the
// API, the alerts' Slack buttons and the configuration read one definition.
export const ROLES = ['viewer', 'auditor', 'responder', 'admin', 'ingest'] as const
export type Role = (typeof ROLES)[number]
export type Permission = 'read' | 'export' | 'respond' | 'admin' | 'ingest'

export const GRANTS: Record<Role, readonly Permission[]> = {
  viewer: ['read'],
  auditor: ['read', 'export'],
  responder: ['read', 'respond'],
  admin: ['read', 'export', 'respond', 'admin', 'ingest'],
  ingest: ['ingest'],
}
