// The 90-day rotation policy for live secret and restricted keys: the clock runs from `created` or the last `reset`;
// a rotation's new key starts its own clock. Publishable and test keys are exempt.
export const ROTATION_QUERY = `
    SELECT account_id, key_id, key_prefix, key_kind, toString(secret_set_at) AS secret_set,
           dateDiff('day', secret_set_at, {at:DateTime64(3, 'UTC')}) AS age_days
    FROM key_inventory_at(at = {at:DateTime64(3, 'UTC')})
    WHERE status = 'active' AND mode = 'live' AND key_kind IN ('secret', 'restricted')
      AND (expires_at IS NULL OR expires_at > {at:DateTime64(3, 'UTC')})
      AND secret_set_at <= {at:DateTime64(3, 'UTC')} - toIntervalDay({from_days:UInt32})
      AND secret_set_at > {at:DateTime64(3, 'UTC')} - toIntervalDay({until_days:UInt32})`

export interface RotationRow {
  account_id: string
  key_id: string
  key_prefix: string
  key_kind: string
  secret_set: string
  age_days: number
}
