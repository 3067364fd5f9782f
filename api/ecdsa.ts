// GitHub's ECDSA P-256 signatures in one canonical form. The header is base64 of a DER SEQUENCE { r, s }; the same
// signature also verifies re-encoded (no padding, the URL-safe alphabet, junk that a lenient base64 decoder skips)
// and malleated as (r, n - s). So a signature is accepted only as strict base64 of strict DER, and s is normalised
// to the low half: every spelling of one signature becomes the same 64 bytes (r || s, IEEE P1363).

/** The order of the P-256 group. */
const N = BigInt('0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551')
const HALF_N = N >> 1n

export type SignatureProblem = string

/** Standard or URL-safe base64, padded or not, nothing else; undefined when it is not. */
export function strictBase64(text: string): Buffer | undefined {
  const s = text.trim()
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(s) && !/^[A-Za-z0-9_-]+={0,2}$/.test(s)) return undefined
  const bare = s.replace(/=+$/, '')
  if (bare.length % 4 === 1) return undefined
  const bytes = Buffer.from(bare.replaceAll('-', '+').replaceAll('_', '/'), 'base64')
  // Round trip: no bits ignored in the last character.
  if (bytes.toString('base64').replace(/=+$/, '') !== bare.replaceAll('-', '+').replaceAll('_', '/')) return undefined
  return bytes
}

/** r and s from a DER ECDSA signature, strictly (minimal lengths and integers, nothing after). */
export function decodeDerSignature(der: Buffer): { r: bigint; s: bigint } | undefined {
  let i = 0
  const byte = () => (i < der.length ? der[i++]! : -1)
  if (byte() !== 0x30) return undefined
  const total = byte()
  if (total < 0 || total >= 0x80 || total !== der.length - 2) return undefined
  const integer = (): bigint | undefined => {
    if (byte() !== 0x02) return undefined
    const len = byte()
    if (len <= 0 || len > 33 || i + len > der.length) return undefined
    const bytes = der.subarray(i, i + len)
    i += len
    if (bytes[0]! & 0x80) return undefined // negative
    if (len > 1 && bytes[0] === 0 && !(bytes[1]! & 0x80)) return undefined // not minimal
    return BigInt(`0x${bytes.toString('hex')}`)
  }
  const r = integer()
  const s = integer()
  if (r === undefined || s === undefined || i !== der.length) return undefined
  if (r <= 0n || r >= N || s <= 0n || s >= N) return undefined
  return { r, s }
}

/** The canonical form of a GitHub signature header (IEEE P1363, low s), or why it is not one. */
export function canonicalSignature(header: string): { signature: Buffer } | { problem: SignatureProblem } {
  const der = strictBase64(header)
  if (!der) return { problem: 'the signature is not base64' }
  const rs = decodeDerSignature(der)
  if (!rs) return { problem: 'the signature is not a DER-encoded ECDSA P-256 signature' }
  const s = rs.s > HALF_N ? N - rs.s : rs.s
  const hex = (v: bigint) => v.toString(16).padStart(64, '0')
  return { signature: Buffer.from(hex(rs.r) + hex(s), 'hex') }
}
