//! Where events are made durable and shared: the embedded engine (SQLite + the in-process
//! writer, one server) or the cluster engine (Redis, many servers). Transports never see
//! the difference: both feed the same [`EventLog`](crate::log::EventLog) window, and every
//! transport reads from that.

use crate::cluster::Cluster;
use crate::log::StoredEvent;
use crate::publish::{PublishFailed, Publisher};
use crate::store::Store;
use app::protocol::{Event, Payload, Stream};
use std::sync::Arc;
use std::time::Duration;

/// How long an idempotency key is remembered: a client retrying a publish whose answer it
/// did not get (connection cut, server restarted behind a balancer) does so within seconds;
/// ten minutes covers a laptop waking up. Embedded: in the writer's memory (a restart
/// forgets the keys). Cluster: a Redis key with this expiry, so a retry that lands on
/// another server is recognised too.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(600);

pub enum Engine {
    /// One server: SQLite for durability and history; the writer task appends to the window.
    Embedded { store: Store, publisher: Publisher },
    /// Many servers: Redis holds the id sequence, the ordered log and history; a tail task
    /// in each server appends what Redis holds to its own window.
    Cluster(Cluster),
}

impl Engine {
    /// Stores a validated payload; the event is durable when this returns `Ok`. With an
    /// idempotency `key` already used, nothing is stored and the event stored under it is
    /// returned, with `true` ("replayed").
    pub async fn publish(
        &self,
        payload: Payload,
        key: Option<String>,
    ) -> Result<(Arc<StoredEvent>, bool), PublishFailed> {
        match self {
            Engine::Embedded { publisher, .. } => publisher.publish(payload, key).await,
            Engine::Cluster(c) => c.publish(payload, key).await,
        }
    }

    /// Up to `limit` events of `stream` before `before`, oldest first.
    pub async fn history(
        &self,
        stream: Stream,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Event>, String> {
        match self {
            Engine::Embedded { store, .. } => store
                .history(stream, before, limit)
                .await
                .map_err(|e| e.to_string()),
            Engine::Cluster(c) => c.history(stream, before, limit).await,
        }
    }

    /// Whether publishing and resuming work right now.
    pub async fn ready(&self) -> Result<(), String> {
        match self {
            Engine::Embedded { store, .. } => store.ping().await.map_err(|e| e.to_string()),
            Engine::Cluster(c) => c.ready().await,
        }
    }

    /// The newest id anywhere, when this server's window may be behind it (cluster mode:
    /// another server's publish reaches our window a moment later). `None`: our window is
    /// authoritative, or the answer is unknown.
    pub async fn head(&self) -> Option<u64> {
        match self {
            Engine::Embedded { .. } => None,
            Engine::Cluster(c) => c.head().await,
        }
    }
}
