//! The accept loop: hyper's HTTP/1.1 connection driven directly, as in axum's
//! `serve-with-hyper` example, instead of `axum::serve`. Two reasons:
//! - `TCP_NODELAY` on every socket. Events are small writes; with Nagle's algorithm a
//!   write waits while an earlier one is unacknowledged, which showed up as latency.
//! - The WebSocket adapter takes the `TcpStream` back out of hyper's upgrade
//!   (`Upgraded::downcast`), which needs to know the IO type; `axum::serve`'s
//!   HTTP/1-or-2 builder wraps it in a private one.
//!
//! HTTP/2 without TLS (h2c) is not served: browsers speak HTTP/2 only over TLS, and a
//! TLS-terminating proxy such as nginx talks HTTP/1.1 to its upstream.

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and waits
/// for the open connections to finish (streams end on their own shutdown signal).
pub async fn serve(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()>) {
    // Dropping `stop` tells every connection to finish; each holds a `done` receiver, so
    // `all_done.closed()` resolves when the last one has ended (axum::serve does the same).
    let (stop, stopping) = watch::channel(());
    let (all_done, done) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was
                    // accepted: pause briefly (as axum::serve does) rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(router.clone()))
            .with_upgrades();
        let (mut stopping, done) = (stopping.clone(), done.clone());
        tokio::spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stopping.changed() => {
                    // Finish the request in progress, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::trace!(error = %e, "connection ended with an error");
            }
            drop(done);
        });
    }
    drop(listener);
    drop((stop, stopping, done));
    all_done.closed().await;
}
