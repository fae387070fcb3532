//! Where events are made durable and shared: the embedded engine ([`embedded`]: SQLite and
//! the in-process writer, one server) or the cluster engine ([`cluster`]: Redis, many
//! servers). Transports never see the difference: both feed the same
//! [`EventLog`](crate::log::EventLog) window, and every transport reads from that.
//!
//! One enum rather than a trait object: there are exactly two engines, chosen once at
//! start, and an enum keeps `publish` a plain `async fn` (no boxed futures on the hot path).

pub mod cluster;
pub mod embedded;
pub mod primary;
mod sqlite;

use crate::log::{EventLog, StoredEvent};
use crate::Config;
use app::protocol::{AlertRule, Event, NewAlert, Payload, Stream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// How long an idempotency key is remembered: a client retrying a publish whose answer it
/// did not get (connection cut, server restarted behind a balancer) does so within seconds;
/// ten minutes covers a laptop waking up. Embedded: in the writer's memory (a restart
/// forgets the keys). Cluster: a Redis key with this expiry, so a retry that lands on
/// another server is recognised too.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(600);

/// Why an engine could not do what was asked. The cause is logged where it happens; this
/// says what the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// The store refused the write or the read; nothing of a publish was stored.
    Store,
    /// The server is shutting down.
    Closed,
    /// Cluster mode: Redis did not answer (or this server is not caught up with it).
    Unavailable,
    /// Cluster mode: the primary stored the write, but not enough replicas confirmed it in
    /// time (`--redis-wait-replicas`, `--redis-wait-ms`); a failover now could lose it.
    NotReplicated,
}

pub enum Engine {
    /// One server: SQLite for durability and history; the writer task appends to the window.
    Embedded(embedded::Embedded),
    /// Many servers: Redis holds the id sequence, the ordered log and history; a tail task
    /// in each server appends what Redis holds to its own window.
    Cluster(cluster::Cluster),
}

impl Engine {
    /// Opens the engine `config` asks for and the log it feeds. `demo_leader` is set while
    /// this server should run the simulators (cluster mode: while it holds the lease).
    pub async fn start(
        config: &Config,
        shutdown: CancellationToken,
        demo_leader: Arc<AtomicBool>,
    ) -> Result<(Arc<EventLog>, Engine), Box<dyn std::error::Error + Send + Sync>> {
        match config.redis() {
            None => {
                let (log, embedded) =
                    embedded::Embedded::open(&config.data_dir, config.retention).await?;
                Ok((log, Engine::Embedded(embedded)))
            }
            Some(source) => {
                let lease = (!config.no_demo).then_some(demo_leader);
                let (log, cluster) = cluster::Cluster::start(
                    source.clone(),
                    cluster::Options {
                        prefix: config.redis_prefix.clone(),
                        retention: config.retention,
                        history_max: config.history_max,
                        wait_replicas: config.wait_replicas(),
                        wait: std::time::Duration::from_millis(config.redis_wait_ms),
                    },
                    shutdown,
                    lease,
                )
                .await
                .map_err(|e| format!("cannot start in cluster mode: Redis ({source}): {e}"))?;
                Ok((log, Engine::Cluster(cluster)))
            }
        }
    }

    /// Stores a validated payload; the event is durable when this returns `Ok`. With an
    /// idempotency `key` already used, nothing is stored and the event stored under it is
    /// returned, with `true` ("replayed").
    pub async fn publish(
        &self,
        payload: Payload,
        key: Option<String>,
    ) -> Result<(Arc<StoredEvent>, bool), EngineError> {
        match self {
            Engine::Embedded(e) => e.publish(payload, key).await,
            Engine::Cluster(c) => c.publish(payload, key).await,
        }
    }

    /// Up to `limit` events of `stream` before `before`, oldest first. Of the private
    /// `notifications` stream, only those for `user` (and for everyone); none without one.
    pub async fn history(
        &self,
        stream: Stream,
        user: Option<&str>,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Event>, EngineError> {
        match self {
            Engine::Embedded(e) => e.history(stream, user, before, limit).await,
            Engine::Cluster(c) => c.history(stream, user, before, limit).await,
        }
    }

    /// Creates an account with its password hash; `false` if the name (in any case) is taken.
    pub async fn create_account(&self, name: &str, hash: &str) -> Result<bool, EngineError> {
        match self {
            Engine::Embedded(e) => e.create_account(name, hash).await,
            Engine::Cluster(c) => c.create_account(name, hash).await,
        }
    }

    /// An account's registered name and password hash.
    pub async fn account(&self, name: &str) -> Result<Option<(String, String)>, EngineError> {
        match self {
            Engine::Embedded(e) => e.account(name).await,
            Engine::Cluster(c) => c.account(name).await,
        }
    }

    /// An account's price alerts.
    pub async fn alerts_of(&self, user: &str) -> Result<Vec<AlertRule>, EngineError> {
        match self {
            Engine::Embedded(e) => e.store().alerts_of(user).await.map_err(store_error),
            Engine::Cluster(c) => c.alerts_of(user).await,
        }
    }

    /// Every alert on `symbol`, with its account.
    pub async fn alerts_on(&self, symbol: &str) -> Result<Vec<(String, AlertRule)>, EngineError> {
        match self {
            Engine::Embedded(e) => e.store().alerts_on(symbol).await.map_err(store_error),
            Engine::Cluster(c) => c.alerts_on(symbol).await,
        }
    }

    pub async fn create_alert(&self, user: &str, a: &NewAlert) -> Result<AlertRule, EngineError> {
        match self {
            Engine::Embedded(e) => e.store().create_alert(user, a).await.map_err(store_error),
            Engine::Cluster(c) => c.create_alert(user, a).await,
        }
    }

    pub async fn update_alert(
        &self,
        user: &str,
        id: u64,
        a: &NewAlert,
    ) -> Result<Option<AlertRule>, EngineError> {
        match self {
            Engine::Embedded(e) => e
                .store()
                .update_alert(user, id, a)
                .await
                .map_err(store_error),
            Engine::Cluster(c) => c.update_alert(user, id, a).await,
        }
    }

    pub async fn delete_alert(&self, user: &str, id: u64) -> Result<bool, EngineError> {
        match self {
            Engine::Embedded(e) => e.store().delete_alert(user, id).await.map_err(store_error),
            Engine::Cluster(c) => c.delete_alert(user, id).await,
        }
    }

    /// Disarms an armed alert; `true` only for the one caller that did (it fires).
    pub async fn disarm_alert(&self, symbol: &str, id: u64) -> Result<bool, EngineError> {
        match self {
            Engine::Embedded(e) => e.store().set_armed(id, false).await.map_err(store_error),
            Engine::Cluster(c) => c.set_armed(symbol, id, false).await,
        }
    }

    pub async fn arm_alert(&self, symbol: &str, id: u64) -> Result<bool, EngineError> {
        match self {
            Engine::Embedded(e) => e.store().set_armed(id, true).await.map_err(store_error),
            Engine::Cluster(c) => c.set_armed(symbol, id, true).await,
        }
    }

    /// Presence: marks `users` online on this server (for `ttl` more, in cluster mode) and
    /// publishes a join for each that was not online anywhere.
    pub async fn presence_touch(
        &self,
        users: &[Arc<str>],
        ttl: Duration,
    ) -> Result<(), EngineError> {
        match self {
            Engine::Embedded(e) => e.presence_touch(users).await,
            Engine::Cluster(c) => c.presence_touch(users, ttl).await,
        }
    }

    /// Presence: this server no longer holds `users`; a leave for each that no server holds.
    /// `false`:
    /// nothing was done, and this server must announce its accounts again first (cluster:
    /// Redis lost them, or they ran out while Redis was out of reach).
    pub async fn presence_leave(&self, users: &[Arc<str>]) -> Result<bool, EngineError> {
        match self {
            Engine::Embedded(e) => {
                for user in users {
                    e.presence_leave(user).await?;
                }
                Ok(true)
            }
            Engine::Cluster(c) => c.presence_leave(users).await,
        }
    }

    /// Presence: leaves for the users of servers that stopped renewing them (cluster).
    pub async fn presence_sweep(&self) -> Result<(), EngineError> {
        match self {
            Engine::Embedded(_) => Ok(()),
            Engine::Cluster(c) => c.presence_sweep().await,
        }
    }

    /// Presence: whether the engine can take presence changes now (cluster: this server is
    /// caught up with Redis, whose id sequence it restores after Redis lost its data).
    pub fn presence_ready(&self) -> bool {
        match self {
            Engine::Embedded(_) => true,
            Engine::Cluster(c) => c.is_tailing(),
        }
    }

    /// Presence: accounts a killed earlier run left announced online (embedded; a
    /// cluster's entries expire instead).
    pub async fn presence_left_behind(&self) -> Result<Vec<String>, EngineError> {
        match self {
            Engine::Embedded(e) => e.presence_left_behind().await,
            Engine::Cluster(_) => Ok(vec![]),
        }
    }

    /// Who is online, and the cursor the list is exact at ([`app::protocol::PresenceList`]).
    pub async fn presence(&self) -> Result<(u64, Vec<String>), EngineError> {
        match self {
            Engine::Embedded(e) => Ok(e.presence().await),
            Engine::Cluster(c) => c.presence().await,
        }
    }

    /// Whether publishing and resuming work right now.
    pub async fn ready(&self) -> Result<(), EngineError> {
        match self {
            Engine::Embedded(e) => e.ready().await,
            Engine::Cluster(c) => c.ready().await,
        }
    }

    /// Whether this engine's health is the server's liveness (embedded: the store is part
    /// of the process), or only its readiness (cluster: Redis is another service).
    pub fn is_embedded(&self) -> bool {
        matches!(self, Engine::Embedded(_))
    }

    /// The newest id anywhere, when this server's window may be behind it (cluster mode:
    /// another server's publish reaches our window a moment later). `None`: our window is
    /// authoritative, or the answer is unknown.
    pub async fn head(&self) -> Option<u64> {
        match self {
            Engine::Embedded(_) => None,
            Engine::Cluster(c) => c.head().await,
        }
    }

    /// After the last connection has ended: writes what was queued and closes the store.
    pub async fn finish(&self) {
        match self {
            Engine::Embedded(e) => e.finish().await,
            Engine::Cluster(_) => {}
        }
    }
}

fn store_error(err: sqlx::Error) -> EngineError {
    tracing::error!(%err, "price alerts: store query failed");
    EngineError::Store
}

/// Milliseconds since the Unix epoch: an event's `ts`.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
