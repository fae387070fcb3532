//! `GET /metrics`: Prometheus text format, through the `metrics` facade and its Prometheus
//! exporter (no hand-formatted text). The names, in one place:
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `tidings_connections` | gauge | `transport` = `ws`, `sse`, `long_poll` (open streams) |
//! | `tidings_events_published_total` | counter | `stream` |
//! | `tidings_events_delivered_total` | counter | `transport` = `ws`, `sse`, `poll` |
//! | `tidings_publish_seconds` | histogram | (accepted publish to durable, HTTP and WS) |
//! | `tidings_resets_total` | counter | `transport` (a reader told it missed events) |
//! | `tidings_errors_total` | counter | `code` (every error answer and error frame) |
//! | `tidings_rate_limited_total` | counter | (publishes refused by `--publish-rate`) |
//! | `tidings_connections_refused_total` | counter | `reason` = `per_ip`, `max_streams` |
//! | `tidings_ws_protocol_errors_total` | counter | `close_code` (connections failed by a client's bytes) |
//! | `tidings_slow_consumer_closes_total` | counter | `transport` (writes stuck past `--write-timeout-secs`) |
//! | `tidings_idempotent_replays_total` | counter | (retries answered with the stored event) |
//!
//! One recorder per process (the `metrics` facade is global): servers started several
//! times in one test process share it, as Prometheus' model of a process expects.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder (once per process) and returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("tidings_publish_seconds".into()),
                    &[
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
                    ],
                )
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (an embedding program's):
            // then that one receives the figures and `/metrics` shows ours empty.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
            }
            handle
        })
        .clone()
}

pub fn error_answered(code: &'static str) {
    metrics::counter!("tidings_errors_total", "code" => code).increment(1);
}

/// The figures `/api/stats` shows (the transport lab's server side), kept beside the
/// Prometheus ones because the exporter cannot be read back. Process-wide, like the
/// recorder; relaxed atomics, touched once per connection, request or batch of deliveries.
pub mod lab {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    pub static OPEN_WS: AtomicU64 = AtomicU64::new(0);
    pub static OPEN_SSE: AtomicU64 = AtomicU64::new(0);
    pub static OPEN_LONG_POLL: AtomicU64 = AtomicU64::new(0);
    pub static POLLS: AtomicU64 = AtomicU64::new(0);
    pub static PUBLISHES: AtomicU64 = AtomicU64::new(0);
    pub static DELIVERED: AtomicU64 = AtomicU64::new(0);

    pub fn open(transport: &str) -> Option<&'static AtomicU64> {
        match transport {
            "ws" => Some(&OPEN_WS),
            "sse" => Some(&OPEN_SSE),
            "long_poll" => Some(&OPEN_LONG_POLL),
            _ => None,
        }
    }

    pub fn stats() -> app::protocol::ServerStats {
        app::protocol::ServerStats {
            now_ms: crate::engine::now_ms(),
            open_ws: OPEN_WS.load(Relaxed),
            open_sse: OPEN_SSE.load(Relaxed),
            open_long_poll: OPEN_LONG_POLL.load(Relaxed),
            polls: POLLS.load(Relaxed),
            publishes: PUBLISHES.load(Relaxed),
            delivered: DELIVERED.load(Relaxed),
        }
    }
}

/// An open stream of `transport`, counted for as long as the guard lives.
pub struct OpenStream(&'static str);

impl OpenStream {
    pub fn new(transport: &'static str) -> OpenStream {
        metrics::gauge!("tidings_connections", "transport" => transport).increment(1.0);
        if let Some(n) = lab::open(transport) {
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        OpenStream(transport)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!("tidings_connections", "transport" => self.0).decrement(1.0);
        if let Some(n) = lab::open(self.0) {
            n.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
