-- The delivery ledger, SQLite (docs/ledger.md says what each column is for and how long it is kept).
-- Every time is milliseconds since 1970-01-01T00:00:00Z.

CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    publisher TEXT NOT NULL,
    message_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    version BIGINT,
    occurred_at BIGINT,
    received_at BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT
);
-- One routed event per publisher and message id: the ledger's dedup.
CREATE UNIQUE INDEX events_once ON events (publisher, message_id) WHERE outcome = 'routed';
CREATE INDEX events_by_message_id ON events (message_id);
CREATE INDEX events_by_time ON events (received_at);

CREATE TABLE persons (
    event_id BIGINT NOT NULL,
    identifier TEXT NOT NULL
);
CREATE INDEX persons_by_identifier ON persons (identifier);
CREATE INDEX persons_by_event ON persons (event_id);

CREATE TABLE notifications (
    key TEXT PRIMARY KEY,
    event_id BIGINT NOT NULL,
    route TEXT NOT NULL,
    recipient TEXT NOT NULL,
    recipient_class TEXT NOT NULL,
    channel TEXT NOT NULL,
    sla_rule TEXT,
    deadline BIGINT,
    created_at BIGINT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    first_failure_at BIGINT,
    delivered_at BIGINT,
    sla_outcome TEXT,
    sent_hash TEXT,
    updated_at BIGINT NOT NULL
);
CREATE INDEX notifications_by_event ON notifications (event_id);
CREATE INDEX notifications_by_time ON notifications (created_at);
CREATE INDEX notifications_by_recipient ON notifications (recipient, created_at);
CREATE INDEX notifications_by_status ON notifications (status);

CREATE TABLE attempts (
    id INTEGER PRIMARY KEY,
    notification_key TEXT NOT NULL,
    at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    code BIGINT,
    breaker TEXT NOT NULL
);
CREATE INDEX attempts_by_notification ON attempts (notification_key);
CREATE INDEX attempts_by_time ON attempts (at);

CREATE TABLE endpoints (
    recipient TEXT NOT NULL,
    channel TEXT NOT NULL,
    state TEXT NOT NULL,
    since BIGINT NOT NULL,
    reason TEXT,
    PRIMARY KEY (recipient, channel)
);

-- One row, written by the health probe: a write that succeeds says the store takes writes.
CREATE TABLE probe (
    id INTEGER PRIMARY KEY,
    at BIGINT NOT NULL
);
INSERT INTO probe (id, at) VALUES (1, 0);
