-- The custody register: what each prison or court event about a person says of their custody
-- (docs/ledger.md). One row per event, never changed; the register as it stood at an instant
-- is worked out from the rows that had happened by then, in occurred_at order. entry is JSON:
-- the event's identifiers, the offender's name, PPO flag, home BCU and PDU, and the custody
-- fact (received, released, release scheduled, HDC, temporary release, hearing). Times are
-- milliseconds since 1970.

CREATE TABLE custody (
    id INTEGER PRIMARY KEY,
    occurred_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    entry TEXT NOT NULL,
    publisher TEXT NOT NULL,
    message_id TEXT NOT NULL
);
-- An event recorded twice (redelivered, replayed) is one row.
CREATE UNIQUE INDEX custody_once ON custody (publisher, message_id);
CREATE INDEX custody_by_time ON custody (occurred_at);
