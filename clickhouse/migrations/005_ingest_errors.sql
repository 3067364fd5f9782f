-- Rejected input, whatever way it came in: why, where from, and the original bytes (base64: they may not be UTF-8).
CREATE TABLE IF NOT EXISTS ingest_errors
(
    received_at  DateTime64(3, 'UTC'),
    source       LowCardinality(String) COMMENT 'kafka | file | http',
    topic        LowCardinality(String),
    partition    Nullable(Int32),
    offset       Nullable(Int64),
    line         Nullable(UInt64) COMMENT 'line number for file and HTTP NDJSON input',
    message_key  Nullable(String),
    reason       LowCardinality(String) COMMENT 'invalid_json | schema_violation | too_large | future_timestamp | unknown_type | wrong_topic',
    detail       String,
    event_id     Nullable(String),
    event_type   LowCardinality(Nullable(String)),
    raw_size     UInt32,
    raw_base64   String CODEC(ZSTD(3))
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (received_at, reason)
TTL toDateTime(received_at) + INTERVAL 90 DAY;
