-- What keywatch did (or decided, or was refused) about a key: automatic and manual revokes and resets, from the
-- decision to the key service's confirmation and the watch that proves the revocation took effect.
-- An action's current state is its row with the highest version: read with FINAL.
CREATE TABLE IF NOT EXISTS actions
(
    action_id      String,
    command_id     UUID COMMENT 'the key.command id and the HTTP Idempotency-Key',
    command        LowCardinality(String) COMMENT 'revoke | reset',
    account_id     LowCardinality(String),
    key_id         String,
    key_prefix     String,
    finding_id     String,
    policy         String COMMENT 'the policy rule that decided it; \'\' for a person',
    requested_by   String COMMENT 'auto:<detector> or user:<id>',
    reason         String,
    incident       Bool,
    forced         Bool,
    transport      LowCardinality(String) COMMENT 'http | kafka | none',
    status         LowCardinality(String) COMMENT 'dry_run | blocked | paused | skipped | refused | requested | confirmed | failed | not_effective',
    status_detail  String,
    requested_at   DateTime64(3, 'UTC'),
    confirmed_at   Nullable(DateTime64(3, 'UTC')),
    confirmed_by   LowCardinality(String) COMMENT 'http | lifecycle',
    effective_at   Nullable(DateTime64(3, 'UTC')) COMMENT 'when the key service says the key stopped working',
    updated_at     DateTime64(3, 'UTC'),
    version        UInt64,
    -- The response engine looks actions up by the finding that caused them.
    INDEX idx_finding finding_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(requested_at)
ORDER BY (account_id, key_id, action_id);

-- The response kill switch and other runtime settings that must survive a restart.
CREATE TABLE IF NOT EXISTS response_state
(
    name        String,
    value       String,
    changed_by  String,
    changed_at  DateTime64(3, 'UTC'),
    version     UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY name;
