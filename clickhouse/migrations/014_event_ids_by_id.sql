-- Every stored event's id ordered by the id itself: the writer looks new events up here by event_id alone, so the
-- first stored version of an id wins whatever its occurred_at (event_ids is ordered by time: a redelivery with
-- another occurred_at was not found there and got stored twice). Fine granules: a batch's lookup reads about one
-- granule per id, however large the table grows.
CREATE TABLE IF NOT EXISTS event_ids_by_id
(
    event_id     UUID,
    occurred_at  DateTime64(3, 'UTC'),
    type         LowCardinality(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY tuple()
ORDER BY event_id
TTL toDateTime(occurred_at) + INTERVAL 5 YEAR
SETTINGS index_granularity = 256, non_replicated_deduplication_window = 1000;

-- Fed from event_ids, which every raw table's view feeds: one more part per insert, not five.
CREATE MATERIALIZED VIEW IF NOT EXISTS event_ids_by_id_mv TO event_ids_by_id AS
SELECT event_id, occurred_at, type FROM event_ids;

-- The ids stored before this migration (rerunning it adds copies that the Replacing engine merges away).
INSERT INTO event_ids_by_id SELECT event_id, occurred_at, type FROM event_ids
WHERE event_id NOT IN (SELECT event_id FROM event_ids_by_id);
