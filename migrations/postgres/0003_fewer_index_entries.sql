-- Fewer index entries per handled event (each one is written with every event; see "The
-- delivery ledger" in docs/performance.md). What each query uses is in docs/ledger.md.

-- Attempts are only ever looked up by their notification.
DROP INDEX attempts_by_time;

-- Only open notifications are looked up by status (the gauges, the parked ones a replay
-- picks): delivered and skipped ones, nearly all of them, stay out of this index. A query
-- that wants it names the same condition.
DROP INDEX notifications_by_status_time;
CREATE INDEX notifications_open ON notifications (status, updated_at)
    WHERE status IN ('pending', 'retrying', 'parked', 'expired');

-- The dedup's unique index serves the lookups by message id of routed events (message id
-- first); the few refused and duplicate events have a small index of their own.
DROP INDEX events_by_message_id;
DROP INDEX events_once;
CREATE UNIQUE INDEX events_once ON events (message_id, publisher) WHERE outcome = 'routed';
CREATE INDEX events_other_by_message_id ON events (message_id) WHERE outcome <> 'routed';
