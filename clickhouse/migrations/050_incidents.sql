-- Incidents: findings on linked subjects (a key; the user who created, revealed or rotated it; an account-level
-- finding of its account) within a window, grouped as one. An incident's current state is its row with the highest
-- version: read with FINAL. incident_findings says which findings it holds, when each was raised and why it joined;
-- its rows are written once.
CREATE TABLE IF NOT EXISTS incidents
(
    incident_id      String,
    account_id       LowCardinality(String),
    title            String COMMENT 'the first finding''s title',
    severity         LowCardinality(String) COMMENT 'the highest of its findings',
    subjects         Array(String) COMMENT 'key:key_…, user:usr_…, account:acct_… it is about',
    opened_at        DateTime64(3, 'UTC'),
    last_finding_at  DateTime64(3, 'UTC'),
    findings         UInt32,
    version          UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY incident_id;

CREATE TABLE IF NOT EXISTS incident_findings
(
    incident_id  String,
    finding_id   String,
    account_id   LowCardinality(String),
    detector     LowCardinality(String),
    severity     LowCardinality(String),
    title        String,
    subject      String COMMENT 'key:…, user:…, or account:…',
    linked_by    String COMMENT 'why it joined: the subject it shares, or the event linking them (usr_… revealed key_…)',
    at           DateTime64(3, 'UTC') COMMENT 'when the finding was raised or reopened',
    added_at     DateTime64(3, 'UTC'),
    INDEX idx_finding finding_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree
ORDER BY (incident_id, finding_id);
