-- Step-up enrolments: one TOTP secret per API token (the person holding it), sealed with AES-256-GCM under a key
-- derived from keywatch's signing key (a file on keywatch's host, not in ClickHouse): reading this table does not
-- let anyone mint codes. The latest version per token wins; kept as long as the token is.
CREATE TABLE IF NOT EXISTS token_totp
(
    token_id       String,
    secret_sealed  String,
    enrolled_at    DateTime64(3, 'UTC'),
    enrolled_by    String,
    version        UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY token_id;
