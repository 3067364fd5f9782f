// `keywatch export`, `verify-export` and `verify-audit`: what a compliance team runs for its auditors.
import { createWriteStream, existsSync, readFileSync, writeFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import type { Command } from 'commander'
import type { VerifyResult } from '../audit/trail.ts'
import { DATASETS, exportFilter, FORMATS, unsupportedFilter, type Dataset, type ExportFormat } from '../exports/datasets.ts'
import { exportToFile, verifyExport, type Manifest } from '../exports/export.ts'
import { loadEnv } from '../config/config.ts'
import { auditedLocally, cliActor, config, ExitError, instanceHeaders, runningInstance, throughInstanceOrLocal, withLocalRuntime } from './context.ts'
import { progressBar } from './progress.ts'

interface ExportOptions {
  from: string
  to: string
  format?: string
  account?: string
  actor?: string
  action?: string
  out: string
}

async function runExport(dataset: string, opts: ExportOptions): Promise<void> {
  if (!DATASETS.includes(dataset as Dataset)) throw new ExitError(`the dataset is one of ${DATASETS.join(', ')}`, 2)
  const format = (opts.format ?? 'csv') as ExportFormat
  if (!FORMATS.includes(format)) throw new ExitError(`--format must be one of ${FORMATS.join(', ')}`, 2)
  const parsed = exportFilter.safeParse({ from: opts.from, to: opts.to, account: opts.account, actor: opts.actor, action: opts.action })
  if (!parsed.success) throw new ExitError(`--${String(parsed.error.issues[0]!.path[0])}: ${parsed.error.issues[0]!.message}`, 2)
  const unsupported = unsupportedFilter(dataset as Dataset, parsed.data)
  if (unsupported) throw new ExitError(`--${unsupported}`, 2)
  const out = resolve(opts.out)
  const cfg = config()
  const instance = runningInstance(cfg)
  const bar = process.stderr.isTTY ? progressBar(undefined) : undefined
  let manifest: Manifest
  if (instance) {
    // The running instance owns the engine: the export is made there and streamed here.
    const query = new URLSearchParams(Object.entries({ ...parsed.data, format }).filter((e): e is [string, string] => e[1] !== undefined))
    const response = await fetch(`${instance.url}/v1/exports/${dataset}?${query}`, { headers: instanceHeaders(instance) })
    if (!response.ok || !response.body) throw new ExitError(`keywatch at ${instance.url}: ${response.status} ${await response.text()}`, 1)
    let bytes = 0
    await pipeline(
      Readable.fromWeb(response.body as never).map((chunk: Buffer) => {
        bytes += chunk.length
        bar?.update({ bytes })
        return chunk
      }),
      createWriteStream(out),
    )
    const id = response.headers.get('x-keywatch-export-id')
    manifest = (await (await fetch(`${instance.url}/v1/exports/${id}/manifest`, { headers: instanceHeaders(instance) })).json()) as Manifest
    writeFileSync(`${out}.manifest.json`, JSON.stringify(manifest, null, 2) + '\n')
  } else {
    manifest = await withLocalRuntime(cfg, (rt) =>
        auditedLocally(rt, 'export.read', dataset, () =>
          exportToFile(rt.storage, { dataset: dataset as Dataset, format, filter: parsed.data, actor: cliActor() }, out, rt.exportSigningKey(), rt.version, (bytes) => bar?.update({ bytes })),
        { format, ...parsed.data }),
    )
  }
  bar?.done()
  process.stdout.write(`${manifest.rows} rows, ${manifest.bytes} bytes, sha256 ${manifest.sha256}\n${out}\n${out}.manifest.json (signed by key ${manifest.signature.key_fingerprint.slice(0, 16)}…)\n`)
}

async function runVerifyExport(file: string, manifest: string, opts: { publicKey?: string }): Promise<void> {
  // The key that must have signed: --public-key, else the one pinned in the configuration (EXPORT_PUBLIC_KEY_FILE).
  const pinned = opts.publicKey ?? pinnedExportKey()
  if (pinned && !existsSync(pinned)) throw new ExitError(`${opts.publicKey ? '--public-key' : 'EXPORT_PUBLIC_KEY_FILE'} ${pinned}: no such file`, 2)
  const outcome = await verifyExport(file, manifest, pinned ? readFileSync(pinned, 'utf8') : undefined)
  for (const p of outcome.problems) process.stdout.write(`MISMATCH ${p}\n`)
  if (!outcome.trustedKey) {
    // A manifest re-signed with anyone's key verifies against the key it carries: that says nothing about who signed.
    process.stdout.write(
      `CANNOT TELL who signed ${manifest}: it carries key ${outcome.signedBy.slice(0, 16) || '?'}…, and no trusted key was given. ` +
        `Pass --public-key with keywatch's published key (GET /v1/exports/signing-key), or pin it with EXPORT_PUBLIC_KEY_FILE\n`,
    )
    process.exitCode = 2
    return
  }
  if (!outcome.ok) {
    process.exitCode = 1
    return
  }
  process.stdout.write(`OK: ${file} matches its manifest (size, sha256, rows) and is signed by the trusted key ${outcome.signedBy.slice(0, 16)}…\n`)
}

/** EXPORT_PUBLIC_KEY_FILE, read without the rest of the configuration (an auditor's machine has none of it). */
function pinnedExportKey(): string | undefined {
  const value = loadEnv().EXPORT_PUBLIC_KEY_FILE
  return value ? resolve(value) : undefined
}

async function runVerifyAudit(): Promise<void> {
  const result = await throughInstanceOrLocal<VerifyResult>(
    config(),
    async (call) => (await call<VerifyResult>('GET', '/v1/audit/verify')).json,
    (rt) => rt.audit.verify(),
  )
  if (result.ok) {
    process.stdout.write(`OK: ${result.records} audit records, chain intact; head ${result.head}; ${result.anchors} anchors kept outside ClickHouse agree\n`)
    process.stdout.write(`signed checkpoints cover records 1-${result.signed_through}; ${result.unsigned} newer ones are protected by the chain only until the next checkpoint\n`)
  }
  else {
    process.stdout.write(`BROKEN at record ${result.seq} (${result.problem}): ${result.message}\n${result.records} records before it are intact\n`)
    process.exitCode = 1
  }
}

export function registerComplianceCommands(program: Command): void {
  program
    .command('export')
    .description('export the security log or key usage for a time range, with a signed manifest (FILE.manifest.json)')
    .argument('<dataset>', DATASETS.join(' | '))
    .requiredOption('--from <time>', 'RFC 3339 start (inclusive)')
    .requiredOption('--to <time>', 'RFC 3339 end (exclusive)')
    .requiredOption('--out <file>', 'where to write it')
    .option('--format <format>', FORMATS.join(' | ') + ' (default csv)')
    .option('--account <id>', 'one account')
    .option('--actor <actor>', 'one actor (security-log)')
    .option('--action <action>', 'one action (security-log)')
    .action(runExport)
  program
    .command('verify-export')
    .description('check an export against its manifest, offline: size, sha256, rows and the Ed25519 signature by the trusted key; exits 1 on any mismatch, 2 without a trusted key')
    .argument('<file>')
    .argument('<manifest>')
    .option('--public-key <pem>', "keywatch's published signing key (GET /v1/exports/signing-key); default EXPORT_PUBLIC_KEY_FILE; without either, exits 2")
    .action(runVerifyExport)
  program
    .command('verify-audit')
    .description("walk keywatch's own audit trail; exits 1 naming the first changed, deleted or reordered record")
    .action(runVerifyAudit)
}
