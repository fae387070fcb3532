//! The accept loop: hyper's HTTP/1.1 connection driven directly, as in axum's
//! `serve-with-hyper` example, instead of `axum::serve`. Reasons:
//! - `TCP_NODELAY` on every socket. Events are small writes; with Nagle's algorithm a
//!   write waits while an earlier one is unacknowledged, which showed up as latency.
//! - The WebSocket adapter takes the `TcpStream` back out of hyper's upgrade
//!   (`Upgraded::downcast`), which needs to know the IO type; `axum::serve`'s
//!   HTTP/1-or-2 builder wraps it in a private one.
//! - A connection whose first request is `GET /api/sse` is handed to the SSE adapter's own
//!   HTTP/1.1 framing ([`crate::transport::sse::http`]) instead of hyper.
//! - Per connection: the `--max-conns-per-ip` count, and the client's address attached to
//!   every request ([`ClientAddr`]).
//!
//! This module only accepts, counts and dispatches.
//!
//! HTTP/2 without TLS (h2c) is not served: browsers speak HTTP/2 only over TLS, and a
//! TLS-terminating proxy such as nginx talks HTTP/1.1 to its upstream.

use crate::limits::{ClientAddr, Counted, Limits};
use axum::http;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How long a client may take (see `--head-timeout-secs`, `--write-timeout-secs`).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// To send a whole request head.
    pub head: Duration,
    /// To take one write of a stream.
    pub write: Duration,
}

/// Serves `router` on `listener` until `shutdown` is cancelled (the server's one shutdown
/// signal: streams, long polls and simulators watch it too), then stops accepting and waits
/// for the open connections to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Arc<Limits>,
    timeouts: Timeouts,
    shutdown: CancellationToken,
    connections: TaskTracker,
) {
    // At most this many refusals (`--max-conns-per-ip`) in progress; past it a refused
    // socket is just closed, so a flood of connections cannot hold descriptors by making
    // the server answer each one.
    let refusals = Arc::new(tokio::sync::Semaphore::new(256));
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was
                    // accepted: pause briefly (as axum::serve does) rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let peer = peer.ip().to_canonical();
        let Some(counted) = limits.open_connection(peer) else {
            metrics::counter!("tidings_connections_refused_total", "reason" => "per_ip")
                .increment(1);
            if let Ok(permit) = refusals.clone().try_acquire_owned() {
                let max = limits.max_conns_per_ip();
                tokio::spawn(async move {
                    refuse(tcp, max).await;
                    drop(permit);
                });
            }
            continue;
        };
        let counted = Counted::new(counted);
        let (router, limits, stopping) = (router.clone(), limits.clone(), shutdown.clone());
        connections.spawn(async move {
            // One deadline for the first request head, from the moment of accept: looking
            // at the first bytes counts too.
            let head_deadline = tokio::time::Instant::now() + timeouts.head;
            if crate::transport::sse::http::starts_with_sse(&tcp, head_deadline).await {
                let service = with_client(router, limits, peer, counted);
                crate::transport::sse::http::serve_connection(
                    tcp,
                    service,
                    head_deadline,
                    timeouts.write,
                    stopping,
                )
                .await;
            } else {
                let service = with_client(router, limits, peer, counted);
                let left = head_deadline.saturating_duration_since(tokio::time::Instant::now());
                http_connection(tcp, service, left.max(Duration::from_millis(100)), stopping).await;
            }
        });
    }
    drop(listener);
    // Every connection ends on the token (streams close, hyper finishes the request in
    // progress); a peer that stops reading is bounded by the write timeouts. Past a grace
    // period the engine is stopped anyway rather than hang the exit.
    connections.close();
    if tokio::time::timeout(Duration::from_secs(15), connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open 15 s after shutdown began");
    }
}

/// The router, attaching to every request of a connection from `peer` the client it is
/// from (through a trusted proxy: the address the proxy forwarded) and the connection's
/// count.
fn with_client<B>(
    router: Router,
    limits: Arc<Limits>,
    peer: std::net::IpAddr,
    counted: Counted,
) -> tower::util::MapRequest<Router, impl FnMut(http::Request<B>) -> http::Request<B> + Clone>
where
    Router: tower::Service<http::Request<B>>,
{
    router.map_request(move |mut req: http::Request<B>| {
        // Every X-Forwarded-For line, in order: a proxy may add a line of its own
        // instead of appending to the client's.
        let forwarded: Vec<&str> = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let forwarded = forwarded.join(",");
        let client = limits.client(peer, Some(&forwarded));
        req.extensions_mut().insert(ClientAddr(client));
        req.extensions_mut().insert(counted.clone());
        req
    })
}

/// One connection served by hyper (HTTP/1.1 keep-alive, upgrades).
async fn http_connection(
    tcp: TcpStream,
    service: tower::util::MapRequest<
        Router,
        impl FnMut(http::Request<hyper::body::Incoming>) -> http::Request<hyper::body::Incoming>
            + Clone
            + Send
            + 'static,
    >,
    head_timeout: Duration,
    stopping: CancellationToken,
) {
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // The whole head within the same deadline as event-stream connections.
        .header_read_timeout(head_timeout)
        .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service))
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stopping.cancelled() => {
            // Finish the request in progress, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::trace!(error = %e, "connection ended with an error");
    }
}

/// Answers a connection over `--max-conns-per-ip` with a 429 and closes it, without
/// reading its request (the client sees a clear answer instead of a reset).
async fn refuse(mut tcp: TcpStream, max: u32) {
    let body = serde_json::to_string(&app::protocol::ErrorBody {
        error: format!("too many connections from this address (at most {max})"),
        code: "too_many_connections".into(),
    })
    .expect("serialises");
    let response = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
    crate::transport::sse::http::drain_before_close(&mut tcp).await;
}
