-- The dashboard's behavioural baselines as rollups (issue 13), so the password-spray and orphaned-key detectors
-- stop scanning auth_events and key_lifecycle: auth_events is ordered by account, so a question about the last
-- 15 minutes of every account, or about the few membership changes among millions of logins, reads it all.

-- Failed logins per minute, account, IP and user (user_id, or the lower-cased email of an unknown user): the
-- password-spray detector reads the last 15 minutes of it. Time first in the key, so those minutes are a narrow
-- range; one row per user and IP in a minute, so a brute force of thousands of tries is a handful of rows.
CREATE TABLE IF NOT EXISTS login_failures_1m
(
    minute      DateTime('UTC'),
    account_id  LowCardinality(String),
    ip          String,
    subject     String COMMENT 'user_id, or lower(actor_email) when the user is unknown; \'\' when neither was said',
    failures    SimpleAggregateFunction(sum, UInt64) COMMENT 'login.failed',
    first_at    SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_at     SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, account_id, ip, subject)
TTL minute + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- Filled once from the events already stored, before the view starts feeding it (never twice: only when empty).
INSERT INTO login_failures_1m
SELECT toStartOfMinute(occurred_at) AS minute, account_id, ip, ifNull(user_id, ifNull(lower(actor_email), '')) AS subject,
       count(), min(occurred_at), max(occurred_at)
FROM auth_events
WHERE action = 'login.failed' AND (SELECT count() FROM login_failures_1m) = 0
GROUP BY minute, account_id, ip, subject;

CREATE MATERIALIZED VIEW IF NOT EXISTS login_failures_1m_mv TO login_failures_1m AS
SELECT toStartOfMinute(occurred_at) AS minute, account_id, ip,
       ifNull(auth_events.user_id, ifNull(lower(auth_events.actor_email), '')) AS subject,
       count() AS failures, min(occurred_at) AS first_at, max(occurred_at) AS last_at
FROM auth_events
WHERE action = 'login.failed'
GROUP BY minute, account_id, ip, subject;

-- Membership changes (a member invited or removed), a few among millions of logins, kept apart with their times
-- so "removed, and not invited back, as of a moment" stays exact: the orphaned-key detector reads them.
CREATE TABLE IF NOT EXISTS member_changes
(
    account_id   LowCardinality(String),
    member       String COMMENT 'the target_user_id of the change',
    occurred_at  DateTime64(3, 'UTC'),
    action       LowCardinality(String) COMMENT 'member.invited | member.removed',
    actor_id     Nullable(String) COMMENT 'the user_id who made the change',
    event_id     UUID
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (account_id, member, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

INSERT INTO member_changes
SELECT account_id, assumeNotNull(target_user_id), occurred_at, action, user_id, event_id
FROM auth_events
WHERE action IN ('member.invited', 'member.removed') AND target_user_id IS NOT NULL AND (SELECT count() FROM member_changes) = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS member_changes_mv TO member_changes AS
SELECT account_id, assumeNotNull(target_user_id) AS member, occurred_at, action, auth_events.user_id AS actor_id, event_id
FROM auth_events
WHERE action IN ('member.invited', 'member.removed') AND auth_events.target_user_id IS NOT NULL;

-- Who created each key (members only; a key created by the system or a monitor has no creator to leave), one row
-- per key after merges.
CREATE TABLE IF NOT EXISTS key_creators
(
    account_id  LowCardinality(String),
    key_id      String,
    created_at  SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    creator     AggregateFunction(argMin, String, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY (account_id, key_id)
SETTINGS non_replicated_deduplication_window = 1000;

INSERT INTO key_creators
SELECT account_id, key_id, min(occurred_at), argMinState(assumeNotNull(actor_id), occurred_at)
FROM key_lifecycle
WHERE action = 'created' AND actor_type = 'user' AND actor_id IS NOT NULL AND (SELECT count() FROM key_creators) = 0
GROUP BY account_id, key_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS key_creators_mv TO key_creators AS
SELECT account_id, key_id, min(occurred_at) AS created_at, argMinState(assumeNotNull(key_lifecycle.actor_id), occurred_at) AS creator
FROM key_lifecycle
WHERE action = 'created' AND actor_type = 'user' AND key_lifecycle.actor_id IS NOT NULL
GROUP BY account_id, key_id;
