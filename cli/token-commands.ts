// `keywatch token create|list|revoke`: API tokens, through the running instance or on the data directly.
import type { Command } from 'commander'
import type { Enrolment } from '../api/step-up.ts'
import type { TokenInfo } from '../api/tokens.ts'
import { ROLES, type Role } from '../core/roles.ts'
import { auditedLocally, cliActor, config, ExitError, throughInstanceOrLocal } from './context.ts'

type Created = { token: string; info: TokenInfo; totp?: Enrolment }

async function create(opts: { role: string; name?: string; json?: boolean; totp?: boolean }): Promise<void> {
  if (!ROLES.includes(opts.role as Role)) throw new ExitError(`--role must be one of ${ROLES.join(', ')}`, 2)
  const name = opts.name ?? `${opts.role}-${new Date().toISOString().slice(0, 10)}-${Math.random().toString(36).slice(2, 6)}`
  const cfg = config()
  if (opts.totp && cfg.security.stepUp === 'off') throw new ExitError('--totp: step-up is off here (STEP_UP=off)', 2)
  const created = await throughInstanceOrLocal<Created>(
    cfg,
    async (call) => (await call<Created>('POST', '/v1/tokens', { role: opts.role, name, totp: Boolean(opts.totp) })).json,
    (rt) =>
      auditedLocally(
        rt,
        'token.create',
        name,
        async () => {
          const made = await rt.tokens.create(opts.role as Role, name, cliActor())
          const totp = opts.totp ? await rt.stepUp.enroll({ token_id: made.info.token_id, name: made.info.name }, cliActor()) : undefined
          return { ...made, ...(totp ? { totp } : {}) }
        },
        { role: opts.role, totp: Boolean(opts.totp) },
      ),
  )
  if (opts.json) return void process.stdout.write(JSON.stringify(created) + '\n')
  process.stdout.write(`${created.token}\n`)
  process.stderr.write(`token ${created.info.token_id} "${created.info.name}" (${created.info.role}): shown once, keep it now\n`)
  if (created.totp) {
    // The enrolment, shown once: scan the code with an authenticator app, or type the secret in.
    const { default: QRCode } = await import('qrcode')
    const qr = await QRCode.toString(created.totp.uri, { type: 'terminal', small: true, errorCorrectionLevel: 'M' })
    process.stderr.write(`\nScan this with your authenticator app (sensitive actions ask for its code):\n${qr}\n${created.totp.uri}\nsecret: ${created.totp.secret}\n`)
  }
}

async function list(opts: { json?: boolean }): Promise<void> {
  const tokens = await throughInstanceOrLocal(
    config(),
    async (call) => (await call<{ tokens: TokenInfo[] }>('GET', '/v1/tokens')).json.tokens,
    (rt) => rt.tokens.list(),
  )
  if (opts.json) return void process.stdout.write(JSON.stringify(tokens) + '\n')
  for (const t of tokens) {
    process.stdout.write(`${t.token_id}  ${t.role.padEnd(9)} ${t.prefix}…  ${t.name.padEnd(24)} created ${t.created_at} by ${t.created_by}${t.revoked_at ? `  REVOKED ${t.revoked_at} by ${t.revoked_by}` : ''}\n`)
  }
}

async function revoke(idOrName: string): Promise<void> {
  const token = await throughInstanceOrLocal(
    config(),
    async (call) => (await call<{ token: TokenInfo }>('DELETE', `/v1/tokens/${encodeURIComponent(idOrName)}`)).json.token,
    (rt) => auditedLocally(rt, 'token.revoke', idOrName, () => rt.tokens.revoke(idOrName, cliActor())),
  )
  process.stdout.write(`revoked ${token.token_id} "${token.name}" (${token.role})\n`)
}

export function registerTokenCommands(program: Command): void {
  const token = program.command('token').description('API tokens: create (shown once), list, revoke')
  token
    .command('create')
    .description('create a token and print it once')
    .requiredOption('--role <role>', ROLES.join(' | '))
    .option('--name <name>', 'a name to recognise it by (default: role and date)')
    .option('--json', 'print the token and its record as JSON')
    .option('--totp', 'enrol an authenticator (TOTP) for step-up: shown once as a QR code and an otpauth URI')
    .action(create)
  token.command('list').description('list tokens (never their secrets)').option('--json', 'print JSON').action(list)
  token.command('revoke').description('revoke a token by id or name').argument('<id|name>').action(revoke)
}
