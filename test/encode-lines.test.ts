// The insert body is written line by line into one buffer sized for ASCII, and grown when a line has multi-byte
// characters: it must be byte for byte what joining and encoding the lines gives, with each line's end right.
import { describe, expect, it } from 'vitest'
import { encodeLines } from '../clickhouse/client.ts'

const ALPHABET = ['a', 'Z', '0', '"', '\\', ' ', 'é', 'ß', '€', '中', '😀', '\u2028']

function randomLines(seed: number, count: number): string[] {
  let s = seed
  const next = () => ((s = (s * 1103515245 + 12345) % 2 ** 31), s / 2 ** 31)
  return Array.from({ length: count }, () => {
    const ascii = next() < 0.7
    const n = Math.floor(next() * 40)
    let line = ''
    for (let i = 0; i < n; i++) line += ascii ? ALPHABET[Math.floor(next() * 6)] : ALPHABET[Math.floor(next() * ALPHABET.length)]
    return line
  })
}

describe('encodeLines', () => {
  it('gives the bytes of the joined lines and where each ends, whatever characters they hold', () => {
    for (let seed = 1; seed <= 300; seed++) {
      const lines = randomLines(seed, 1 + (seed % 50))
      const { body, ends } = encodeLines(lines)
      expect(body.equals(Buffer.from(lines.join('\n') + '\n'))).toBe(true)
      let at = 0
      lines.forEach((line, i) => {
        at += Buffer.byteLength(line)
        expect(ends[i]).toBe(at)
        expect(body.toString('utf8', i === 0 ? 0 : ends[i - 1]! + 1, ends[i])).toBe(line)
        at += 1
      })
    }
  })

  it('grows when the last line alone is wider than the ASCII estimate, and is empty for no lines', () => {
    for (const lines of [['😀'], ['a', '€€€'], ['abc', '中'], ['', '']]) {
      expect(encodeLines(lines).body.equals(Buffer.from(lines.join('\n') + '\n'))).toBe(true)
    }
    expect(encodeLines([]).body.length).toBe(0)
  })
})
