-- Price alerts (issue #10): an account's rules on the ticker's symbols. `armed` is set when
-- a rule is made or edited, cleared when a price meets it (it fires then, once), and set
-- again when a price is back on the other side.
CREATE TABLE IF NOT EXISTS alerts (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    user   TEXT    NOT NULL COLLATE NOCASE,
    symbol TEXT    NOT NULL,
    op     TEXT    NOT NULL,            -- 'above' or 'below'
    price  REAL    NOT NULL,
    armed  INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS alerts_symbol ON alerts (symbol);
CREATE INDEX IF NOT EXISTS alerts_user ON alerts (user);
