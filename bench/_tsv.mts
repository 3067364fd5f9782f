import { usageEvent } from '../contract/synthetic.ts'
import { toRow } from '../ingest/rows.ts'
const now = Date.now()
const rows = Array.from({ length: 200_000 }, (_, j) => JSON.parse(toRow('key.usage', usageEvent(j, { keys: 10_000, accounts: 500, from: now - 3_600_000, to: now - 60_000 })).line!) as (string | number)[])
const NEEDS = /[\t\n\r\\]/
const esc = (s: string) => (NEEDS.test(s) ? s.replace(/[\\\t\n\r]/g, (c) => (c === '\\' ? '\\\\' : c === '\t' ? '\\t' : c === '\n' ? '\\n' : '\\r')) : s)
function tsvLine(c: (string | number)[]): string {
  let out = typeof c[0] === 'string' ? esc(c[0]) : String(c[0])
  for (let i = 1; i < c.length; i++) { const v = c[i]!; out += '\t' + (typeof v === 'string' ? esc(v) : v) }
  return out
}
for (let r = 0; r < 4; r++) {
  let t = performance.now(); let n = 0
  for (const c of rows) n += JSON.stringify(c).length
  const tj = performance.now() - t
  t = performance.now()
  for (const c of rows) n += tsvLine(c).length
  const tt = performance.now() - t
  console.log(`JSON.stringify ${(tj * 1000 / rows.length).toFixed(3)} µs   tsv ${(tt * 1000 / rows.length).toFixed(3)} µs`)
}
