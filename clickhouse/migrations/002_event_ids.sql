-- Every stored event's id, ordered by time: the writer looks a batch's (occurred_at, event_id) pairs up here and
-- drops the ones already stored, so a redelivered event is stored once and the rollups below count it once.
-- A redelivery carries the original occurred_at, so the lookup reads only the granules of the batch's time span.
CREATE TABLE IF NOT EXISTS event_ids
(
    occurred_at  DateTime64(3, 'UTC'),
    event_id     UUID,
    type         LowCardinality(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (occurred_at, event_id)
TTL toDateTime(occurred_at) + INTERVAL 5 YEAR
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS event_ids_key_usage TO event_ids AS
SELECT occurred_at, event_id, 'key.usage' AS type FROM key_usage;

CREATE MATERIALIZED VIEW IF NOT EXISTS event_ids_key_ratelimits TO event_ids AS
SELECT occurred_at, event_id, 'key.ratelimited' AS type FROM key_ratelimits;

CREATE MATERIALIZED VIEW IF NOT EXISTS event_ids_auth_events TO event_ids AS
SELECT occurred_at, event_id, 'auth.event' AS type FROM auth_events;

CREATE MATERIALIZED VIEW IF NOT EXISTS event_ids_key_lifecycle TO event_ids AS
SELECT occurred_at, event_id, 'key.lifecycle' AS type FROM key_lifecycle;

CREATE MATERIALIZED VIEW IF NOT EXISTS event_ids_leak_reports TO event_ids AS
SELECT occurred_at, event_id, 'leak.reported' AS type FROM leak_reports;
