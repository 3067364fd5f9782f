#!/usr/bin/env node
// Entry point of the `keywatch` CLI. keywatch needs Node >= 22; our machines ship Node 20, so when an older
// runtime starts this file we re-run it on the Node 24 that the `node` devDependency installed.
//
// The embedded engine (chdb) reads the process's fd 0 as data for its INSERTs (chdb-io/chdb-core#239): with input
// piped in, every insert fails, or would store that input. So the engine never gets our stdin: it is replaced by
// /dev/null, and `keywatch ingest -` runs in a child that reads the piped input on fd 3 instead.
// That child also gets the malloc and V8 settings of bin/runtime-env.js, which only a process's start can set. Started on
// Node >= 22 directly, keywatch runs with the environment it was given (the Dockerfile sets them).
import { spawn } from 'node:child_process'
import { closeSync, existsSync, openSync } from 'node:fs'
import { isatty } from 'node:tty'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'
import { runtimeEnv } from './runtime-env.js'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const args = process.argv.slice(2)
const major = Number(process.versions.node.split('.')[0])
const pipedInput = !isatty(0) && args[0] === 'ingest' && args.includes('-') && !args.includes('--input-fd')

if (major < 22 || pipedInput) {
  const bundled = join(root, 'node_modules', 'node', 'bin', 'node')
  if (major < 22 && !existsSync(bundled)) {
    console.error(`keywatch needs Node.js >= 22 (this is ${process.version}); run \`npm install\` in ${root} first.`)
    process.exit(1)
  }
  const node = major < 22 ? bundled : process.execPath
  const child = spawn(node, [fileURLToPath(import.meta.url), ...args, ...(pipedInput ? ['--input-fd', '3'] : [])], {
    stdio: pipedInput ? ['ignore', 'inherit', 'inherit', process.stdin] : 'inherit',
    env: runtimeEnv(process.env),
  })
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(signal, () => child.kill(signal))
  child.on('exit', (code, signal) => process.exit(code ?? (signal ? 128 : 1)))
} else {
  if (!isatty(0)) {
    closeSync(0)
    openSync('/dev/null', 'r') // takes fd 0, the lowest free descriptor
  }
  // The engine's statements each hold a thread of libuv's pool while they wait for the engine (it runs one at a
  // time); with the default 4, file and crypto work queued behind them stalls. Set before the pool first starts.
  process.env.UV_THREADPOOL_SIZE ??= '16'
  const { register } = await import('tsx/esm/api')
  register()
  await import(join(root, 'cli', 'main.ts'))
}
