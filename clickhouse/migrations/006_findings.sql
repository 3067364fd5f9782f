-- Findings raised by detectors, with their lifecycle. A finding's current state is its row with the highest
-- version: read with FINAL. Every status change is also appended to finding_changes (who, when, why).
CREATE TABLE IF NOT EXISTS findings
(
    finding_id        String,
    detector          LowCardinality(String),
    severity          LowCardinality(String),
    account_id        LowCardinality(String),
    key_id            String,
    user_id           String,
    ip                String,
    title             String,
    evidence          String COMMENT 'JSON: the numbers that fired it',
    dedup_key         String,
    first_seen_at     DateTime64(3, 'UTC'),
    last_seen_at      DateTime64(3, 'UTC'),
    occurrences       UInt32,
    status            LowCardinality(String) COMMENT 'open | acknowledged | resolved | suppressed',
    status_changed_at DateTime64(3, 'UTC'),
    status_changed_by String,
    status_reason     String,
    version           UInt64,
    INDEX idx_dedup dedup_key TYPE bloom_filter(0.001) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(version)
ORDER BY finding_id;

CREATE TABLE IF NOT EXISTS finding_changes
(
    finding_id   String,
    at           DateTime64(3, 'UTC'),
    from_status  LowCardinality(String),
    to_status    LowCardinality(String),
    actor        String,
    reason       String
)
ENGINE = MergeTree
ORDER BY (finding_id, at);

-- Suppressions by detector and subject (key, user or ip) or account, with an expiry. A suppressed finding is
-- recorded, not alerted.
CREATE TABLE IF NOT EXISTS suppressions
(
    suppression_id  String,
    detector        LowCardinality(String) COMMENT '\'\' = every detector',
    account_id      String COMMENT '\'\' = every account',
    key_id          String,
    user_id         String,
    ip              String,
    reason          String,
    author          String,
    created_at      DateTime64(3, 'UTC'),
    expires_at      Nullable(DateTime64(3, 'UTC')),
    deleted         Bool DEFAULT false,
    version         UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY suppression_id;

CREATE TABLE IF NOT EXISTS detector_runs
(
    detector     LowCardinality(String),
    started_at   DateTime64(3, 'UTC'),
    as_of        DateTime64(3, 'UTC'),
    duration_ms  Float64,
    rows_read    UInt64,
    findings     UInt32,
    error        String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(started_at)
ORDER BY (detector, started_at)
TTL toDateTime(started_at) + INTERVAL 90 DAY;
