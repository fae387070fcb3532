-- Presence (issue #10): the accounts this server has announced as online and not yet as
-- offline. Written before a join event is published and cleared after its leave event, so
-- a server killed with accounts online finds them here at its next start and publishes
-- their leave events (no client is left showing someone online forever).
CREATE TABLE IF NOT EXISTS presence (
    user TEXT PRIMARY KEY  -- the session's `sub`, as given
);
