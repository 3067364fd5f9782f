// What an alert says, for Slack (Block Kit) and for mail (HTML and plain text): severity, detector, account, the key
// by its prefix, the evidence in numbers, what keywatch already did, and a link. Never a secret: anything that looks
// like a key's secret is cut to its prefix, and hashes to their first 12 characters.
import type { Finding } from '../detectors/findings.ts'
import type { KeyRow } from '../inventory/keys.ts'

export interface ActionNote {
  kind: 'revoke' | 'reset'
  status: string
  requested_by: string
  requested_at: string
}

const EMOJI: Record<string, string> = { critical: ':rotating_light:', high: ':warning:', medium: ':large_orange_diamond:', low: ':small_blue_diamond:', info: ':information_source:' }

/** Defence in depth: a key secret is shown by its prefix, a hash by its start. */
export function redact(text: string): string {
  return text.replace(/\b((?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{4})[A-Za-z0-9]+/g, '$1…').replace(/\b([0-9a-f]{12})[0-9a-f]{52}\b/g, '$1…')
}

/**
 * Slack mrkdwn: `<`, `>` and `&` are control characters. Evidence holds text from outside (a leak report's URL, a
 * user agent), which must not turn into `<!channel>` pings or disguised links.
 */
export function mrkdwn(text: string): string {
  return text.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;')
}

/** Block Kit refuses a section over 3,000 characters (invalid_blocks): a long value is cut, never the message. */
const MAX_EVIDENCE_VALUE = 200
const MAX_SECTION_TEXT = 2_900

function clip(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text
}

function evidenceLines(f: Finding): string[] {
  return Object.entries(f.evidence)
    .filter(([, v]) => v !== null && v !== undefined && typeof v !== 'object')
    .slice(0, 12)
    .map(([k, v]) => redact(`${k.replaceAll('_', ' ')}: ${clip(String(v), MAX_EVIDENCE_VALUE)}`))
}

export function actionText(a: ActionNote | undefined): string {
  if (!a) return 'No automatic action.'
  const who = a.requested_by.startsWith('auto:') ? 'automatically' : `by ${a.requested_by}`
  const what = a.kind === 'revoke' ? 'Revoke' : 'Reset'
  return `${what} requested ${who} at ${a.requested_at} UTC: ${a.status}.`
}

export function findingLink(publicUrl: string, f: Finding): string {
  return `${publicUrl.replace(/\/$/, '')}/findings/${f.finding_id}`
}

/** A leaked key's alert links to its exposure report (the playbook's next step). */
function exposureLink(publicUrl: string, f: Finding): string {
  if (!f.key_id || !f.detector.startsWith('leak.')) return ''
  return ` · <${publicUrl.replace(/\/$/, '')}/#/keys/${encodeURIComponent(f.key_id)}|Exposure report>`
}

/** The Revoke button is offered on a critical leak finding whose key is not revoked yet. */
function offersRevoke(f: Finding, a: ActionNote | undefined): boolean {
  return f.severity === 'critical' && f.detector.startsWith('leak.') && Boolean(f.key_id) && f.evidence.key_status !== 'revoked' && !(a?.kind === 'revoke' && a.status === 'confirmed')
}

export function slackMessage(f: Finding, action: ActionNote | undefined, publicUrl: string): { text: string; blocks: object[] } {
  const subject = f.key_id ? `${String(f.evidence.key_prefix ?? '')} (${f.key_id})`.trim() : f.user_id || f.ip
  const text = mrkdwn(redact(`${f.severity.toUpperCase()} ${f.title} — ${f.account_id}`))
  const buttons: object[] = []
  const approval = f.detector === 'response.approval_required' && typeof f.evidence.action_id === 'string' ? f.evidence.action_id : undefined
  if (approval && f.status === 'open') {
    // Decided by one person with the responder or admin role; the message is updated once decided.
    buttons.push({
      type: 'button',
      action_id: 'approve',
      style: 'primary',
      text: { type: 'plain_text', text: 'Approve' },
      value: approval,
      confirm: { title: { type: 'plain_text', text: 'Approve this action?' }, text: { type: 'plain_text', text: redact(`${String(f.evidence.command ?? 'Revoke')} ${subject} now. Anything still using it will fail.`) }, confirm: { type: 'plain_text', text: 'Approve' }, deny: { type: 'plain_text', text: 'Cancel' } },
    })
    buttons.push({ type: 'button', action_id: 'reject', style: 'danger', text: { type: 'plain_text', text: 'Reject' }, value: approval })
  } else if (f.status === 'open') {
    buttons.push({ type: 'button', action_id: 'acknowledge', text: { type: 'plain_text', text: 'Acknowledge' }, value: f.finding_id })
    buttons.push({ type: 'button', action_id: 'snooze', text: { type: 'plain_text', text: 'Snooze 24 h' }, value: f.finding_id })
  }
  if (offersRevoke(f, action)) {
    buttons.push({
      type: 'button',
      action_id: 'revoke',
      style: 'danger',
      text: { type: 'plain_text', text: 'Revoke' },
      value: f.finding_id,
      confirm: { title: { type: 'plain_text', text: 'Revoke this key?' }, text: { type: 'plain_text', text: redact(`Revoke ${subject} now. Anything still using it will fail.`) }, confirm: { type: 'plain_text', text: 'Revoke' }, deny: { type: 'plain_text', text: 'Cancel' } },
    })
  }
  const blocks: object[] = [
    { type: 'header', text: { type: 'plain_text', text: redact(`${f.severity.toUpperCase()} · ${f.title}`).slice(0, 150) } },
    {
      type: 'section',
      fields: [
        { type: 'mrkdwn', text: `*Severity*\n${EMOJI[f.severity] ?? ''} ${f.severity}` },
        { type: 'mrkdwn', text: `*Detector*\n\`${f.detector}\`` },
        { type: 'mrkdwn', text: `*Account*\n${mrkdwn(f.account_id)}` },
        { type: 'mrkdwn', text: `*Subject*\n${mrkdwn(redact(subject || '—'))}` },
        { type: 'mrkdwn', text: `*Status*\n${f.status}${f.status !== 'open' ? ` by ${mrkdwn(f.status_changed_by)}` : ''}` },
        { type: 'mrkdwn', text: `*Seen*\n${f.occurrences}× since ${f.first_seen_at} UTC` },
      ],
    },
    { type: 'section', text: { type: 'mrkdwn', text: clip(`*Evidence*\n${evidenceLines(f).map((l) => `• ${mrkdwn(l)}`).join('\n') || '—'}`, MAX_SECTION_TEXT) } },
    { type: 'section', text: { type: 'mrkdwn', text: `*Action*\n${mrkdwn(actionText(action))}` } },
    { type: 'context', elements: [{ type: 'mrkdwn', text: `<${findingLink(publicUrl, f)}|Open the finding>${exposureLink(publicUrl, f)} · ${f.finding_id}` }] },
  ]
  if (buttons.length) blocks.push({ type: 'actions', block_id: `finding:${f.finding_id}`, elements: buttons })
  return { text, blocks }
}

export function slackSummary(destination: string, count: number, titles: string[], minute: string): { text: string; blocks: object[] } {
  const text = `${count} more alerts for ${destination} in the minute from ${minute} UTC (over the per-minute cap)`
  return {
    text,
    blocks: [
      { type: 'section', text: { type: 'mrkdwn', text: `*${count} more alerts* in the minute from ${minute} UTC were held back (per-channel cap):` } },
      { type: 'section', text: { type: 'mrkdwn', text: clip(titles.slice(0, 10).map((t) => `• ${mrkdwn(redact(clip(t, 200)))}`).join('\n') + (titles.length > 10 ? `\n…and ${titles.length - 10} more` : ''), MAX_SECTION_TEXT) } },
    ],
  }
}

export interface Mail {
  subject: string
  text: string
  html: string
}

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)

export function findingMail(f: Finding, action: ActionNote | undefined, publicUrl: string): Mail {
  const lines = [`${f.severity.toUpperCase()}: ${f.title}`, '', `Detector: ${f.detector}`, `Account:  ${f.account_id}`, `Key:      ${f.key_id || '—'} ${f.evidence.key_prefix ?? ''}`, '', 'Evidence:', ...evidenceLines(f).map((l) => `  ${l}`), '', `Action: ${actionText(action)}`, '', findingLink(publicUrl, f)]
  const text = redact(lines.join('\n'))
  const html = `<h2>${esc(redact(`${f.severity.toUpperCase()}: ${f.title}`))}</h2>
<table>${[['Detector', f.detector], ['Account', f.account_id], ['Key', `${f.key_id} ${String(f.evidence.key_prefix ?? '')}`]].map(([k, v]) => `<tr><th align="left">${k}</th><td>${esc(redact(v!))}</td></tr>`).join('')}</table>
<h3>Evidence</h3><ul>${evidenceLines(f).map((l) => `<li>${esc(l)}</li>`).join('')}</ul>
<p><b>Action:</b> ${esc(actionText(action))}</p><p><a href="${esc(findingLink(publicUrl, f))}">Open the finding</a></p>`
  return { subject: redact(`[keywatch ${f.severity}] ${f.title}`).slice(0, 200), text, html }
}

export interface Digest {
  account_id: string
  stale: KeyRow[]
  overdue: KeyRow[]
  dueSoon: KeyRow[]
}

export function digestMail(d: Digest, period: 'daily' | 'weekly', publicUrl: string): Mail {
  const section = (title: string, rows: KeyRow[], note: (k: KeyRow) => string) => ({
    text: [`${title} (${rows.length})`, ...rows.map((k) => `  ${k.key_prefix}  ${k.key_id}  ${k.label ?? ''}  ${note(k)}`), ''].join('\n'),
    html: `<h3>${esc(title)} (${rows.length})</h3>${rows.length ? `<table><tr><th align="left">Key</th><th align="left">Id</th><th align="left">Label</th><th align="left"></th></tr>${rows.map((k) => `<tr><td>${esc(redact(k.key_prefix))}</td><td>${esc(k.key_id)}</td><td>${esc(redact(k.label ?? ''))}</td><td>${esc(note(k))}</td></tr>`).join('')}</table>` : '<p>None.</p>'}`,
  })
  const parts = [
    section('Stale keys (unused 90 days or more)', d.stale, (k) => (k.last_used_at ? `last used ${k.last_used_at.slice(0, 10)}` : 'never used')),
    section('Rotation overdue (secret older than 90 days)', d.overdue, (k) => `rotation was due ${k.rotation_due_at?.slice(0, 10) ?? ''}`),
    section('Rotation due within 15 days', d.dueSoon, (k) => `due ${k.rotation_due_at?.slice(0, 10) ?? ''}`),
  ]
  const subject = `[keywatch] ${period} key hygiene for ${d.account_id}: ${d.stale.length} stale, ${d.overdue.length} overdue, ${d.dueSoon.length} due soon`
  return {
    subject,
    text: redact([`Key hygiene for ${d.account_id}`, '', ...parts.map((p) => p.text), `${publicUrl.replace(/\/$/, '')}/keys?account=${d.account_id}`].join('\n')),
    html: `<h2>Key hygiene for ${esc(d.account_id)}</h2>${parts.map((p) => p.html).join('')}<p><a href="${esc(`${publicUrl.replace(/\/$/, '')}/keys?account=${d.account_id}`)}">Open the inventory</a></p>`,
  }
}

/** The per-minute overflow of a mail destination, summed up in one mail. */
export function summaryMail(count: number, titles: string[], minute: string): Mail {
  const head = `${count} more alerts in the minute from ${minute} UTC were held back (per-destination cap)`
  const shown = titles.slice(0, 50).map((t) => redact(t))
  const more = titles.length > shown.length ? [`…and ${titles.length - shown.length} more`] : []
  return {
    subject: `[keywatch] ${count} more alerts (over the per-minute cap)`,
    text: [head, '', ...shown.map((t) => `  ${t}`), ...more].join('\n'),
    html: `<p>${esc(head)}:</p><ul>${shown.map((t) => `<li>${esc(t)}</li>`).join('')}</ul>${more.map((m) => `<p>${esc(m)}</p>`).join('')}`,
  }
}

/** A lifecycle change of a live key, as its owners are told: what, who, the deadline; never a secret or its hash. */
export interface KeyChange {
  event_id: string
  occurred_at: string
  account_id: string
  key_id: string
  key_prefix: string
  key_kind: string
  action: string
  actor: string
  replacement_key_id: string | null
  old_key_expires_at: string | null
  reason: string | null
}

const CHANGE_TEXT: Record<string, string> = {
  rotated: 'was rotated',
  rolled_back: 'was rolled back: the rotation is undone and the old key is current again',
  revoked: 'was revoked',
  reset: 'had its secret reset',
  scopes_changed: 'had its scopes changed',
  expired: 'expired',
}

export function keyChangeText(c: KeyChange): string {
  const parts = [`${c.key_prefix} (${c.key_kind} key ${c.key_id} of ${c.account_id}) ${CHANGE_TEXT[c.action] ?? c.action} at ${c.occurred_at} UTC by ${c.actor}.`]
  if (c.action === 'rotated') parts.push(`Replacement: ${c.replacement_key_id ?? 'unknown'}. The old key keeps working until ${c.old_key_expires_at ?? 'its deadline'} UTC: move every integration to the new key before then.`)
  if (c.reason) parts.push(`Reason: ${clip(c.reason, MAX_EVIDENCE_VALUE)}`)
  return redact(parts.join(' '))
}

export function keyChangeSlack(c: KeyChange, publicUrl: string): { text: string; blocks: object[] } {
  const text = mrkdwn(keyChangeText(c))
  return {
    text,
    blocks: [
      { type: 'section', text: { type: 'mrkdwn', text: `:key: ${text}` } },
      { type: 'context', elements: [{ type: 'mrkdwn', text: `<${publicUrl.replace(/\/$/, '')}/#/keys/${encodeURIComponent(c.key_id)}|Open the key>` }] },
    ],
  }
}

export function keyChangeMail(c: KeyChange, publicUrl: string): Mail {
  const text = keyChangeText(c)
  const link = `${publicUrl.replace(/\/$/, '')}/#/keys/${encodeURIComponent(c.key_id)}`
  return { subject: redact(`[keywatch] ${c.key_prefix} ${CHANGE_TEXT[c.action] ?? c.action}`).slice(0, 200), text: `${text}\n\n${link}`, html: `<p>${esc(text)}</p><p><a href="${esc(link)}">Open the key</a></p>` }
}
