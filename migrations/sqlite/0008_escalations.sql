-- Escalation before a deadline is missed (docs/ledger.md). A notification of a route with
-- `escalate` that its event's handling did not deliver has one row here per escalation
-- recipient and channel, written in the same commit as the notification. Times are
-- milliseconds since 1970.
--
-- state: waiting (until due_at, then tried; after a failed attempt due_at is the next try),
-- sending (claimed by `instance` at claimed_at; taken back when that instance is gone or the
-- claim is older than any attempt takes), sent, failed (reason says why), or not_needed (the
-- notification was delivered first).
--
-- data: the escalation's template data, the event as the escalation recipient's class may
-- see it (already redacted), kept only while the escalation may still be sent: it is set to
-- NULL when the row becomes sent, failed or not_needed.
CREATE TABLE escalations (
    key TEXT PRIMARY KEY,
    notification_key TEXT NOT NULL,
    route TEXT NOT NULL,
    recipient TEXT NOT NULL,
    recipient_class TEXT NOT NULL,
    channel TEXT NOT NULL,
    rule TEXT NOT NULL,
    template TEXT NOT NULL,
    due_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    state TEXT NOT NULL,
    instance TEXT,
    claimed_at BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    reason TEXT,
    data TEXT,
    updated_at BIGINT NOT NULL
);
-- The scanner's questions: what is waiting and due, and what is being sent. Only the open
-- rows are in these indexes.
CREATE INDEX escalations_waiting ON escalations (due_at) WHERE state = 'waiting';
CREATE INDEX escalations_sending ON escalations (claimed_at) WHERE state = 'sending';
CREATE INDEX escalations_by_notification ON escalations (notification_key);
