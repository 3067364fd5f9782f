// Test-side Kafka helpers: publish, read a topic back, and watch a consumer group's committed offsets.
import { Kafka, logLevel, type IHeaders } from 'kafkajs'

function kafka(brokers: string): Kafka {
  return new Kafka({ clientId: 'keywatch-test', brokers: brokers.split(','), logLevel: logLevel.NOTHING })
}

export async function publish(brokers: string, topic: string, messages: { key?: string | null; value: string | Buffer }[]): Promise<void> {
  const producer = kafka(brokers).producer({ allowAutoTopicCreation: true })
  await producer.connect()
  try {
    for (let i = 0; i < messages.length; i += 5_000) {
      await producer.send({ topic, acks: -1, messages: messages.slice(i, i + 5_000) })
    }
  } finally {
    await producer.disconnect()
  }
}

/** Sum over partitions of the group's committed offsets, and of the topics' end offsets. */
export async function groupProgress(brokers: string, groupId: string, topics: string[]): Promise<{ committed: number; end: number }> {
  const admin = kafka(brokers).admin()
  await admin.connect()
  try {
    let committed = 0
    let end = 0
    for (const t of await admin.fetchOffsets({ groupId, topics })) {
      for (const p of t.partitions) committed += Math.max(0, Number(p.offset))
    }
    for (const topic of topics) for (const p of await admin.fetchTopicOffsets(topic)) end += Number(p.high)
    return { committed, end }
  } finally {
    await admin.disconnect()
  }
}

export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs = 60_000, everyMs = 200): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await probe()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, everyMs))
  }
}

export interface ReadMessage {
  key: string | null
  value: Buffer
  headers: Record<string, string>
}

/** Reads `expected` messages from the start of a topic (or fails after the timeout). */
export async function readTopic(brokers: string, topic: string, expected: number, timeoutMs = 30_000): Promise<ReadMessage[]> {
  const consumer = kafka(brokers).consumer({ groupId: `reader-${topic}-${Date.now()}` })
  const out: ReadMessage[] = []
  await consumer.connect()
  try {
    await consumer.subscribe({ topics: [topic], fromBeginning: true })
    await consumer.run({
      eachMessage: async ({ message }) => {
        out.push({ key: message.key?.toString() ?? null, value: message.value ?? Buffer.alloc(0), headers: headersOf(message.headers) })
      },
    })
    await waitFor(`${expected} messages on ${topic}`, async () => out.length >= expected, timeoutMs)
    return out
  } finally {
    await consumer.disconnect()
  }
}

function headersOf(h: IHeaders | undefined): Record<string, string> {
  const out: Record<string, string> = {}
  for (const [k, v] of Object.entries(h ?? {})) out[k] = Array.isArray(v) ? String(v[0]) : String(v)
  return out
}
