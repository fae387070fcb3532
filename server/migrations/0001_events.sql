-- Every event ever published. The in-memory resume window is rebuilt from the newest rows
-- on start, and /api/history reads older ones from here.
CREATE TABLE IF NOT EXISTS events (
    id     INTEGER PRIMARY KEY,   -- the public event id: strictly increasing, never reused
    stream TEXT    NOT NULL,
    ts     INTEGER NOT NULL,      -- publish time, ms since the Unix epoch
    json   TEXT    NOT NULL       -- the Event exactly as sent to clients
);
CREATE INDEX IF NOT EXISTS events_stream_id ON events (stream, id);
