// The migrations' cluster option: every statement of every migration, rewritten for a cluster, is still valid
// ClickHouse (the real engine's parser reads it back) and creates its table or view ON CLUSTER with a replicated
// engine whose replica path names the table. No cluster runs here, so the statements are parsed, not executed.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Storage } from '../clickhouse/client.ts'
import { queryRows } from '../clickhouse/client.ts'
import { forCluster, loadMigrations } from '../clickhouse/migrate.ts'
import { parseConfig } from '../config/config.ts'
import { openTestStorage, tempDir } from './helpers.ts'

let storage: Storage
beforeAll(async () => {
  storage = await openTestStorage(tempDir())
})
afterAll(() => storage?.close())

const statements = loadMigrations().flatMap((m) => m.statements.map((s) => ({ migration: m.name, sql: s })))

describe('migrations on a cluster', () => {
  it('rewrites every CREATE for the cluster, and the engine parses each one', async () => {
    let tables = 0
    for (const { migration, sql } of statements) {
      const clustered = forCluster(sql, 'keywatch')
      const [parsed] = await queryRows<{ q: string }>(storage.client, 'SELECT formatQuery({sql:String}) AS q', { sql: clustered })
      const name = /^(?:\s*--[^\n]*\n)*\s*(?:CREATE\s+(?:TABLE|VIEW|MATERIALIZED\s+VIEW)\s+IF\s+NOT\s+EXISTS|CREATE\s+OR\s+REPLACE\s+VIEW|ALTER\s+TABLE)\s+(\w+)/.exec(sql)?.[1]
      if (!name) continue
      expect(parsed!.q, `${migration}: ${name}`).toContain(`${name} ON CLUSTER keywatch`)
      if (/^(\s*--[^\n]*\n)*\s*CREATE TABLE/.test(sql)) {
        tables++
        expect(parsed!.q, `${migration}: ${name}`).toMatch(new RegExp(`ENGINE = Replicated(Replacing|Aggregating)?MergeTree\\('/clickhouse/tables/\\{shard\\}/\\{database\\}/${name}', '\\{replica\\}'`))
      }
    }
    expect(tables).toBeGreaterThanOrEqual(20)
  })

  it('keeps engine arguments after the replica path', () => {
    expect(forCluster('CREATE TABLE IF NOT EXISTS t (v UInt64) ENGINE = ReplacingMergeTree(version) ORDER BY v', 'c')).toBe(
      "CREATE TABLE IF NOT EXISTS t ON CLUSTER `c` (v UInt64) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/t', '{replica}', version) ORDER BY v",
    )
  })

  it('is a server option: CLICKHOUSE_CLUSTER without CLICKHOUSE_URL is refused', () => {
    expect(() => parseConfig({ CLICKHOUSE_CLUSTER: 'keywatch' })).toThrow(/CLICKHOUSE_CLUSTER: needs CLICKHOUSE_URL/)
    expect(parseConfig({ CLICKHOUSE_URL: 'http://ch:8123', CLICKHOUSE_CLUSTER: 'keywatch' }).clickhouse).toMatchObject({ mode: 'server', cluster: 'keywatch' })
  })
})
