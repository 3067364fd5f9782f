// keywatch's built-in dashboard: a page per question (overview, keys, a key, findings, actions), all figures read
// from the API with the signed-in token, charts drawn with uPlot. What the token's role may not do is not offered.
// Text from the API is always set as text, never as HTML.
const main = document.getElementById('main')
const who = document.getElementById('who')
const nav = document.getElementById('nav')
let me = null

const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
const num = (n) => Number(n ?? 0).toLocaleString('en')
const sev = (s) => `<span class="sev ${esc(s)}">${esc(s)}</span>`
const can = (permission) => Boolean(me?.permissions.includes(permission))

async function api(path, options = {}) {
  const token = sessionStorage.getItem('keywatch.token')
  const response = await fetch(path, { ...options, headers: { ...(options.body ? { 'content-type': 'application/json' } : {}), authorization: `Bearer ${token}`, ...(options.headers ?? {}) } })
  const body = await response.json().catch(() => null)
  if (response.status === 401 && body?.error?.code === 'step_up_required') {
    // A sensitive action: ask for a current code from the authenticator and send it once.
    if (options.headers?.['x-keywatch-otp'] !== undefined) throw new Error(body.error.message)
    const code = prompt(`${body.error.message}\n\nCode from your authenticator:`)
    if (!code) throw new Error('cancelled: this action needs a code from your authenticator')
    return api(path, { ...options, headers: { ...(options.headers ?? {}), 'x-keywatch-otp': code.trim() } })
  }
  if (response.status === 401) {
    signOut('Your token was refused: sign in again.')
    throw new Error('unauthorized')
  }
  if (!response.ok) throw new Error(body?.error?.message ?? `${response.status}`)
  return body
}

function signOut(message) {
  sessionStorage.removeItem('keywatch.token')
  me = null
  nav.hidden = true
  who.textContent = ''
  renderSignIn(message)
}

function renderSignIn(message = '') {
  main.innerHTML = `<form class="signin" id="signin">
    <h1>Sign in to keywatch</h1>
    <p class="muted">Paste an API token (<code>keywatch token create --role viewer</code>).</p>
    <input id="token" type="password" autocomplete="off" placeholder="kw_…" aria-label="API token">
    <button class="primary" type="submit">Sign in</button>
    <p class="error" id="signin-error">${esc(message)}</p>
  </form>`
  document.getElementById('signin').addEventListener('submit', async (e) => {
    e.preventDefault()
    sessionStorage.setItem('keywatch.token', document.getElementById('token').value.trim())
    await start()
  })
}

async function start() {
  try {
    me = await api('/v1/whoami')
  } catch (err) {
    if (err.message !== 'unauthorized') renderSignIn(err.message)
    return
  }
  nav.hidden = false
  who.innerHTML = `${esc(me.actor)} · ${esc(me.role)} · <a href="#" id="signout">sign out</a>`
  document.getElementById('signout').addEventListener('click', (e) => (e.preventDefault(), signOut()))
  await route()
}

const pages = [
  [/^#\/?$/, overview],
  [/^#\/keys\/(key_[A-Za-z0-9]+)$/, keyPage],
  [/^#\/keys(\?.*)?$/, keys],
  [/^#\/incidents\/(inc_[a-f0-9]+)$/, incidentPage],
  [/^#\/incidents(\?.*)?$/, incidents],
  [/^#\/findings(\?.*)?$/, findings],
  [/^#\/actions$/, actions],
  [/^#\/alerts$/, alerts],
]

async function route() {
  if (!me) return
  const hash = location.hash || '#/'
  for (const a of nav.querySelectorAll('a')) a.classList.toggle('active', hash === a.getAttribute('href') || (a.getAttribute('href') !== '#/' && hash.startsWith(a.getAttribute('href'))))
  const page = pages.find(([re]) => re.test(hash))
  main.innerHTML = '<p class="muted">Loading…</p>'
  try {
    if (!page) throw new Error(`no page ${hash}`)
    await page[1](...hash.match(page[0]).slice(1))
    main.dataset.ready = hash
  } catch (err) {
    if (err.message !== 'unauthorized') main.innerHTML = `<p class="error">${esc(err.message)}</p>`
  }
}

// opts.window = { from, to, step } (unix seconds): the x-axis spans the requested window, and a bucket with no
// rows is drawn as zero instead of a line jumping over it.
function chart(el, title, xs, series, opts = {}) {
  const colors = ['#3b5bdb', '#e8590c', '#2f9e44', '#c92a2a', '#7048e8', '#1098ad']
  const width = Math.max(320, el.clientWidth - 8)
  let data = [xs, ...series.map((s) => s.values)]
  if (opts.window) data = fillBuckets(xs, series, opts.window)
  new uPlot(
    {
      title,
      width,
      height: 220,
      scales: { x: { time: true, ...(opts.window ? { range: () => [opts.window.from, opts.window.to] } : {}) } },
      series: [{}, ...series.map((s, i) => ({ label: s.label, stroke: colors[i % colors.length], width: 2, ...(opts.fill ? { fill: `${colors[i % colors.length]}22` } : {}) }))],
      axes: [{}, { size: 60 }],
    },
    data,
    el,
  )
}

function fillBuckets(xs, series, { from, to, step }) {
  const at = new Map(xs.map((x, i) => [x, i]))
  const grid = []
  for (let t = Math.floor(from / step) * step; t <= to; t += step) grid.push(t)
  return [grid, ...series.map((s) => grid.map((t) => (at.has(t) ? s.values[at.get(t)] : 0)))]
}

const windowOf = (ms, step) => ({ from: Math.floor((Date.now() - ms) / 1000), to: Math.floor(Date.now() / 1000), step })

const seconds = (chTime) => Date.parse(`${chTime.replace(' ', 'T')}Z`) / 1000

async function overview() {
  const o = await api('/v1/stats/overview')
  const events = o.events_per_minute.reduce((n, r) => n + Number(r.events), 0)
  const requests = o.rate_limited_per_hour.reduce((n, r) => n + Number(r.requests), 0)
  const limited = o.rate_limited_per_hour.reduce((n, r) => n + Number(r.rate_limited), 0)
  const open = Object.fromEntries(o.open_findings.map((f) => [f.severity, Number(f.findings)]))
  const actionsTotal = o.actions_24h.reduce((n, r) => n + Number(r.actions), 0)
  main.innerHTML = `<h1>Overview</h1>
  <div class="tiles">
    <div class="tile"><div class="n" data-testid="events-last-hour">${num(events)}</div><div class="l">events in the last hour</div></div>
    <div class="tile"><div class="n" data-testid="rate-limited-24h">${requests ? ((100 * limited) / requests).toFixed(2) : '0.00'}%</div><div class="l">429s of requests, 24 h (${num(limited)})</div></div>
    <div class="tile"><div class="n" data-testid="open-findings">${num(Object.values(open).reduce((a, b) => a + b, 0))}</div><div class="l">open findings: ${['critical', 'high', 'medium', 'low', 'info'].map((s) => `${sev(s)} <span data-testid="open-${s}">${num(open[s] ?? 0)}</span>`).join(' ')}</div></div>
    <div class="tile"><div class="n" data-testid="actions-24h">${num(actionsTotal)}</div><div class="l">actions in 24 h: ${o.actions_24h.map((a) => `${esc(a.status)} ${num(a.actions)}`).join(', ') || 'none'}</div></div>
  </div>
  <div class="card" id="events-chart"></div>
  <div class="card" id="ratelimit-chart"></div>`
  const minutes = [...new Set(o.events_per_minute.map((r) => r.minute))].sort()
  const types = [...new Set(o.events_per_minute.map((r) => r.type))].sort()
  if (minutes.length) {
    chart(document.getElementById('events-chart'), 'Events per minute by type', minutes.map(seconds), types.map((t) => ({ label: t, values: minutes.map((m) => Number(o.events_per_minute.find((r) => r.minute === m && r.type === t)?.events ?? 0)) })), { window: windowOf(3600000, 60) })
  } else document.getElementById('events-chart').innerHTML = '<p class="muted">No events in the last hour.</p>'
  if (o.rate_limited_per_hour.length) {
    chart(document.getElementById('ratelimit-chart'), '429 rate per hour (%)', o.rate_limited_per_hour.map((r) => seconds(r.hour)), [{ label: '429 %', values: o.rate_limited_per_hour.map((r) => (Number(r.requests) ? (100 * Number(r.rate_limited)) / Number(r.requests) : 0)) }], { fill: true, window: windowOf(86400000, 3600) })
  } else document.getElementById('ratelimit-chart').innerHTML = '<p class="muted">No requests in the last 24 hours.</p>'
}

async function keys(query = '') {
  const params = new URLSearchParams(query.replace(/^\?/, ''))
  if (!params.has('limit')) params.set('limit', '200')
  const offset = Number(params.get('offset') ?? 0)
  const list = await api(`/v1/keys?${params}`)
  const checked = (name) => (params.get(name) === 'true' ? 'checked' : '')
  const selected = (name, v) => (params.get(name) === v ? 'selected' : '')
  main.innerHTML = `<h1>Keys</h1>
  <form class="filters" id="key-filters">
    <label><input type="checkbox" name="stale" ${checked('stale')}> stale</label>
    <label><input type="checkbox" name="overdue" ${checked('overdue')}> rotation overdue</label>
    <label><input type="checkbox" name="due_soon" ${checked('due_soon')}> due soon</label>
    <select name="mode"><option value="">any mode</option><option ${selected('mode', 'live')}>live</option><option ${selected('mode', 'test')}>test</option></select>
    <select name="kind"><option value="">any kind</option>${['secret', 'publishable', 'restricted'].map((k) => `<option ${selected('kind', k)}>${k}</option>`).join('')}</select>
    <input name="account" placeholder="acct_…" value="${esc(params.get('account') ?? '')}">
    <button type="submit">Filter</button>
  </form>
  <p class="muted"><span data-testid="keys-total">${num(list.total)}</span> keys; showing ${num(offset + 1)}–${num(offset + list.keys.length)}
    ${offset > 0 ? `<a href="#/keys?${new URLSearchParams({ ...Object.fromEntries(params), offset: String(Math.max(0, offset - 200)) })}">previous</a>` : ''}
    ${offset + list.keys.length < list.total ? `<a href="#/keys?${new URLSearchParams({ ...Object.fromEntries(params), offset: String(offset + 200) })}">next</a>` : ''}</p>
  <div class="card"><table><thead><tr><th>Key</th><th>Account</th><th>Kind</th><th>Mode</th><th>Status</th><th>Last used</th><th>Requests</th><th>Age (days)</th><th>Rotation due</th><th>Expires</th><th>Grace deadline</th><th></th></tr></thead>
  <tbody>${list.keys
    .map(
      (k) => `<tr data-testid="key-row" data-key="${esc(k.key_id)}"><td><a href="#/keys/${esc(k.key_id)}">${esc(k.key_prefix)}</a> <span class="muted">${esc(k.label ?? '')}</span></td><td>${esc(k.account_id)}</td><td>${esc(k.key_kind)}</td><td>${esc(k.mode)}</td><td>${esc(k.status)}</td>
      <td>${esc(k.last_used_at?.slice(0, 16) ?? 'never')}</td><td>${num(k.requests)}</td><td>${num(k.age_days)}</td><td>${esc(k.rotation_due_at?.slice(0, 10) ?? '—')}</td><td>${esc(k.expires_at?.slice(0, 10) ?? '—')}</td><td>${esc(k.rotation_grace_deadline?.slice(0, 16) ?? '—')}</td>
      <td>${k.stale ? sev('low').replace('>low<', '>stale<') : ''}${k.rotation_overdue ? sev('medium').replace('>medium<', '>overdue<') : ''}${k.rotation_due_soon ? sev('info').replace('>info<', '>due soon<') : ''}</td></tr>`,
    )
    .join('')}</tbody></table></div>`
  document.getElementById('key-filters').addEventListener('submit', (e) => {
    e.preventDefault()
    const form = new FormData(e.target)
    const next = new URLSearchParams()
    for (const name of ['stale', 'overdue', 'due_soon']) if (form.get(name)) next.set(name, 'true')
    for (const name of ['mode', 'kind', 'account']) if (form.get(name)) next.set(name, String(form.get(name)))
    location.hash = `#/keys?${next}`
  })
}

async function keyPage(id) {
  const usageWindow = windowOf(2 * 86400000, 3600)
  const [detail, exposure, keyIncidents] = await Promise.all([
    api(`/v1/keys/${id}?interval=hour&from=${new Date(usageWindow.from * 1000).toISOString()}`),
    api(`/v1/keys/${id}/exposure`),
    api(`/v1/incidents?key=${id}&limit=50`),
  ])
  const k = detail.key
  main.innerHTML = `<h1>${esc(k.key_prefix)} <span class="muted">${esc(k.key_id)}</span></h1>
  <div class="tiles">
    <div class="tile"><div class="n">${esc(k.status)}</div><div class="l">${esc(k.mode)} ${esc(k.key_kind)} key of ${esc(k.account_id)}</div></div>
    <div class="tile"><div class="n" data-testid="key-requests">${num(exposure.totals.requests)}</div><div class="l">requests in the exposure window (${num(exposure.totals.accepted)} accepted)</div></div>
    <div class="tile"><div class="n">${esc(k.last_used_at?.slice(0, 16) ?? 'never')}</div><div class="l">last used</div></div>
    <div class="tile"><div class="n">${esc(k.rotation_due_at?.slice(0, 10) ?? '—')}</div><div class="l">rotation due</div></div>
    <div class="tile"><div class="n" data-testid="key-grace-deadline">${esc(k.rotation_grace_deadline?.slice(0, 16) ?? '—')}</div><div class="l">grace deadline (old key valid until)</div></div>
  </div>
  <p data-testid="key-scopes"><b>Scopes:</b> ${k.scopes === undefined ? '<span class="muted">not known</span>' : k.scopes === null ? 'full access' : k.scopes.map((s) => `${esc(s.scope)} (${s.access.map(esc).join(', ')})`).join(' · ') || 'none'}</p>
  ${can('respond') && !['revoked', 'deleted'].includes(k.status) ? `<p><button id="revoke" class="primary">Revoke…</button></p>` : ''}
  <div class="card" id="usage-chart"></div>
  <div class="grid2">
    <div class="card"><h2>IPs (exposure window)</h2><table><tr><th>IP</th><th>Country</th><th>ASN</th><th>Requests</th><th>Accepted</th></tr>${exposure.ips.slice(0, 20).map((i) => `<tr><td>${esc(i.ip)}</td><td>${esc(i.country)}</td><td>${esc(i.asn)}</td><td>${num(i.requests)}</td><td>${num(i.accepted)}</td></tr>`).join('')}</table></div>
    <div class="card"><h2>Countries (exposure window)</h2><table><tr><th>Country</th><th>Requests</th><th>Accepted</th></tr>${exposure.countries.map((c) => `<tr><td>${esc(c.country || '—')}</td><td>${num(c.requests)}</td><td>${num(c.accepted)}</td></tr>`).join('')}</table></div>
  </div>
  <div class="card"><h2>Lifecycle</h2><table><tr><th>When</th><th>What</th><th>Who</th><th></th></tr>${detail.lifecycle.map((l) => `<tr><td>${esc(l.at)}</td><td>${esc(l.action)}</td><td>${esc(l.actor_type)}:${esc(l.actor_id ?? '')}</td><td>${esc(l.reason ?? l.replacement_key_id ?? '')}</td></tr>`).join('')}</table></div>
  <div class="card" id="key-incidents"><h2>Incidents</h2>${incidentTable(keyIncidents.incidents)}</div>
  <div class="card"><h2>Findings</h2><table><tr><th>Severity</th><th>Detector</th><th>Title</th><th>Status</th><th>Last seen</th></tr>${detail.findings.map((f) => `<tr><td>${sev(f.severity)}</td><td>${esc(f.detector)}</td><td>${esc(f.title)}</td><td>${esc(f.status)}</td><td>${esc(f.last_seen_at)}</td></tr>`).join('') || '<tr><td colspan="5" class="muted">none</td></tr>'}</table></div>
  <div class="card"><h2>Actions</h2><table><tr><th>Requested</th><th>Command</th><th>Status</th><th>By</th><th>Detail</th></tr>${detail.actions.map((a) => `<tr><td>${esc(a.requested_at)}</td><td>${esc(a.command)}</td><td>${esc(a.status)}</td><td>${esc(a.requested_by)}</td><td>${esc(a.status_detail)}</td></tr>`).join('') || '<tr><td colspan="5" class="muted">none</td></tr>'}</table></div>
  <div class="card" id="exposure"><h2>Exposure report</h2><p class="muted">${esc(exposure.window.from)} → ${esc(exposure.window.to)} (${esc(exposure.window.basis)}) · <a href="#" id="exposure-csv">download CSV</a></p>
  <p>Money moved: ${exposure.money.map((m) => `${(m.amount_minor / 100).toFixed(2)} ${esc(m.currency)}`).join(', ') || 'none'} · writes ${num(exposure.totals.write_requests)} · after the window ${num(exposure.after_window.requests)}</p>
  <table><tr><th>Time</th><th>Request</th><th>Endpoint</th><th>Status</th><th>Amount</th><th>IP</th><th>ASN</th><th>Country</th></tr>${exposure.transactions.slice(0, 200).map((t) => `<tr data-testid="exposure-transaction"><td>${esc(t.occurred_at)}</td><td>${esc(t.request_id)}</td><td>${esc(t.method)} ${esc(t.endpoint)}</td><td>${esc(t.status)}</td><td>${(t.amount_minor / 100).toFixed(2)} ${esc(t.currency)}</td><td>${esc(t.ip)}</td><td>${esc(t.asn)}</td><td>${esc(t.country)}</td></tr>`).join('') || '<tr><td colspan="8" class="muted">no money-moving requests in the window</td></tr>'}</table>
  ${exposure.transactions.length > 200 ? `<p class="muted">${num(exposure.transactions.length - 200)} more in the CSV</p>` : ''}</div>`
  const series = detail.usage.series
  if (series.length) {
    chart(document.getElementById('usage-chart'), 'Requests per hour by outcome', series.map((p) => seconds(p.t)), [
      { label: 'accepted', values: series.map((p) => Number(p.accepted)) },
      { label: 'refused', values: series.map((p) => Number(p.requests) - Number(p.accepted)) },
      { label: '429', values: series.map((p) => Number(p.rate_limited)) },
    ], { window: usageWindow })
  } else document.getElementById('usage-chart').innerHTML = '<p class="muted">No requests in the last 2 days.</p>'
  document.getElementById('exposure-csv').addEventListener('click', async (e) => {
    e.preventDefault()
    // Fetched with the token (a plain link would carry none), then handed to the browser as a file.
    const response = await fetch(`/v1/keys/${id}/exposure?format=csv`, { headers: { authorization: `Bearer ${sessionStorage.getItem('keywatch.token')}` } })
    const url = URL.createObjectURL(await response.blob())
    const a = Object.assign(document.createElement('a'), { href: url, download: `exposure-${id}.csv` })
    a.click()
    URL.revokeObjectURL(url)
  })
  document.getElementById('revoke')?.addEventListener('click', async () => {
    const reason = prompt(`Revoke ${k.key_prefix}? Say why:`)
    if (!reason) return
    try {
      await api(`/v1/keys/${id}/revoke`, { method: 'POST', body: JSON.stringify({ reason, incident: confirm('Is this key being abused (revoke even though it is in use)?') }) })
    } catch (err) {
      alert(err.message)
    }
    await route()
  })
}

function incidentTable(list) {
  if (!list.length) return '<p class="muted">None.</p>'
  return `<table><thead><tr><th>Severity</th><th>Incident</th><th>Account</th><th>About</th><th>Findings</th><th>Status</th><th>Opened</th><th>Latest</th></tr></thead><tbody>
  ${list
    .map(
      (i) => `<tr data-testid="incident-row" data-incident="${esc(i.incident_id)}"><td>${sev(i.severity)}</td><td><a href="#/incidents/${esc(i.incident_id)}">${esc(i.title)}</a></td><td>${esc(i.account_id)}</td>
      <td>${i.subjects.map((s) => (s.startsWith('key:') ? `<a href="#/keys/${esc(s.slice(4))}">${esc(s.slice(4))}</a>` : esc(s.replace(/^[a-z]+:/, '')))).join(', ')}</td>
      <td data-testid="incident-findings">${num(i.findings)}</td><td>${esc(i.status)}</td><td>${esc(i.opened_at.slice(0, 16))}</td><td>${esc(i.last_finding_at.slice(0, 16))}</td></tr>`,
    )
    .join('')}</tbody></table>`
}

async function incidents(query = '') {
  const params = new URLSearchParams(query.replace(/^\?/, ''))
  if (!params.has('status')) params.set('status', 'open')
  if (params.get('status') === 'any') params.delete('status')
  const list = await api(`/v1/incidents?${params}&limit=500`)
  const selected = (v) => ((params.get('status') ?? 'any') === v ? 'selected' : '')
  main.innerHTML = `<h1>Incidents</h1>
  <p class="muted">Findings on one key, the users who created, revealed or rotated it, and their account, close together in time.</p>
  <form class="filters" id="incident-filters">
    <select name="status">${['open', 'resolved', 'any'].map((s) => `<option ${selected(s)}>${s}</option>`).join('')}</select>
    <input name="account" placeholder="acct_…" value="${esc(params.get('account') ?? '')}">
    <button type="submit">Filter</button>
  </form>
  <p class="muted"><span data-testid="incidents-count">${num(list.incidents.length)}</span> incidents</p>
  <div class="card">${incidentTable(list.incidents)}</div>`
  document.getElementById('incident-filters').addEventListener('submit', (e) => {
    e.preventDefault()
    const form = new FormData(e.target)
    const next = new URLSearchParams()
    for (const name of ['status', 'account']) if (form.get(name)) next.set(name, String(form.get(name)))
    location.hash = `#/incidents?${next}`
  })
}

async function incidentPage(id) {
  const { incident: i, findings: members, timeline } = await api(`/v1/incidents/${id}`)
  const icon = { finding: '⚑', action: '⚙', status: '✓', link: '↔' }
  main.innerHTML = `<h1>${sev(i.severity)} ${esc(i.title)}</h1>
  <p class="muted">${esc(i.incident_id)} · ${esc(i.account_id)} · ${esc(i.status)} · opened ${esc(i.opened_at)} · latest finding ${esc(i.last_finding_at)}</p>
  <p>About: ${i.subjects.map((s) => (s.startsWith('key:') ? `<a href="#/keys/${esc(s.slice(4))}">${esc(s.slice(4))}</a>` : esc(s))).join(', ')}</p>
  <div class="card"><h2>Findings (<span data-testid="incident-finding-count">${num(members.length)}</span>)</h2><table><tr><th>Raised</th><th>Severity</th><th>Detector</th><th>Title</th><th>About</th><th>Joined by</th></tr>
  ${members.map((m) => `<tr data-testid="incident-finding"><td>${esc(m.at)}</td><td>${sev(m.severity)}</td><td>${esc(m.detector)}</td><td>${esc(m.title)}</td><td>${esc(m.subject)}</td><td>${esc(m.linked_by || 'opened it')}</td></tr>`).join('')}</table></div>
  <div class="card"><h2>Timeline</h2><table><tr><th>When</th><th></th><th>What</th></tr>
  ${timeline.map((t) => `<tr data-testid="timeline-entry" data-kind="${esc(t.kind)}"><td>${esc(t.at)}</td><td title="${esc(t.kind)}">${icon[t.kind] ?? ''} ${t.severity ? sev(t.severity) : esc(t.kind)}</td><td>${t.detector ? `<code>${esc(t.detector)}</code> ` : ''}${esc(t.text)}</td></tr>`).join('')}</table></div>`
}

async function findings(query = '') {
  const params = new URLSearchParams(query.replace(/^\?/, ''))
  if (!params.has('status')) params.set('status', 'open')
  if (params.get('status') === 'any') params.delete('status')
  const list = await api(`/v1/findings?${params}&limit=500`)
  const selected = (name, v) => ((params.get(name) ?? (name === 'status' ? 'any' : '')) === v ? 'selected' : '')
  main.innerHTML = `<h1>Findings</h1>
  <form class="filters" id="finding-filters">
    <select name="status">${['open', 'acknowledged', 'suppressed', 'resolved', 'any'].map((s) => `<option ${selected('status', s)}>${s}</option>`).join('')}</select>
    <select name="severity"><option value="">any severity</option>${['critical', 'high', 'medium', 'low', 'info'].map((s) => `<option ${selected('severity', s)}>${s}</option>`).join('')}</select>
    <input name="account" placeholder="acct_…" value="${esc(params.get('account') ?? '')}">
    <button type="submit">Filter</button>
  </form>
  <p class="muted"><span data-testid="findings-count">${num(list.findings.length)}</span> findings</p>
  <div class="card"><table><thead><tr><th>Severity</th><th>Detector</th><th>Title</th><th>Account</th><th>Subject</th><th>Status</th><th>Seen</th><th></th></tr></thead><tbody>
  ${list.findings
    .map(
      (f) => `<tr data-testid="finding-row" data-finding="${esc(f.finding_id)}"><td>${sev(f.severity)}</td><td>${esc(f.detector)}</td><td>${esc(f.title)}</td><td>${esc(f.account_id)}</td>
      <td>${f.key_id ? `<a href="#/keys/${esc(f.key_id)}">${esc(f.key_id)}</a>` : esc(f.user_id || f.ip)}</td><td data-testid="finding-status">${esc(f.status)}</td><td>${num(f.occurrences)}× · ${esc(f.last_seen_at.slice(0, 16))}</td>
      <td>${can('respond') && f.status === 'open' ? `<button data-ack="${esc(f.finding_id)}">Acknowledge</button> <button data-suppress="${esc(f.finding_id)}">Suppress…</button>` : ''}</td></tr>`,
    )
    .join('')}</tbody></table></div>`
  document.getElementById('finding-filters').addEventListener('submit', (e) => {
    e.preventDefault()
    const form = new FormData(e.target)
    const next = new URLSearchParams()
    for (const name of ['status', 'severity', 'account']) if (form.get(name)) next.set(name, String(form.get(name)))
    location.hash = `#/findings?${next}`
  })
  for (const b of main.querySelectorAll('[data-ack]')) {
    b.addEventListener('click', async () => {
      await api(`/v1/findings/${b.dataset.ack}/acknowledge`, { method: 'POST', body: JSON.stringify({ reason: 'acknowledged on the dashboard' }) })
      await route()
    })
  }
  for (const b of main.querySelectorAll('[data-suppress]')) {
    b.addEventListener('click', async () => {
      const hours = Number(prompt('Suppress for how many hours?', '24'))
      const reason = hours && prompt('Why?')
      if (!reason) return
      await api(`/v1/findings/${b.dataset.suppress}/suppress`, { method: 'POST', body: JSON.stringify({ reason, hours }) })
      await route()
    })
  }
}

async function actions() {
  const list = await api('/v1/actions?limit=500')
  const waiting = list.actions.filter((a) => a.status === 'awaiting_approval')
  main.innerHTML = `<h1>Actions</h1><p class="muted"><span data-testid="actions-count">${num(list.actions.length)}</span> actions, <span data-testid="awaiting-count">${num(waiting.length)}</span> awaiting approval</p>
  <div class="card"><table><thead><tr><th>Requested</th><th>Command</th><th>Key</th><th>Account</th><th>Status</th><th>By</th><th>Confirmed</th><th>Detail</th><th></th></tr></thead><tbody>
  ${list.actions.map((a) => `<tr data-testid="action-row" data-action="${esc(a.action_id)}"><td>${esc(a.requested_at)}</td><td>${esc(a.command)}</td><td><a href="#/keys/${esc(a.key_id)}">${esc(a.key_prefix)}</a></td><td>${esc(a.account_id)}</td><td data-testid="action-status">${esc(a.status)}${a.status === 'awaiting_approval' && a.expires_at ? `<br><span class="muted">until ${esc(a.expires_at.slice(0, 16))}</span>` : ''}${a.decided_by ? `<br><span class="muted">by ${esc(a.decided_by)}</span>` : ''}</td><td>${esc(a.requested_by)}</td><td>${esc(a.confirmed_at ?? '—')} ${esc(a.confirmed_by)}</td><td>${esc(a.status_detail)}</td>
  <td>${can('respond') && a.status === 'awaiting_approval' ? `<button class="primary" data-approve="${esc(a.action_id)}">Approve…</button> <button data-reject="${esc(a.action_id)}">Reject…</button>` : ''}</td></tr>`).join('')}</tbody></table></div>`
  for (const [attr, decision] of [['approve', 'approve'], ['reject', 'reject']]) {
    for (const b of main.querySelectorAll(`[data-${attr}]`)) {
      b.addEventListener('click', async () => {
        const reason = prompt(decision === 'approve' ? 'Approve: the command is sent at once. Say why:' : 'Reject: the key stays as it is. Say why:')
        if (!reason) return
        try {
          await api(`/v1/actions/${b.dataset[attr]}/${decision}`, { method: 'POST', body: JSON.stringify({ reason }) })
        } catch (err) {
          alert(err.message)
        }
        await route()
      })
    }
  }
}

async function alerts() {
  const list = await api('/v1/alerts')
  main.innerHTML = `<h1>Alerts</h1><p class="muted"><span data-testid="alerts-count">${num(list.alerts.length)}</span> alerts in 7 days (Slack, mail, or this log when neither is configured)</p>
  <div class="card"><table><thead><tr><th>Made</th><th>Severity</th><th>Channel</th><th>To</th><th>Kind</th><th>Alert</th><th>Delivery</th></tr></thead><tbody>
  ${list.alerts.map((a) => `<tr data-testid="alert-row"><td>${esc(a.created_at)}</td><td>${sev(a.severity)}</td><td>${esc(a.channel)}</td><td>${esc(a.destination)}</td><td>${esc(a.kind)}</td><td>${esc(a.text)}</td><td>${esc(a.status)}${a.attempts > 1 ? ` after ${num(a.attempts)} attempts` : ''}</td></tr>`).join('')}</tbody></table></div>`
}

window.addEventListener('hashchange', () => void route())
if (sessionStorage.getItem('keywatch.token')) void start()
else renderSignIn()
