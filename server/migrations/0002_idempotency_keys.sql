-- The idempotency key a publish carried, so a retry after a restart is still recognised
-- (a client whose answer was lost when the server died retries with the same key and must
-- get the stored event back, not a second copy). Keys are remembered for IDEMPOTENCY_TTL;
-- the partial index serves the one query that reads them back on start.
ALTER TABLE events ADD COLUMN idem_key TEXT;
CREATE INDEX IF NOT EXISTS events_idem_ts ON events (ts) WHERE idem_key IS NOT NULL;
