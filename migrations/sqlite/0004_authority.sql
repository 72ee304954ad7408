-- The authority register: which legal representative is authorised to act for whom, from when
-- to when, and which event said so. One row per register event applied, never changed; the
-- standing of a pair at an instant is worked out from its rows in occurred_at order
-- (docs/ledger.md). Dates are YYYY-MM-DD, London time; times milliseconds since 1970.

CREATE TABLE authority (
    id INTEGER PRIMARY KEY,
    person TEXT NOT NULL,
    representative TEXT NOT NULL,
    kind TEXT NOT NULL,
    effective_from TEXT NOT NULL,
    valid_until TEXT,
    occurred_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    publisher TEXT NOT NULL,
    message_id TEXT NOT NULL
);
-- A register event applied twice (redelivered, replayed) is one row.
CREATE UNIQUE INDEX authority_once ON authority (publisher, message_id);
CREATE INDEX authority_by_person ON authority (person, representative);
CREATE INDEX authority_by_representative ON authority (representative);
