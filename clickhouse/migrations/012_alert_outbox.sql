-- The alert outbox: an alert is recorded here before it is sent and marked when delivered. Undelivered alerts are
-- retried with backoff, in order per destination, across restarts. An alert's current state is its row with the
-- highest version: read with FINAL.
CREATE TABLE IF NOT EXISTS alert_outbox
(
    alert_id         String,
    channel          LowCardinality(String) COMMENT 'slack | email | log',
    destination      String COMMENT 'a Slack channel, or mail recipients',
    kind             LowCardinality(String) COMMENT 'finding | update | summary | digest',
    finding_id       String,
    severity         LowCardinality(String),
    payload          String COMMENT 'JSON: the message to send; never a secret',
    status           LowCardinality(String) COMMENT 'pending | delivered',
    attempts         UInt32,
    last_error       String,
    created_at       DateTime64(3, 'UTC'),
    next_attempt_at  DateTime64(3, 'UTC'),
    delivered_at     Nullable(DateTime64(3, 'UTC')),
    slack_ts         String COMMENT 'the posted Slack message, so it can be updated',
    version          UInt64,
    -- Dedup and message updates look alerts up by finding.
    INDEX idx_finding finding_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(created_at)
ORDER BY alert_id
TTL toDateTime(created_at) + INTERVAL 400 DAY;
