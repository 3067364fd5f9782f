// No Docker engine runs here: this checks that docker-compose.yml parses, has the real stack's services, and that
// what it tells keywatch is configuration keywatch accepts (every variable one it reads, ports that match, the
// mounts and the Dockerfile present in the repository).
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { parse } from 'yaml'
import { describe, expect, it } from 'vitest'
import { ENV_VARIABLES, parseConfig } from '../config/config.ts'
import { MALLOC_TUNABLES, NODE_FLAGS } from '../bin/runtime-env.js'
import { repoRoot } from './helpers.ts'

interface Service {
  image?: string
  build?: string
  environment?: Record<string, string | number>
  ports?: string[]
  volumes?: string[]
  depends_on?: Record<string, unknown> | string[]
}
const compose = parse(readFileSync(join(repoRoot, 'docker-compose.yml'), 'utf8')) as { services: Record<string, Service> }
const { services } = compose
const env = Object.fromEntries(Object.entries(services.keywatch!.environment!).map(([k, v]) => [k, String(v)]))

describe('docker-compose.yml', () => {
  it('runs Kafka 4 in KRaft mode, ClickHouse, keywatch from the Dockerfile, Grafana with the ClickHouse plugin and a mail catcher', () => {
    expect(Object.keys(services).sort()).toEqual(['clickhouse', 'grafana', 'kafka', 'keywatch', 'mail'])
    expect(services.kafka!.image).toMatch(/^apache\/kafka:4\./)
    expect(services.kafka!.environment!.KAFKA_PROCESS_ROLES).toBe('broker,controller')
    expect(services.clickhouse!.image).toMatch(/^clickhouse\/clickhouse-server:/)
    expect(services.keywatch!.build).toBe('.')
    expect(existsSync(join(repoRoot, 'Dockerfile'))).toBe(true)
    // The image starts keywatch on Node 24 directly: the settings bin/keywatch.js would give it are set there.
    const dockerfile = readFileSync(join(repoRoot, 'Dockerfile'), 'utf8')
    expect(dockerfile).toContain(`ENV GLIBC_TUNABLES=${MALLOC_TUNABLES}\n`)
    expect(dockerfile).toContain(`ENV NODE_OPTIONS="${NODE_FLAGS}"\n`)
    expect(services.grafana!.environment!.GF_INSTALL_PLUGINS).toContain('grafana-clickhouse-datasource')
    expect(services.mail!.image).toBeDefined()
  })

  it("gives keywatch only variables it reads, and a configuration it accepts", () => {
    for (const name of Object.keys(env)) expect(ENV_VARIABLES, name).toContain(name)
    const config = parseConfig(env)
    expect(config.clickhouse).toMatchObject({ mode: 'server', url: 'http://clickhouse:8123', database: 'keywatch' })
    expect(config.kafka?.brokers).toEqual(['kafka:9092'])
    expect(config.http.host).toBe('0.0.0.0')
  })

  it('points keywatch at the services by their names and ports', () => {
    const ch = services.clickhouse!.environment!
    expect(env.CLICKHOUSE_USER).toBe(ch.CLICKHOUSE_USER)
    expect(env.CLICKHOUSE_PASSWORD).toBe(ch.CLICKHOUSE_PASSWORD)
    expect(env.CLICKHOUSE_DATABASE).toBe(ch.CLICKHOUSE_DB)
    expect(String(services.kafka!.environment!.KAFKA_ADVERTISED_LISTENERS)).toContain(`PLAINTEXT://${env.KAFKA_BROKERS}`)
    expect(services.keywatch!.ports).toContain(`${env.PORT}:${env.PORT}`)
    expect(services.keywatch!.ports).toContain(`${env.METRICS_PORT}:${env.METRICS_PORT}`)
    expect(env.SMTP_URL).toBe('smtp://mail:1025')
    expect(services.mail!.ports!.some((p) => p.endsWith(':1025'))).toBe(true)
    expect(Object.keys(services.keywatch!.depends_on as object).sort()).toEqual(['clickhouse', 'kafka', 'mail'])
  })

  it("mounts Grafana's provisioning and dashboard from the repository", () => {
    for (const volume of services.grafana!.volumes!) {
      const source = volume.split(':')[0]!
      expect(existsSync(join(repoRoot, source)), source).toBe(true)
    }
    const datasource = readFileSync(join(repoRoot, 'dashboards/grafana/provisioning/datasources/clickhouse.yaml'), 'utf8')
    const ds = (parse(datasource) as { datasources: { jsonData: { host: string; username: string; defaultDatabase: string } }[] }).datasources[0]!
    expect(ds.jsonData).toMatchObject({ host: 'clickhouse', username: services.clickhouse!.environment!.CLICKHOUSE_USER, defaultDatabase: services.clickhouse!.environment!.CLICKHOUSE_DB })
  })
})
