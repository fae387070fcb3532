//! Presence: who is online in chat. An account is online while it holds a signed-in
//! subscription that includes `chat` (an SSE stream, a WebSocket, a waiting long poll) on
//! any server, or polled within the last [`POLL_LEASE`]; joining and leaving are events of
//! the `presence` stream, so every transport delivers them and resumes them like any other.
//!
//! Two halves. Here, per server: which accounts this server holds, counted per connection
//! (several tabs or devices are one account), with a grace period after the last one closes
//! so a page reload or a transport switch is not a leave and a join. In the engine, for
//! the deployment: whether an account is online anywhere, and the events. Embedded: one
//! set, plus a table that lets a restart after kill -9 announce who it left online.
//! Cluster: expiring entries per server in Redis, renewed by a heartbeat, swept by every
//! server, each join or leave published by the one script that made the change (see
//! `engine::cluster`).
//!
//! One task per server talks to the engine ([`run`]): connections only touch a map under a
//! short lock and wake it, so a connection opening or closing never waits for Redis.

use crate::AppState;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How long a poll keeps its account online after it is answered: the server does not
/// know a poller's interval; the app's longest is 30 s, and a slow answer or a retry after
/// a failure must not make it flap.
pub const POLL_LEASE: Duration = Duration::from_secs(45);

/// How often the task looks at leases that ran out (the grace is honoured to within this).
const TICK: Duration = Duration::from_millis(250);

/// Cluster: how often each server looks for entries of servers that died. A sweep that
/// finds none is one sorted-set range read.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Accounts per presence script, joins or leaves (each a few hash and set commands in
/// Redis; an embedded page is one account at a time).
const PAGE: usize = 500;

/// The longest `--presence-ttl-secs` taken (an hour); the grace is held to ten minutes.
const MAX_TTL_SECS: u64 = 3600;
pub const MAX_GRACE: Duration = Duration::from_secs(600);

/// This server's view: accounts it holds, and whether it has announced them.
pub struct Presence {
    local: Mutex<HashMap<Arc<str>, Local>>,
    wake: tokio::sync::Notify,
    grace: Duration,
    /// The last `GET /api/presence` answer and when it was read (see [`Presence::list`]).
    list: tokio::sync::Mutex<Option<(Instant, u64, bytes::Bytes)>>,
}

/// How long one reading of the online list answers `GET /api/presence`: the list and its
/// cursor stay exact together (a client applies the events after that cursor), so a page
/// load storm or a client asking in a loop costs the engine one read per this, not one each.
const LIST_FRESH: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Local {
    /// Open subscriptions of the account on this server.
    conns: usize,
    /// Online until then without any (the grace after the last one, a poll's lease).
    until: Option<Instant>,
    /// The engine was told it is online here (and not since told it left).
    announced: bool,
    /// A join was attempted and its answer is unknown (Redis timed out after running the
    /// script, a page of joins failed half way): the engine may hold it, so it gets a leave
    /// when it goes (leaves are idempotent), and a join again while online.
    maybe: bool,
}

impl Local {
    fn online(&self, now: Instant) -> bool {
        self.conns > 0 || self.until.is_some_and(|u| u > now)
    }

    fn extend(&mut self, until: Instant) {
        self.until = Some(self.until.map_or(until, |u| u.max(until)));
    }
}

/// Held by a subscription: the account counts as connected here until it is dropped.
pub struct Hold {
    presence: Arc<Presence>,
    user: Arc<str>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let grace = self.presence.grace;
        let mut local = self.presence.lock();
        if let Some(l) = local.get_mut(&self.user) {
            l.conns = l.conns.saturating_sub(1);
            if l.conns == 0 {
                l.extend(Instant::now() + grace);
            }
        }
        // The task notices the end of the grace on its own tick: nothing to wake for.
    }
}

impl Presence {
    pub fn new(grace: Duration) -> Arc<Presence> {
        Arc::new(Presence {
            local: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            grace,
            list: tokio::sync::Mutex::new(None),
        })
    }

    /// `GET /api/presence`'s body: read from the engine at most once per [`LIST_FRESH`]
    /// (one reader at a time; the others wait for its answer), unless the asker's stream is
    /// already past the cached list's cursor (`after`): it would miss the presence events in
    /// between, which its stream does not deliver again.
    pub async fn list(
        &self,
        engine: &crate::engine::Engine,
        after: u64,
    ) -> Result<bytes::Bytes, crate::engine::EngineError> {
        let mut cached = self.list.lock().await;
        if let Some((at, cursor, body)) = cached.as_ref() {
            if at.elapsed() < LIST_FRESH && *cursor >= after {
                return Ok(body.clone());
            }
        }
        let (cursor, online) = engine.presence().await?;
        let body = serde_json::to_vec(&app::protocol::PresenceList { cursor, online })
            .expect("the list serialises");
        let body = bytes::Bytes::from(body);
        *cached = Some((Instant::now(), cursor, body.clone()));
        Ok(body)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Local>> {
        // A panic elsewhere while holding this lock leaves counts that are still counts.
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `user` opened a subscription; online (at once, if new) until the hold is dropped.
    pub fn hold(self: &Arc<Self>, user: Arc<str>) -> Hold {
        let new = {
            let mut local = self.lock();
            let l = local.entry(user.clone()).or_default();
            l.conns += 1;
            !l.announced
        };
        if new {
            self.wake.notify_one();
        }
        Hold {
            presence: self.clone(),
            user,
        }
    }

    /// `user` polled: online for [`POLL_LEASE`] more.
    pub fn touch(&self, user: &Arc<str>) {
        let new = {
            let mut local = self.lock();
            let l = local.entry(user.clone()).or_default();
            l.extend(Instant::now() + POLL_LEASE);
            !l.announced
        };
        if new {
            self.wake.notify_one();
        }
    }

    /// What to tell the engine now: accounts to announce (or, with `all`, every account
    /// online here, for a heartbeat) and accounts that left. Entries gone quiet are dropped.
    fn due(&self, all: bool) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        let now = Instant::now();
        let (mut join, mut leave) = (Vec::new(), Vec::new());
        self.lock().retain(|user, l| {
            let online = l.online(now);
            if online && (all || !l.announced) {
                join.push(user.clone());
            } else if !online && (l.announced || l.maybe) {
                leave.push(user.clone());
            }
            online || l.announced || l.maybe
        });
        (join, leave)
    }

    /// Before joins are sent: they may be held by the engine from now on.
    fn set_maybe(&self, users: &[Arc<str>]) {
        let mut local = self.lock();
        for user in users {
            if let Some(l) = local.get_mut(user) {
                l.maybe = true;
            }
        }
    }

    fn set_announced(&self, users: &[Arc<str>]) {
        let mut local = self.lock();
        for user in users {
            if let Some(l) = local.get_mut(user) {
                l.announced = true;
            }
        }
    }

    /// After the engine announced `user` offline: forget it, unless it came back meanwhile
    /// (then it is announced again on the next round). Whether it came back.
    fn left(&self, user: &Arc<str>) -> bool {
        let now = Instant::now();
        let mut local = self.lock();
        match local.get_mut(user) {
            Some(l) if l.online(now) => {
                (l.announced, l.maybe) = (false, false);
                true
            }
            _ => {
                local.remove(user);
                false
            }
        }
    }

    fn announced(&self) -> Vec<Arc<str>> {
        self.lock()
            .iter()
            .filter(|(_, l)| l.announced || l.maybe)
            .map(|(u, _)| u.clone())
            .collect()
    }
}

/// The server's presence task: announces joins at once, leaves after the grace, renews
/// this server's entries (cluster), sweeps dead servers' entries (cluster), and on
/// shutdown announces everyone it holds as gone (the process is; a restart's reconnects
/// announce them again). A failing engine is retried on the next round: nothing is marked
/// announced that was not.
pub async fn run(state: AppState) {
    let presence = state.presence.clone();
    let engine = &state.engine;
    let ttl = Duration::from_secs(state.config.presence_ttl_secs.clamp(1, MAX_TTL_SECS));
    // Renewal at a third of the expiry: two renewals may fail before entries run out.
    let renew_every = ttl / 3;
    let (mut renewed, mut swept) = (Instant::now(), Instant::now());
    // When Redis last failed or was out of reach (cluster). No sweep for a renewal period
    // after it: every server's entries may have run out meanwhile, and the others need a
    // renewal to show they are alive (else a Redis pause longer than the expiry would
    // announce everyone offline and then online again).
    let mut troubled = Instant::now();
    // Set when Redis no longer holds what this server announced (restarted without its
    // data, flushed, or our entries ran out): announce every account again, pending leaves
    // included, before any leave, so no leave is silent while clients show the join.
    let mut announce_again = false;
    // Accounts a killed predecessor left online (embedded; cluster entries expire).
    match engine.presence_left_behind().await {
        Ok(users) => {
            let users: Vec<Arc<str>> = users.into_iter().map(Arc::from).collect();
            for page in users.chunks(PAGE) {
                if let Err(e) = engine.presence_leave(page).await {
                    tracing::warn!(?e, "presence: old leaves could not be announced");
                }
            }
        }
        Err(e) => tracing::warn!(?e, "presence: could not read what the last run left"),
    }
    loop {
        tokio::select! {
            _ = presence.wake.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
            _ = state.shutdown.cancelled() => break,
        }
        let cluster = !engine.is_embedded();
        if !engine.presence_ready() {
            // Cluster: not caught up with Redis (it may have restarted and not yet have its
            // id sequence back): events written now could take ids clients are past.
            troubled = Instant::now();
            announce_again = true;
            continue;
        }
        let heartbeat = cluster && (announce_again || renewed.elapsed() >= renew_every);
        let (join, leave) = presence.due(heartbeat);
        // Announced again: the ones about to leave too, so their leave is not silent.
        let touch: Vec<Arc<str>> = if announce_again {
            join.iter().chain(&leave).cloned().collect()
        } else {
            join.clone()
        };
        let mut touched = true;
        // In pages: Redis runs one script at a time, and thousands of accounts in one
        // would hold everyone else's commands up. Each page is marked as it is answered.
        for page in touch.chunks(PAGE) {
            presence.set_maybe(page);
            let started = Instant::now();
            let result = engine.presence_touch(page, ttl).await;
            if started.elapsed() > renew_every {
                // A stall without an error: others may have missed their renewals too.
                troubled = Instant::now();
            }
            if let Err(e) = result {
                tracing::warn!(?e, "presence: joins not announced; retrying");
                touched = false;
                break;
            }
            presence.set_announced(page);
        }
        if !touched {
            troubled = Instant::now();
            continue;
        }
        if heartbeat {
            renewed = Instant::now();
            announce_again = false;
        }
        let mut again = false;
        for page in leave.chunks(PAGE) {
            match engine.presence_leave(page).await {
                Ok(true) => {
                    for user in page {
                        again |= presence.left(user);
                    }
                }
                Ok(false) => {
                    // Redis lost this server's announcements: again first, then leave.
                    announce_again = true;
                    again = true;
                    break;
                }
                Err(e) => {
                    troubled = Instant::now();
                    tracing::warn!(?e, "presence: leaves not announced; retrying");
                    break;
                }
            }
        }
        if again {
            presence.wake.notify_one();
        }
        let calm = troubled.elapsed() >= renew_every + SWEEP_EVERY;
        if cluster && calm && swept.elapsed() >= SWEEP_EVERY {
            // Every server sweeps; each removal is announced by the one script that made it.
            swept = Instant::now();
            if let Err(e) = engine.presence_sweep().await {
                troubled = Instant::now();
                tracing::warn!(?e, "presence: sweep failed");
            }
        }
    }
    // Shutting down: a bounded goodbye, so others do not wait for the entries to run out.
    let goodbye = async {
        for page in presence.announced().chunks(PAGE) {
            let _ = engine.presence_leave(page).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(3), goodbye)
        .await
        .is_err()
    {
        tracing::warn!("presence: leaves at shutdown took over 3 s; entries will run out");
    }
}
