//! The embedded engine: SQLite ([`super::sqlite`]) and the single writer (a task on a thread
//! and runtime of its own) that assigns ids, makes events durable and only then appends them
//! to the log (group commit).
//!
//! Why one task: ids must be strictly increasing in delivery order and never reused, also
//! across a crash. A single writer assigns them in order, writes a whole batch in one
//! SQLite transaction, and publishes the batch to readers only after the commit. An id is
//! therefore never seen by a client before it is durable, so a restart can never hand it
//! out again, and a publisher's `201`/`ack` always means "stored".

use super::sqlite::{NewRow, Store};
use super::{now_ms, EngineError};
use crate::log::{EventLog, StoredEvent};
use app::protocol::{Event, Payload, Stream};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The embedded engine: the store, and the writer that alone writes to it.
pub struct Embedded {
    store: Store,
    publisher: Publisher,
    /// Cancelled by [`Embedded::finish`]: the writer refuses new publishes, writes what is
    /// queued and stops.
    closing: CancellationToken,
    /// Resolves when the writer has stopped; taken by `finish`. (A std mutex: touched twice
    /// in the server's life.)
    writer: Mutex<Option<JoinHandle<()>>>,
    log: Arc<EventLog>,
    /// Who is announced online. An async mutex held across the join/leave publish: the
    /// list and the log's latest id read under it agree (see [`Embedded::presence`]).
    presence: tokio::sync::Mutex<BTreeSet<String>>,
}

impl Embedded {
    /// Opens (or creates) the store under `data_dir`, loads the newest `retention` events
    /// into a new log, and starts the writer.
    pub async fn open(
        data_dir: &Path,
        retention: usize,
    ) -> Result<(Arc<EventLog>, Embedded), sqlx::Error> {
        let store = Store::open(data_dir).await?;
        let latest = store.max_id().await?;
        let recent = store.recent(retention).await?;
        let remembered = Remembered::load(&store).await?;
        tracing::info!(
            latest,
            loaded = recent.len(),
            keys = remembered.ids.len(),
            "store opened"
        );
        let log = Arc::new(EventLog::new(retention, recent, latest));
        let closing = CancellationToken::new();
        let (publisher, writer) =
            spawn_writer(store.clone(), log.clone(), closing.clone(), remembered);
        Ok((
            log.clone(),
            Embedded {
                store,
                publisher,
                closing,
                writer: Mutex::new(Some(writer)),
                log,
                presence: tokio::sync::Mutex::new(BTreeSet::new()),
            },
        ))
    }

    pub async fn publish(&self, payload: Payload, key: Option<String>) -> Reply {
        self.publisher.publish(payload, key).await
    }

    pub async fn history(
        &self,
        stream: Stream,
        user: Option<&str>,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Event>, EngineError> {
        self.store
            .history(stream, user, before, limit)
            .await
            .map_err(|err| {
                tracing::error!(%err, "history query failed");
                EngineError::Store
            })
    }

    pub async fn create_account(&self, name: &str, hash: &str) -> Result<bool, EngineError> {
        self.store
            .create_account(name, hash, super::now_ms())
            .await
            .map_err(|err| {
                tracing::error!(%err, "creating an account failed");
                EngineError::Store
            })
    }

    pub async fn account(&self, name: &str) -> Result<Option<(String, String)>, EngineError> {
        self.store.account(name).await.map_err(|err| {
            tracing::error!(%err, "reading an account failed");
            EngineError::Store
        })
    }

    /// Announces `users` online that are not yet: the store's row first, then the join
    /// event (a crash between the two leaves a row, whose leave the next start publishes;
    /// the other order could leave a join that no leave ever follows).
    pub async fn presence_touch(&self, users: &[Arc<str>]) -> Result<(), EngineError> {
        let mut online = self.presence.lock().await;
        let new: Vec<&str> = users
            .iter()
            .map(|u| &**u)
            .filter(|u| !online.contains(*u))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        self.store
            .presence_add(&new)
            .await
            .map_err(presence_error)?;
        // Published together: the writer stores them in one commit (group commit).
        let joins = new.iter().map(|user| self.presence_event(user, true));
        let results = futures_util::future::join_all(joins).await;
        for (user, result) in new.iter().zip(results) {
            if result.is_ok() {
                online.insert(user.to_string());
            }
        }
        // A join that failed is retried by the presence task (its row is already there,
        // so a crash now still ends in a leave).
        if new.iter().any(|u| !online.contains(*u)) {
            return Err(EngineError::Store);
        }
        Ok(())
    }

    /// Announces `user` offline: the leave event, then the store's row.
    pub async fn presence_leave(&self, user: &str) -> Result<(), EngineError> {
        let mut online = self.presence.lock().await;
        if online.contains(user) {
            self.presence_event(user, false).await?;
            online.remove(user);
        }
        self.store
            .presence_remove(user)
            .await
            .map_err(presence_error)
    }

    /// The accounts a previous run announced online and never offline (it was killed):
    /// their leave events are owed.
    pub async fn presence_left_behind(&self) -> Result<Vec<String>, EngineError> {
        let users = self.store.presence_all().await.map_err(presence_error)?;
        self.presence.lock().await.extend(users.iter().cloned());
        Ok(users)
    }

    /// Who is online, and a cursor the list is exact at: every presence event is appended
    /// to the log before the lock is let go, so none is at or below `latest` and missing
    /// from the list, and none above it is in it.
    pub async fn presence(&self) -> (u64, Vec<String>) {
        let online = self.presence.lock().await;
        (self.log.latest(), online.iter().cloned().collect())
    }

    async fn presence_event(&self, user: &str, online: bool) -> Result<(), EngineError> {
        let change = app::protocol::PresenceChange {
            user: user.to_owned(),
            online,
        };
        self.publish(Payload::Presence(change), None)
            .await
            .map(|_| ())
    }

    /// The store of price alerts (they are not events: no writer, no ids from the log).
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub async fn ready(&self) -> Result<(), EngineError> {
        self.store.ping().await.map_err(|err| {
            tracing::warn!(%err, "store does not answer");
            EngineError::Store
        })
    }

    /// Stops the writer once it has written what is queued (bounded, so a stuck store
    /// cannot hang the exit), then closes the store.
    pub async fn finish(&self) {
        self.closing.cancel();
        let writer = self.writer.lock().expect("writer lock poisoned").take();
        if let Some(writer) = writer {
            if tokio::time::timeout(Duration::from_secs(10), writer)
                .await
                .is_err()
            {
                tracing::warn!("writer did not finish within 10 s");
            }
        }
        self.store.close().await;
    }
}

fn presence_error(err: sqlx::Error) -> EngineError {
    tracing::error!(%err, "presence: store query failed");
    EngineError::Store
}

/// Most events written in one transaction. Under load, publishes that arrive while a
/// commit is running are written together by the next one, so throughput grows with load
/// while a lone publish still commits at once.
const MAX_BATCH: usize = 512;

/// Publishes waiting for the writer. When full, publishers wait (backpressure reaches the
/// HTTP/WS client as a slower answer) rather than memory growing without bound.
const QUEUE: usize = 4096;

/// Most idempotency keys remembered at once; past it the oldest are forgotten early
/// (bounded memory whatever clients send: a key of at most 128 bytes and an id each, about
/// 30 MB at the limit).
const MAX_KEYS: usize = 100_000;

type Reply = Result<(Arc<StoredEvent>, bool), EngineError>;

struct Request {
    payload: Payload,
    key: Option<String>,
    reply: oneshot::Sender<Reply>,
}

/// Idempotency keys of recent publishes and the ids of the events they stored, forgotten
/// after [`IDEMPOTENCY_TTL`](crate::engine::IDEMPOTENCY_TTL). Owned by the writer task alone:
/// the check and the insert happen in the one place that assigns ids, so two retries racing
/// each other cannot both store. Ids, not events: a replay is rare, and reads its event back
/// from the window or the store, so remembering a key never holds a message in memory.
#[derive(Default)]
struct Remembered {
    ids: HashMap<String, u64>,
    /// Keys in the order they were stored, to forget the oldest first.
    order: VecDeque<(Instant, String)>,
}

impl Remembered {
    /// The keys stored within the last [`IDEMPOTENCY_TTL`](crate::engine::IDEMPOTENCY_TTL),
    /// with their age kept: a key is forgotten when it would have been without the restart.
    async fn load(store: &Store) -> Result<Remembered, sqlx::Error> {
        let ttl = crate::engine::IDEMPOTENCY_TTL;
        let now_ms = now_ms();
        let since = now_ms.saturating_sub(ttl.as_millis() as u64);
        let now = Instant::now();
        let mut r = Remembered::default();
        for (key, id, ts) in store.recent_keys(since, MAX_KEYS).await? {
            let age = Duration::from_millis(now_ms.saturating_sub(ts)).min(ttl);
            // Instant cannot go before the process's clock origin on some platforms; then the
            // key simply counts as stored now (remembered a little longer, never shorter).
            let at = now.checked_sub(age).unwrap_or(now);
            r.insert(key, id, at);
        }
        Ok(r)
    }

    fn get(&self, key: &str) -> Option<u64> {
        self.ids.get(key).copied()
    }

    fn insert(&mut self, key: String, id: u64, now: Instant) {
        self.order.push_back((now, key.clone()));
        self.ids.insert(key, id);
        while self.order.len() > MAX_KEYS {
            self.forget_oldest();
        }
    }

    fn expire(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > crate::engine::IDEMPOTENCY_TTL)
        {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((_, key)) = self.order.pop_front() {
            self.ids.remove(&key);
        }
    }
}

/// The event a remembered key stored: from the resume window, else from the store.
async fn replayed(store: &Store, log: &EventLog, id: u64) -> Result<Arc<StoredEvent>, EngineError> {
    if let Some(e) = log.get(id) {
        return Ok(e);
    }
    match store.event(id).await {
        Ok(Some(e)) => Ok(e),
        Ok(None) => {
            tracing::error!(id, "a remembered idempotency key points at a missing event");
            Err(EngineError::Store)
        }
        Err(err) => {
            tracing::error!(%err, "reading a replayed event failed");
            Err(EngineError::Store)
        }
    }
}

/// What one request of a batch is answered with.
enum Answer {
    /// The `i`-th new event of the batch.
    New(usize),
    /// Its key was used by the `i`-th new event of this same batch.
    SameBatch(usize),
    /// Its key was used before, for the event with this id.
    Remembered(u64),
}

/// A cheap, cloneable handle to the writer task.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Request>,
}

impl Publisher {
    /// Stores `payload` (already validated) and returns the event once it is durable and
    /// visible to readers; or, for an idempotency `key` already used, the event stored then
    /// (and `true`).
    pub async fn publish(&self, payload: Payload, key: Option<String>) -> Reply {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                payload,
                key,
                reply,
            })
            .await
            .map_err(|_| EngineError::Closed)?;
        rx.await.unwrap_or(Err(EngineError::Closed))
    }
}

/// Starts the writer. It ends when `closing` is cancelled (or every [`Publisher`] clone is
/// dropped), after writing what was already queued: that is the shutdown flush.
fn spawn_writer(
    store: Store,
    log: Arc<EventLog>,
    closing: CancellationToken,
    mut remembered: Remembered,
) -> (Publisher, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Request>(QUEUE);
    let writer = async move {
        let mut next_id = log.latest() + 1;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let taken = tokio::select! {
                // Queued publishes first: closing never drops one.
                biased;
                n = rx.recv_many(&mut batch, MAX_BATCH) => n,
                _ = closing.cancelled(), if !rx.is_closed() => {
                    // No new publishes; what is queued is still received, then 0.
                    rx.close();
                    continue;
                }
            };
            if taken == 0 {
                break;
            }
            let ts = now_ms();
            let now = Instant::now();
            remembered.expire(now);
            let mut events: Vec<(Arc<StoredEvent>, Option<&str>)> = Vec::with_capacity(batch.len());
            let mut answers = Vec::with_capacity(batch.len());
            let mut new_keys: HashMap<&str, usize> = HashMap::new();
            for r in &batch {
                if let Some(key) = r.key.as_deref() {
                    if let Some(id) = remembered.get(key) {
                        answers.push(Answer::Remembered(id));
                        continue;
                    }
                    if let Some(&i) = new_keys.get(key) {
                        answers.push(Answer::SameBatch(i));
                        continue;
                    }
                    new_keys.insert(key, events.len());
                }
                let event = Event {
                    id: next_id + events.len() as u64,
                    ts,
                    payload: r.payload.clone(),
                };
                answers.push(Answer::New(events.len()));
                events.push((Arc::new(StoredEvent::new(&event)), r.key.as_deref()));
            }
            let stored = if events.is_empty() {
                Ok(())
            } else {
                let rows: Vec<NewRow> = events
                    .iter()
                    .map(|(event, key)| NewRow {
                        event,
                        ts,
                        key: *key,
                    })
                    .collect();
                store.insert(&rows).await
            };
            let result = match stored {
                Ok(()) => {
                    next_id += events.len() as u64;
                    let stored: Vec<_> = events.into_iter().map(|(e, _)| e).collect();
                    log.append(&stored);
                    for (key, i) in new_keys {
                        remembered.insert(key.to_owned(), stored[i].id, now);
                    }
                    Ok(stored)
                }
                Err(err) => {
                    // The ids were never visible, so reusing them for the next batch is safe.
                    tracing::error!(%err, n = batch.len(), "storing a batch failed");
                    Err(EngineError::Store)
                }
            };
            for (req, answer) in batch.drain(..).zip(answers) {
                let answer = match (&result, answer) {
                    (_, Answer::Remembered(id)) => {
                        replayed(&store, &log, id).await.map(|e| (e, true))
                    }
                    (Ok(stored), Answer::New(i)) => Ok((stored[i].clone(), false)),
                    (Ok(stored), Answer::SameBatch(i)) => Ok((stored[i].clone(), true)),
                    (Err(e), _) => Err(e.clone()),
                };
                // The publisher may have gone away (client disconnected); the event stays.
                let _ = req.reply.send(answer);
            }
        }
    };
    // The writer runs on a thread and runtime of its own. On the shared runtime each of
    // its steps (take the queue, hand the batch to SQLite's thread, take the result,
    // append) waited behind every connection task woken by the previous batch, so under
    // fan-out load publishing slowed down, and with it the events available per write.
    // Measured, 1,000 subscribers, alternating runs: fan-out +28 % (WS), +46 % (SSE).
    let (done_tx, done_rx) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("tidings-writer".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the writer's runtime starts");
            rt.block_on(writer);
            let _ = done_tx.send(());
        })
        .expect("the writer thread starts");
    // The handle resolves when the writer has drained its queue and stopped.
    (
        Publisher { tx },
        tokio::spawn(async move {
            let _ = done_rx.await;
        }),
    )
}
