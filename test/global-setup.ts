// vitest globalSetup: one real Kafka broker for the whole suite, handed to tests as `inject('kafkaBrokers')`.
// With KAFKA_BROKERS set (bootstrap servers of a running broker), that broker is used and none is started.
import type { TestProject } from 'vitest/node'
import { startBroker } from './kafka/broker.ts'

declare module 'vitest' {
  export interface ProvidedContext {
    kafkaBrokers: string
  }
}

export default async function setup(project: TestProject): Promise<(() => Promise<void>) | undefined> {
  const external = process.env.KAFKA_BROKERS?.trim()
  if (external) {
    project.provide('kafkaBrokers', external)
    return undefined
  }
  const broker = await startBroker()
  project.provide('kafkaBrokers', broker.brokers)
  return () => broker.stop()
}
