//! Chaos drops (issue #8): a fault-injecting TCP proxy between clients and a real server
//! cuts every connection at a random byte (during the handshake or request, mid-frame,
//! mid-chunk, mid-response; with a FIN or a reset) while events are published. For each
//! transport (poll, long poll, SSE, WebSocket with publishing over it) a client resumes
//! after every cut the way the browser does (from the last id it has, dropping anything at
//! or below it) until the proxy has cut it [`CUTS`] times. Then every client must hold
//! every event exactly once, in order, and every publish made over the cut WebSocket (and
//! retried with its idempotency key when its ack was lost) must be stored exactly once.

mod common;

use app::protocol::{Event, PollResponse, ServerFrame};
use common::*;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// Forced drops per transport (`CHAOS_CUTS` overrides, for a longer run).
fn cuts_wanted() -> u64 {
    std::env::var("CHAOS_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// A TCP proxy to `upstream` that cuts each connection after a random number of bytes
/// (both directions together: mostly 0 to `max_bytes`, sometimes up to 32 KiB), counting
/// the cuts.
struct ChaosProxy {
    addr: SocketAddr,
    cuts: Arc<AtomicU64>,
}

impl ChaosProxy {
    async fn start(upstream: SocketAddr, max_bytes: u64) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cuts = Arc::new(AtomicU64::new(0));
        let counter = cuts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    // Mostly early cuts (handshake, head, first frames); one in ten
                    // later, so that a whole poll answer can also get through.
                    let budget = if rand::rng().random_bool(0.9) {
                        rand::rng().random_range(0..=max_bytes)
                    } else {
                        rand::rng().random_range(0..=32 * 1024)
                    };
                    let reset = rand::rng().random_bool(0.5);
                    if relay(client, server, budget, reset).await {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        ChaosProxy { addr, cuts }
    }

    fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::Relaxed)
    }
}

/// Copies both ways until `budget` bytes have passed, then cuts both sides (exactly at
/// the budget, so inside whatever frame or chunk is passing). Returns whether it cut (as
/// opposed to a side closing first).
async fn relay(client: TcpStream, server: TcpStream, budget: u64, reset: bool) -> bool {
    let left = Arc::new(AtomicU64::new(budget));
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    async fn pump(
        from: &mut tokio::net::tcp::OwnedReadHalf,
        to: &mut tokio::net::tcp::OwnedWriteHalf,
        left: &AtomicU64,
    ) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n as u64,
            };
            // Take up to n bytes of the shared budget.
            let mut have = left.load(Ordering::Relaxed);
            let take = loop {
                let take = n.min(have);
                match left.compare_exchange(have, have - take, Ordering::Relaxed, Ordering::Relaxed)
                {
                    Ok(_) => break take,
                    Err(now) => have = now,
                }
            };
            if to.write_all(&buf[..take as usize]).await.is_err() {
                return false;
            }
            if take < n {
                return true;
            }
        }
    }
    let cut = tokio::select! {
        c = pump(&mut cr, &mut sw, &left) => c,
        c = pump(&mut sr, &mut cw, &left) => c,
    };
    if cut && reset {
        // A reset instead of a FIN: what a crashing proxy or a lost route looks like.
        // (SO_LINGER 0 blocks nothing here: it makes close send a reset at once.)
        #[allow(deprecated)]
        {
            let client = cr.reunite(cw).unwrap();
            let _ = client.set_linger(Some(Duration::ZERO));
            let server = sr.reunite(sw).unwrap();
            let _ = server.set_linger(Some(Duration::ZERO));
        }
    }
    cut
}

/// What a client saw: events by id, how many arrived at or below its cursor (dropped, as
/// the browser drops them), and resets (none allowed).
#[derive(Default)]
struct Seen {
    ids: Vec<u64>,
    below_cursor: u64,
    resets: u64,
    reconnects: u64,
}

impl Seen {
    fn cursor(&self) -> u64 {
        self.ids.last().copied().unwrap_or(0)
    }
    /// The browser store's rule: anything at or below the cursor is dropped.
    fn ingest(&mut self, e: &Event) {
        if e.id <= self.cursor() {
            self.below_cursor += 1;
        } else {
            self.ids.push(e.id);
        }
    }
}

/// Runs `client` (one connection, until it fails or `done` says the run is over) again
/// and again until `done` and the cursor reached `target`.
async fn until_caught_up<F, Fut>(
    seen: &mut Seen,
    done: &AtomicBool,
    target: &AtomicU64,
    mut client: F,
) where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Event>, (Vec<Event>, bool)>>,
{
    loop {
        let (events, reset) = match client(seen.cursor()).await {
            Ok(events) => (events, false),
            Err((events, reset)) => {
                seen.reconnects += 1;
                (events, reset)
            }
        };
        for e in &events {
            seen.ingest(e);
        }
        if reset {
            seen.resets += 1;
        }
        if done.load(Ordering::Relaxed) && seen.cursor() >= target.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// One poll (long when `wait` > 0) through the proxy; `Err` when the connection was cut.
async fn poll_once(
    http: &reqwest::Client,
    base: &str,
    since: u64,
    wait: u64,
) -> Result<Vec<Event>, (Vec<Event>, bool)> {
    // At most 100 events per answer (~13 KB): an answer must fit between two cuts.
    let url = format!("{base}/api/poll?streams=chat&since={since}&wait={wait}&limit=100");
    let r = http.get(url).send().await.map_err(|_| (vec![], false))?;
    let body: PollResponse = r.json().await.map_err(|_| (vec![], false))?;
    if body.reset {
        return Err((vec![], true));
    }
    Ok(body.events)
}

/// One SSE connection through the proxy, read by hand (HTTP/1.1 chunked): the events
/// complete before the cut.
async fn sse_once(
    addr: SocketAddr,
    since: u64,
    deadline: Duration,
) -> Result<Vec<Event>, (Vec<Event>, bool)> {
    let mut events = Vec::new();
    let Ok(mut tcp) = TcpStream::connect(addr).await else {
        return Err((events, false));
    };
    let req = format!(
        "GET /api/sse?streams=chat HTTP/1.1\r\nHost: chaos\r\nLast-Event-ID: {since}\r\n\r\n"
    );
    if tcp.write_all(req.as_bytes()).await.is_err() {
        return Err((events, false));
    }
    // The body's text, de-chunked; events are taken out as soon as they are complete.
    let mut raw = Vec::new();
    let mut head_done = false;
    let mut text: Vec<u8> = Vec::new();
    let mut in_chunk = 0usize;
    let mut reset = false;
    let result = tokio::time::timeout(deadline, async {
        let mut buf = [0u8; 4096];
        loop {
            let n = match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            raw.extend_from_slice(&buf[..n]);
            if !head_done {
                let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                assert!(
                    raw.starts_with(b"HTTP/1.1 200"),
                    "{}",
                    String::from_utf8_lossy(&raw)
                );
                raw.drain(..end + 4);
                head_done = true;
            }
            // De-chunk as bytes arrive, as a browser does (a chunk's events are usable
            // before the chunk is complete).
            loop {
                if in_chunk == 0 {
                    let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") else {
                        break;
                    };
                    let line = std::str::from_utf8(&raw[..line_end]).unwrap();
                    if line.is_empty() {
                        // The CRLF that ends the previous chunk's data.
                        raw.drain(..2);
                        continue;
                    }
                    in_chunk = usize::from_str_radix(line, 16).unwrap();
                    raw.drain(..line_end + 2);
                    if in_chunk == 0 {
                        return;
                    }
                }
                let n = in_chunk.min(raw.len());
                if n == 0 {
                    break;
                }
                text.extend(raw.drain(..n));
                in_chunk -= n;
            }
            let text_str = match std::str::from_utf8(&text) {
                Ok(t) => t.to_owned(),
                Err(e) => std::str::from_utf8(&text[..e.valid_up_to()])
                    .unwrap()
                    .to_owned(),
            };
            let mut consumed = 0;
            for block in text_str.split_inclusive("\n\n") {
                if !block.ends_with("\n\n") {
                    break;
                }
                consumed += block.len();
                if block.starts_with("event: reset") {
                    reset = true;
                    return;
                }
                if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                    events.push(serde_json::from_str::<Event>(data).unwrap());
                }
            }
            text.drain(..consumed);
        }
    })
    .await;
    let _ = result;
    Err((events, reset))
}

/// One WebSocket through the proxy: receives events, and publishes `outbox` entries
/// (idempotency key, body) that have no ack yet; acks remove them. Returns when cut.
async fn ws_once(
    addr: SocketAddr,
    since: u64,
    outbox: &mut BTreeMap<String, String>,
    acked: &mut HashMap<String, u64>,
    deadline: Duration,
) -> Result<Vec<Event>, (Vec<Event>, bool)> {
    let mut events = Vec::new();
    let url = format!("ws://{addr}/api/ws?streams=chat&since={since}");
    let Ok(Ok((mut ws, _))) =
        tokio::time::timeout(deadline, tokio_tungstenite::connect_async(url)).await
    else {
        return Err((events, false));
    };
    // Unacked publishes go (again) on every connection, with the same key.
    for (key, body) in outbox.iter() {
        let frame = serde_json::json!({"type":"publish","ref":key,"key":key,"stream":"chat","data":{"author":"ws","body":body}});
        if ws.send(Message::text(frame.to_string())).await.is_err() {
            return Err((events, false));
        }
    }
    let mut reset = false;
    let _ = tokio::time::timeout(deadline, async {
        while let Some(Ok(m)) = ws.next().await {
            let Message::Text(t) = m else { continue };
            match serde_json::from_str::<ServerFrame>(&t).unwrap() {
                ServerFrame::Event { event } => events.push(event),
                ServerFrame::Ack { reference, id } => {
                    outbox.remove(&reference);
                    acked.insert(reference, id);
                }
                ServerFrame::Reset { .. } => {
                    reset = true;
                    return;
                }
                ServerFrame::Error { error, .. } => panic!("publish refused: {error}"),
                ServerFrame::Cursor { .. } | ServerFrame::Hello { .. } => {}
            }
        }
    })
    .await;
    Err((events, reset))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_drops_lose_and_duplicate_nothing_on_any_transport() {
    let wanted = cuts_wanted();
    let s = TestServer::start_with(|c| {
        c.retention = 1_000_000;
        c.publish_rate = 0;
    })
    .await;
    // Small budgets: most cuts land in the handshake, the head or the first frames.
    let proxies = [
        ("poll", ChaosProxy::start(s.addr, 600).await),
        ("long poll", ChaosProxy::start(s.addr, 600).await),
        ("sse", ChaosProxy::start(s.addr, 1500).await),
        ("ws", ChaosProxy::start(s.addr, 1500).await),
    ];
    let done = Arc::new(AtomicBool::new(false));
    let target = Arc::new(AtomicU64::new(u64::MAX));

    // The publisher: chat events straight to the server, until every proxy has cut enough.
    let publisher = {
        let (base, done) = (s.base.clone(), done.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                let body = serde_json::json!({"stream":"chat","data":{"author":"pub","body":format!("m{n}")}});
                let r = http
                    .post(format!("{base}/api/publish"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        })
    };

    let poll_client = |addr: SocketAddr, wait: u64| {
        let (done, target) = (done.clone(), target.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let base = format!("http://{addr}");
            let mut seen = Seen::default();
            until_caught_up(&mut seen, &done, &target, |since| {
                let (http, base) = (http.clone(), base.clone());
                async move { poll_once(&http, &base, since, wait).await }
            })
            .await;
            seen
        })
    };
    let poll = poll_client(proxies[0].1.addr, 0);
    let long_poll = poll_client(proxies[1].1.addr, 5);
    let sse = {
        let (addr, done, target) = (proxies[2].1.addr, done.clone(), target.clone());
        tokio::spawn(async move {
            let mut seen = Seen::default();
            until_caught_up(&mut seen, &done, &target, |since| {
                sse_once(addr, since, Duration::from_secs(5))
            })
            .await;
            seen
        })
    };
    let ws = {
        let (addr, done, target) = (proxies[3].1.addr, done.clone(), target.clone());
        tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut outbox = BTreeMap::new();
            let mut acked = HashMap::new();
            let mut next = 0u64;
            loop {
                // Keep a few publishes outstanding while the run lasts.
                while !done.load(Ordering::Relaxed) && outbox.len() < 3 {
                    outbox.insert(format!("ws-{next:06}"), format!("w{next}"));
                    next += 1;
                }
                let r = ws_once(
                    addr,
                    seen.cursor(),
                    &mut outbox,
                    &mut acked,
                    Duration::from_secs(5),
                )
                .await;
                seen.reconnects += 1;
                let (events, reset) = r.unwrap_err();
                for e in &events {
                    seen.ingest(e);
                }
                if reset {
                    seen.resets += 1;
                }
                if done.load(Ordering::Relaxed)
                    && outbox.is_empty()
                    && seen.cursor() >= target.load(Ordering::Relaxed)
                {
                    return (seen, acked, next);
                }
            }
        })
    };

    within_long(async {
        let mut ticks = 0;
        while proxies.iter().any(|(_, p)| p.cuts() < wanted) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            ticks += 1;
            if ticks % 100 == 0 {
                let counts: Vec<_> = proxies
                    .iter()
                    .map(|(n, p)| format!("{n} {}", p.cuts()))
                    .collect();
                println!("chaos: cuts so far: {}", counts.join(", "));
            }
        }
    })
    .await;
    done.store(true, Ordering::Relaxed);
    let published = publisher.await.unwrap();
    // Everything the WS client still has unacked is retried until acked; the target is
    // set once those are in too (the WS client finishes only with an empty outbox).
    let head = |s: &TestServer| {
        let url = s.url("/api/poll?streams=chat");
        async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<PollResponse>()
                .await
                .unwrap()
                .cursor
        }
    };
    // Wait for the WS outbox to drain: its publishes raise the head.
    within_long(async {
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = head(&s).await;
            if now == last {
                break;
            }
            last = now;
        }
    })
    .await;
    target.store(head(&s).await, Ordering::Relaxed);
    let final_id = target.load(Ordering::Relaxed);

    let (ws_seen, acked, ws_published) = within_long(ws).await.unwrap();
    let results = [
        ("poll", within_long(poll).await.unwrap()),
        ("long poll", within_long(long_poll).await.unwrap()),
        ("sse", within_long(sse).await.unwrap()),
        ("ws", ws_seen),
    ];
    let all: Vec<u64> = (1..=final_id).collect();
    for ((name, seen), (_, proxy)) in results.iter().zip(&proxies) {
        println!(
            "chaos {name}: {} cuts, {} reconnects, {} events, {} lost, {} at or below the cursor (dropped), {} resets",
            proxy.cuts(),
            seen.reconnects,
            seen.ids.len(),
            final_id as usize - seen.ids.len(),
            seen.below_cursor,
            seen.resets
        );
        assert!(proxy.cuts() >= wanted, "{name}");
        assert_eq!(seen.resets, 0, "{name}: reset");
        assert_eq!(seen.ids, all, "{name}: every event exactly once, in order");
    }
    // Every WS publish was acked, once per key, and stored once.
    assert_eq!(acked.len() as u64, ws_published);
    let history = chat_history(&s).await;
    let ws_bodies: Vec<&str> = history
        .iter()
        .filter_map(|e| match &e.payload {
            app::protocol::Payload::Chat(c) if c.author == "ws" => Some(c.body.as_str()),
            _ => None,
        })
        .collect();
    let mut unique = ws_bodies.clone();
    unique.sort();
    unique.dedup();
    println!(
        "chaos ws publishing: {ws_published} publishes, {} stored, {} duplicates; {published} HTTP publishes",
        ws_bodies.len(),
        ws_bodies.len() - unique.len()
    );
    assert_eq!(
        unique.len(),
        ws_bodies.len(),
        "a retried publish was stored twice"
    );
    assert_eq!(ws_bodies.len() as u64, ws_published);
    s.stop().await;
}

async fn within_long<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(240), f)
        .await
        .expect("chaos run timed out")
}

/// All chat events, from history (paged).
async fn chat_history(s: &TestServer) -> Vec<Event> {
    let mut out = Vec::new();
    let mut before = u64::MAX;
    loop {
        let url = if before == u64::MAX {
            s.url("/api/history?stream=chat&limit=200")
        } else {
            s.url(&format!(
                "/api/history?stream=chat&limit=200&before={before}"
            ))
        };
        let page: app::protocol::HistoryResponse =
            reqwest::get(url).await.unwrap().json().await.unwrap();
        if page.events.is_empty() {
            break;
        }
        before = page.events[0].id;
        let mut page = page.events;
        page.append(&mut out);
        out = page;
    }
    out
}
