//! `GET /api/ws?streams=..[&since=ID][&token=T]`: WebSocket.
//!
//! The handshake is answered here and the socket is served over the raw `TcpStream` taken
//! back from hyper's upgrade; [`super::wsframe`] says why no WebSocket library is used.
//! One task per socket, one `select!` loop over: the subscription (event frames copied from
//! the log into one write buffer), the socket becoming readable (client frames in),
//! publishes in flight (acks out), a heartbeat timer and shutdown. When any of them ends the
//! connection, the loop exits and everything it owns is dropped.

use super::wsframe::{self, FrameReader, Incoming, OP_PING, OP_PONG};
use super::SubscribeParams;
use crate::api::{bearer, query};
use crate::error::ApiError;
use crate::log::Subscription;
use crate::AppState;
use app::protocol::{parse_client_frame, ServerFrame, MAX_PUBLISH_BYTES};
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::io::ErrorKind;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// Publishes one socket may have waiting for the store; past this the socket is not read
/// until some complete (backpressure instead of an unbounded queue).
const MAX_IN_FLIGHT: usize = 64;

/// The write buffer is freed after a write that made it grow beyond this (a lagging client
/// catches up in writes of up to [`crate::log::BATCH_BYTES`]).
const KEEP_BUFFER: usize = 4 * 1024;

pub async fn handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<SubscribeParams>, QueryRejection>,
    upgrade: Result<Upgrade, ApiError>,
) -> Result<Response, ApiError> {
    // Browsers send cookies and credentials with cross-site WebSocket upgrades and no CORS
    // applies to them, so the Origin check is the only guard against cross-site hijacking.
    if !state.origin_allowed(&headers) {
        return Err(ApiError::Forbidden(
            "this origin is not allowed to open a WebSocket here".into(),
        ));
    }
    let p = query(q)?;
    let upgrade = upgrade?;
    let filter = super::streams(p.streams.as_deref())?;
    let admin = state.is_admin(bearer(&headers).or(p.token.as_deref()));
    let sub = state.subscribe(filter, p.since).await?;
    tokio::spawn(async move {
        let upgraded = match upgrade.on_upgrade.await {
            Ok(u) => u,
            Err(e) => return tracing::debug!(error = %e, "websocket upgrade failed"),
        };
        // `serve::serve` hands hyper a `TokioIo<TcpStream>`, so this is what comes back.
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                serve_socket(parts.io.into_inner(), parts.read_buf, state, sub, admin).await
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

/// A valid WebSocket handshake request (RFC 6455 section 4.2.1), and the connection it
/// arrived on, to be taken over once the 101 response is written.
pub struct Upgrade {
    on_upgrade: OnUpgrade,
    accept: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Upgrade, ApiError> {
        let bad =
            |what: &str| ApiError::BadRequest(format!("a WebSocket upgrade is required: {what}"));
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
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(|v| v.as_bytes())
            != Some(b"13")
        {
            return Err(bad("`Sec-WebSocket-Version` must be 13"));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or_else(|| bad("`Sec-WebSocket-Key` is missing"))?;
        let accept = wsframe::accept_key(key.as_bytes());
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or_else(|| bad("this connection cannot be upgraded (HTTP/1.1 only)"))?;
        Ok(Upgrade { on_upgrade, accept })
    }
}

fn push_frame(out: &mut Vec<u8>, f: &ServerFrame) {
    let json = serde_json::to_vec(f).expect("frames serialise");
    wsframe::encode(out, wsframe::OP_TEXT, &json);
}

/// How the connection ends: with a close frame (code, reason) or without one (the peer
/// is gone).
type End = Option<(u16, String)>;

/// Serves one upgraded socket until it closes. `already_read`: bytes hyper read past the
/// handshake (a client may send its first frame right behind it).
pub async fn serve_socket(
    mut tcp: TcpStream,
    already_read: Bytes,
    state: AppState,
    mut sub: Subscription,
    admin: bool,
) {
    let mut reader = FrameReader::new(MAX_PUBLISH_BYTES);
    reader.buf.extend_from_slice(&already_read);
    // A view into hyper's 8 KiB read buffer: holding it would keep that buffer alive.
    drop(already_read);
    // Everything to write next: event frames, acks, errors, pongs; one write per turn.
    let mut out = Vec::new();
    // Created once: a fresh `cancelled()` per loop turn would register with the token's
    // waiter list (a mutex shared by every connection) on every event.
    let cancelled = state.shutdown.clone().cancelled_owned();
    tokio::pin!(cancelled);
    let mut in_flight = FuturesUnordered::new();
    let idle_timeout = Duration::from_secs(state.config.ws_idle_timeout_secs.max(1));
    let mut ticks = super::heartbeat(&state);
    let mut last_heard = Instant::now();

    let end: End = 'conn: loop {
        // Client frames already read, as many as backpressure allows.
        while in_flight.len() < MAX_IN_FLIGHT {
            let message = match reader.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(v) => break 'conn Some((v.code, v.reason)),
            };
            match message {
                Incoming::Text(text) => match parse_client_frame(&text) {
                    Ok((reference, payload)) => {
                        let state = state.clone();
                        in_flight
                            .push(async move { (reference, state.publish(payload, admin).await) });
                    }
                    Err((reference, e)) => push_frame(
                        &mut out,
                        &ServerFrame::Error {
                            reference,
                            error: e.message(),
                        },
                    ),
                },
                Incoming::Binary => push_frame(
                    &mut out,
                    &ServerFrame::Error {
                        reference: None,
                        error: "binary frames are not supported; send JSON text frames".into(),
                    },
                ),
                Incoming::Ping(payload) => wsframe::encode(&mut out, OP_PONG, &payload),
                Incoming::Pong => {}
                Incoming::Close(_) => break 'conn Some((1000, String::new())),
            }
        }
        if out.is_empty() {
            tokio::select! {
                _ = &mut cancelled => break Some((1001, "server shutting down".into())),

                reset_to = sub.next_into(|e| &e.ws, &mut out) => {
                    if let Some(cursor) = reset_to {
                        push_frame(&mut out, &ServerFrame::Reset { cursor });
                    }
                }

                r = tcp.readable(), if in_flight.len() < MAX_IN_FLIGHT => {
                    if r.is_err() {
                        break None;
                    }
                    // Room for a typical read, only while reading: idle sockets hold no buffer.
                    reader.buf.reserve(4096);
                    match tcp.try_read_buf(&mut reader.buf) {
                        Ok(0) => break None,
                        Ok(_) => last_heard = Instant::now(),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "websocket read failed");
                            break None;
                        }
                    }
                }

                Some((reference, result)) = in_flight.next(), if !in_flight.is_empty() => {
                    push_frame(&mut out, &match result {
                        Ok(event) => ServerFrame::Ack { reference, id: event.id },
                        Err(e) => ServerFrame::Error { reference: Some(reference), error: e.message() },
                    });
                }

                _ = ticks.tick() => {
                    if last_heard.elapsed() > idle_timeout {
                        tracing::debug!("dropping a silent websocket peer");
                        break Some((1001, "idle timeout".into()));
                    }
                    wsframe::encode(&mut out, OP_PING, b"");
                    if let Some(cursor) = sub.unannounced() {
                        push_frame(&mut out, &ServerFrame::Cursor { cursor });
                    }
                }
            }
        }
        if !out.is_empty() {
            if tcp.write_all(&out).await.is_err() {
                break None;
            }
            out.clear();
            if out.capacity() > KEEP_BUFFER {
                out = Vec::new();
            }
        }
    };
    if let Some((code, reason)) = end {
        wsframe::encode_close(&mut out, code, &reason);
        let _ = timeout(Duration::from_secs(1), tcp.write_all(&out)).await;
    }
    // Half-close, then read until the client closes too (bounded). Closing a socket with
    // unread bytes in it makes the kernel send a reset, which can destroy the close frame
    // before the client has read it (an oversize frame is refused on its header, while
    // the rest of it is still arriving).
    let _ = tcp.shutdown().await;
    let _ = timeout(Duration::from_secs(2), async {
        let mut sink = [0u8; 512];
        while tcp.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    //! The socket loop on a real loopback socket, with tungstenite as the client: no HTTP,
    //! no upgrade, just the frames both ways.
    use super::*;
    use crate::{
        config::Config, engine::Engine, log::EventLog, publish::spawn_writer, store::Store, Shared,
    };
    use futures_util::SinkExt;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, Role};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    async fn frame_from(ws: &mut WebSocketStream<TcpStream>) -> ServerFrame {
        loop {
            match ws.next().await.expect("socket loop ended").unwrap() {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => {}
            }
        }
    }

    #[tokio::test]
    async fn publish_ack_error_ping_and_shutdown_over_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let log = Arc::new(EventLog::new(100, vec![], 0));
        let (publisher, _writer) = spawn_writer(store.clone(), log.clone());
        let state = AppState(Arc::new(Shared {
            log: log.clone(),
            engine: Engine::Embedded { store, publisher },
            config: Config::for_tests(dir.path().to_path_buf()),
            demo_leader: Arc::new(AtomicBool::new(true)),
            streams: Arc::new(tokio::sync::Semaphore::new(10)),
            shutdown: Default::default(),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let sub = log.subscribe(app::protocol::StreamSet::ALL, 0);
        // A first frame that arrived with the handshake is served too.
        let mut early = Vec::new();
        {
            let mut c = WebSocketStream::from_raw_socket(
                tokio::io::join(tokio::io::empty(), &mut early),
                Role::Client,
                None,
            )
            .await;
            c.send(Message::text(
                r#"{"type":"publish","ref":"a","stream":"chat","data":{"author":"x","body":"y"}}"#,
            ))
            .await
            .unwrap();
        }
        let task = tokio::spawn(serve_socket(
            server,
            Bytes::from(early),
            state.clone(),
            sub,
            false,
        ));
        let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;

        let mut got = [frame_from(&mut ws).await, frame_from(&mut ws).await];
        got.sort_by_key(|f| matches!(f, ServerFrame::Event { .. }));
        assert_eq!(
            got[0],
            ServerFrame::Ack {
                reference: "a".into(),
                id: 1
            }
        );
        assert!(matches!(&got[1], ServerFrame::Event { event } if event.id == 1));

        ws.send(Message::text("{}")).await.unwrap();
        assert!(matches!(
            frame_from(&mut ws).await,
            ServerFrame::Error { .. }
        ));

        ws.send(Message::Ping(Bytes::from_static(b"hi")))
            .await
            .unwrap();
        let pong = loop {
            if let Message::Pong(p) = ws.next().await.unwrap().unwrap() {
                break p;
            }
        };
        assert_eq!(&pong[..], b"hi");

        state.shutdown.cancel();
        let close = loop {
            if let Message::Close(c) = ws.next().await.unwrap().unwrap() {
                break c.unwrap();
            }
        };
        assert_eq!(close.code, CloseCode::Away);
        // The client answers the close; the server then ends the connection.
        while ws.next().await.is_some_and(|r| r.is_ok()) {}
        task.await.unwrap();
    }
}
