-- The contract's new optional fields the detectors read, and the behavioural baselines as rollups.
-- New columns only: the raw tables keep every existing column as it was.
ALTER TABLE key_lifecycle
    ADD COLUMN IF NOT EXISTS actor_role LowCardinality(Nullable(String)) COMMENT 'owner | admin | developer | viewer: the acting member''s role then; NULL: not said',
    ADD COLUMN IF NOT EXISTS actor_step_up LowCardinality(Nullable(String)) COMMENT 'otp | none: whether the member passed an OTP step-up; NULL: not said';

ALTER TABLE auth_events
    ADD COLUMN IF NOT EXISTS role LowCardinality(Nullable(String)) COMMENT 'member.invited / member.role_changed: the role given',
    ADD COLUMN IF NOT EXISTS previous_role LowCardinality(Nullable(String)) COMMENT 'member.role_changed: the role before';

-- Where each key is used from: per key, hour and network (country, ASN) and declared environment. The new-network,
-- dormant-key, environment-reuse and after-expiry detectors read it (the last day) and its daily rollup (baselines).
-- Few rows per key and hour: a key's traffic comes from a handful of networks.
CREATE TABLE IF NOT EXISTS key_networks_hourly
(
    account_id        LowCardinality(String),
    key_id            String,
    hour              DateTime('UTC'),
    country           LowCardinality(String) COMMENT '\'\' when the platform did not say',
    asn               UInt32 COMMENT '0 when the platform did not say',
    client_env        LowCardinality(String) COMMENT '\'\' when undeclared',
    key_kind          SimpleAggregateFunction(anyLast, LowCardinality(String)),
    mode              SimpleAggregateFunction(anyLast, LowCardinality(String)),
    requests          SimpleAggregateFunction(sum, UInt64),
    accepted          SimpleAggregateFunction(sum, UInt64) COMMENT 'status < 400',
    writes            SimpleAggregateFunction(sum, UInt64) COMMENT 'accepted POST PUT PATCH DELETE',
    money_requests    SimpleAggregateFunction(sum, UInt64) COMMENT 'accepted requests that moved money',
    amount_minor      SimpleAggregateFunction(sumMap, Map(String, UInt64)) COMMENT 'money moved by accepted requests, by currency',
    first_seen_at     SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_seen_at      SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    last_accepted_at  SimpleAggregateFunction(max, DateTime64(3, 'UTC')) COMMENT '1970 when none was accepted',
    ips               AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate(hour)
ORDER BY (account_id, key_id, hour, country, asn, client_env)
TTL hour + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- Filled once from the events already stored, before the view starts feeding it (never twice: only when empty).
INSERT INTO key_networks_hourly
SELECT account_id, key_id, toStartOfHour(occurred_at) AS hour, country, asn, client_env,
       anyLast(key_kind), anyLast(mode), count(), countIf(status < 400),
       countIf(status < 400 AND method IN ('POST', 'PUT', 'PATCH', 'DELETE')), countIf(status < 400 AND amount_minor > 0),
       sumMapIf(map(currency, amount_minor), status < 400 AND amount_minor > 0 AND currency != ''),
       min(occurred_at), max(occurred_at), maxIf(occurred_at, status < 400), uniqState(ip)
FROM key_usage
WHERE key_id != '' AND (SELECT count() FROM key_networks_hourly) = 0
GROUP BY account_id, key_id, hour, country, asn, client_env;

CREATE MATERIALIZED VIEW IF NOT EXISTS key_networks_hourly_mv TO key_networks_hourly AS
SELECT
    account_id,
    key_id,
    toStartOfHour(occurred_at) AS hour,
    country,
    asn,
    client_env,
    anyLast(key_kind) AS key_kind,
    anyLast(mode) AS mode,
    count() AS requests,
    countIf(status < 400) AS accepted,
    countIf(status < 400 AND method IN ('POST', 'PUT', 'PATCH', 'DELETE')) AS writes,
    countIf(status < 400 AND key_usage.amount_minor > 0) AS money_requests,
    sumMapIf(map(currency, key_usage.amount_minor), status < 400 AND key_usage.amount_minor > 0 AND currency != '') AS amount_minor,
    min(occurred_at) AS first_seen_at,
    max(occurred_at) AS last_seen_at,
    maxIf(occurred_at, status < 400) AS last_accepted_at,
    uniqState(ip) AS ips
FROM key_usage
WHERE key_id != ''
GROUP BY account_id, key_id, hour, country, asn, client_env;

CREATE TABLE IF NOT EXISTS key_networks_daily
(
    account_id        LowCardinality(String),
    key_id            String,
    day               Date,
    country           LowCardinality(String),
    asn               UInt32,
    client_env        LowCardinality(String),
    key_kind          SimpleAggregateFunction(anyLast, LowCardinality(String)),
    mode              SimpleAggregateFunction(anyLast, LowCardinality(String)),
    requests          SimpleAggregateFunction(sum, UInt64),
    accepted          SimpleAggregateFunction(sum, UInt64),
    writes            SimpleAggregateFunction(sum, UInt64),
    money_requests    SimpleAggregateFunction(sum, UInt64),
    amount_minor      SimpleAggregateFunction(sumMap, Map(String, UInt64)),
    first_seen_at     SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_seen_at      SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    last_accepted_at  SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    ips               AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (account_id, key_id, day, country, asn, client_env)
TTL day + INTERVAL 3 YEAR
SETTINGS non_replicated_deduplication_window = 1000;

INSERT INTO key_networks_daily
SELECT account_id, key_id, toDate(hour) AS day, country, asn, client_env, anyLast(key_kind), anyLast(mode), sum(requests), sum(accepted),
       sum(writes), sum(money_requests), sumMap(amount_minor), min(first_seen_at), max(last_seen_at), max(last_accepted_at), uniqMergeState(ips)
FROM key_networks_hourly
WHERE (SELECT count() FROM key_networks_daily) = 0
GROUP BY account_id, key_id, day, country, asn, client_env;

CREATE MATERIALIZED VIEW IF NOT EXISTS key_networks_daily_mv TO key_networks_daily AS
SELECT
    account_id,
    key_id,
    toDate(hour) AS day,
    country,
    asn,
    client_env,
    anyLast(key_kind) AS key_kind,
    anyLast(mode) AS mode,
    sum(requests) AS requests,
    sum(accepted) AS accepted,
    sum(writes) AS writes,
    sum(money_requests) AS money_requests,
    sumMap(amount_minor) AS amount_minor,
    min(first_seen_at) AS first_seen_at,
    max(last_seen_at) AS last_seen_at,
    max(last_accepted_at) AS last_accepted_at,
    uniqMergeState(ips) AS ips
FROM key_networks_hourly
GROUP BY account_id, key_id, day, country, asn, client_env;

-- What each key does with each scope, per day: requests, accepted writes and refusals by error code. The
-- over-privilege detector reads the writes; the key page can show the refusals.
CREATE TABLE IF NOT EXISTS key_scopes_daily
(
    account_id     LowCardinality(String),
    key_id         String,
    day            Date,
    scope          LowCardinality(String) COMMENT '\'\' when the platform did not say',
    requests       SimpleAggregateFunction(sum, UInt64),
    writes         SimpleAggregateFunction(sum, UInt64) COMMENT 'accepted POST PUT PATCH DELETE',
    last_write_at  SimpleAggregateFunction(max, DateTime64(3, 'UTC')) COMMENT '1970 when none',
    refusals       SimpleAggregateFunction(sumMap, Map(String, UInt64)) COMMENT 'refused requests (status >= 400) by error code'
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (account_id, key_id, day, scope)
TTL day + INTERVAL 3 YEAR
SETTINGS non_replicated_deduplication_window = 1000;

INSERT INTO key_scopes_daily
SELECT account_id, key_id, toDate(occurred_at) AS day, scope, count(),
       countIf(status < 400 AND method IN ('POST', 'PUT', 'PATCH', 'DELETE')),
       maxIf(occurred_at, status < 400 AND method IN ('POST', 'PUT', 'PATCH', 'DELETE')),
       sumMapIf(map(error_code, toUInt64(1)), status >= 400 AND error_code != '')
FROM key_usage
WHERE key_id != '' AND (SELECT count() FROM key_scopes_daily) = 0
GROUP BY account_id, key_id, day, scope;

CREATE MATERIALIZED VIEW IF NOT EXISTS key_scopes_daily_mv TO key_scopes_daily AS
SELECT
    account_id,
    key_id,
    toDate(occurred_at) AS day,
    scope,
    count() AS requests,
    countIf(status < 400 AND method IN ('POST', 'PUT', 'PATCH', 'DELETE')) AS writes,
    maxIf(occurred_at, status < 400 AND method IN ('POST', 'PUT', 'PATCH', 'DELETE')) AS last_write_at,
    sumMapIf(map(error_code, toUInt64(1)), status >= 400 AND error_code != '') AS refusals
FROM key_usage
WHERE key_id != ''
GROUP BY account_id, key_id, day, scope;

-- Scope and IP refusals per key and minute: what a stolen key probing its permissions leaves. Rare on a healthy
-- platform, so the table stays small; the scope-probe detector reads its last hour.
CREATE TABLE IF NOT EXISTS key_probes_1m
(
    account_id  LowCardinality(String),
    key_id      String,
    minute      DateTime('UTC'),
    error_code  LowCardinality(String) COMMENT 'INSUFFICIENT_SCOPE | IP_NOT_ALLOWED',
    scope       LowCardinality(String),
    refusals    SimpleAggregateFunction(sum, UInt64),
    ips         AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (account_id, key_id, minute, error_code, scope)
TTL minute + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 1000;

INSERT INTO key_probes_1m
SELECT account_id, key_id, toStartOfMinute(occurred_at) AS minute, error_code, scope, count(), uniqState(ip)
FROM key_usage
WHERE key_id != '' AND error_code IN ('INSUFFICIENT_SCOPE', 'IP_NOT_ALLOWED') AND (SELECT count() FROM key_probes_1m) = 0
GROUP BY account_id, key_id, minute, error_code, scope;

CREATE MATERIALIZED VIEW IF NOT EXISTS key_probes_1m_mv TO key_probes_1m AS
SELECT account_id, key_id, toStartOfMinute(occurred_at) AS minute, error_code, scope, count() AS refusals, uniqState(ip) AS ips
FROM key_usage
WHERE key_id != '' AND error_code IN ('INSUFFICIENT_SCOPE', 'IP_NOT_ALLOWED')
GROUP BY account_id, key_id, minute, error_code, scope;

-- Dashboard logins per user, day and country: the account-takeover detector's "countries this user logs in from".
CREATE TABLE IF NOT EXISTS user_logins_daily
(
    account_id     LowCardinality(String),
    user_id        String,
    day            Date,
    country        LowCardinality(String) COMMENT '\'\' when the platform did not say',
    logins         SimpleAggregateFunction(sum, UInt64) COMMENT 'login.succeeded',
    failures       SimpleAggregateFunction(sum, UInt64) COMMENT 'login.failed and mfa.failed',
    first_login_at SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_login_at  SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    ips            AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (account_id, user_id, day, country)
TTL day + INTERVAL 3 YEAR
SETTINGS non_replicated_deduplication_window = 1000;

INSERT INTO user_logins_daily
SELECT account_id, assumeNotNull(user_id), toDate(occurred_at) AS day, ifNull(country, ''), countIf(action = 'login.succeeded'),
       countIf(action IN ('login.failed', 'mfa.failed')), min(occurred_at), max(occurred_at), uniqState(ip)
FROM auth_events
WHERE user_id IS NOT NULL AND action IN ('login.succeeded', 'login.failed', 'mfa.failed') AND (SELECT count() FROM user_logins_daily) = 0
GROUP BY account_id, user_id, day, country;

CREATE MATERIALIZED VIEW IF NOT EXISTS user_logins_daily_mv TO user_logins_daily AS
SELECT account_id, assumeNotNull(user_id) AS user_id, toDate(occurred_at) AS day, ifNull(country, '') AS country,
       countIf(action = 'login.succeeded') AS logins, countIf(action IN ('login.failed', 'mfa.failed')) AS failures,
       min(occurred_at) AS first_login_at, max(occurred_at) AS last_login_at, uniqState(ip) AS ips
FROM auth_events
WHERE auth_events.user_id IS NOT NULL AND action IN ('login.succeeded', 'login.failed', 'mfa.failed')
GROUP BY account_id, user_id, day, country;
