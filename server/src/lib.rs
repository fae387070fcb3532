//! Tidings server: one event log, fanned out to browsers over polling, Server-Sent Events
//! and WebSockets.
//!
//! The path of a message, one module per step, in the order a message meets them:
//!
//! ```text
//!  socket ─> serve ─> transport::{poll, sse, ws} / api ─> state ─> engine ─> log ─┐
//!  (accept, limits,   (parse with wire:: and             (publish,  (id,     (window,
//!   client address)    app::protocol, validate)           subscribe, durable) wake-up)
//!                                                         rate, auth)           │
//!  socket <─ transport::{poll, sse, ws} <─ log::Subscription (cursor, resume, reset) <─┘
//!            (copy each event's encoding, made once by the transport's `encode_event`)
//! ```
//!
//! 1. [`serve`]: the accept loop: counts connections per client address, attaches the
//!    client's address to every request, hands event-stream connections to their own
//!    HTTP framing ([`transport::sse::http`]) and the rest to hyper.
//! 2. [`transport`]: the three adapters (`poll`, `sse`, `ws`): each parses its request or
//!    frames (`wire::ws` for WebSocket bytes), calls the state, and encodes what a
//!    subscription yields; [`api`]: the other endpoints (publish, history, health, metrics,
//!    the Leptos server function) and the shared extractors.
//! 3. [`state`]: the shared state and its operations: publish (admin rule, rate limit,
//!    idempotency check), subscribe (stream permits, catching up in cluster mode), origin
//!    rules. [`limits`]: who a client is and what it may do.
//! 4. [`engine`]: where events become durable: `embedded` (SQLite and the single writer)
//!    or `cluster` (Redis), behind one enum with one error type.
//! 5. [`log`]: the in-memory resume window and [`log::Subscription`], the one place where
//!    cursors, resume, retention and resets are decided for every transport.
//!
//! Beside the path: [`config`] (flags), [`error`] (the JSON error answers), [`metrics`]
//! (`/metrics`), [`demo`] (the simulated newsroom and stock ticker).

// The module map above is for maintainers: it links the private modules it names
// (`cargo doc --document-private-items` renders them).
#![allow(rustdoc::private_intra_doc_links)]

mod alerts;
mod api;
mod auth;
mod config;
mod demo;
mod engine;
mod error;
mod lab;
mod limits;
mod log;
mod metrics;
pub mod presence;
mod serve;
mod state;
mod transport;

use axum::routing::{get, post};
use axum::Router;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::services::{ServeDir, ServeFile};

pub use config::Config;
use state::{AppState, Shared};

/// The router: every route and layer, given the shared state (tests drive it with
/// `oneshot` or a real listener).
pub fn app(state: AppState) -> Router {
    let static_dir = state.config.static_dir.clone();
    let cors = api::cors_layer(&state.config.allow_origins);
    let router = Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/api/publish", post(api::publish))
        .route("/api/history", get(api::history))
        .route("/api/snapshot", get(api::snapshot))
        .route("/api/presence", get(api::presence))
        .route("/api/auth/signup", post(auth::signup))
        .route("/api/auth/signin", post(auth::signin))
        .route("/api/auth/signout", post(auth::signout))
        .route("/api/auth/refresh", post(auth::refresh))
        .route("/api/auth/me", get(auth::me))
        .route("/api/admin/broadcast", post(auth::broadcast))
        .route("/api/notifications/read", post(auth::mark_read))
        .route("/api/alerts", get(alerts::list).post(alerts::create))
        .route(
            "/api/alerts/{id}",
            axum::routing::put(alerts::update).delete(alerts::delete),
        )
        .route("/api/stats", get(api::stats))
        .route("/api/lab/load", post(lab::handler))
        .route("/api/poll", get(transport::poll::handler))
        .route("/api/sse", get(transport::sse::handler))
        .route("/api/ws", get(transport::ws::handler))
        // Leptos server functions (static routes above win over the wildcard).
        .route("/api/{*fn_name}", post(api::server_fn).get(api::not_found))
        .fallback_service(
            ServeDir::new(&static_dir).fallback(ServeFile::new(static_dir.join("index.html"))),
        )
        .with_state(state)
        .layer(axum::middleware::from_fn(api::require_host));
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// Opens the store, starts the writer (and the simulators unless `--no-demo`), and serves
/// on `listener` until `shutdown` resolves. Then it stops accepting, ends every stream,
/// writes what was queued and closes the store before returning.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let token = CancellationToken::new();
    let demo_leader = Arc::new(AtomicBool::new(config.redis().is_none()));
    // Before the engine: a server that cannot check sessions must not start (and says why).
    let auth = Arc::new(auth::Auth::new(&config)?);
    let (alert_queue, prices) = tokio::sync::mpsc::channel(alerts::QUEUE);
    let (log, engine) = engine::Engine::start(&config, token.clone(), demo_leader.clone()).await?;
    let engine = Arc::new(engine);
    let config_max_streams = config.max_streams.max(1);
    let limits = Arc::new(limits::Limits::new(
        config.trusted_proxies.clone(),
        config.max_conns_per_ip,
        config.publish_rate,
        config.publish_burst,
    ));
    let timeouts = serve::Timeouts {
        head: Duration::from_secs(config.head_timeout_secs.max(1)),
        write: Duration::from_secs(config.write_timeout_secs.max(1)),
    };
    let tasks = tokio_util::task::TaskTracker::new();
    let state = AppState(Arc::new(Shared {
        log,
        engine: engine.clone(),
        auth: auth.clone(),
        presence: presence::Presence::new(
            Duration::from_millis(config.presence_grace_ms).min(presence::MAX_GRACE),
        ),
        alert_queue,
        config,
        demo_leader,
        streams: Arc::new(tokio::sync::Semaphore::new(config_max_streams)),
        shutdown: token.clone(),
        tasks: tasks.clone(),
        lab: Default::default(),
        limits: limits.clone(),
        metrics: metrics::install(),
    }));
    // One task announces who is online in chat (shutdown waits for its goodbyes).
    tasks.spawn(presence::run(state.clone()));
    // One task checks prices against the alerts, in order (until shutdown).
    tokio::spawn(alerts::run(state.clone(), prices));
    // Rate-limit buckets of addresses that went quiet are dropped now and then.
    tokio::spawn({
        let (limits, token) = (limits.clone(), token.clone());
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        limits.forget_idle();
                        auth.forget_idle();
                    }
                    _ = token.cancelled() => break,
                }
            }
        }
    });
    if !state.config.no_demo {
        demo::spawn(state.clone());
    }
    if state.config.admin_token.is_some() {
        lab::spawn(state.clone());
    }

    // The caller's shutdown future becomes the one token everything watches.
    tokio::spawn({
        let token = token.clone();
        async move {
            tokio::select! {
                _ = shutdown => token.cancel(),
                _ = token.cancelled() => {}
            }
        }
    });
    serve::serve(listener, app(state), limits, timeouts, token.clone(), tasks).await;
    engine.finish().await;
    Ok(())
}
