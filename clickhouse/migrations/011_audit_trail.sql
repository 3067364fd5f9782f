-- keywatch's own audit trail: every call that reads an export or changes anything, and every automatic action.
-- Each record holds the hash of the one before (a hash chain from a fixed genesis), so `keywatch verify-audit`
-- finds a record changed, deleted or reordered. Kept without TTL: it is the evidence.
CREATE TABLE IF NOT EXISTS audit_trail
(
    seq         UInt64,
    at          DateTime64(3, 'UTC'),
    actor       String,
    action      LowCardinality(String),
    target      String,
    request_id  String,
    outcome     LowCardinality(String),
    detail      String COMMENT 'JSON',
    prev_hash   FixedString(64),
    hash        FixedString(64)
)
ENGINE = MergeTree
ORDER BY seq;
