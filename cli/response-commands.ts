// `keywatch actions`, `exposure`, `revoke`, `reset` and `response status|pause|resume`: through the running
// instance's API when there is one, else on the data opened locally.
import { writeFileSync } from 'node:fs'
import type { Command } from 'commander'
import type { Action, ActionStatus } from '../response/actions.ts'
import { exposureCsv, exposureReport, type ExposureReport } from '../response/exposure.ts'
import { auditedLocally, cliActor, config, ExitError, throughInstanceOrLocal } from './context.ts'

const STATUSES: ActionStatus[] = ['dry_run', 'paused', 'blocked', 'skipped', 'refused', 'requested', 'confirmed', 'failed', 'not_effective', 'awaiting_approval', 'rejected', 'expired']

function instant(name: string, value: string | undefined): Date | undefined {
  if (value === undefined) return undefined
  const d = new Date(value)
  if (!/^\d{4}-\d{2}-\d{2}T/.test(value) || Number.isNaN(d.getTime())) throw new ExitError(`${name} ${JSON.stringify(value)} is not an RFC 3339 date-time, e.g. 2026-11-24T10:00:00Z`, 2)
  return d
}

async function runActions(opts: { json?: boolean; account?: string; key?: string; status?: string; since?: string; limit?: string }): Promise<void> {
  if (opts.status && !STATUSES.includes(opts.status as ActionStatus)) throw new ExitError(`--status must be one of ${STATUSES.join(', ')}`, 2)
  const since = instant('--since', opts.since)
  const limit = opts.limit === undefined ? 1000 : Number(opts.limit)
  if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new ExitError('--limit must be a whole number from 1 to 10000', 2)
  const query = new URLSearchParams(Object.entries({ account: opts.account, key: opts.key, status: opts.status, since: since?.toISOString(), limit: String(limit) }).filter((e): e is [string, string] => e[1] !== undefined))
  const actions = await throughInstanceOrLocal(
    config(),
    async (call) => (await call<{ actions: Action[] }>('GET', `/v1/actions?${query}`)).json.actions,
    (rt) => rt.actions.list({ account_id: opts.account, key_id: opts.key, status: opts.status as ActionStatus | undefined, since, limit }),
  )
  if (opts.json) return void process.stdout.write(JSON.stringify(actions) + '\n')
  for (const a of actions) {
    process.stdout.write(`${a.requested_at}  ${a.action_id}  ${a.command.padEnd(6)} ${a.status.padEnd(13)} ${a.key_prefix.padEnd(14)} ${a.account_id}  ${a.requested_by}${a.confirmed_at ? `  confirmed ${a.confirmed_at} (${a.confirmed_by})` : ''}${a.status_detail ? `  — ${a.status_detail}` : ''}\n`)
  }
}

/** `keywatch actions approve|reject ID --reason …`: the same decision as the API and Slack's buttons. */
async function runDecision(decision: string, actionId: string | undefined, opts: { reason?: string; json?: boolean }): Promise<void> {
  if (decision !== 'approve' && decision !== 'reject') throw new ExitError('`keywatch actions` takes approve or reject (or no argument to list)', 2)
  if (!actionId || !/^act_[a-f0-9]{24}$/.test(actionId)) throw new ExitError(`keywatch actions ${decision} needs an action id (act_…)`, 2)
  if (!opts.reason?.trim()) throw new ExitError(`--reason is required: say why you ${decision} it`, 2)
  const reason = opts.reason
  const action = await throughInstanceOrLocal(
    config(),
    async (call) => (await call<{ action: Action }>('POST', `/v1/actions/${actionId}/${decision}`, { reason })).json.action,
    (rt) => auditedLocally(rt, `action.${decision}`, actionId, () => rt.response.decideApproval({ actionId, decision, by: cliActor(), reason }), { reason }),
  )
  process.stdout.write(opts.json ? JSON.stringify(action) + '\n' : `${action.command} of ${action.key_prefix}: ${action.status}${action.status_detail ? ` — ${action.status_detail}` : ''} (${action.action_id})\n`)
  if (action.status === 'failed') process.exitCode = 1
}

async function runExposure(keyId: string, opts: { from?: string; to?: string; format?: string; out?: string }): Promise<void> {
  const format = opts.format ?? 'text'
  if (!['text', 'json', 'csv'].includes(format)) throw new ExitError('--format must be text, json or csv', 2)
  const from = instant('--from', opts.from)
  const to = instant('--to', opts.to)
  const query = new URLSearchParams(Object.entries({ from: from?.toISOString(), to: to?.toISOString() }).filter((e): e is [string, string] => e[1] !== undefined))
  const report = await throughInstanceOrLocal(
    config(),
    async (call) => (await call<ExposureReport>('GET', `/v1/keys/${encodeURIComponent(keyId)}/exposure?${query}`)).json,
    (rt) => exposureReport(rt.storage.client, keyId, { from, to }, new Date(), { cacheGraceSeconds: rt.config.response.policy.cache_grace_seconds, lookbackDays: rt.config.response.policy.exposure_lookback_days }),
  )
  const output = format === 'json' ? JSON.stringify(report, null, 2) + '\n' : format === 'csv' ? exposureCsv(report) : exposureText(report)
  if (opts.out) writeFileSync(opts.out, output)
  else process.stdout.write(output)
}

function exposureText(r: ExposureReport): string {
  const t = r.totals
  const lines = [
    `Exposure of ${r.key.key_prefix} (${r.key.key_id}, ${r.key.mode} ${r.key.key_kind} key of ${r.key.account_id}, ${r.key.status})`,
    `Window      ${r.window.from} → ${r.window.to} (${r.window.basis})`,
    `Requests    ${t.requests} (${t.accepted} accepted, ${t.refused} refused), first ${t.first_use ?? '-'}, last ${t.last_use ?? '-'}`,
    `Writes      ${t.write_requests} (${t.accepted_writes} accepted)`,
    `Money moved ${r.money.length ? r.money.map((m) => `${(m.amount_minor / 100).toFixed(2)} ${m.currency} in ${m.payments}`).join(', ') : 'none'}`,
    `Sources     ${t.distinct_ips} IPs, ${t.distinct_countries} countries, ${t.distinct_asns} ASNs`,
    `After       ${r.after_window.requests} requests after the window (${r.after_window.accepted} accepted)`,
    '',
    `Money-moving requests (${r.transactions.length}${r.transactions_truncated ? ', more not listed: narrow the window' : ''})`,
    ...r.transactions.slice(0, 50).map((t) => `  ${t.occurred_at}  ${t.request_id.padEnd(24)} ${t.method.padEnd(6)} ${t.endpoint.padEnd(24)} ${String(t.status).padEnd(4)} ${(t.amount_minor / 100).toFixed(2).padStart(12)} ${t.currency.padEnd(4)} ${t.ip.padEnd(40)} AS${String(t.asn).padEnd(8)} ${t.country || '--'}`),
    ...(r.transactions.length > 50 ? [`  …and ${r.transactions.length - 50} more (--format csv or json lists them all)`] : []),
    '',
    'Top IPs',
    ...r.ips.slice(0, 10).map((i) => `  ${i.ip.padEnd(40)} ${(i.country || '--').padEnd(3)} AS${String(i.asn).padEnd(8)} ${String(i.requests).padStart(8)} requests, ${i.accepted} accepted`),
    'Endpoints',
    ...r.by_endpoint_status.slice(0, 20).map((e) => `  ${e.method.padEnd(7)} ${e.endpoint.padEnd(32)} ${e.status}  ${e.requests}`),
  ]
  return lines.join('\n') + '\n'
}

async function runManual(command: 'revoke' | 'reset', keyId: string, opts: { reason?: string; incident?: boolean; force?: boolean; json?: boolean }): Promise<void> {
  if (!opts.reason?.trim()) throw new ExitError(`--reason is required: say why the key is ${command === 'revoke' ? 'revoked' : 'reset'}`, 2)
  const request = { reason: opts.reason, incident: Boolean(opts.incident), force: Boolean(opts.force) }
  const action = await throughInstanceOrLocal(
    config(),
    async (call) => (await call<{ action: Action }>('POST', `/v1/keys/${encodeURIComponent(keyId)}/${command}`, request)).json.action,
    (rt) => auditedLocally(rt, `key.${command}`, keyId, () => rt.response.manual({ command, key_id: keyId, actor: cliActor(), ...request }), { reason: request.reason }),
  )
  process.stdout.write(opts.json ? JSON.stringify(action) + '\n' : `${action.command} of ${action.key_prefix}: ${action.status}${action.status_detail ? ` — ${action.status_detail}` : ''} (${action.action_id})\n`)
  if (action.status === 'failed') process.exitCode = 1
}

async function runSwitch(what: string, opts: { reason?: string }): Promise<void> {
  if (!['status', 'pause', 'resume'].includes(what)) throw new ExitError('`keywatch response` takes status, pause or resume', 2)
  if (what !== 'status' && !opts.reason?.trim()) throw new ExitError(`--reason is required to ${what} automatic response`, 2)
  const state = await throughInstanceOrLocal(
    config(),
    async (call) => (what === 'status' ? await call<object>('GET', '/v1/response') : await call<object>('POST', `/v1/response/${what}`, { reason: opts.reason })).json,
    async (rt) => {
      if (what !== 'status') await auditedLocally(rt, `response.${what}`, '', () => rt.response.setPaused(what === 'pause', cliActor(), opts.reason!), { reason: opts.reason })
      return rt.response.state()
    },
  )
  process.stdout.write(JSON.stringify(state, null, 2) + '\n')
}

export function registerResponseCommands(program: Command): void {
  program
    .command('actions')
    .description('list what keywatch did or decided about keys (newest first); `actions approve|reject ID --reason …` decides on one awaiting approval')
    .argument('[decision]', 'approve | reject')
    .argument('[action_id]', 'the action (act_…)')
    .option('--reason <text>', 'why you approve or reject it (required then)')
    .option('--json', 'print a JSON array')
    .option('--account <id>', 'one account')
    .option('--key <id>', 'one key')
    .option('--status <status>', STATUSES.join(', '))
    .option('--since <time>', 'RFC 3339 moment')
    .option('--limit <n>', 'at most this many (default 1000)')
    .action((decision: string | undefined, actionId: string | undefined, opts) => (decision ? runDecision(decision, actionId, opts) : runActions(opts)))

  program
    .command('exposure')
    .description('what a key did while exposed: from the earliest evidence of exposure until its revocation plus the cache grace, unless --from/--to; every money-moving request')
    .argument('<key_id>', 'the key (key_…)')
    .option('--from <time>', 'RFC 3339 start of the window')
    .option('--to <time>', 'RFC 3339 end of the window')
    .option('--format <format>', 'text (default), json or csv')
    .option('--out <file>', 'write to a file instead of stdout')
    .action(runExposure)

  for (const command of ['revoke', 'reset'] as const) {
    program
      .command(command)
      .description(command === 'revoke' ? 'revoke a key now (refused for a key used in the last 15 minutes unless --incident or --force)' : "reset a key's secret (the only response for an auto-generated key)")
      .argument('<key_id>', 'the key (key_…)')
      .requiredOption('--reason <text>', 'why: kept with the action for the audit trail')
      .option('--incident', 'the key is being abused: act even though it is in use')
      .option('--force', 'act even though the key is in use, knowing it is an outage')
      .option('--json', 'print the action as JSON')
      .action((keyId: string, opts) => runManual(command, keyId, opts))
  }

  program
    .command('response')
    .description('the kill switch of automatic response: status, pause or resume (manual revokes still go)')
    .argument('<what>', 'status | pause | resume')
    .option('--reason <text>', 'why (required to pause or resume)')
    .action(runSwitch)
}
