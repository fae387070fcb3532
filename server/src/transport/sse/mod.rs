//! `GET /api/sse?streams=..[&since=ID]`: Server-Sent Events.
//!
//! The body is written by hand rather than with axum's `Sse` so that each event's message is
//! encoded once (at publish) and every connection only copies it, all it has pending in one
//! chunk per wake-up. (How the connection itself is served: `crate::serve`.)

pub mod http;

use super::SubscribeParams;
use crate::api::Query;
use crate::error::ApiError;
use crate::log::Subscription;
use crate::AppState;
use app::protocol::{CursorData, ErrorBody, SSE_EXPIRED, SSE_HELLO, SSE_RESET};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use std::pin::Pin;
use tokio::time::Interval;
use tokio_util::sync::WaitForCancellationFutureOwned;

/// How long the browser waits before reconnecting after the stream ends (ms).
const RETRY_MS: u32 = 1000;

pub async fn handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<SubscribeParams>,
    counted: Option<axum::Extension<crate::limits::Counted>>,
) -> Result<Response, ApiError> {
    let who = state.identify(&headers, p.token.as_deref());
    let filter = state.filter_for(super::streams(p.streams.as_deref())?, &who)?;
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
    let conn = Conn {
        sub,
        session_ends: who
            .user()
            .map(|v| Box::pin(tokio::time::sleep_until(v.deadline()))),
        over: false,
        ticks: super::heartbeat(&state),
        shutdown: Box::pin(state.shutdown.clone().cancelled_owned()),
        started: false,
        hello: p.hello.unwrap_or(false),
        _open: crate::metrics::OpenStream::new("sse"),
        _counted: counted,
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

/// This transport's index in [`super::ENCODINGS`].
pub const ENCODING: usize = 0;

/// An event as an SSE message: `id: <id>\ndata: <json>\n\n`.
pub fn encode_event(id: u64, json: &serde_json::value::RawValue) -> Bytes {
    let mut out = Vec::with_capacity(json.get().len() + 32);
    message(&mut out, None, Some(id), json);
    Bytes::from(out)
}

/// Appends one SSE message: `event:` (when named), `id:` (when given: it becomes the
/// browser's Last-Event-ID), and the JSON as `data:` (JSON has no raw newline, so one
/// `data:` line always holds it).
fn message<T: serde::Serialize + ?Sized>(
    out: &mut Vec<u8>,
    event: Option<&str>,
    id: Option<u64>,
    data: &T,
) {
    use std::io::Write;
    if let Some(name) = event {
        let _ = writeln!(out, "event: {name}");
    }
    if let Some(id) = id {
        let _ = writeln!(out, "id: {id}");
    }
    out.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut *out, data).expect("wire types serialise");
    out.extend_from_slice(b"\n\n");
}

struct Conn {
    sub: Subscription,
    /// A signed-in stream ends when its session does, with an `expired` event first.
    session_ends: Option<Pin<Box<tokio::time::Sleep>>>,
    over: bool,
    ticks: Interval,
    /// Created once per connection (see the same note in `ws.rs`).
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    started: bool,
    /// Send `event: hello` first (`?hello=true`).
    hello: bool,
    _open: crate::metrics::OpenStream,
    /// The stream keeps counting against its address's `--max-conns-per-ip` for as long as
    /// it lasts (the request that opened it is long gone).
    _counted: Option<axum::Extension<crate::limits::Counted>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.sub.flush_metrics("sse");
    }
}

impl Conn {
    /// The next bytes to write, or `None` to end the response (shutdown).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if !self.started {
            self.started = true;
            if self.hello {
                let cursor = self.sub.cursor();
                let mut out = format!("retry: {RETRY_MS}\n").into_bytes();
                message(&mut out, Some(SSE_HELLO), None, &CursorData { cursor });
                return Some(Bytes::from(out));
            }
            return Some(Bytes::from(format!("retry: {RETRY_MS}\n: connected\n\n")));
        }
        if self.over {
            return None;
        }
        // One chunk per wake-up: every event available, copied out of the log.
        let mut out = Vec::new();
        // The stored timer itself, not a new one per wake-up.
        let session = &mut self.session_ends;
        let expired = async move {
            match session {
                Some(timer) => timer.as_mut().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut self.shutdown => None,
            _ = expired => {
                // Said in the stream (a browser's EventSource cannot see a status once it is
                // open); then the response ends. The client renews its session
                // (`POST /api/auth/refresh`) or signs in, and reconnects from its cursor.
                self.over = true;
                message(
                    &mut out,
                    Some(SSE_EXPIRED),
                    None,
                    &ErrorBody {
                        error: "your session has expired; sign in again".into(),
                        code: "session_expired".into(),
                    },
                );
                Some(Bytes::from(out))
            }
            reset_to = self.sub.next_into(|e| &e.encoded[ENCODING], &mut out) => {
                if let Some(cursor) = reset_to {
                    metrics::counter!("tidings_resets_total", "transport" => "sse").increment(1);
                    message(&mut out, Some(SSE_RESET), Some(cursor), &CursorData { cursor });
                }
                Some(Bytes::from(out))
            }
            _ = self.ticks.tick() => {
                self.sub.flush_metrics("sse");
                // A bare `id:` line updates the browser's Last-Event-ID without firing an event.
                match self.sub.unannounced() {
                    Some(cursor) => Some(Bytes::from(format!(": heartbeat\nid: {cursor}\n\n"))),
                    None => Some(Bytes::from_static(b": heartbeat\n\n")),
                }
            }
        }
    }
}
