// Every Grafana panel's SQL (and the template variable's) runs against the schema the migrations make, with the
// ClickHouse plugin's macros filled in as the plugin fills them: a migration cannot silently break a panel.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Runtime } from '../app/runtime.ts'
import { queryRows } from '../clickhouse/client.ts'
import { ago, auth, lifecycle, sha256, usage } from '../detectors/fixtures/events.ts'
import { openTestRuntime, repoRoot } from './helpers.ts'

interface Panel {
  id: number
  title: string
  datasource: { type: string; uid: string }
  targets: { rawSql: string; datasource: { uid: string } }[]
}
const dir = join(repoRoot, 'dashboards', 'grafana')
const dashboard = JSON.parse(readFileSync(join(dir, 'keywatch.json'), 'utf8')) as { panels: Panel[]; templating: { list: { name: string; query: string }[] } }

/** The grafana-clickhouse-datasource macros, for a range of the last day and one-minute intervals. */
function fill(sql: string, account: string): string {
  const from = `toDateTime64('${new Date(Date.now() - 86_400_000).toISOString().slice(0, 19).replace('T', ' ')}', 3, 'UTC')`
  const to = `toDateTime64('${new Date().toISOString().slice(0, 19).replace('T', ' ')}', 3, 'UTC')`
  return sql
    .replace(/\$__timeFilter\(([^)]+)\)/g, (_m, c: string) => `${c} >= ${from} AND ${c} <= ${to}`)
    .replace(/\$__timeInterval\(([^)]+)\)/g, (_m, c: string) => `toStartOfInterval(${c}, INTERVAL 60 second)`)
    .replace(/\$__fromTime/g, from)
    .replace(/\$__toTime/g, to)
    .replace(/\$__interval_s/g, '60')
    .replace(/\$\{account\}/g, account)
}

let rt: Runtime
beforeAll(async () => {
  rt = await openTestRuntime()
  const k = { account_id: 'acct_Grafana01', key_id: 'key_Grafana01' }
  const now = new Date().toISOString()
  const events = [lifecycle(k, 'created', ago(now, { days: 120 }), { secret_sha256: sha256('g') }), usage(k, ago(now, { hours: 2 }), { status: 429 }), usage(k, ago(now, { hours: 1 })), auth(k.account_id, 'login.failed', ago(now, { hours: 1 }))]
  await rt.pipeline.ingest(events.map((e) => ({ raw: Buffer.from(JSON.stringify(e)), origin: { source: 'file' as const } })))
  await rt.detection.runAll(new Date(), ['key.rotation_overdue'])
})
afterAll(() => rt?.close())

describe('the Grafana dashboard', () => {
  it('uses the provisioned ClickHouse data source everywhere', () => {
    const provisioned = readFileSync(join(dir, 'provisioning', 'datasources', 'clickhouse.yaml'), 'utf8')
    expect(provisioned).toContain('uid: keywatch-clickhouse')
    for (const p of dashboard.panels) {
      expect(p.datasource, p.title).toEqual({ type: 'grafana-clickhouse-datasource', uid: 'keywatch-clickhouse' })
      for (const t of p.targets) expect(t.datasource.uid).toBe('keywatch-clickhouse')
    }
  })

  for (const panel of dashboard.panels) {
    it(`panel "${panel.title}" runs on the current schema`, async () => {
      for (const target of panel.targets) {
        for (const account of ['All', 'acct_Grafana01']) {
          const sql = fill(target.rawSql, account)
          expect(sql, 'a macro or variable the test does not fill').not.toContain('$')
          await queryRows(rt.storage.client, sql)
        }
      }
    })
  }

  it('shows the seeded data', async () => {
    const busiest = dashboard.panels.find((p) => p.title === 'Busiest keys')!
    expect(await queryRows(rt.storage.client, fill(busiest.targets[0]!.rawSql, 'acct_Grafana01'))).toEqual([expect.objectContaining({ key_id: 'key_Grafana01', requests: 2, rate_limited: 1 })])
    const stale = dashboard.panels.find((p) => p.title === 'Stale keys and overdue rotations')!
    expect(await queryRows(rt.storage.client, fill(stale.targets[0]!.rawSql, 'All'))).toEqual([expect.objectContaining({ key: 'key_Grafana01' })])
  })

  it("runs the account variable's query", async () => {
    const variable = dashboard.templating.list.find((v) => v.name === 'account')!
    expect(await queryRows(rt.storage.client, variable.query)).toEqual([{ account_id: 'acct_Grafana01' }])
  })
})
