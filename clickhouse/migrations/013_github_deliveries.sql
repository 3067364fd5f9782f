-- Signed GitHub secret-scanning deliveries already accepted, by the hash of their signature: a replayed payload is
-- refused by every instance and after a restart. A signature older than a day is refused anyway by the TTL's time.
CREATE TABLE IF NOT EXISTS github_deliveries
(
    signature_sha256  String,
    received_at       DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY signature_sha256
TTL toDateTime(received_at) + INTERVAL 2 DAY;
