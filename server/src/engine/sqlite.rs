//! Durable storage: every event in one SQLite table (WAL mode), written in batches by the
//! writer task and read back on start (the resume window) and by `/api/history`.

use crate::log::StoredEvent;
use app::protocol::{AlertRule, Event, NewAlert, Stream};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// One event of a batch to write: the event, its publish time and the idempotency key its
/// publisher gave (if any).
pub struct NewRow<'a> {
    pub event: &'a Arc<StoredEvent>,
    pub ts: u64,
    pub key: Option<&'a str>,
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) `<data_dir>/tidings.db` and applies migrations.
    pub async fn open(data_dir: &Path) -> Result<Store, sqlx::Error> {
        std::fs::create_dir_all(data_dir)?;
        let opts = SqliteConnectOptions::new()
            .filename(data_dir.join("tidings.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode: a commit survives a process crash; only an OS crash or
            // power loss can lose the last commits. FULL would fsync on every batch.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        // One writer (the writer task) plus a few readers for history; SQLite serialises
        // writers anyway, so a big pool would only add lock waits.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool })
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Highest id ever stored (0 when empty): the id sequence continues after it.
    pub async fn max_id(&self) -> Result<u64, sqlx::Error> {
        let row = sqlx::query("SELECT COALESCE(MAX(id), 0) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get::<i64, _>(0) as u64)
    }

    /// Writes a batch as one statement (so one implicit transaction): all of it is durable,
    /// or none of it is.
    ///
    /// One statement rather than BEGIN, an INSERT per event and COMMIT: sqlx runs SQLite on
    /// its own thread and every statement is a round trip to it, and under fan-out load
    /// each round trip waits for a turn behind thousands of connection tasks. n + 2 round
    /// trips per batch made publishing (and so the events available per write) the limit.
    pub async fn insert(&self, events: &[NewRow<'_>]) -> Result<(), sqlx::Error> {
        let mut q = sqlx::QueryBuilder::new(
            "INSERT INTO events (id, stream, ts, json, idem_key, audience) ",
        );
        q.push_values(events, |mut row, r| {
            row.push_bind(r.event.id as i64)
                .push_bind(r.event.stream.as_str())
                .push_bind(r.ts as i64)
                .push_bind(r.event.json.get())
                .push_bind(r.key)
                .push_bind(r.event.to.as_deref());
        });
        q.build().execute(&self.pool).await.map(|_| ())
    }

    /// The idempotency keys of events stored at or after `since_ms` (at most `n`, the newest),
    /// oldest first, with their event ids and publish times: what the writer remembers again
    /// after a restart.
    pub async fn recent_keys(
        &self,
        since_ms: u64,
        n: usize,
    ) -> Result<Vec<(String, u64, u64)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT idem_key, id, ts FROM events \
             WHERE idem_key IS NOT NULL AND ts >= ? ORDER BY ts DESC, id DESC LIMIT ?",
        )
        .bind(since_ms.min(i64::MAX as u64) as i64)
        .bind(n as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .rev()
            .map(|row| {
                (
                    row.get(0),
                    row.get::<i64, _>(1) as u64,
                    row.get::<i64, _>(2) as u64,
                )
            })
            .collect())
    }

    /// One stored event by id (a replayed publish whose event left the resume window).
    pub async fn event(&self, id: u64) -> Result<Option<Arc<StoredEvent>>, sqlx::Error> {
        let row = sqlx::query("SELECT stream, json FROM events WHERE id = ?")
            .bind(id.min(i64::MAX as u64) as i64)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.and_then(|row| {
            let stream = Stream::parse(&row.get::<String, _>(0))?;
            Some(Arc::new(
                StoredEvent::from_json(id, stream, row.get(1)).ok()?,
            ))
        }))
    }

    /// The newest `n` events, oldest first: the resume window after a restart.
    pub async fn recent(&self, n: usize) -> Result<Vec<Arc<StoredEvent>>, sqlx::Error> {
        let rows = sqlx::query("SELECT id, stream, json FROM events ORDER BY id DESC LIMIT ?")
            .bind(n as i64)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows.into_iter().rev() {
            let stream: String = row.get(1);
            let Some(stream) = Stream::parse(&stream) else {
                tracing::warn!(stream, "skipping stored event of an unknown stream");
                continue;
            };
            let id = row.get::<i64, _>(0) as u64;
            match StoredEvent::from_json(id, stream, row.get(2)) {
                Ok(event) => out.push(Arc::new(event)),
                Err(error) => {
                    tracing::warn!(id, %error, "skipping a stored event that is not JSON")
                }
            }
        }
        Ok(out)
    }

    /// Up to `limit` events of `stream` with id < `before`, oldest first; of a private
    /// stream, only those for `user` (and for everyone).
    pub async fn history(
        &self,
        stream: Stream,
        user: Option<&str>,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Event>, sqlx::Error> {
        let before = before.min(i64::MAX as u64) as i64;
        let rows =
            match (stream, user) {
                (Stream::Notifications, Some(user)) => {
                    sqlx::query(
                        "SELECT json FROM events WHERE audience IN (?, '*') AND id < ? \
                     ORDER BY id DESC LIMIT ?",
                    )
                    .bind(user)
                    .bind(before)
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?
                }
                (Stream::Notifications, None) => vec![],
                _ => sqlx::query(
                    "SELECT json FROM events WHERE stream = ? AND id < ? ORDER BY id DESC LIMIT ?",
                )
                .bind(stream.as_str())
                .bind(before)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?,
            };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows.into_iter().rev() {
            let json: String = row.get(0);
            match serde_json::from_str(&json) {
                Ok(e) => out.push(e),
                Err(err) => tracing::warn!(%err, "skipping an unreadable stored event"),
            }
        }
        Ok(out)
    }

    /// Creates an account; `false` if the name (in any case) is taken.
    pub async fn create_account(
        &self,
        name: &str,
        hash: &str,
        now_ms: u64,
    ) -> Result<bool, sqlx::Error> {
        let done =
            sqlx::query("INSERT OR IGNORE INTO users (name, hash, created) VALUES (?, ?, ?)")
                .bind(name)
                .bind(hash)
                .bind(now_ms.min(i64::MAX as u64) as i64)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// An account's name as it was registered, and its password hash.
    pub async fn account(&self, name: &str) -> Result<Option<(String, String)>, sqlx::Error> {
        let row = sqlx::query("SELECT name, hash FROM users WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// An account's price alerts.
    pub async fn alerts_of(&self, user: &str) -> Result<Vec<AlertRule>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, symbol, op, price, armed FROM alerts WHERE user = ? ORDER BY id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(alert_row).collect())
    }

    /// The alerts on `symbol`, with their accounts.
    pub async fn alerts_on(&self, symbol: &str) -> Result<Vec<(String, AlertRule)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, symbol, op, price, armed, user FROM alerts WHERE symbol = ? ORDER BY id",
        )
        .bind(symbol)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(5), alert_row(r))).collect())
    }

    pub async fn create_alert(&self, user: &str, a: &NewAlert) -> Result<AlertRule, sqlx::Error> {
        let done = sqlx::query(
            "INSERT INTO alerts (user, symbol, op, price, armed) VALUES (?, ?, ?, ?, 1)",
        )
        .bind(user)
        .bind(&a.symbol)
        .bind(&a.op)
        .bind(a.price)
        .execute(&self.pool)
        .await?;
        Ok(a.rule(done.last_insert_rowid() as u64))
    }

    /// Changes one of `user`'s alerts and arms it again; `None` if it has no such alert.
    pub async fn update_alert(
        &self,
        user: &str,
        id: u64,
        a: &NewAlert,
    ) -> Result<Option<AlertRule>, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE alerts SET symbol = ?, op = ?, price = ?, armed = 1 WHERE id = ? AND user = ?",
        )
        .bind(&a.symbol)
        .bind(&a.op)
        .bind(a.price)
        .bind(id.min(i64::MAX as u64) as i64)
        .bind(user)
        .execute(&self.pool)
        .await?;
        Ok((done.rows_affected() == 1).then(|| a.rule(id)))
    }

    pub async fn delete_alert(&self, user: &str, id: u64) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("DELETE FROM alerts WHERE id = ? AND user = ?")
            .bind(id.min(i64::MAX as u64) as i64)
            .bind(user)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Sets an alert's `armed`; whether it changed (disarming one that is armed is how a
    /// crossing fires exactly once).
    pub async fn set_armed(&self, id: u64, armed: bool) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("UPDATE alerts SET armed = ? WHERE id = ? AND armed = ?")
            .bind(armed)
            .bind(id.min(i64::MAX as u64) as i64)
            .bind(!armed)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Presence: records `users` as announced online (before their join events are published).
    pub async fn presence_add(&self, users: &[&str]) -> Result<(), sqlx::Error> {
        // One transaction for the page: a reconnect storm after a restart is not one commit
        // per account.
        let mut tx = self.pool.begin().await?;
        for user in users {
            sqlx::query("INSERT OR IGNORE INTO presence (user) VALUES (?)")
                .bind(*user)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Presence: forgets `user` (after its leave event is published).
    pub async fn presence_remove(&self, user: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM presence WHERE user = ?")
            .bind(user)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Presence: the accounts announced online and never announced offline (at start: the
    /// ones a killed server left behind).
    pub async fn presence_all(&self) -> Result<Vec<String>, sqlx::Error> {
        let rows = sqlx::query("SELECT user FROM presence ORDER BY user")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn alert_row(r: &sqlx::sqlite::SqliteRow) -> AlertRule {
    AlertRule {
        id: r.get::<i64, _>(0) as u64,
        symbol: r.get(1),
        op: r.get(2),
        price: r.get(3),
        armed: r.get(4),
    }
}
