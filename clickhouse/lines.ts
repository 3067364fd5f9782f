// Insert bodies as bytes: shared by the writer (clickhouse/client.ts, ingest/writer.ts) and the decode workers
// (ingest/decode-worker.ts), which build a batch's body where they decode it and so must not load a client.

/**
 * Lines as one UTF-8 body, each followed by '\n', written straight into one buffer; `ends[i]` is where line i's
 * bytes end (its '\n'). Joining 100,000 lines into one string first and encoding that cost about three times as
 * much (two more copies of the whole batch, each in fresh memory, which these machines are slow to hand out).
 */
export function encodeLines(lines: readonly string[]): { body: Buffer; ends: Uint32Array } {
  const ends = new Uint32Array(lines.length)
  let size = 0
  for (const line of lines) size += line.length + 1 // exact for ASCII, the usual case; grown below otherwise
  let body = Buffer.allocUnsafeSlow(size)
  let at = 0
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!
    let written = body.write(line, at)
    // write() stops at the end of the buffer: a line with multi-byte characters may not have fit.
    if (at + written + 1 > body.length || (body.length - at - written < 4 && written < Buffer.byteLength(line))) {
      const bigger = Buffer.allocUnsafeSlow(Math.max(body.length * 2, at + Buffer.byteLength(line) + 1))
      body.copy(bigger, 0, 0, at)
      body = bigger
      written = body.write(line, at)
    }
    at += written
    ends[i] = at
    body[at++] = 0x0a
  }
  return { body: at === body.length ? body : body.subarray(0, at), ends }
}
