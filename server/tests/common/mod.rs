//! Test harness: a real server on an ephemeral port, and real clients for each transport.
#![allow(dead_code)]

use app::protocol::{Event, ServerFrame};
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tidings::Config;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Bound for every wait in these tests: a condition not met by then is a failure.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    pub dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut s = Self::start_in(tmp.path().to_path_buf(), f).await;
        s._tmp = Some(tmp);
        s
    }

    /// Starts on `dir` (an existing data dir, for restart tests).
    pub async fn start_in(dir: PathBuf, f: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::for_tests(dir.clone());
        f(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            tidings::run(listener, config, async move {
                let _ = rx.await;
            })
            .await
            .expect("server run");
        });
        let s = TestServer {
            addr,
            base: format!("http://{addr}"),
            dir,
            stop: Some(stop),
            handle: Some(handle),
            _tmp: None,
        };
        // Wait until it answers.
        let client = reqwest::Client::new();
        within(async {
            loop {
                if let Ok(r) = client.get(s.url("/healthz")).send().await {
                    if r.status() == 200 {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Graceful stop; returns when the server has finished (store closed).
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        self.shutdown().await;
        self._tmp.take()
    }

    async fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            within(h).await.expect("server task");
        }
    }

    pub async fn publish(&self, body: serde_json::Value) -> Event {
        let r = reqwest::Client::new()
            .post(self.url("/api/publish"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    pub async fn chat(&self, body: &str) -> Event {
        self.publish(
            serde_json::json!({"stream": "chat", "data": {"author": "tester", "body": body}}),
        )
        .await
    }
}

pub async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f)
        .await
        .expect("timed out waiting for a condition")
}

/// One parsed SSE message.
#[derive(Debug, Clone, Default)]
pub struct SseMessage {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: String,
    pub comment: bool,
}

/// A minimal SSE client over a real HTTP response (parses per the spec's line rules).
pub struct SseClient {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
    pub response_headers: reqwest::header::HeaderMap,
}

impl SseClient {
    pub async fn connect(url: &str, last_event_id: Option<&str>) -> SseClient {
        let mut req = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let headers = resp.headers().clone();
        SseClient {
            stream: resp.bytes_stream().boxed(),
            buf: String::new(),
            response_headers: headers,
        }
    }

    /// Wraps a response already known to be an event stream.
    pub fn from_response(resp: reqwest::Response) -> SseClient {
        let headers = resp.headers().clone();
        SseClient {
            stream: resp.bytes_stream().boxed(),
            buf: String::new(),
            response_headers: headers,
        }
    }

    /// The next message (comments included); `None` when the stream ended.
    pub async fn next(&mut self) -> Option<SseMessage> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut m = SseMessage::default();
                for line in block.lines() {
                    if let Some(rest) = line.strip_prefix(':') {
                        let _ = rest;
                        m.comment = true;
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        if !m.data.is_empty() {
                            m.data.push('\n');
                        }
                        m.data.push_str(v);
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        m.id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        m.event = Some(v.to_string());
                    }
                }
                return Some(m);
            }
            let chunk = self.stream.next().await?.ok()?;
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Next message that carries data (skips comments and bare `id:` heartbeats).
    pub async fn next_data(&mut self) -> Option<SseMessage> {
        loop {
            let m = self.next().await?;
            if !m.data.is_empty() {
                return Some(m);
            }
        }
    }

    pub async fn events(&mut self, n: usize) -> Vec<Event> {
        let mut out = Vec::new();
        while out.len() < n {
            let m = within(self.next_data()).await.expect("stream ended early");
            assert_eq!(m.event, None, "unexpected {m:?}");
            let e: Event = serde_json::from_str(&m.data).unwrap();
            assert_eq!(m.id.as_deref(), Some(e.id.to_string().as_str()));
            out.push(e);
        }
        out
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn ws_connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("ws connect")
        .0
}

/// Next JSON frame from the server (skipping pings/pongs).
pub async fn ws_frame(ws: &mut Ws) -> ServerFrame {
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match within(ws.next())
            .await
            .expect("socket ended")
            .expect("socket error")
        {
            Message::Text(t) => return serde_json::from_str(&t).expect("server frame"),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

pub async fn ws_events(ws: &mut Ws, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    while out.len() < n {
        match ws_frame(ws).await {
            ServerFrame::Event { event } => out.push(event),
            ServerFrame::Cursor { .. } => {}
            f => panic!("unexpected frame {f:?}"),
        }
    }
    out
}

pub fn ids(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.id).collect()
}

/// `GET url` (with a bearer token when given), expecting 200 and JSON of type `T`.
pub async fn get_json<T: serde::de::DeserializeOwned>(url: &str, token: Option<&str>) -> T {
    let mut req = reqwest::Client::new().get(url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {url}");
    r.json().await.unwrap()
}

/// Signs `name` up on the server at `base` (password "correct horse"); its session token.
pub async fn signup(base: &str, name: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{base}/api/auth/signup"))
        .json(&serde_json::json!({"name": name, "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "signup {name}: {:?}", r.text().await);
    r.json::<app::protocol::Session>()
        .await
        .unwrap()
        .token
        .unwrap()
}

/// An SSE stream of `streams` on `base`, signed in with `token` when given.
pub async fn sse(base: &str, streams: &str, token: Option<&str>) -> SseClient {
    let mut req = reqwest::Client::new().get(format!("{base}/api/sse?streams={streams}"));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    SseClient::from_response(r)
}

/// The (account, online) of a presence event.
pub fn presence_of(e: &Event) -> (String, bool) {
    match &e.payload {
        app::protocol::Payload::Presence(p) => (p.user.clone(), p.online),
        p => panic!("not a presence event: {p:?}"),
    }
}

/// The next presence change on `watcher`. No deadline of its own (a leave after kill -9
/// takes about the expiry): callers bound it.
pub async fn presence_change(watcher: &mut SseClient) -> (String, bool) {
    let m = watcher
        .next_data()
        .await
        .expect("the watcher's stream ended");
    presence_of(&serde_json::from_str(&m.data).unwrap())
}

/// Asserts that `watcher` receives nothing but heartbeats for `quiet`.
pub async fn no_presence_change(watcher: &mut SseClient, quiet: Duration) {
    if let Ok(m) = tokio::time::timeout(quiet, watcher.next_data()).await {
        panic!("expected no presence change, got {m:?}");
    }
}
