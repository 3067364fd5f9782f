-- GitHub secret-scanning deliveries already accepted, by what was sent rather than how it was signed: the SHA-256
-- of the signing key's id and the body's SHA-256. An ECDSA signature can be re-encoded (padding, the URL-safe
-- alphabet) or malleated (r, n-s) and still verify, so a guard on the signature header let such replays through.
-- Kept as long as the leak reports themselves (a replay a year on is refused too); replaces github_deliveries.
CREATE TABLE IF NOT EXISTS github_delivery_digests
(
    delivery_sha256  String,
    key_identifier   String,
    received_at      DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY delivery_sha256
TTL toDateTime(received_at) + INTERVAL 400 DAY;
