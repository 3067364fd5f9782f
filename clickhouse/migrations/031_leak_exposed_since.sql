-- leak.reported's optional exposed_since: when the secret first became public, if the reporter knows. The exposure
-- report's window starts there.
ALTER TABLE leak_reports
    ADD COLUMN exposed_since Nullable(DateTime64(3, 'UTC'));
