// vitest globalSetup: one real Kafka broker for the whole suite, handed to tests as `inject('kafkaBrokers')`.
// With KAFKA_BROKERS set (bootstrap servers of a running broker), that broker is used and none is started.
import type { TestProject } from 'vitest/node'
import { removeTempDirsOfEndedProcesses } from './helpers.ts'
import { startBroker } from './kafka/broker.ts'

declare module 'vitest' {
  export interface ProvidedContext {
    kafkaBrokers: string
  }
}

export default async function setup(project: TestProject): Promise<(() => Promise<void>) | undefined> {
  const external = process.env.KAFKA_BROKERS?.trim()
  // Every test file's process has ended by the teardown: the data directories they made go with them.
  if (external) {
    project.provide('kafkaBrokers', external)
    return async () => removeTempDirsOfEndedProcesses()
  }
  const broker = await startBroker()
  project.provide('kafkaBrokers', broker.brokers)
  return async () => {
    await broker.stop()
    removeTempDirsOfEndedProcesses()
  }
}
