// The findings lifecycle on the real engine: dedup, reopen, acknowledgement, suppression with expiry, audit.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Storage } from '../clickhouse/client.ts'
import { openTestStorage, tempDir } from '../test/helpers.ts'
import type { FindingDraft } from './detector.ts'
import { FindingError, FindingStore } from './findings.ts'

let storage: Storage
let store: FindingStore
beforeAll(async () => {
  storage = await openTestStorage(tempDir())
  store = new FindingStore(storage.client)
})
afterAll(async () => {
  await storage.close()
})

const draft = (key: string, extra: Partial<FindingDraft> = {}): FindingDraft => ({
  detector: 'key.stale',
  severity: 'low',
  account_id: 'acct_Findings1',
  key_id: key,
  title: `${key} unused`,
  evidence: { days_unused: 100 },
  dedupKey: `key.stale:acct_Findings1:${key}`,
  ...extra,
})
const t = (iso: string) => new Date(iso)

describe('findings', () => {
  it('updates the open finding when the same dedup key fires again', async () => {
    const [first] = await store.record([draft('key_Dedup0001')], t('2026-11-20T10:00:00Z'))
    const [second] = await store.record([draft('key_Dedup0001', { evidence: { days_unused: 101 } })], t('2026-11-20T11:00:00Z'))
    expect(first!.change).toBe('new')
    expect(second!.change).toBe('updated')
    expect(second!.finding.finding_id).toBe(first!.finding.finding_id)
    expect(second!.finding).toMatchObject({ occurrences: 2, status: 'open', first_seen_at: '2026-11-20 10:00:00.000', last_seen_at: '2026-11-20 11:00:00.000', evidence: { days_unused: 101 } })
    const listed = await store.list({ detector: 'key.stale', account_id: 'acct_Findings1' })
    expect(listed.filter((f) => f.key_id === 'key_Dedup0001')).toHaveLength(1)
  })

  it('keeps the higher severity when a finding escalates', async () => {
    await store.record([draft('key_Escalate1', { detector: 'key.used_after_revocation', severity: 'medium', dedupKey: 'uar:1' })], t('2026-11-20T10:00:00Z'))
    const [r] = await store.record([draft('key_Escalate1', { detector: 'key.used_after_revocation', severity: 'high', dedupKey: 'uar:1' })], t('2026-11-20T10:01:00Z'))
    expect(r!.finding.severity).toBe('high')
  })

  it('reopens a resolved finding that fires again, and audits every change', async () => {
    const [r] = await store.record([draft('key_Reopen001')], t('2026-11-20T10:00:00Z'))
    const id = r!.finding.finding_id
    await store.setStatus(id, 'acknowledged', 'usr_Ana01', 'looking into it', t('2026-11-20T10:05:00Z'))
    const [whileAcked] = await store.record([draft('key_Reopen001')], t('2026-11-20T10:06:00Z'))
    expect(whileAcked!.finding.status).toBe('acknowledged')
    expect(whileAcked!.alert).toBe(false)
    await store.setStatus(id, 'resolved', 'usr_Ana01', 'key revoked', t('2026-11-20T10:10:00Z'))
    const [again] = await store.record([draft('key_Reopen001')], t('2026-11-20T12:00:00Z'))
    expect(again).toMatchObject({ change: 'reopened', alert: true, finding: { finding_id: id, status: 'open', occurrences: 3 } })
    expect((await store.changes(id)).map((c) => [c.from_status, c.to_status, c.actor, c.reason])).toEqual([
      ['', 'open', 'keywatch', 'raised'],
      ['open', 'acknowledged', 'usr_Ana01', 'looking into it'],
      ['acknowledged', 'resolved', 'usr_Ana01', 'key revoked'],
      ['resolved', 'open', 'keywatch', 'fired again after it was resolved'],
    ])
  })

  it('requires a reason for a status change and a known finding', async () => {
    const [r] = await store.record([draft('key_Reason001')], t('2026-11-20T10:00:00Z'))
    await expect(store.setStatus(r!.finding.finding_id, 'resolved', 'usr_Ana01', '  ')).rejects.toThrow(FindingError)
    await expect(store.setStatus('fnd_nope', 'resolved', 'usr_Ana01', 'x')).rejects.toThrow(/no finding/)
  })

  it('records a suppressed finding without alerting, until the suppression expires', async () => {
    await store.suppress(
      { detector: 'key.stale', account_id: '', key_id: 'key_Suppress01', user_id: '', ip: '', reason: 'kept for the yearly batch job', author: 'usr_Ana01', expires_at: '2026-12-01T00:00:00Z' },
      t('2026-11-20T09:00:00Z'),
    )
    const [during] = await store.record([draft('key_Suppress01')], t('2026-11-20T10:00:00Z'))
    expect(during).toMatchObject({ alert: false, finding: { status: 'suppressed' } })
    expect(during!.finding.status_reason).toContain('kept for the yearly batch job')
    // Another key of the same detector is not suppressed.
    const [other] = await store.record([draft('key_NotSuppr01')], t('2026-11-20T10:00:00Z'))
    expect(other).toMatchObject({ alert: true, finding: { status: 'open' } })
    // After expiry a new finding of that key is open again.
    await store.setStatus(during!.finding.finding_id, 'resolved', 'usr_Ana01', 'reviewed', t('2026-11-21T00:00:00Z'))
    const [after] = await store.record([draft('key_Suppress01')], t('2026-12-02T00:00:00Z'))
    expect(after).toMatchObject({ change: 'reopened', alert: true, finding: { status: 'open' } })
  })

  it('suppresses a whole account', async () => {
    await store.suppress({ detector: '', account_id: 'acct_Muted0001', key_id: '', user_id: '', ip: '', reason: 'test account', author: 'usr_Ana01', expires_at: null }, t('2026-11-20T09:00:00Z'))
    const [r] = await store.record([draft('key_Muted0001', { account_id: 'acct_Muted0001', dedupKey: 'muted:1' })], t('2026-11-20T10:00:00Z'))
    expect(r!.finding.status).toBe('suppressed')
  })

  it('refuses a suppression without reason, author or scope', async () => {
    await expect(store.suppress({ detector: 'key.stale', account_id: '', key_id: '', user_id: '', ip: '', reason: '', author: 'usr_Ana01', expires_at: null })).rejects.toThrow(/reason/)
    await expect(store.suppress({ detector: '', account_id: '', key_id: '', user_id: '', ip: '', reason: 'x', author: 'usr_Ana01', expires_at: null })).rejects.toThrow(/detector, an account or a subject/)
  })
})
