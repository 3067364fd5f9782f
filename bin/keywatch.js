#!/usr/bin/env node
// Entry point of the `keywatch` CLI. keywatch needs Node >= 22; our machines ship Node 20, so when an older
// runtime starts this file we re-run it on the Node 24 that the `node` devDependency installed.
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const major = Number(process.versions.node.split('.')[0])
if (major < 22) {
  const bundled = join(root, 'node_modules', 'node', 'bin', 'node')
  if (!existsSync(bundled)) {
    console.error(`keywatch needs Node.js >= 22 (this is ${process.version}); run \`npm install\` in ${root} first.`)
    process.exit(1)
  }
  const child = spawn(bundled, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], { stdio: 'inherit' })
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(signal, () => child.kill(signal))
  child.on('exit', (code, signal) => process.exit(code ?? (signal ? 128 : 1)))
} else {
  const { register } = await import('tsx/esm/api')
  register()
  await import(join(root, 'cli', 'main.ts'))
}
