-- Each change of a webhook endpoint's standing that its recipient's contact hears of
-- (docs/ledger.md): disabled, unreachable, working again, numbered per endpoint from 1. Exactly
-- one instance records a change: each writes the next number only if the last row's standing
-- differs, and the key lets one insert of a number through. The contact's email (notice) is
-- sent by the instance that holds the row's lease, and the row says whether it went.
-- Times are milliseconds since 1970.
CREATE TABLE endpoint_changes (
    recipient TEXT NOT NULL,
    channel TEXT NOT NULL,
    seq BIGINT NOT NULL,
    -- disabled, unreachable or working
    standing TEXT NOT NULL,
    -- http-410, operator-disabled, breaker-open, answered or operator-enabled
    cause TEXT NOT NULL,
    -- when the endpoint entered the standing (the endpoints table's since)
    since BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL,
    -- due (to be sent), sent, none (no contact), unneeded (working again, but the contact was
    -- not told it was down) or superseded (a later change came before it was sent)
    notice TEXT NOT NULL,
    -- a due notice is taken by one instance until then
    lease_until BIGINT NOT NULL,
    told_at BIGINT,
    PRIMARY KEY (recipient, channel, seq)
);
CREATE INDEX endpoint_changes_due ON endpoint_changes (lease_until) WHERE notice = 'due';
