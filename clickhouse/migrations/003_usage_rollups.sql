-- Per-key rollups kept by materialized views, so detectors and the API never rescan raw usage.
-- Raw usage feeds the hourly rollup; the daily rollup and the last-use table are fed by the hourly one (far fewer
-- rows per insert than raw). Read them with GROUP BY and sum / min / max / sumMap / uniqMerge: rows of one key and
-- bucket are merged in the background, not at insert.

CREATE TABLE IF NOT EXISTS key_usage_hourly
(
    account_id        LowCardinality(String),
    key_id            String,
    hour              DateTime('UTC'),
    key_kind          SimpleAggregateFunction(anyLast, LowCardinality(String)),
    mode              SimpleAggregateFunction(anyLast, LowCardinality(String)),
    requests          SimpleAggregateFunction(sum, UInt64),
    accepted          SimpleAggregateFunction(sum, UInt64) COMMENT 'status < 400',
    rate_limited      SimpleAggregateFunction(sum, UInt64) COMMENT 'status 429',
    by_status         SimpleAggregateFunction(sumMap, Map(UInt16, UInt64)),
    write_requests    SimpleAggregateFunction(sum, UInt64) COMMENT 'POST PUT PATCH DELETE',
    client_side       SimpleAggregateFunction(sum, UInt64) COMMENT 'made by a browser or a mobile app: an Origin, a client-side SDK or a browser user agent',
    mode_mismatch     SimpleAggregateFunction(sum, UInt64) COMMENT 'live key from a staging/development/ci deployment, or test key from production',
    amount_minor      SimpleAggregateFunction(sumMap, Map(String, UInt64)) COMMENT 'money moved by accepted requests, by currency',
    first_used_at     SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_used_at      SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    ips               AggregateFunction(uniq, String),
    countries         AggregateFunction(uniq, Nullable(String)),
    asns              AggregateFunction(uniq, Nullable(UInt32))
)
ENGINE = AggregatingMergeTree
-- Daily partitions: detectors read the last hours or days of every key, and a day's partition holds just that.
PARTITION BY toDate(hour)
ORDER BY (account_id, key_id, hour)
TTL hour + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS key_usage_hourly_mv TO key_usage_hourly AS
SELECT
    account_id,
    key_id,
    toStartOfHour(occurred_at) AS hour,
    anyLast(key_kind) AS key_kind,
    anyLast(mode) AS mode,
    count() AS requests,
    countIf(status < 400) AS accepted,
    countIf(status = 429) AS rate_limited,
    sumMap(map(status, toUInt64(1))) AS by_status,
    countIf(method IN ('POST', 'PUT', 'PATCH', 'DELETE')) AS write_requests,
    sum(key_usage.client_side) AS client_side,
    sum(key_usage.mode_mismatch) AS mode_mismatch,
    sumMapIf(map(currency, amount_minor), status < 400 AND amount_minor > 0 AND currency != '') AS amount_minor,
    min(occurred_at) AS first_used_at,
    max(occurred_at) AS last_used_at,
    uniqState(ip) AS ips,
    uniqState(nullIf(country, '')) AS countries,
    uniqState(nullIf(asn, 0)) AS asns
FROM key_usage
WHERE key_id != ''
GROUP BY account_id, key_id, hour;

CREATE TABLE IF NOT EXISTS key_usage_daily
(
    account_id        LowCardinality(String),
    key_id            String,
    day               Date,
    key_kind          SimpleAggregateFunction(anyLast, LowCardinality(String)),
    mode              SimpleAggregateFunction(anyLast, LowCardinality(String)),
    requests          SimpleAggregateFunction(sum, UInt64),
    accepted          SimpleAggregateFunction(sum, UInt64),
    rate_limited      SimpleAggregateFunction(sum, UInt64),
    by_status         SimpleAggregateFunction(sumMap, Map(UInt16, UInt64)),
    write_requests    SimpleAggregateFunction(sum, UInt64),
    client_side       SimpleAggregateFunction(sum, UInt64),
    mode_mismatch     SimpleAggregateFunction(sum, UInt64),
    amount_minor      SimpleAggregateFunction(sumMap, Map(String, UInt64)),
    first_used_at     SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_used_at      SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    ips               AggregateFunction(uniq, String),
    countries         AggregateFunction(uniq, Nullable(String)),
    asns              AggregateFunction(uniq, Nullable(UInt32))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYear(day)
ORDER BY (account_id, key_id, day)
TTL day + INTERVAL 3 YEAR
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS key_usage_daily_mv TO key_usage_daily AS
SELECT
    account_id,
    key_id,
    toDate(hour) AS day,
    anyLast(key_kind) AS key_kind,
    anyLast(mode) AS mode,
    sum(requests) AS requests,
    sum(accepted) AS accepted,
    sum(rate_limited) AS rate_limited,
    sumMap(by_status) AS by_status,
    sum(write_requests) AS write_requests,
    sum(client_side) AS client_side,
    sum(mode_mismatch) AS mode_mismatch,
    sumMap(amount_minor) AS amount_minor,
    min(first_used_at) AS first_used_at,
    max(last_used_at) AS last_used_at,
    uniqMergeState(ips) AS ips,
    uniqMergeState(countries) AS countries,
    uniqMergeState(asns) AS asns
FROM key_usage_hourly
GROUP BY account_id, key_id, day;

-- Last use of every key, one row per key after merges: what the inventory and the stale-key detector read.
CREATE TABLE IF NOT EXISTS key_last_used
(
    account_id     LowCardinality(String),
    key_id         String,
    first_used_at  SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_used_at   SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    requests       SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
ORDER BY (account_id, key_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS key_last_used_mv TO key_last_used AS
SELECT account_id, key_id, min(first_used_at) AS first_used_at, max(last_used_at) AS last_used_at, sum(requests) AS requests
FROM key_usage_hourly
GROUP BY account_id, key_id;

-- 429 RATE_LIMIT_EXCEEDED per key in 5-minute buckets: the rate-limit spike detector compares windows of these.
CREATE TABLE IF NOT EXISTS key_ratelimits_5m
(
    account_id  LowCardinality(String),
    key_id      String,
    bucket      DateTime('UTC'),
    events      SimpleAggregateFunction(sum, UInt64),
    ips         AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (account_id, key_id, bucket)
TTL bucket + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS key_ratelimits_5m_mv TO key_ratelimits_5m AS
SELECT account_id, key_id, toStartOfFiveMinutes(occurred_at) AS bucket, count() AS events, uniqState(ip) AS ips
FROM key_ratelimits
GROUP BY account_id, key_id, bucket;
