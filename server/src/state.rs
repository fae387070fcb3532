//! The server's shared state and its operations (mini-redis' `db.rs`): what every
//! transport and handler calls to publish, subscribe and check who may do what. Handlers
//! stay thin: they parse, call one of these, and encode the answer.

use crate::auth::Identity;
use crate::error::ApiError;
use crate::limits::Limits;
use crate::log::Filter;
use crate::log::StoredEvent;
use crate::{engine, log, Config};
use app::protocol::{ChatMessage, Envelope, Notice, Payload, ServerInfo, Stream, StreamSet};
use axum::http::{header, HeaderMap};
use serde_json::value::RawValue;
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Whether `presented` is `secret`, compared in constant time.
pub fn same_secret(secret: &str, presented: Option<&str>) -> bool {
    presented.is_some_and(|p| {
        let (a, b) = (secret.as_bytes(), p.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    })
}

/// Who is publishing: whether they showed the admin token, and from which client address
/// (`None`: the server itself, e.g. the simulators; not rate-limited).
#[derive(Clone, Debug, Default)]
pub struct Caller {
    pub admin: bool,
    pub client: Option<IpAddr>,
    /// The signed-in account: its chat messages carry it as their verified author.
    pub user: Option<Arc<str>>,
    /// It showed a session that is not valid (expired): its chat messages are refused (401)
    /// rather than posted as anonymous.
    pub refused: Option<crate::auth::TokenError>,
}

impl Caller {
    /// The server's own simulators.
    pub const SERVER: Caller = Caller {
        admin: true,
        client: None,
        user: None,
        refused: None,
    };
}

/// Everything a request handler needs, shared by all connections.
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

pub struct Shared {
    /// The resume window and wake-ups; read by every transport.
    pub log: Arc<log::EventLog>,
    /// Where events are stored and how they reach the log (SQLite or Redis).
    pub engine: Arc<engine::Engine>,
    /// Accounts' passwords, session tokens, sign-in limits.
    pub auth: Arc<crate::auth::Auth>,
    /// Which accounts this server holds online (`crate::presence`).
    pub presence: Arc<crate::presence::Presence>,
    /// Stored prices on their way to the price-alert check (`crate::alerts::run`).
    pub alert_queue: crate::alerts::Queue,
    pub config: Config,
    /// Whether this server runs the simulators (always in embedded mode; in cluster mode
    /// only the holder of the Redis lease, so N servers do not mean N tickers).
    pub demo_leader: Arc<AtomicBool>,
    /// One permit per open stream (`--max-streams`), held by its [`log::Subscription`].
    pub streams: Arc<tokio::sync::Semaphore>,
    /// Cancelled once on shutdown: long polls answer, SSE streams end, WebSockets close
    /// with 1001, simulators stop.
    pub shutdown: CancellationToken,
    /// The transport lab's load generator (`crate::lab`).
    pub lab: crate::lab::LabLoad,
    /// Every connection's task, WebSockets taken over from hyper included: shutdown waits
    /// for them (their last publishes and close frames) before the engine stops.
    pub tasks: tokio_util::task::TaskTracker,
    /// Connections per address and publish rates (`--max-conns-per-ip`, `--publish-rate`).
    pub limits: Arc<Limits>,
    /// Renders `/metrics` (the recorder is process-wide, see [`crate::metrics`]).
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// The one publish path (HTTP, WebSocket and the simulators all come through here).
    /// `payload` is already validated; `admin` says whether the caller showed the token.
    ///
    /// `key`: an idempotency key; a publish retried with the same key is answered with the
    /// event already stored (for as long as the engine remembers the key) instead of being
    /// stored twice, and `true` ("replayed"). The same key with a different payload is a
    /// 422: the key belongs to another publish (a client bug, or someone guessing keys),
    /// and answering with that other publish's event would tell this one it was stored.
    /// A caller that is not the admin is held to `--publish-rate`.
    pub async fn publish(
        &self,
        mut payload: Payload,
        key: Option<String>,
        caller: &Caller,
    ) -> Result<(Arc<StoredEvent>, bool), ApiError> {
        let stream = payload.stream();
        if stream == Stream::Presence && caller.client.is_some() {
            return Err(ApiError::Forbidden(
                "presence is written by the servers as accounts connect and leave; it \
                 cannot be published"
                    .into(),
            ));
        }
        if stream == Stream::Notifications && caller.client.is_some() {
            return Err(ApiError::Forbidden(
                "notifications are made by the server (mentions, alerts, broadcasts); they \
                 cannot be published"
                    .into(),
            ));
        }
        if let (Some(e), Stream::Chat) = (caller.refused, stream) {
            return Err(e.into_api());
        }
        if let Payload::Chat(msg) = &mut payload {
            match &caller.user {
                // The verified author: the account's name, whatever name was typed.
                Some(user) => {
                    msg.author = user.to_string();
                    msg.user = Some(user.to_string());
                }
                None if msg.user.is_some() && caller.client.is_some() => {
                    return Err(ApiError::Forbidden(
                        "`user` is set by the server for signed-in accounts; leave it out".into(),
                    ))
                }
                None => {}
            }
        }
        if stream != Stream::Chat && self.config.admin_token.is_some() && !caller.admin {
            return Err(ApiError::Unauthorized);
        }
        if stream == Stream::Lab && caller.client.is_some() {
            return Err(ApiError::Forbidden(
                "the lab stream is written by the server's load generator only; control it \
                 with POST /api/lab/load"
                    .into(),
            ));
        }
        if let (Some(client), false) = (caller.client, caller.admin) {
            self.limits.publish_allowed(client).map_err(|wait| {
                metrics::counter!("tidings_rate_limited_total").increment(1);
                ApiError::RateLimited(wait)
            })?;
        }
        let started = std::time::Instant::now();
        // The data JSON this publish would have stored, kept to compare with a replayed
        // event (only publishes with a key pay for it). Bytes, not parsed values: a float
        // parsed back from JSON need not be the same `f64`.
        let sent = key.as_ref().map(|_| payload.data_json());
        // A price is checked against the price alerts once it is stored.
        let ticker = match &payload {
            Payload::Ticker(t) => Some(t.clone()),
            _ => None,
        };
        let (event, replayed) = self.engine.publish(payload, key).await?;
        if replayed {
            let stored = serde_json::from_str::<Envelope<&RawValue>>(event.json.get()).ok();
            let same = sent
                .zip(stored)
                .is_some_and(|(sent, stored)| stored.stream == stream && stored.data.get() == sent);
            if !same {
                return Err(ApiError::Conflict(
                    "this idempotency key was used for a different publish; use a new key for \
                     a new message"
                        .into(),
                ));
            }
            metrics::counter!("tidings_idempotent_replays_total").increment(1);
        } else {
            metrics::histogram!("tidings_publish_seconds").record(started.elapsed());
            crate::metrics::lab::PUBLISHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("tidings_events_published_total", "stream" => stream.as_str())
                .increment(1);
            if stream == Stream::Chat {
                self.notify_mentions(&event);
            }
            if let Some(tick) = ticker {
                crate::alerts::check(self, event.id, tick);
            }
        }
        Ok((event, replayed))
    }

    /// A chat message that mentions accounts (`@name`) notifies each of them (not the
    /// author), after the message is stored. In a task of its own: the publisher's answer
    /// does not wait for the lookups; shutdown waits for it.
    fn notify_mentions(&self, event: &Arc<StoredEvent>) {
        let Ok(chat) = serde_json::from_str::<Envelope<ChatMessage>>(event.json.get()) else {
            return;
        };
        let names = app::protocol::mentions(&chat.data.body);
        if names.is_empty() {
            return;
        }
        let state = self.clone();
        let (id, msg) = (chat.id, chat.data);
        self.tasks.spawn(async move {
            for name in names {
                let account = match state.engine.account(&name).await {
                    Ok(Some((account, _))) => account,
                    Ok(None) => continue,
                    Err(_) => {
                        tracing::warn!("mention not delivered: accounts unavailable");
                        continue;
                    }
                };
                if msg
                    .user
                    .as_deref()
                    .is_some_and(|u| u.eq_ignore_ascii_case(&account))
                {
                    continue;
                }
                let excerpt: String = msg.body.chars().take(140).collect();
                let notice = Notice {
                    to: account,
                    kind: "mention".into(),
                    // The verified name, or "guest" before a typed one: anyone may type any
                    // display name, and a mention must not pass as the account's.
                    text: match &msg.user {
                        Some(user) => format!("{user} mentioned you: {excerpt}"),
                        None => format!("guest \"{}\" mentioned you: {excerpt}", msg.author),
                    },
                    about: Some(id),
                };
                if let Err(e) = state
                    .publish(Payload::Notifications(notice), None, &Caller::SERVER)
                    .await
                {
                    tracing::warn!(error = %e.message(), "mention not delivered");
                }
            }
        });
    }

    /// Who a request is (see [`crate::auth::Auth::identify`]).
    pub fn identify(&self, headers: &HeaderMap, query_token: Option<&str>) -> Identity {
        self.auth
            .identify(headers, query_token, self.config.admin_token.as_deref())
    }

    /// What a reader of `streams` may receive: the private stream needs a signed-in
    /// identity (401 otherwise, saying why); any other stream does not, and a token that
    /// is not valid is then ignored rather than refused.
    pub fn filter_for(&self, streams: StreamSet, who: &Identity) -> Result<Filter, ApiError> {
        let user = if streams.contains(Stream::Notifications) {
            Some(who.require("receive notifications")?.name.clone())
        } else {
            who.user().map(|v| v.name.clone())
        };
        Ok(Filter { streams, user })
    }

    /// A subscription for a streaming transport or a waiting long poll, from `cursor` (after
    /// catching up to it) or from now. It holds one of the `--max-streams` permits for as long
    /// as it lives; when none is left the client gets a 503 instead of exhausting the
    /// server's file descriptors for everyone.
    pub async fn subscribe(
        &self,
        filter: Filter,
        cursor: Option<u64>,
    ) -> Result<crate::log::Subscription, ApiError> {
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("tidings_connections_refused_total", "reason" => "max_streams")
                .increment(1);
            ApiError::Unavailable(
                "this server holds as many open streams as it is allowed; try again later".into(),
            )
        })?;
        let cursor = match cursor {
            Some(c) => {
                self.catch_up(c).await;
                c
            }
            None => self.log.latest(),
        };
        let hold = self.online_in_chat(&filter).map(|u| self.presence.hold(u));
        Ok(self
            .log
            .subscribe(filter, cursor)
            .with_permit(permit)
            .with_presence(hold))
    }

    /// The account a reader with `filter` makes present in chat: a signed-in one that reads
    /// `chat` (a bot that only reads its notifications is not "in chat").
    pub fn online_in_chat(&self, filter: &Filter) -> Option<Arc<str>> {
        filter
            .user
            .clone()
            .filter(|_| filter.streams.contains(Stream::Chat))
    }

    /// Where a reader with `cursor` can start. In cluster mode a client may arrive with a
    /// cursor from another server whose events this server's window has not received yet
    /// (it is milliseconds behind Redis): wait for them briefly rather than reset a client
    /// that missed nothing. A cursor beyond the cluster's head is left alone: it gets a reset.
    pub async fn catch_up(&self, cursor: u64) {
        if cursor <= self.log.latest() {
            return;
        }
        match self.engine.head().await {
            Some(head) if cursor <= head => {
                self.log
                    .wait_for(cursor, std::time::Duration::from_secs(3))
                    .await;
            }
            _ => {}
        }
    }

    /// Whether `presented` is the admin token.
    pub fn is_admin(&self, presented: Option<&str>) -> bool {
        self.config
            .admin_token
            .as_deref()
            .is_some_and(|token| same_secret(token, presented))
    }

    /// What the server says about itself; `headers`: the asking request's (for whether its
    /// origin may open a WebSocket here).
    pub fn info(&self, headers: &HeaderMap) -> ServerInfo {
        ServerInfo {
            websocket_origin_allowed: self.origin_allowed(headers),
            version: env!("CARGO_PKG_VERSION").into(),
            latest_id: self.log.latest(),
            oldest_id: self.log.oldest(),
            retention: self.log.retention(),
            demo: !self.config.no_demo,
            admin_protected: self.config.admin_token.is_some(),
            demo_leader: !self.config.no_demo
                && self.demo_leader.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// A browser's `Origin` is acceptable when it is this server's own origin (same
    /// host:port as the request's `Host`) or one of `--allow-origin`. Requests without an
    /// `Origin` (curl, native clients) are not browser cross-origin requests and pass.
    pub fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
            return true;
        };
        let own = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|host| {
                origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"))
                    == Some(host)
            });
        own || self
            .config
            .allow_origins
            .iter()
            .any(|a| a.trim_end_matches('/') == origin)
    }
}
