// `keywatch start` on the embedded engine owns its data directory. It leaves a note there saying who it is and
// where its API listens, so other commands can go through it instead of failing on the engine's lock.
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

export interface RunningInstance {
  pid: number
  url: string
  startedAt: string
  /** The instance's token for this machine's command line (api/auth.ts); the file is readable by its owner only. */
  cliToken?: string
}

const FILE = 'keywatch.instance.json'

export function announceInstance(dataDir: string, instance: RunningInstance): () => void {
  const path = join(dataDir, FILE)
  writeFileSync(path, JSON.stringify(instance), { mode: 0o600 })
  return () => {
    if (readInstance(dataDir)?.pid === instance.pid) rmSync(path, { force: true })
  }
}

/** The live instance holding this data directory, if any (a note left by a dead process is ignored). */
export function readInstance(dataDir: string): RunningInstance | undefined {
  const path = join(dataDir, FILE)
  if (!existsSync(path)) return undefined
  try {
    const instance = JSON.parse(readFileSync(path, 'utf8')) as RunningInstance
    process.kill(instance.pid, 0)
    return instance
  } catch {
    return undefined
  }
}
