-- An endpoint's recent failures (the console's endpoint page): the notifications to a
-- recipient by a channel that failed at least once, by when made. Only those that failed
-- are in this index (a few percent), so it costs the write path little; the query states the
-- same condition.
CREATE INDEX notifications_failed ON notifications (recipient, channel, created_at)
    WHERE first_failure_at IS NOT NULL;
