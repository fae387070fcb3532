-- Accounts (issue #10). Names are unique without regard to case ("Ann" and "ann" are one
-- account); `hash` is the Argon2id PHC string (salt and parameters included).
CREATE TABLE IF NOT EXISTS users (
    name    TEXT    PRIMARY KEY COLLATE NOCASE,
    hash    TEXT    NOT NULL,
    created INTEGER NOT NULL      -- ms since the Unix epoch
);
-- Who a private event is for (the `notifications` stream: an account name, or '*' for
-- every signed-in account); NULL for public streams. History of a private stream is read
-- per account through the index.
ALTER TABLE events ADD COLUMN audience TEXT COLLATE NOCASE;
CREATE INDEX IF NOT EXISTS events_audience ON events (audience, id) WHERE audience IS NOT NULL;
