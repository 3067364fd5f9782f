// One real Kafka broker for the whole suite (or the one KAFKA_BROKERS names), handed to tests as `kafkaBrokers`.
import type { TestProject } from 'vitest/node'
import { repoRoot } from './helpers.ts'
import { startBroker } from './kafka/broker.ts'

declare module 'vitest' {
  export interface ProvidedContext {
    kafkaBrokers: string
  }
}

export default async function setup(project: TestProject): Promise<(() => Promise<void>) | void> {
  const external = process.env.KAFKA_BROKERS
  if (external) {
    project.provide('kafkaBrokers', external)
    return
  }
  const broker = await startBroker({ repoRoot })
  project.provide('kafkaBrokers', broker.brokers)
  return () => broker.stop()
}
