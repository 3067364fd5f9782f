-- Signed checkpoints of keywatch's own audit trail: every few seconds of activity, the head of the hash chain
-- (seq and hash) signed with keywatch's Ed25519 key, whose private half is a file on keywatch's host, not in
-- ClickHouse. Whoever can write to ClickHouse can recompute an unkeyed hash chain after changing a record; they
-- cannot sign the recomputed hashes, so `verify` catches the rewrite at the first checkpoint after it.
-- Its own table (not columns of audit_trail, created by a later migration), kept without TTL like the trail.
CREATE TABLE IF NOT EXISTS audit_checkpoints
(
    seq              UInt64,
    hash             FixedString(64),
    at               DateTime64(3, 'UTC'),
    key_fingerprint  String,
    signature        String COMMENT 'base64 Ed25519 over keywatch-audit-checkpoint:v1, seq, hash and at'
)
ENGINE = MergeTree
ORDER BY seq;
