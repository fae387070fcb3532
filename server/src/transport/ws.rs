//! `GET /api/ws?streams=..[&since=ID][&token=T]`: WebSocket.
//!
//! One task per socket, one `select!` loop over: the subscription (events out), the socket
//! (publish frames in), publishes in flight (acks out), a heartbeat timer and shutdown.
//! When any of them ends the connection, the loop exits and everything it owns is dropped.
//! [`serve_socket`] is generic over `Sink`/`Stream` (axum's socket in production); the unit
//! test below drives it through an in-memory pipe.

use super::SubscribeParams;
use crate::api::{bearer, query};
use crate::error::ApiError;
use crate::log::{Delivery, Subscription, BATCH};
use crate::AppState;
use app::protocol::{parse_client_frame, PublishError, ServerFrame, MAX_PUBLISH_BYTES};
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{
    rejection::WebSocketUpgradeRejection, CloseFrame, Message, Utf8Bytes, WebSocketUpgrade,
};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::stream::FuturesUnordered;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use std::time::Duration;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

/// Publishes one socket may have waiting for the store; past this the socket is not read
/// until some complete (backpressure instead of an unbounded queue).
const MAX_IN_FLIGHT: usize = 64;

/// Frames above [`MAX_PUBLISH_BYTES`] close the socket with 1009. The transport limit is set
/// higher so such frames are still read and answered with a proper close frame.
const TRANSPORT_LIMIT: usize = 4 * MAX_PUBLISH_BYTES;

pub async fn handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<SubscribeParams>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Browsers send cookies and credentials with cross-site WebSocket upgrades and no CORS
    // applies to them, so the Origin check is the only guard against cross-site hijacking.
    if !state.origin_allowed(&headers) {
        return Err(ApiError::Forbidden(
            "this origin is not allowed to open a WebSocket here".into(),
        ));
    }
    let p = query(q)?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::BadRequest(format!(
            "a WebSocket upgrade is required: {}",
            e.body_text()
        ))
    })?;
    let filter = super::streams(p.streams.as_deref())?;
    let admin = state.is_admin(bearer(&headers).or(p.token.as_deref()));
    let sub = state.subscribe(filter, p.since).await?;
    Ok(upgrade
        .max_message_size(TRANSPORT_LIMIT)
        .max_frame_size(TRANSPORT_LIMIT)
        // tungstenite's defaults are 128 KiB each, allocated per socket: most of a mostly
        // idle connection's memory. Client frames are small (16 KiB at most) and writes are
        // flushed per batch, so small buffers cost nothing in throughput.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .on_upgrade(move |socket| serve_socket(socket, state, sub, admin)))
}

fn frame(f: &ServerFrame) -> Message {
    Message::Text(Utf8Bytes::from(
        serde_json::to_string(f).expect("frames serialise"),
    ))
}

fn close(code: u16, reason: &'static str) -> Option<Message> {
    Some(Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    })))
}

pub async fn serve_socket<S, E>(socket: S, state: AppState, mut sub: Subscription, admin: bool)
where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
    E: std::fmt::Display,
{
    // Not split: frames are read inside `select!` and written after it, never at the same
    // time, so one owner suffices and the split halves' shared lock is not needed.
    let mut socket = socket;
    // Created once: a fresh `cancelled()` per loop turn would register with the token's
    // waiter list (a mutex shared by every connection) on every event.
    let cancelled = state.shutdown.clone().cancelled_owned();
    tokio::pin!(cancelled);
    let mut in_flight = FuturesUnordered::new();
    let heartbeat = Duration::from_secs(state.config.heartbeat_secs.max(1));
    let idle_timeout = Duration::from_secs(state.config.ws_idle_timeout_secs.max(1));
    let mut ticks = interval_at(Instant::now() + heartbeat, heartbeat);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();

    // Each arm yields what to send, or ends the loop with the close frame to send (if any).
    let last: Option<Message> = loop {
        let out: Vec<Message> = tokio::select! {
            _ = &mut cancelled => break close(1001, "server shutting down"),

            d = sub.next(BATCH) => match d {
                Delivery::Reset { cursor } => vec![frame(&ServerFrame::Reset { cursor })],
                Delivery::Events(events) => events.iter().map(|e| Message::Text(e.ws.clone())).collect(),
            },

            msg = socket.next(), if in_flight.len() < MAX_IN_FLIGHT => {
                last_heard = Instant::now();
                match msg {
                    None | Some(Ok(Message::Close(_))) => break None,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "websocket read failed");
                        // tungstenite reports frames over the transport limit as a capacity
                        // error ("Space limit exceeded"); the socket is still writable then.
                        if e.to_string().contains("Space limit exceeded") {
                            break close(1009, "frame larger than 16384 bytes");
                        }
                        break None;
                    }
                    Some(Ok(Message::Text(text))) => {
                        if text.len() > MAX_PUBLISH_BYTES {
                            break close(1009, "frame larger than 16384 bytes");
                        }
                        match parse_client_frame(&text) {
                            Ok((reference, payload)) => {
                                let state = state.clone();
                                in_flight.push(async move { (reference, state.publish(payload, admin).await) });
                                vec![]
                            }
                            Err((reference, e)) => vec![error_frame(reference, &e)],
                        }
                    }
                    Some(Ok(Message::Binary(_))) => vec![frame(&ServerFrame::Error {
                        reference: None,
                        error: "binary frames are not supported; send JSON text frames".into(),
                    })],
                    Some(Ok(_)) => vec![], // ping (answered by the library) or pong
                }
            },

            Some((reference, result)) = in_flight.next(), if !in_flight.is_empty() => vec![match result {
                Ok(event) => frame(&ServerFrame::Ack { reference, id: event.id }),
                Err(e) => frame(&ServerFrame::Error { reference: Some(reference), error: e.message() }),
            }],

            _ = ticks.tick() => {
                if last_heard.elapsed() > idle_timeout {
                    tracing::debug!("dropping a silent websocket peer");
                    break close(1001, "idle timeout");
                }
                let mut out = vec![Message::Ping(Default::default())];
                if let Some(cursor) = sub.unannounced() {
                    out.push(frame(&ServerFrame::Cursor { cursor }));
                }
                out
            }
        };
        // Queue the whole batch, then one flush: many events, one write.
        let mut ok = true;
        for m in out {
            if socket.feed(m).await.is_err() {
                ok = false;
                break;
            }
        }
        if !ok || socket.flush().await.is_err() {
            break None;
        }
    };
    if let Some(m) = last {
        let _ = socket.send(m).await;
    }
    let _ = socket.close().await;
}

fn error_frame(reference: Option<String>, e: &PublishError) -> Message {
    frame(&ServerFrame::Error {
        reference,
        error: e.message(),
    })
}

#[cfg(test)]
mod tests {
    //! The socket loop driven through an in-memory pipe: no network, no upgrade.
    use super::*;
    use crate::{
        config::Config, engine::Engine, log::EventLog, publish::spawn_writer, store::Store, Shared,
    };
    use std::pin::Pin;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::task::{Context, Poll};
    use tokio::sync::mpsc;

    /// Frames in from the "client" (`rx`), frames out to it (`tx`).
    struct Pipe {
        rx: mpsc::UnboundedReceiver<Message>,
        tx: mpsc::UnboundedSender<Message>,
    }

    impl Stream for Pipe {
        type Item = Result<Message, std::convert::Infallible>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.rx.poll_recv(cx).map(|m| m.map(Ok))
        }
    }

    impl Sink<Message> for Pipe {
        type Error = ();
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, m: Message) -> Result<(), ()> {
            self.tx.send(m).map_err(|_| ())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }
    }

    async fn frame_from(out: &mut mpsc::UnboundedReceiver<Message>) -> ServerFrame {
        loop {
            match out.recv().await.expect("socket loop ended") {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => {}
            }
        }
    }

    #[tokio::test]
    async fn publish_ack_error_and_shutdown_without_a_socket() {
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
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let (out_tx, mut out) = mpsc::unbounded_channel();
        let sub = log.subscribe(app::protocol::StreamSet::ALL, 0);
        let task = tokio::spawn(serve_socket(
            Pipe {
                rx: in_rx,
                tx: out_tx,
            },
            state.clone(),
            sub,
            false,
        ));

        in_tx
            .send(Message::Text(
                r#"{"type":"publish","ref":"a","stream":"chat","data":{"author":"x","body":"y"}}"#
                    .into(),
            ))
            .unwrap();
        let mut got = [frame_from(&mut out).await, frame_from(&mut out).await];
        got.sort_by_key(|f| matches!(f, ServerFrame::Event { .. }));
        assert_eq!(
            got[0],
            ServerFrame::Ack {
                reference: "a".into(),
                id: 1
            }
        );
        assert!(matches!(&got[1], ServerFrame::Event { event } if event.id == 1));

        in_tx.send(Message::Text("{}".into())).unwrap();
        assert!(matches!(
            frame_from(&mut out).await,
            ServerFrame::Error { .. }
        ));

        state.shutdown.cancel();
        let close = loop {
            if let Message::Close(c) = out.recv().await.unwrap() {
                break c.unwrap();
            }
        };
        assert_eq!(close.code, 1001);
        task.await.unwrap();
    }
}
