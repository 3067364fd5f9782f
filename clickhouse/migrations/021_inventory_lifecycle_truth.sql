-- The key inventory tells the lifecycle's truth (004 folded it too simply):
-- - a rollback deletes the rotation's replacement key: status 'deleted', deleted_at (the rolled_back event is
--   the kept key's, so it is looked up across keys); the kept key has no grace deadline again;
-- - a key past its expires_at or its rotation grace deadline is 'expired', whether or not the platform has sent
--   the expired event yet;
-- - rotation_grace_seconds: how long the grace period given at the rotation was (the contract allows 7 days).
-- status order: revoked, deleted, expired, rotating, active.
CREATE OR REPLACE VIEW key_inventory_at AS
WITH toDateTime64(0, 3, 'UTC') AS never
SELECT
    f.account_id AS account_id,
    f.key_id AS key_id,
    f.key_prefix AS key_prefix,
    f.key_kind AS key_kind,
    f.mode AS mode,
    f.label AS label,
    f.created_at AS created_at,
    f.last_reset_at AS last_reset_at,
    f.secret_set_at AS secret_set_at,
    f.secret_sha256 AS secret_sha256,
    f.scopes AS scopes,
    f.expires_at AS expires_at,
    f.auto_generated AS auto_generated,
    f.rotated_at AS rotated_at,
    f.replacement_key_id AS replacement_key_id,
    if(f.rotation_undone, NULL, f.grace_deadline) AS rotation_grace_deadline,
    if(f.rotation_undone OR f.rotated_at IS NULL, NULL, dateDiff('second', f.rotated_at, f.grace_deadline)) AS rotation_grace_seconds,
    f.rolled_back_at AS rolled_back_at,
    f.revoked_at AS revoked_at,
    f.expired_at AS expired_at,
    d.deleted_at AS deleted_at,
    multiIf(
        f.revoked_at IS NOT NULL, 'revoked',
        d.deleted_at IS NOT NULL, 'deleted',
        f.expired_at IS NOT NULL OR f.expires_at <= {at:DateTime64(3, 'UTC')}
            OR (NOT f.rotation_undone AND f.grace_deadline <= {at:DateTime64(3, 'UTC')}), 'expired',
        f.rotated_at IS NOT NULL AND NOT f.rotation_undone, 'rotating',
        'active') AS status,
    greatest(f.last_event_at, ifNull(d.deleted_at, never)) AS last_event_at
FROM
(
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
        argMaxIf(old_key_expires_at, occurred_at, action = 'rotated')                AS grace_deadline,
        nullIf(maxIf(occurred_at, action = 'rolled_back'), never)                    AS rolled_back_at,
        rotated_at IS NOT NULL AND rolled_back_at IS NOT NULL AND rolled_back_at >= rotated_at AS rotation_undone,
        nullIf(minIf(occurred_at, action = 'revoked'), never)                        AS revoked_at,
        nullIf(minIf(occurred_at, action = 'expired'), never)                        AS expired_at,
        max(occurred_at)                                                             AS last_event_at
    FROM key_lifecycle
    WHERE occurred_at <= {at:DateTime64(3, 'UTC')}
    GROUP BY account_id, key_id
) AS f
LEFT JOIN
(
    -- The replacement keys that rollbacks deleted.
    SELECT account_id, assumeNotNull(replacement_key_id) AS key_id, toNullable(min(occurred_at)) AS deleted_at
    FROM key_lifecycle
    WHERE action = 'rolled_back' AND replacement_key_id IS NOT NULL AND occurred_at <= {at:DateTime64(3, 'UTC')}
    GROUP BY account_id, key_id
) AS d ON d.account_id = f.account_id AND d.key_id = f.key_id;

CREATE OR REPLACE VIEW key_inventory AS
SELECT * FROM key_inventory_at(at = now64(3));
