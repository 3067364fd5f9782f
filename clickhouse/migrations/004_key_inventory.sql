-- The key inventory as of a moment, folded from lifecycle events at read time: `key_inventory_at(at = …)` for
-- detectors and backtests, `key_inventory` for now. Lifecycle events are few (a handful per key) and arrive late
-- and out of order, so an exact fold over them is cheap and always right.
-- status: revoked and expired are terminal; a rotation whose grace period is running is 'rotating'.
CREATE VIEW IF NOT EXISTS key_inventory_at AS
WITH toDateTime64(0, 3, 'UTC') AS never
SELECT
    account_id,
    key_id,
    argMax(key_prefix, occurred_at)                                              AS key_prefix,
    any(key_kind)                                                                AS key_kind,
    any(mode)                                                                    AS mode,
    argMaxIf(label, occurred_at, action = 'created')                             AS label,
    nullIf(minIf(occurred_at, action = 'created'), never)                        AS created_at,
    nullIf(maxIf(occurred_at, action = 'reset'), never)                          AS last_reset_at,
    nullIf(maxIf(occurred_at, action IN ('created', 'reset')), never)            AS secret_set_at,
    argMaxIf(secret_sha256, occurred_at, action IN ('created', 'reset'))         AS secret_sha256,
    argMaxIf(scopes, occurred_at, action IN ('created', 'scopes_changed'))       AS scopes,
    argMaxIf(expires_at, occurred_at, action = 'created')                        AS expires_at,
    ifNull(argMaxIf(auto_generated, occurred_at, action = 'created'), false)     AS auto_generated,
    nullIf(maxIf(occurred_at, action = 'rotated'), never)                        AS rotated_at,
    argMaxIf(replacement_key_id, occurred_at, action = 'rotated')                AS replacement_key_id,
    argMaxIf(old_key_expires_at, occurred_at, action = 'rotated')                AS rotation_grace_deadline,
    nullIf(maxIf(occurred_at, action = 'rolled_back'), never)                    AS rolled_back_at,
    nullIf(minIf(occurred_at, action = 'revoked'), never)                        AS revoked_at,
    nullIf(minIf(occurred_at, action = 'expired'), never)                        AS expired_at,
    multiIf(
        revoked_at IS NOT NULL, 'revoked',
        expired_at IS NOT NULL, 'expired',
        rotated_at IS NOT NULL AND (rolled_back_at IS NULL OR rolled_back_at < rotated_at), 'rotating',
        'active')                                                                AS status,
    max(occurred_at)                                                             AS last_event_at
FROM key_lifecycle
WHERE occurred_at <= {at:DateTime64(3, 'UTC')}
GROUP BY account_id, key_id;

CREATE VIEW IF NOT EXISTS key_inventory AS
SELECT * FROM key_inventory_at(at = now64(3));
