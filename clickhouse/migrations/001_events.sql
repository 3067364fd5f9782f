-- The five inbound event types of the platform contract, one table each.
-- Access paths: per account and key over time (detectors, key pages, exposure reports) and per account over time
-- (compliance exports). Monthly partitions keep TTL drops cheap; strings are '' or NULL where the contract allows null.
-- Retention: 400 days (PCI DSS asks a year of audit trail, the last 3 months at hand; the rollups keep longer).

CREATE TABLE IF NOT EXISTS key_usage
(
    event_id      UUID,
    occurred_at   DateTime64(3, 'UTC'),
    received_at   DateTime64(3, 'UTC') DEFAULT now64(3),
    account_id    LowCardinality(String),
    -- The hot table has no Nullable columns: they cost a null map per column on every insert and read.
    -- the contract's null is stored as '' (strings) or 0 (asn, amount_minor: ASN 0 is reserved, no money is 0).
    key_id        String COMMENT '\'\' when the presented key is unknown (INVALID_KEY)',
    key_prefix    LowCardinality(String),
    key_kind      LowCardinality(String),
    mode          LowCardinality(String),
    request_id    String,
    method        LowCardinality(String),
    endpoint      LowCardinality(String),
    scope         LowCardinality(String),
    status        UInt16,
    error_code    LowCardinality(String),
    ip            String,
    country       LowCardinality(String),
    asn           UInt32,
    user_agent    String,
    origin        String,
    sdk           LowCardinality(String),
    client_env    LowCardinality(String),
    latency_ms    Float32,
    amount_minor  UInt64,
    currency      LowCardinality(String),
    -- Derived at ingest (ingest/rows.ts), where the JS thread has time to spare and the engine does not.
    client_side   UInt8 COMMENT '1: made by a browser or a mobile app (an Origin, a client-side SDK or a browser user agent)',
    mode_mismatch UInt8 COMMENT '1: a live key from a staging/development/ci deployment, or a test key from production'
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (account_id, key_id, occurred_at)
TTL toDateTime(occurred_at) + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS key_ratelimits
(
    event_id            UUID,
    occurred_at         DateTime64(3, 'UTC'),
    received_at         DateTime64(3, 'UTC') DEFAULT now64(3),
    account_id          LowCardinality(String),
    key_id              String,
    key_prefix          LowCardinality(String),
    key_kind            LowCardinality(String),
    mode                LowCardinality(String),
    request_id          String,
    endpoint            LowCardinality(String),
    ip                  String,
    limit               UInt32,
    window_seconds      UInt32,
    observed            UInt32,
    retry_after_seconds Nullable(UInt32)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (account_id, key_id, occurred_at)
TTL toDateTime(occurred_at) + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- The security log: exported per account and time range; brute-force detectors look up users and IPs.
CREATE TABLE IF NOT EXISTS auth_events
(
    event_id        UUID,
    occurred_at     DateTime64(3, 'UTC'),
    received_at     DateTime64(3, 'UTC') DEFAULT now64(3),
    account_id      LowCardinality(String),
    user_id         Nullable(String),
    actor_email     Nullable(String),
    action          LowCardinality(String),
    ip              String,
    country         LowCardinality(Nullable(String)),
    user_agent      String CODEC(ZSTD(3)),
    session_id      Nullable(String),
    reason          LowCardinality(Nullable(String)),
    target_user_id  Nullable(String),
    key_id          Nullable(String),
    INDEX idx_ip ip TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_user user_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (account_id, occurred_at)
TTL toDateTime(occurred_at) + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS key_lifecycle
(
    event_id            UUID,
    occurred_at         DateTime64(3, 'UTC'),
    received_at         DateTime64(3, 'UTC') DEFAULT now64(3),
    account_id          LowCardinality(String),
    key_id              String,
    key_prefix          String,
    key_kind            LowCardinality(String),
    mode                LowCardinality(String),
    action              LowCardinality(String),
    actor_type          LowCardinality(String),
    actor_id            Nullable(String),
    label               Nullable(String),
    scopes              Nullable(String) COMMENT 'JSON of the contract''s scopes; NULL = not in this event, ''null'' = full access',
    expires_at          Nullable(DateTime64(3, 'UTC')),
    auto_generated      Nullable(Bool),
    secret_sha256       Nullable(String),
    replacement_key_id  Nullable(String),
    old_key_expires_at  Nullable(DateTime64(3, 'UTC')),
    reason              Nullable(String),
    INDEX idx_secret secret_sha256 TYPE bloom_filter(0.001) GRANULARITY 1
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (account_id, key_id, occurred_at)
-- Lifecycle is small and defines the inventory: keep it as long as keys can live.
TTL toDateTime(occurred_at) + INTERVAL 5 YEAR
SETTINGS non_replicated_deduplication_window = 1000;

-- A leak report never stores the leaked token: it is hashed on arrival; token_prefix is its display form (sk_live_4eC3).
CREATE TABLE IF NOT EXISTS leak_reports
(
    event_id      UUID,
    occurred_at   DateTime64(3, 'UTC'),
    received_at   DateTime64(3, 'UTC') DEFAULT now64(3),
    account_id    LowCardinality(String),
    token_sha256  String,
    token_prefix  Nullable(String),
    token_type    LowCardinality(Nullable(String)),
    source        LowCardinality(String),
    url           Nullable(String),
    INDEX idx_token token_sha256 TYPE bloom_filter(0.001) GRANULARITY 1
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (account_id, occurred_at)
TTL toDateTime(occurred_at) + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000;
