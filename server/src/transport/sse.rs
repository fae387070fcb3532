//! `GET /api/sse?streams=..[&since=ID]`: Server-Sent Events.
//!
//! The body is written by hand rather than with axum's `Sse` so that each event's message is
//! encoded once (at publish) and every connection only copies it, all it has pending in one
//! chunk per wake-up. (How the connection itself is served: `crate::serve`.)

use super::SubscribeParams;
use crate::api::query;
use crate::error::ApiError;
use crate::log::{Delivery, Subscription, BATCH};
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use std::pin::Pin;
use std::time::Duration;
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};
use tokio_util::sync::WaitForCancellationFutureOwned;

/// Bytes of events gathered into one chunk (a lagging client catches up in chunks this size).
const MAX_CHUNK: usize = 64 * 1024;

/// How long the browser waits before reconnecting after the stream ends (ms).
const RETRY_MS: u32 = 1000;

pub async fn handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<SubscribeParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = query(q)?;
    let filter = super::streams(p.streams.as_deref())?;
    // The browser's automatic reconnect sends Last-Event-ID; it wins over the `since` that
    // is still in the URL from the first connect.
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::BadRequest("Last-Event-ID must be an event id (a number)".into())
                })?,
        ),
    };
    let sub = state.subscribe(filter, last_event_id.or(p.since)).await?;
    let heartbeat = Duration::from_secs(state.config.heartbeat_secs.max(1));
    let mut ticks = interval_at(Instant::now() + heartbeat, heartbeat);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let conn = Conn {
        sub,
        ticks,
        shutdown: Box::pin(state.shutdown.clone().cancelled_owned()),
        started: false,
    };
    let body = Body::from_stream(futures_util::stream::unfold(conn, |mut c| async move {
        c.next_chunk()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), c))
    }));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // nginx buffers proxied responses unless told not to.
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        body,
    )
        .into_response())
}

struct Conn {
    sub: Subscription,
    ticks: Interval,
    /// Created once per connection (see the same note in `ws.rs`).
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    started: bool,
}

impl Conn {
    /// The next bytes to write, or `None` to end the response (shutdown).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if !self.started {
            self.started = true;
            return Some(Bytes::from(format!("retry: {RETRY_MS}\n: connected\n\n")));
        }
        // One chunk per wake-up: every event available, copied out of the log.
        let mut out = Vec::new();
        tokio::select! {
            _ = &mut self.shutdown => None,
            d = self.sub.next_into(BATCH, MAX_CHUNK, |e| &e.sse, &mut out) => Some(match d {
                Delivery::Reset { cursor } => reset(cursor),
                Delivery::Events(_) => {
                    // As in ws.rs: let the other woken streams run, then top up the chunk.
                    tokio::task::yield_now().await;
                    match self.sub.try_next_into(BATCH, MAX_CHUNK, |e| &e.sse, &mut out) {
                        // The events gathered first still go out, before the reset.
                        Some(Delivery::Reset { cursor }) => {
                            out.extend_from_slice(&reset(cursor));
                            Bytes::from(out)
                        }
                        _ => Bytes::from(out),
                    }
                }
            }),
            _ = self.ticks.tick() => {
                // A bare `id:` line updates the browser's Last-Event-ID without firing an event.
                match self.sub.unannounced() {
                    Some(cursor) => Some(Bytes::from(format!(": heartbeat\nid: {cursor}\n\n"))),
                    None => Some(Bytes::from_static(b": heartbeat\n\n")),
                }
            }
        }
    }
}

fn reset(cursor: u64) -> Bytes {
    Bytes::from(format!(
        "event: reset\nid: {cursor}\ndata: {{\"cursor\":{cursor}}}\n\n"
    ))
}
