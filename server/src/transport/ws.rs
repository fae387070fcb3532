//! `GET /api/ws?streams=..[&since=ID][&token=T]`: WebSocket.
//!
//! The handshake is answered here and the socket is served over the raw `TcpStream` taken
//! back from hyper's upgrade; `wire::ws` says why no WebSocket library is used. One task
//! per socket, one `select!` loop over: the subscription (event frames copied from the log
//! into one write buffer), the socket becoming readable (client frames in, through a
//! [`Connection`]), publishes in flight (acks out), a heartbeat timer and shutdown.
//!
//! The promise of the loop: every complete message received before a close frame, a
//! protocol violation or the peer leaving is processed (stored and acknowledged, when the
//! socket still takes writes) before the connection ends.

use super::SubscribeParams;
use crate::error::ApiError;
use crate::limits::ClientAddr;
use crate::log::Subscription;
use crate::state::Caller;
use crate::AppState;
use app::protocol::{parse_client_frame, ServerFrame, MAX_PUBLISH_BYTES};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io::{self, ErrorKind};
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use wire::ws::{CloseCode, FrameReader, Message, OpCode, Violation};

/// Publishes one socket may have waiting for the store; past this the socket is not read
/// until some complete (backpressure instead of an unbounded queue).
const MAX_IN_FLIGHT: usize = 64;

/// The write buffer is freed after a write that made it grow beyond this (a lagging client
/// catches up in writes of up to [`crate::log::BATCH_BYTES`]).
const KEEP_BUFFER: usize = 4 * 1024;

/// How long publishes still in flight when the connection ends may take to be answered.
/// The writer keeps what it accepted either way; this only bounds the wait for the acks.
const DRAIN: Duration = Duration::from_secs(5);

pub async fn handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    ClientAddr(client): ClientAddr,
    crate::api::Query(p): crate::api::Query<SubscribeParams>,
    counted: Option<axum::Extension<crate::limits::Counted>>,
    upgrade: Result<Upgrade, Response>,
) -> Result<Response, Response> {
    // Browsers send cookies and credentials with cross-site WebSocket upgrades and no CORS
    // applies to them, so the Origin check is the only guard against cross-site hijacking.
    if !state.origin_allowed(&headers) {
        return Err(ApiError::Forbidden(
            "this origin is not allowed to open a WebSocket here".into(),
        )
        .into_response());
    }
    let upgrade = upgrade?;
    let who = state.identify(&headers, p.token.as_deref());
    let filter = super::streams(p.streams.as_deref())
        .and_then(|streams| state.filter_for(streams, &who))
        .map_err(IntoResponse::into_response)?;
    let caller = Caller {
        admin: state.is_admin(crate::api::bearer(&headers).or(p.token.as_deref())),
        client: Some(client),
        user: who.user().map(|v| v.name.clone()),
        refused: match &who {
            crate::auth::Identity::Refused(e) => Some(*e),
            _ => None,
        },
    };
    let session_ends = who.user().map(|v| v.deadline());
    let hello = p.hello.unwrap_or(false);
    let sub = state
        .subscribe(filter, p.since)
        .await
        .map_err(IntoResponse::into_response)?;
    let tasks = state.tasks.clone();
    tasks.spawn(async move {
        // The socket keeps counting against its address's `--max-conns-per-ip`.
        let _counted = counted;
        let upgraded = match upgrade.on_upgrade.await {
            Ok(u) => u,
            Err(e) => return tracing::debug!(error = %e, "websocket upgrade failed"),
        };
        // `serve::serve` hands hyper a `TokioIo<TcpStream>`, so this is what comes back.
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let conn = Connection::from_partially_read(parts.io.into_inner(), &parts.read_buf);
                // A view into hyper's 8 KiB read buffer: holding it would keep that alive.
                drop(parts.read_buf);
                serve_socket(conn, state, sub, caller, hello, session_ends).await
            }
            Err(_) => tracing::error!("websocket upgrade of a connection that is not plain TCP"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&upgrade.accept).expect("base64 is a valid header value"),
    );
    Ok(response)
}

/// A valid WebSocket handshake request (RFC 6455 §4.2.1), and the connection it arrived
/// on, to be taken over once the 101 response is written.
pub struct Upgrade {
    on_upgrade: OnUpgrade,
    accept: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    /// A JSON error; for a version other than 13, a 426 that says which version this
    /// server speaks (§4.2.2).
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Upgrade, Response> {
        let bad = |what: &str| {
            ApiError::BadRequest(format!("a WebSocket upgrade is required: {what}")).into_response()
        };
        let has = |name: header::HeaderName, token: &str| {
            parts.headers.get_all(name).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            })
        };
        if parts.method != Method::GET {
            return Err(bad("the method must be GET"));
        }
        if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, "websocket") {
            return Err(bad("send `Connection: Upgrade` and `Upgrade: websocket`"));
        }
        // A body would be read by hyper as the request's, swallowing the first frames
        // sent behind the handshake.
        let has_body = parts.headers.contains_key(header::TRANSFER_ENCODING)
            || parts
                .headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if has_body {
            return Err(bad(
                "an upgrade request has no body (no Content-Length or Transfer-Encoding)",
            ));
        }
        let versions: Vec<_> = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_VERSION)
            .iter()
            .collect();
        if versions.len() != 1 || versions[0].as_bytes() != b"13" {
            let mut response = (
                StatusCode::UPGRADE_REQUIRED,
                axum::Json(app::protocol::ErrorBody {
                    error: "this server speaks WebSocket version 13 only (RFC 6455)".into(),
                    code: "unsupported_version".into(),
                }),
            )
                .into_response();
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            // RFC 9110 §15.5.22: a 426 names the protocol to upgrade to.
            response
                .headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            crate::metrics::error_answered("unsupported_version");
            return Err(response);
        }
        let keys: Vec<_> = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_KEY)
            .iter()
            .collect();
        let key = match keys[..] {
            [key] if wire::ws::valid_key(key.as_bytes()) => key,
            [] => return Err(bad("`Sec-WebSocket-Key` is missing")),
            _ => {
                return Err(bad(
                    "`Sec-WebSocket-Key` must be one base64-encoded 16-byte value",
                ))
            }
        };
        let accept = wire::ws::accept_key(key.as_bytes());
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or_else(|| bad("this connection cannot be upgraded (HTTP/1.1 only)"))?;
        Ok(Upgrade { on_upgrade, accept })
    }
}

/// What a WebSocket connection reads from and writes to. A plain `TcpStream` in the server,
/// any byte stream in tests (`tests::Buffered`).
///
/// Why not just `AsyncRead`: reading needs a buffer, and a connection waiting for its client
/// to speak (nearly all of them, nearly always) would hold it. With `readable` + `try_read`
/// the buffer exists only while bytes are being taken in.
pub trait Io: AsyncWrite + Unpin + Send {
    /// Waits until a read would not block (cancel-safe).
    fn readable(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// Reads what is there; `WouldBlock` when nothing is.
    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
}

impl Io for TcpStream {
    fn readable(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::readable(self)
    }
    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        TcpStream::try_read(self, buf)
    }
}

/// A WebSocket connection as the socket loop sees it (mini-redis `Connection`): bytes in,
/// whole messages out ([`FrameReader`] holds the buffers), and writes.
pub struct Connection<S> {
    io: S,
    reader: FrameReader,
}

/// What one read gave.
enum Read {
    /// Bytes arrived (maybe not a whole message yet).
    Bytes,
    /// The peer closed its side, or the socket failed.
    Gone,
}

impl<S: Io> Connection<S> {
    /// `already_read`: bytes read past the handshake (a client may send its first frame
    /// right behind it).
    pub fn from_partially_read(io: S, already_read: &[u8]) -> Connection<S> {
        Connection {
            io,
            reader: FrameReader::from_partially_read(already_read, MAX_PUBLISH_BYTES),
        }
    }

    /// Waits for bytes from the peer. Cancel-safe.
    async fn read(&mut self) -> Read {
        if self.io.readable().await.is_err() {
            return Read::Gone;
        }
        // Only here, after the wait: an idle connection holds no read buffer.
        let mut chunk = [0u8; 4096];
        match self.io.try_read(&mut chunk) {
            Ok(0) => Read::Gone,
            Ok(n) => {
                self.reader.feed(&chunk[..n]);
                Read::Bytes
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Read::Bytes,
            Err(e) => {
                tracing::debug!(error = %e, "websocket read failed");
                Read::Gone
            }
        }
    }

    fn next_message(&mut self) -> Result<Option<Message>, Violation> {
        self.reader.next_message()
    }
}

/// This transport's index in [`super::ENCODINGS`].
pub const ENCODING: usize = 1;

/// An event as the whole WebSocket frame (header included) of the text message
/// `{"type":"event","event":<json>}`: a server's frames are unmasked, so these bytes are
/// the same for every socket.
pub fn encode_event(_id: u64, json: &serde_json::value::RawValue) -> bytes::Bytes {
    let mut frame = Vec::with_capacity(json.get().len() + 40);
    let message =
        serde_json::to_vec(&ServerFrame::Event { event: json }).expect("frames serialise");
    wire::ws::encode(&mut frame, OpCode::Text, &message);
    bytes::Bytes::from(frame)
}

/// The frames that carry no event (acks, errors, cursors): `ServerFrame`'s default `E`.
fn push_frame(out: &mut Vec<u8>, f: &ServerFrame) {
    let json = serde_json::to_vec(f).expect("frames serialise");
    wire::ws::encode(out, OpCode::Text, &json);
}

fn push_error(out: &mut Vec<u8>, reference: Option<String>, e: &ApiError) {
    crate::metrics::error_answered(e.code());
    push_frame(
        out,
        &ServerFrame::Error {
            reference,
            error: e.message(),
            code: e.code().into(),
        },
    );
}

/// A publish from the socket, until the store answers: the frame's reference and the result.
type Publish = futures_util::future::BoxFuture<
    'static,
    (
        String,
        Result<std::sync::Arc<crate::log::StoredEvent>, ApiError>,
    ),
>;

/// The socket's publishes waiting for the store. The queue is made at the first publish:
/// an empty `FuturesUnordered` already allocates its run queue, with room for one future of
/// its type inside, and most sockets never publish (measured with heaptrack: 1.8 KB of
/// every idle socket in a debug build, the largest item after the task itself). Boxed, the
/// futures leave that room one pointer.
#[derive(Default)]
struct InFlight(Option<FuturesUnordered<Publish>>);

impl InFlight {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesUnordered::len)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, publish: Publish) {
        self.0
            .get_or_insert_with(FuturesUnordered::new)
            .push(publish);
    }

    /// The next answer; `None` when none is waiting. Cancel-safe.
    async fn next(
        &mut self,
    ) -> Option<(
        String,
        Result<std::sync::Arc<crate::log::StoredEvent>, ApiError>,
    )> {
        match &mut self.0 {
            Some(publishes) => publishes.next().await,
            None => None,
        }
    }
}

/// How the connection ends: with a close frame (code, reason) or without one (the peer
/// is gone, or stopped reading).
type End = Option<(Option<CloseCode>, String)>;

/// Serves one upgraded socket until it closes.
pub async fn serve_socket<S: Io>(
    mut conn: Connection<S>,
    state: AppState,
    mut sub: Subscription,
    caller: Caller,
    hello: bool,
    session_ends: Option<tokio::time::Instant>,
) {
    let _open = crate::metrics::OpenStream::new("ws");
    // Everything to write next: event frames, acks, errors, pongs; one write per turn.
    let mut out = Vec::new();
    if hello {
        push_frame(
            &mut out,
            &ServerFrame::Hello {
                cursor: sub.cursor(),
            },
        );
    }
    // Created once: a fresh `cancelled()` per loop turn would register with the token's
    // waiter list (a mutex shared by every connection) on every event.
    let cancelled = state.shutdown.clone().cancelled_owned();
    tokio::pin!(cancelled);
    // A signed-in socket ends when its token does: it must not go on receiving private
    // events, or publishing as its account, on a session that is over.
    let expired = crate::auth::session_end(session_ends);
    tokio::pin!(expired);
    let mut in_flight = InFlight::default();
    let idle_timeout = Duration::from_secs(state.config.ws_idle_timeout_secs.max(1));
    let write_timeout = Duration::from_secs(state.config.write_timeout_secs.max(1));
    let mut ticks = super::heartbeat(&state);
    let mut last_heard = Instant::now();
    let mut writable = true;

    // Takes the complete messages read so far, in order: publishes start, everything else
    // is answered into `out`. Returns how the connection ends, if a message ends it.
    let take_messages = |conn: &mut Connection<S>,
                         out: &mut Vec<u8>,
                         in_flight: &mut InFlight,
                         bound: usize|
     -> Option<End> {
        while in_flight.len() < bound {
            let message = match conn.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => return None,
                Err(v) => {
                    metrics::counter!("tidings_ws_protocol_errors_total", "close_code" => v.code.0.to_string()).increment(1);
                    return Some(Some((Some(v.code), v.reason)));
                }
            };
            match message {
                Message::Text(text) => match parse_client_frame(&text) {
                    Ok(frame) => {
                        let (state, caller) = (state.clone(), caller.clone());
                        in_flight.push(Box::pin(async move {
                            let result = state.publish(frame.payload, frame.key, &caller).await;
                            let result = result.map(|(event, _replayed)| event);
                            (frame.reference, result)
                        }));
                    }
                    Err((reference, e)) => push_error(out, reference, &ApiError::from(e)),
                },
                Message::Binary { .. } => push_error(
                    out,
                    None,
                    &ApiError::BadRequest(
                        "binary frames are not supported; send JSON text frames".into(),
                    ),
                ),
                Message::Ping(payload) => wire::ws::encode(out, OpCode::Pong, &payload),
                Message::Pong => {}
                // Answered with the client's own code, as tungstenite does (§5.5.1); a
                // close without a code is answered without one.
                Message::Close(code) => {
                    return Some(Some((code.map(|(c, _)| c), String::new())));
                }
            }
        }
        None
    };

    let end: End = 'conn: loop {
        // Client frames already read, as many as backpressure allows.
        if let Some(end) = take_messages(&mut conn, &mut out, &mut in_flight, MAX_IN_FLIGHT) {
            break 'conn end;
        }
        if out.is_empty() {
            tokio::select! {
                _ = &mut cancelled => break Some((Some(CloseCode::GOING_AWAY), "server shutting down".into())),

                _ = &mut expired => break Some((Some(CloseCode(crate::auth::WS_SESSION_EXPIRED)), "session expired".into())),

                reset_to = sub.next_into(|e| &e.encoded[ENCODING], &mut out) => {
                    if let Some(cursor) = reset_to {
                        metrics::counter!("tidings_resets_total", "transport" => "ws").increment(1);
                        push_frame(&mut out, &ServerFrame::Reset { cursor });
                    }
                }

                read = conn.read(), if in_flight.len() < MAX_IN_FLIGHT => match read {
                    Read::Bytes => last_heard = Instant::now(),
                    Read::Gone => break None,
                },

                Some((reference, result)) = in_flight.next(), if !in_flight.is_empty() => {
                    push_ack(&mut out, reference, result);
                }

                _ = ticks.tick() => {
                    sub.flush_metrics("ws");
                    if last_heard.elapsed() > idle_timeout {
                        tracing::debug!("dropping a silent websocket peer");
                        break Some((Some(CloseCode::GOING_AWAY), "idle timeout".into()));
                    }
                    wire::ws::encode(&mut out, OpCode::Ping, b"");
                    if let Some(cursor) = sub.unannounced() {
                        push_frame(&mut out, &ServerFrame::Cursor { cursor });
                    } else if hello {
                        // Visible to scripts, unlike the ping: the client's watchdog.
                        push_frame(&mut out, &ServerFrame::Cursor { cursor: sub.cursor() });
                    }
                }
            }
        }
        if !out.is_empty() {
            if super::write_or_drop(&mut conn.io, &out, write_timeout, "ws")
                .await
                .is_err()
            {
                writable = false;
                break None;
            }
            out.clear();
            if out.capacity() > KEEP_BUFFER {
                out = Vec::new();
            }
        }
    };
    sub.flush_metrics("ws");

    // Nothing received is dropped: complete messages still buffered (behind the in-flight
    // bound) start too. (After the client's close frame or a violation the reader hands
    // out nothing more: those come after everything received before them.)
    let _ = take_messages(&mut conn, &mut out, &mut in_flight, usize::MAX);
    // Then every publish started is answered before the close frame.
    let drained = timeout(DRAIN, async {
        while let Some((reference, result)) = in_flight.next().await {
            push_ack(&mut out, reference, result);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("publishes still in flight when a websocket closed");
    }
    if let Some((code, reason)) = &end {
        wire::ws::encode_close(&mut out, *code, reason);
    }
    if writable && !out.is_empty() {
        let _ = timeout(Duration::from_secs(1), conn.io.write_all(&out)).await;
    }
    // Half-close, then read until the client closes too (bounded). Closing a socket with
    // unread bytes in it makes the kernel send a reset, which can destroy the close frame
    // before the client has read it (an oversize frame is refused on its header, while
    // the rest of it is still arriving).
    let _ = conn.io.shutdown().await;
    // What still arrives is read as messages (unless the client closed or broke the
    // protocol: then the reader takes nothing more and this only drains). A client cut off by a failed or stuck write, or by shutdown, may have
    // published in the meantime. Those publishes are stored (the client gets no ack now;
    // it retries with its idempotency key and is answered with the stored event).
    let _ = timeout(Duration::from_secs(2), async {
        loop {
            if matches!(conn.read().await, Read::Gone) {
                break;
            }
            let mut unanswerable = Vec::new();
            let _ = take_messages(&mut conn, &mut unanswerable, &mut in_flight, usize::MAX);
        }
    })
    .await;
    if timeout(DRAIN, async { while in_flight.next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("publishes still in flight when a websocket closed");
    }
}

fn push_ack(
    out: &mut Vec<u8>,
    reference: String,
    result: Result<std::sync::Arc<crate::log::StoredEvent>, ApiError>,
) {
    match result {
        Ok(event) => push_frame(
            out,
            &ServerFrame::Ack {
                reference,
                id: event.id,
            },
        ),
        Err(e) => push_error(out, Some(reference), &e),
    }
}

#[cfg(test)]
mod tests;
