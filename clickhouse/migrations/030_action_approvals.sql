-- Approvals: an automatic action the guard rails stop (or a policy rule asks to approve) waits for a person instead
-- of dead-ending as blocked. Who decided, when and why; and when an undecided approval expires.
ALTER TABLE actions
    ADD COLUMN expires_at Nullable(DateTime64(3, 'UTC')) COMMENT 'an awaiting_approval action expires then',
    ADD COLUMN decided_by String DEFAULT '' COMMENT 'the person who approved or rejected it',
    ADD COLUMN decided_at Nullable(DateTime64(3, 'UTC')),
    ADD COLUMN decision_reason String DEFAULT '';
