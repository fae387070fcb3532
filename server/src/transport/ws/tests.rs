//! The socket loop without HTTP: frames both ways over an in-memory duplex stream (raw
//! bytes, to send what no well-behaved client library would) and over a real loopback
//! socket (tungstenite as the client).

use super::*;
use crate::{config::Config, engine::Engine, log::EventLog, Shared};
use futures_util::SinkExt;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio::io::{duplex, AsyncRead, AsyncReadExt, DuplexStream};
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode as TCloseCode, Role};
use tokio_tungstenite::tungstenite::Message as TMessage;
use tokio_tungstenite::WebSocketStream;

/// Any `AsyncRead + AsyncWrite` (an in-memory duplex stream in tests) as an [`Io`]: reads
/// ahead into a small buffer of its own.
pub struct Buffered<S> {
    inner: S,
    ahead: Vec<u8>,
    eof: bool,
}

impl<S> Buffered<S> {
    pub fn new(inner: S) -> Buffered<S> {
        Buffered {
            inner,
            ahead: Vec::new(),
            eof: false,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Io for Buffered<S> {
    async fn readable(&mut self) -> io::Result<()> {
        if self.ahead.is_empty() && !self.eof {
            let mut chunk = [0u8; 4096];
            let n = self.inner.read(&mut chunk).await?;
            self.ahead.extend_from_slice(&chunk[..n]);
            self.eof = n == 0;
        }
        Ok(())
    }
    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ahead.is_empty() {
            return if self.eof {
                Ok(0)
            } else {
                Err(ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(self.ahead.len());
        buf[..n].copy_from_slice(&self.ahead[..n]);
        self.ahead.drain(..n);
        Ok(n)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Buffered<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct Fixture {
    state: AppState,
    log: Arc<EventLog>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    fixture_with(|_| {}).await
}

async fn fixture_with(f: impl FnOnce(&mut Config)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().to_path_buf());
    config.retention = 100;
    f(&mut config);
    let (log, engine) = Engine::start(&config, Default::default(), Default::default())
        .await
        .unwrap();
    let state = AppState(Arc::new(Shared {
        log: log.clone(),
        engine: Arc::new(engine),
        limits: Arc::new(crate::limits::Limits::new(vec![], 0, 0, 0)),
        auth: Arc::new(crate::auth::Auth::new(&config).unwrap()),
        alert_queue: tokio::sync::mpsc::channel(1).0,
        presence: crate::presence::Presence::new(std::time::Duration::ZERO),
        config,
        demo_leader: Arc::new(AtomicBool::new(true)),
        streams: Arc::new(tokio::sync::Semaphore::new(10)),
        shutdown: Default::default(),
        tasks: Default::default(),
        lab: Default::default(),
        metrics: crate::metrics::install(),
    }));
    Fixture {
        state,
        log,
        _dir: dir,
    }
}

const PUBLISH: &str =
    r#"{"type":"publish","ref":"a","stream":"chat","data":{"author":"x","body":"y"}}"#;

/// A masked client frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    wire::ws::encode_masked(first, payload, [0xa1, 0xb2, 0xc3, 0xd4])
}

/// Unmasked server frames out of `bytes`: (opcode, payload).
fn server_frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let (frames, _) = wire::ws::decode_unmasked(bytes);
    frames
        .into_iter()
        .map(|(op, payload)| (op.byte(), payload.to_vec()))
        .collect()
}

/// The socket loop on an in-memory pipe of `capacity` bytes each way, subscribed from
/// `since`: the client's end and the loop's task.
fn spawn_socket(
    fx: &Fixture,
    capacity: usize,
    since: u64,
) -> (DuplexStream, tokio::task::JoinHandle<()>) {
    let (client, server) = duplex(capacity);
    let sub = fx
        .log
        .subscribe(app::protocol::StreamSet::ALL.into(), since);
    let task = tokio::spawn(serve_socket(
        Connection::from_partially_read(Buffered::new(server), &[]),
        fx.state.clone(),
        sub,
        Caller::default(),
        false,
        None,
    ));
    (client, task)
}

/// Serves a duplex stream: writes `input` as the client (in one write), then reads until the
/// server closes. Returns the server's frames.
async fn exchange(fx: &Fixture, input: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let (mut client, task) = spawn_socket(fx, 1 << 16, fx.log.latest());
    client.write_all(input).await.unwrap();
    // The client sends nothing more (a peer that leaves without a close frame, for the
    // EOF case; after a close frame the server reads nothing anyway).
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    // The server half-closes after its close frame; read to the end.
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got))
        .await
        .expect("the server closes")
        .unwrap();
    drop(client);
    task.await.unwrap();
    server_frames(&got)
}

fn close_code(frames: &[(u8, Vec<u8>)]) -> Option<u16> {
    let (_, payload) = frames.iter().find(|(op, _)| *op == 0x8)?;
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

fn acks(frames: &[(u8, Vec<u8>)]) -> usize {
    frames
        .iter()
        .filter(|(op, p)| *op == 0x1 && p.starts_with(br#"{"type":"ack""#))
        .count()
}

/// Issue #8, defect 1: a publish followed by a close in the same write was dropped. Every
/// complete message before a close or a violation is stored and acknowledged first.
#[tokio::test]
async fn publishes_before_a_close_or_a_violation_are_stored_and_acked() {
    let fx = fixture().await;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("close 1000", frame(0x88, &[0x03, 0xe8]), 1000),
        ("close without code", frame(0x88, &[]), 0),
        ("close 4000", frame(0x88, &[0x0f, 0xa0]), 4000),
        ("reserved opcode", frame(0x83, b""), 1002),
        ("unmasked frame", vec![0x81, 0x01, b'a'], 1002),
        ("invalid UTF-8", frame(0x81, &[0xff]), 1007),
        ("too big", frame(0x81, &vec![b'a'; 20_000]), 1009),
        ("EOF without close", vec![], 0),
    ];
    for (name, tail, code) in cases {
        let before = fx.log.latest();
        let mut input = Vec::new();
        for _ in 0..3 {
            input.extend(frame(0x81, PUBLISH.as_bytes()));
        }
        input.extend(tail);
        let frames = exchange(&fx, &input).await;
        assert_eq!(fx.log.latest(), before + 3, "{name}: all three stored");
        assert_eq!(acks(&frames), 3, "{name}: all three acked: {frames:?}");
        match code {
            0 if name.starts_with("EOF") => {}
            0 => assert_eq!(frames.last().unwrap(), &(0x8, vec![]), "{name}"),
            c => assert_eq!(close_code(&frames), Some(c), "{name}"),
        }
        // The close frame comes after the acks.
        if code != 0 {
            assert_eq!(frames.last().unwrap().0, 0x8, "{name}");
        }
    }
}

/// Issue #8, defect 2 over the loop: the 2^64-1 continuation fails the connection with
/// 1002, no panic (a panic would fail `task.await`).
#[tokio::test]
async fn huge_continuation_lengths_close_with_1002() {
    let fx = fixture().await;
    let mut input = vec![0x01, 0x81, 0, 0, 0, 0, b'a', 0x80, 0xff];
    input.extend_from_slice(&u64::MAX.to_be_bytes());
    input.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(close_code(&exchange(&fx, &input).await), Some(1002));
    let mut input = vec![0x01, 0x81, 0, 0, 0, 0, b'a', 0x80, 0xff];
    input.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    input.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(close_code(&exchange(&fx, &input).await), Some(1009));
}

/// Issue #8, defect 3: close codes are validated; valid ones are echoed.
#[tokio::test]
async fn close_frames_are_validated_and_valid_codes_echoed() {
    let fx = fixture().await;
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
        let frames = exchange(&fx, &frame(0x88, &code.to_be_bytes())).await;
        assert_eq!(close_code(&frames), Some(1002), "{code}");
    }
    assert_eq!(
        close_code(&exchange(&fx, &frame(0x88, &[0x03])).await),
        Some(1002)
    );
    let bad_reason = [0x03, 0xe8, 0xff, 0xfe];
    assert_eq!(
        close_code(&exchange(&fx, &frame(0x88, &bad_reason)).await),
        Some(1007)
    );
    for code in [1000u16, 1001, 1003, 1011, 3000, 4999] {
        let frames = exchange(&fx, &frame(0x88, &code.to_be_bytes())).await;
        assert_eq!(close_code(&frames), Some(code), "{code}");
    }
}

/// Issue #8, defect 6: invalid UTF-8 in a first fragment fails the connection at once,
/// while the message is still unfinished (the client never sends the rest).
#[tokio::test]
async fn invalid_utf8_in_a_first_fragment_closes_at_once() {
    let fx = fixture().await;
    let (mut client, task) = spawn_socket(&fx, 1 << 16, 0);
    client
        .write_all(&frame(0x01, &[b'a', 0xc0, 0xaf]))
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got))
        .await
        .expect("closed without waiting for the last fragment")
        .unwrap();
    assert_eq!(close_code(&server_frames(&got)), Some(1007));
    task.await.unwrap();
}

/// Pings between fragments are answered, and the message still arrives whole.
#[tokio::test]
async fn control_frames_between_fragments_are_answered() {
    let fx = fixture().await;
    let (first, rest) = PUBLISH.as_bytes().split_at(20);
    let mut input = frame(0x01, first);
    input.extend(frame(0x89, b"hi"));
    input.extend(frame(0x80, rest));
    input.extend(frame(0x88, &[0x03, 0xe8]));
    let frames = exchange(&fx, &input).await;
    assert!(frames.contains(&(0xA, b"hi".to_vec())), "{frames:?}");
    assert_eq!(acks(&frames), 1);
    assert_eq!(close_code(&frames), Some(1000));
}

#[tokio::test]
async fn publish_ack_error_ping_and_shutdown_over_a_socket() {
    let fx = fixture().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let sub = fx.log.subscribe(app::protocol::StreamSet::ALL.into(), 0);
    // A first frame that arrived with the handshake is served too.
    let mut early = Vec::new();
    {
        let mut c = WebSocketStream::from_raw_socket(
            tokio::io::join(tokio::io::empty(), &mut early),
            Role::Client,
            None,
        )
        .await;
        c.send(TMessage::text(PUBLISH)).await.unwrap();
    }
    let task = tokio::spawn(serve_socket(
        Connection::from_partially_read(server, &early),
        fx.state.clone(),
        sub,
        Caller::default(),
        false,
        None,
    ));
    let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;

    async fn frame_from(ws: &mut WebSocketStream<TcpStream>) -> ServerFrame {
        loop {
            match ws.next().await.expect("socket loop ended").unwrap() {
                TMessage::Text(t) => return serde_json::from_str(&t).unwrap(),
                TMessage::Close(c) => panic!("closed: {c:?}"),
                _ => {}
            }
        }
    }
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

    ws.send(TMessage::text("{}")).await.unwrap();
    assert!(matches!(
        frame_from(&mut ws).await,
        ServerFrame::Error { code, .. } if code == "bad_request"
    ));

    ws.send(TMessage::Ping(bytes::Bytes::from_static(b"hi")))
        .await
        .unwrap();
    let pong = loop {
        if let TMessage::Pong(p) = ws.next().await.unwrap().unwrap() {
            break p;
        }
    };
    assert_eq!(&pong[..], b"hi");

    fx.state.shutdown.cancel();
    let close = loop {
        if let TMessage::Close(c) = ws.next().await.unwrap().unwrap() {
            break c.unwrap();
        }
    };
    assert_eq!(close.code, TCloseCode::Away);
    // The client answers the close; the server then ends the connection.
    while ws.next().await.is_some_and(|r| r.is_ok()) {}
    task.await.unwrap();
}

/// Found by an adversarial run: a client that stopped reading (the server's write to it
/// timed out) had its publish, sent meanwhile, dropped unread. It is stored now.
#[tokio::test]
async fn a_publish_from_a_client_that_stopped_reading_is_stored() {
    let fx = fixture_with(|c| c.write_timeout_secs = 1).await;
    for _ in 0..40 {
        let payload = app::protocol::parse_client_frame(PUBLISH).unwrap().payload;
        fx.state
            .publish(payload, None, &Caller::default())
            .await
            .unwrap();
    }
    // A 256-byte pipe: the backlog of 40 events cannot be written; the client never reads.
    let (mut client, task) = spawn_socket(&fx, 256, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    client
        .write_all(&frame(0x81, PUBLISH.as_bytes()))
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the stuck connection ends")
        .unwrap();
    assert_eq!(
        fx.log.latest(),
        41,
        "the publish sent while the server was stuck is stored"
    );
}
