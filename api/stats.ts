// Figures for the dashboard's overview: events per minute by type (the event-id index is ordered by time, so the
// last hour is a narrow read), the 429 rate per hour from the hourly rollup, open findings by severity, and the
// actions of the last 24 hours. Plus who the caller is, so a page offers only what the role may do.
import type { FastifyInstance } from 'fastify'
import { queryRows, type ClickHouseClient } from '../clickhouse/client.ts'
import { principalOf } from './auth.ts'
import { GRANTS } from './tokens.ts'

export interface Overview {
  events_per_minute: { minute: string; type: string; events: number }[]
  rate_limited_per_hour: { hour: string; requests: number; rate_limited: number }[]
  open_findings: { severity: string; findings: number }[]
  actions_24h: { status: string; actions: number }[]
}

export async function overview(client: ClickHouseClient): Promise<Overview> {
  const [events, rateLimited, findings, actions] = await Promise.all([
    queryRows<Overview['events_per_minute'][number]>(
      client,
      `SELECT toString(toStartOfMinute(occurred_at)) AS minute, type, count() AS events FROM event_ids
       WHERE occurred_at >= now64(3) - INTERVAL 60 MINUTE AND occurred_at <= now64(3) + INTERVAL 5 MINUTE
       GROUP BY minute, type ORDER BY minute, type`,
    ),
    queryRows<Overview['rate_limited_per_hour'][number]>(
      client,
      // The filter reads the column, the outer select formats it (an alias named like the column would shadow it).
      `SELECT toString(h) AS hour, sum(r) AS requests, sum(l) AS rate_limited
       FROM (SELECT hour AS h, requests AS r, rate_limited AS l FROM key_usage_hourly WHERE hour >= toStartOfHour(now()) - INTERVAL 23 HOUR)
       GROUP BY h ORDER BY h`,
    ),
    queryRows<Overview['open_findings'][number]>(client, `SELECT severity, count() AS findings FROM findings FINAL WHERE status = 'open' GROUP BY severity`),
    queryRows<Overview['actions_24h'][number]>(client, `SELECT status, count() AS actions FROM actions FINAL WHERE requested_at >= now64(3) - INTERVAL 24 HOUR GROUP BY status ORDER BY status`),
  ])
  return { events_per_minute: events, rate_limited_per_hour: rateLimited, open_findings: findings, actions_24h: actions }
}

export async function statsRoutes(app: FastifyInstance, deps: { client: ClickHouseClient }): Promise<void> {
  app.get('/v1/stats/overview', { config: { permission: 'read' }, schema: { tags: ['dashboard'], summary: "The overview page's figures" } }, async () => overview(deps.client))
  // The alerts keywatch made, whatever their channel: with no Slack or mail configured this is where they are read.
  app.get('/v1/alerts', { config: { permission: 'read' }, schema: { tags: ['dashboard'], summary: 'Recent alerts and their delivery' } }, async () => {
    const rows = await queryRows<{ alert_id: string; channel: string; destination: string; kind: string; finding_id: string; severity: string; status: string; attempts: number; created_at: string; delivered_at: string | null; payload: string }>(
      deps.client,
      `SELECT alert_id, channel, destination, kind, finding_id, severity, status, attempts, toString(created_at) AS created_at,
              if(delivered_at IS NULL, NULL, toString(delivered_at)) AS delivered_at, payload
       FROM (SELECT * FROM alert_outbox FINAL WHERE created_at > now64(3) - INTERVAL 7 DAY) ORDER BY created_at DESC, alert_id DESC LIMIT 500`,
    )
    return {
      alerts: rows.map(({ payload, ...r }) => {
        const p = JSON.parse(payload) as { slack?: { text: string }; mail?: { subject: string } }
        // Slack's text is mrkdwn-escaped; the page shows it as plain text.
        const text = p.slack ? p.slack.text.replaceAll('&lt;', '<').replaceAll('&gt;', '>').replaceAll('&amp;', '&') : (p.mail?.subject ?? '')
        return { ...r, text }
      }),
    }
  })

  app.get('/v1/whoami', { config: { permission: 'read' }, schema: { tags: ['dashboard'], summary: 'Who this token is and what it may do' } }, async (request) => {
    const p = principalOf(request)
    return { actor: p.actor, role: p.role, permissions: GRANTS[p.role] }
  })
}
