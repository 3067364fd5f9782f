-- An alert marked `sending` is being handed to its peer by the instance named here (the leader, issue 16). A leader
-- killed before it recorded the peer's answer leaves the row `sending`: the next one looks for the alert at the peer
-- (Slack: the message's metadata carries the alert id) before it sends it again.
ALTER TABLE alert_outbox
    ADD COLUMN IF NOT EXISTS claimed_by String DEFAULT '' COMMENT 'the instance that marked it sending';
