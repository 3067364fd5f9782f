// A leak report that matches no key's current secret: a superseded secret, or no key of ours.
import { defineDetector } from './detector.ts'
import { LEAK_MATCH_QUERY, type LeakRow } from './leak-public-report.ts'

export default defineDetector({
  id: 'leak.unmatched_report',
  title: 'Leak report matching no current secret',
  severity: 'info',
  schedule: '* * * * *',
  lookback: '1 day of leak reports by occurred or received time (and at once as each report is ingested, whatever its date)',
  params: { lookback_seconds: 86_400, received_after_ms: 0 },
  // A report matches nothing current when no key's current secret has its hash (it may match superseded ones).
  query: `
    SELECT any(reported_account_id) AS account_id, token_sha256, any(token_prefix) AS token_prefix, any(source) AS source,
           any(url) AS url, min(reported_at) AS reported_at, groupUniqArrayIf(key_id, key_id != '') AS superseded_secret_of
    FROM (${LEAK_MATCH_QUERY})
    GROUP BY token_sha256
    HAVING countIf(key_id != '' AND is_current) = 0`,
  toFinding: (r: LeakRow & { superseded_secret_of: string[] }) => ({
    detector: 'leak.unmatched_report',
    severity: 'info',
    account_id: r.account_id,
    key_id: r.superseded_secret_of[0],
    title: r.superseded_secret_of.length
      ? `Leaked secret of ${r.token_prefix ?? 'a key'} was already replaced (reported on ${r.source})`
      : `Leaked ${r.token_prefix ?? 'token'} matches no key (reported on ${r.source})`,
    evidence: { token_prefix: r.token_prefix, token_sha256: r.token_sha256, source: r.source, url: r.url, reported_at: r.reported_at, superseded_secret_of: r.superseded_secret_of },
    dedupKey: `leak.unmatched_report:${r.token_sha256}`,
  }),
  runbook: 'Nothing to revoke: confirm the leaked secret was already rotated away, and ask the owner of the public source to remove it.',
})
