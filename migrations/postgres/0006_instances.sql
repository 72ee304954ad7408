-- Several instances of Herald on one ledger (docs/scaling.md). Each running instance keeps a
-- row here, its seen_at renewed every two seconds; one not seen for ten seconds is taken to be
-- gone. Times are milliseconds since 1970. A row is removed when its instance stops.
-- Both tables hold only what the running instances are doing now, so they are UNLOGGED: no
-- write-ahead log, no wait for a disk flush at each commit (a claim is taken and released for
-- every event), and emptied if PostgreSQL itself crashes, when every instance's connections
-- are gone too and each writes its row again at its next heartbeat.
CREATE UNLOGGED TABLE instances (
    id TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL
);

-- The event (or the retry of a notification) an instance is handling now. A copy that another
-- instance receives meanwhile (the broker redelivers what a lost connection held) waits for
-- this row to go rather than sending the same notifications again. A row is removed when its
-- handling ends; one whose instance is gone may be taken over.
CREATE UNLOGGED TABLE claims (
    publisher TEXT NOT NULL,
    message_id TEXT NOT NULL,
    instance TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (publisher, message_id)
);
CREATE INDEX claims_by_instance ON claims (instance);
