-- What operators did to what Herald holds (a replay from the parking queues, say): who, what,
-- when. Kept as long as the events it concerns ([ledger] keep).

CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX audit_by_time ON audit (at);
-- Parked notifications are found by status, then by when they were parked: this index serves
-- both, in place of the one by status alone.
CREATE INDEX notifications_by_status_time ON notifications (status, updated_at);
DROP INDEX notifications_by_status;
