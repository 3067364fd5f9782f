// A one-line progress bar on stderr for terminals: bytes read (and % when the size is known), events, rate.
export interface ProgressBar {
  update(p: { bytes: number; events?: number }): void
  done(): void
}

export function progressBar(totalBytes: number | undefined, out: NodeJS.WriteStream = process.stderr): ProgressBar {
  const started = performance.now()
  let last = 0
  let state = { bytes: 0, events: 0 }
  const render = () => {
    const seconds = (performance.now() - started) / 1000
    const pct = totalBytes ? `${Math.min(100, (100 * state.bytes) / totalBytes).toFixed(0).padStart(3)}% ` : ''
    const width = 24
    const filled = totalBytes ? Math.round((width * Math.min(state.bytes, totalBytes)) / totalBytes) : 0
    const bar = totalBytes ? `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ` : ''
    const rate = seconds > 0 ? Math.round(state.events / seconds) : 0
    out.write(`\r${bar}${pct}${mb(state.bytes)}${totalBytes ? '/' + mb(totalBytes) : ''}  ${state.events.toLocaleString('en')} events  ${rate.toLocaleString('en')}/s   `)
  }
  return {
    update(p) {
      state = { bytes: p.bytes, events: p.events ?? state.events }
      const now = performance.now()
      if (now - last > 200) {
        last = now
        render()
      }
    },
    done() {
      render()
      out.write('\n')
    },
  }
}

function mb(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`
}
