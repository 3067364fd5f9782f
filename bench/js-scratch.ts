import { usageEvent } from '../contract/synthetic.ts'
import { decodeEvent } from '../ingest/decode.ts'
import { toRow } from '../ingest/rows.ts'
import { parseTimestamp, chTime } from '../clickhouse/time.ts'
const N = 200_000
const now = Date.now()
const msgs = Array.from({ length: N }, (_, i) => Buffer.from(JSON.stringify(usageEvent(i, { keys: 10_000, accounts: 500, from: now - 3_600_000, to: now - 60_000 }))))
const time = (name: string, fn: () => unknown) => {
  for (let k = 0; k < 2; k++) fn()
  const t = process.cpuUsage(); fn(); const d = process.cpuUsage(t)
  console.log(name.padEnd(30), ((d.user + d.system) / N).toFixed(2), 'µs/event')
}
const td = new TextDecoder('utf-8', { fatal: true })
let parsed: any[] = []
time('TextDecoder+JSON.parse', () => (parsed = msgs.map((m) => JSON.parse(td.decode(m)))))
time('JSON.parse(buf.toString)', () => msgs.map((m) => JSON.parse(m.toString('utf8'))))
let dec: any[] = []
time('decodeEvent', () => (dec = msgs.map((m) => decodeEvent(m, now, 'key.usage'))))
const evs = dec.map((d) => d.event)
time('parseTimestamp', () => evs.map((e) => parseTimestamp(e.occurred_at)))
time('Date.parse', () => evs.map((e) => Date.parse(e.occurred_at)))
time('chTime', () => evs.map((e) => chTime(Date.parse(e.occurred_at))))
let rows: any[] = []
time('toRow', () => (rows = evs.map((e) => toRow('key.usage', e))))
time('encode Object.values', () => rows.map((r) => JSON.stringify(Object.values(r.values))).join('\n'))
time('encode object', () => rows.map((r) => JSON.stringify(r.values)).join('\n'))
