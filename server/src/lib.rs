//! Tidings server: one event log, fanned out to browsers over polling, Server-Sent Events
//! and WebSockets.
//!
//! How one message travels, one module per step:
//!
//! ```text
//!  POST /api/publish ─┐                         ┌─> transport::poll  (JSON answer)
//!  WS publish frame ──┼─> app::protocol   ──>   publish (writer task: id, SQLite
//!  demo simulators ───┘   (parse+validate)      group commit) ──> log (window +
//!                                               watch wake-up) ─┼─> transport::sse   (SSE frames)
//!                                                               └─> transport::ws    (WS frames)
//! ```
//!
//! - [`config`]: flags and `TIDINGS_*` environment variables.
//! - [`engine`]: where events become durable: embedded (one server) or cluster (Redis).
//! - [`store`]: SQLite (sqlx, WAL): durable events, the window reloaded on start, history.
//! - [`publish`]: the single writer that assigns ids and commits batches before anyone sees them.
//! - [`cluster`]: Redis as the shared log: id sequence, ordered stream, tail, demo lease.
//! - [`log`]: the in-memory resume window and [`log::Subscription`], the one place where
//!   cursors, resume, retention and resets are decided for every transport.
//! - [`transport`]: three thin adapters that only encode what a subscription yields.
//! - [`api`]: publish, history, health, the Leptos server function and origin rules.
//! - [`demo`]: the simulated newsroom and stock ticker.
//! - [`error`]: the JSON error answers.
//! - [`serve`]: the accept loop (hyper HTTP/1.1, `TCP_NODELAY`, upgrades, graceful stop).

mod api;
mod config;
mod demo;
mod engine;
mod error;
mod limits;
mod log;
mod metrics;
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
    let demo_leader = Arc::new(AtomicBool::new(config.redis_url.is_none()));
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
    let state = AppState(Arc::new(Shared {
        log,
        engine: engine.clone(),
        config,
        demo_leader,
        streams: Arc::new(tokio::sync::Semaphore::new(config_max_streams)),
        shutdown: token.clone(),
        limits: limits.clone(),
        metrics: metrics::install(),
    }));
    // Rate-limit buckets of addresses that went quiet are dropped now and then.
    tokio::spawn({
        let (limits, token) = (limits.clone(), token.clone());
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = every.tick() => limits.forget_idle(),
                    _ = token.cancelled() => break,
                }
            }
        }
    });
    if !state.config.no_demo {
        demo::spawn(state.clone());
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
    serve::serve(listener, app(state), limits, timeouts, token.clone()).await;
    engine.finish().await;
    Ok(())
}
