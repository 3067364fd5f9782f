-- API tokens: only the SHA-256 of a token is stored; the token itself is shown once, when it is created.
-- A token's current state is its row with the highest version: read with FINAL.
CREATE TABLE IF NOT EXISTS api_tokens
(
    token_id    String,
    name        String,
    role        LowCardinality(String) COMMENT 'viewer | auditor | responder | admin | ingest',
    token_hash  String COMMENT 'hex SHA-256 of the token',
    prefix      String COMMENT 'the first characters of the token, to recognise it by',
    created_at  DateTime64(3, 'UTC'),
    created_by  String,
    revoked_at  Nullable(DateTime64(3, 'UTC')),
    revoked_by  String,
    version     UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY token_id;
