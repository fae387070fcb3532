//! The load generator: subscribers on any transport, a publisher, and what they measure.
//!
//! Every published chat body is `b<seq>`; subscribers find that number in what they receive
//! (a substring scan, no JSON parse, to keep the client's own cost low and equal for every
//! server) and look up when `seq` was sent. Latency is therefore publish-to-receive as the
//! publisher saw it, in microseconds, with one clock.

use crate::lean::{SseClient, Subscriber, WsClient};
use crate::procstat::ProcStat;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Ws,
    Sse,
    Poll,
    Longpoll,
    /// Socket.IO 4 over its WebSocket transport (the Socket.IO peer only).
    Socketio,
    /// Half WebSocket, half SSE (subscriber i: WebSocket when i is even).
    Mixed,
}

#[derive(Clone, Debug)]
pub struct Fanout {
    pub base: String,
    pub transport: Transport,
    pub subscribers: usize,
    /// Events per second; 0 = as fast as the server accepts them (throughput run).
    pub rate: u32,
    /// Events to publish in all.
    pub events: usize,
    /// New connections per second while ramping up.
    pub ramp: u32,
    /// Poll interval for `poll`.
    pub interval: Duration,
    /// Server pid, for CPU and memory figures.
    pub pid: Option<u32>,
    pub quiet: bool,
    /// More servers of the same cluster: subscribers are spread over `base` and these, round
    /// robin (the publisher stays on `base`).
    pub spread: Vec<String>,
}

impl Fanout {
    /// Where subscriber `i` connects.
    fn base_of(&self, i: usize) -> &str {
        match i % (self.spread.len() + 1) {
            0 => &self.base,
            k => &self.spread[k - 1],
        }
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct FanoutResult {
    pub transport: Option<Transport>,
    pub subscribers: usize,
    pub published: u64,
    /// Publishes the server did not accept (any answer but 201, or no answer).
    pub refused: u64,
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub lost: u64,
    pub duplicated: u64,
    pub requests_per_event: f64,
    pub bytes_per_event: f64,
    pub server_cpu_secs: f64,
    pub server_rss_kib: u64,
}

/// Shared between the publisher and every subscriber.
struct Clock {
    start: Instant,
    /// When seq `i` was sent, in ns since `start` (+1, so 0 means "not sent").
    sent: Vec<AtomicU64>,
}

impl Clock {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64 + 1
    }
}

/// One subscriber's tally.
struct Tally {
    seen: Vec<bool>,
    deliveries: u64,
    duplicated: u64,
    requests: u64,
    bytes: u64,
    hist: Histogram<u64>,
    last_delivery_ns: u64,
}

impl Tally {
    fn new(events: usize) -> Tally {
        Tally {
            seen: vec![false; events],
            deliveries: 0,
            duplicated: 0,
            requests: 0,
            bytes: 0,
            hist: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            last_delivery_ns: 0,
        }
    }

    /// Records every `"body":"b<seq>"` found in `text`.
    fn record(&mut self, clock: &Clock, text: &str) {
        self.bytes += text.len() as u64;
        let now = clock.now_ns();
        let mut rest = text;
        while let Some(i) = rest.find("\"body\":\"b") {
            rest = &rest[i + 9..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let Ok(seq) = rest[..digits].parse::<usize>() else {
                continue;
            };
            if seq >= self.seen.len() {
                continue;
            }
            if std::mem::replace(&mut self.seen[seq], true) {
                self.duplicated += 1;
                continue;
            }
            self.deliveries += 1;
            self.last_delivery_ns = now;
            let sent = clock.sent[seq].load(Ordering::Acquire);
            if sent > 0 && now > sent {
                let _ = self.hist.record((now - sent) / 1000);
            }
        }
    }
}

fn ws_url(base: &str) -> String {
    base.replacen("http", "ws", 1)
}

/// Runs one subscriber until `done` says stop; returns its tally.
async fn subscriber(
    i: usize,
    f: Arc<Fanout>,
    clock: Arc<Clock>,
    connected: Arc<AtomicU64>,
    done: Arc<tokio::sync::Notify>,
    delivered: Arc<AtomicU64>,
) -> Tally {
    let mut t = Tally::new(f.events);
    let base = f.base_of(i);
    let stop = done.notified();
    tokio::pin!(stop);
    match f.transport {
        Transport::Ws | Transport::Sse | Transport::Mixed | Transport::Socketio => {
            let client = match f.transport {
                Transport::Socketio => socketio(base).await.map(Subscriber::SocketIo),
                Transport::Ws => ws(base).await,
                Transport::Mixed if i % 2 == 0 => ws(base).await,
                _ => SseClient::connect(base, "/api/sse?streams=chat")
                    .await
                    .ok()
                    .map(Subscriber::Sse),
            };
            let Some(mut client) = client else {
                return t;
            };
            t.requests += 1;
            connected.fetch_add(1, Ordering::Relaxed);
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    more = client.read() => {
                        let before = t.deliveries;
                        let open = client.process(|text| t.record(&clock, text)).await;
                        delivered.fetch_add(t.deliveries - before, Ordering::Relaxed);
                        if !more || !open {
                            break;
                        }
                    }
                }
            }
        }
        Transport::Poll | Transport::Longpoll => {
            let client = reqwest::Client::new();
            let Some(mut cursor) = head_cursor(&client, base).await else {
                return t;
            };
            t.requests += 1;
            connected.fetch_add(1, Ordering::Relaxed);
            let wait = if f.transport == Transport::Longpoll {
                "&wait=25"
            } else {
                ""
            };
            loop {
                let url = format!("{base}/api/poll?streams=chat&since={cursor}{wait}");
                let answer = tokio::select! {
                    _ = &mut stop => break,
                    r = async { client.get(url).send().await.ok()?.text().await.ok() } => r,
                };
                let Some(text) = answer else { break };
                t.requests += 1;
                let before = t.deliveries;
                t.record(&clock, &text);
                delivered.fetch_add(t.deliveries - before, Ordering::Relaxed);
                if let Ok(p) = serde_json::from_str::<app::protocol::PollResponse>(&text) {
                    cursor = p.cursor;
                    if p.more {
                        continue;
                    }
                }
                if f.transport == Transport::Poll {
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = tokio::time::sleep(f.interval) => {}
                    }
                }
            }
        }
    }
    t
}

async fn ws(base: &str) -> Option<Subscriber> {
    WsClient::connect(base, "/api/ws?streams=chat")
        .await
        .ok()
        .map(Subscriber::Ws)
}

/// A Socket.IO 4 client on the WebSocket transport, connected to the default namespace:
/// the Engine.IO open packet (`0{"sid":..}`) comes first, the client asks for the namespace
/// (`40`) and the server confirms it (`40{"sid":..}`); from then on events arrive as
/// `42["event",{...}]`. `None` if the server does not speak it.
async fn socketio(base: &str) -> Option<WsClient> {
    let mut c = WsClient::connect(base, "/socket.io/?EIO=4&transport=websocket")
        .await
        .ok()?;
    let (mut opened, mut joined) = (false, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // The open packet may have come with the upgrade's answer: look before reading.
    let mut first = true;
    while !joined {
        if !first && !tokio::time::timeout_at(deadline, c.read()).await.ok()? {
            return None;
        }
        first = false;
        let mut was_open = false;
        c.process(|text| {
            if text.starts_with("40") {
                joined = true;
            } else if text.starts_with('0') {
                was_open = true;
            }
        })
        .await;
        if was_open && !opened {
            opened = true;
            c.send_text("40").await.ok()?;
        }
    }
    Some(c)
}

/// `POST` of a publish body (JSON) to `url`; the answer's status, `None` without an answer.
/// The answer is read to its end, so the connection is reused.
pub async fn post_publish(client: &reqwest::Client, url: &str, body: String) -> Option<u16> {
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    let _ = r.bytes().await;
    Some(status)
}

/// The current head of the log (`GET /api/poll` without `since`), where a poller starts.
async fn head_cursor(client: &reqwest::Client, base: &str) -> Option<u64> {
    let r = client
        .get(format!("{base}/api/poll?streams=chat"))
        .send()
        .await
        .ok()?;
    r.json::<app::protocol::PollResponse>()
        .await
        .ok()
        .map(|p| p.cursor)
}

fn bar(quiet: bool, len: u64, msg: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} {per_sec}")
            .expect("style")
            .progress_chars("=> "),
    );
    b.set_message(msg.to_string());
    b
}

/// Opens the subscribers (ramping), publishes, waits for delivery, and measures.
pub async fn fanout(f: Fanout) -> FanoutResult {
    let f = Arc::new(f);
    let clock = Arc::new(Clock {
        start: Instant::now(),
        sent: (0..f.events).map(|_| AtomicU64::new(0)).collect(),
    });
    let connected = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());

    // Ramp up.
    let ramp = bar(f.quiet, f.subscribers as u64, "connecting");
    let mut subs = Vec::with_capacity(f.subscribers);
    let gap = Duration::from_secs_f64(1.0 / f.ramp.max(1) as f64);
    for i in 0..f.subscribers {
        subs.push(tokio::spawn(subscriber(
            i,
            f.clone(),
            clock.clone(),
            connected.clone(),
            done.clone(),
            delivered.clone(),
        )));
        tokio::time::sleep(gap).await;
        ramp.set_position(connected.load(Ordering::Relaxed));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while (connected.load(Ordering::Relaxed) as usize) < f.subscribers && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        ramp.set_position(connected.load(Ordering::Relaxed));
    }
    ramp.finish_and_clear();
    let n_connected = connected.load(Ordering::Relaxed) as usize;
    // Let the last connections settle into their read loops.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before = f.pid.and_then(ProcStat::read);
    let publishing = bar(f.quiet, (f.events * n_connected) as u64, "delivering");
    let started = clock.now_ns();
    let (published, refused) = publish(&f, &clock).await;
    // Wait for delivery: until everything arrived or nothing moved for a while.
    let expected = published * n_connected as u64;
    let mut last = (delivered.load(Ordering::Relaxed), Instant::now());
    loop {
        let d = delivered.load(Ordering::Relaxed);
        publishing.set_position(d);
        if d >= expected {
            break;
        }
        if d != last.0 {
            last = (d, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publishing.finish_and_clear();
    let after = f.pid.and_then(ProcStat::read);
    done.notify_waiters();

    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds");
    let mut r = FanoutResult {
        transport: Some(f.transport),
        subscribers: n_connected,
        published,
        refused,
        ..Default::default()
    };
    let (mut requests, mut bytes, mut last_ns) = (0u64, 0u64, started);
    for s in subs {
        // A subscriber that never connected returns an empty tally.
        let t = s.await.expect("subscriber task");
        if t.requests == 0 {
            continue;
        }
        hist.add(&t.hist).expect("same bounds");
        r.deliveries += t.deliveries;
        r.duplicated += t.duplicated;
        r.lost += published.saturating_sub(t.deliveries);
        requests += t.requests;
        bytes += t.bytes;
        last_ns = last_ns.max(t.last_delivery_ns);
    }
    let secs = (last_ns.saturating_sub(started)) as f64 / 1e9;
    r.deliveries_per_sec = if secs > 0.0 {
        r.deliveries as f64 / secs
    } else {
        0.0
    };
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    (r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms) =
        (ms(0.5), ms(0.9), ms(0.99), hist.max() as f64 / 1000.0);
    if r.deliveries > 0 {
        r.requests_per_event = requests as f64 / r.deliveries as f64;
        r.bytes_per_event = bytes as f64 / r.deliveries as f64;
    }
    if let (Some(b), Some(a)) = (before, after) {
        r.server_cpu_secs = a.cpu_secs - b.cpu_secs;
        r.server_rss_kib = a.rss_kib;
    }
    r
}

/// Publishes `f.events` chat events, at `f.rate` per second or (0) as fast as accepted with
/// a few requests in flight. Returns how many were accepted and how many were not.
async fn publish(f: &Fanout, clock: &Arc<Clock>) -> (u64, u64) {
    let client = reqwest::Client::new();
    let ok = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(Semaphore::new(if f.rate == 0 {
        std::env::var("INFL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(8)
    } else {
        64
    }));
    let mut tick = (f.rate > 0).then(|| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / f.rate as f64));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    });
    let mut tasks = Vec::with_capacity(f.events);
    for seq in 0..f.events {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let permit = in_flight.clone().acquire_owned().await.expect("semaphore");
        let (client, clock, ok, url) = (
            client.clone(),
            clock.clone(),
            ok.clone(),
            format!("{}/api/publish", f.base),
        );
        tasks.push(tokio::spawn(async move {
            let body =
                format!(r#"{{"stream":"chat","data":{{"author":"bench","body":"b{seq}"}}}}"#);
            clock.sent[seq].store(clock.now_ns(), Ordering::Release);
            if post_publish(&client, &url, body).await == Some(201) {
                ok.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let ok = ok.load(Ordering::Relaxed);
    (ok, f.events as u64 - ok)
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct IdleResult {
    pub connections: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub bytes_per_connection: f64,
}

/// Opens `n` idle connections (half WebSocket, half SSE, unless `only` says which) and reports the server's memory
/// growth per connection.
pub async fn idle(
    base: &str,
    n: usize,
    ramp: u32,
    pid: u32,
    quiet: bool,
    only: Option<Transport>,
) -> IdleResult {
    let before = ProcStat::read(pid).map_or(0, |s| s.rss_kib);
    let progress = bar(quiet, n as u64, "idle connections");
    let mut held = Vec::with_capacity(n);
    let gap = Duration::from_secs_f64(1.0 / ramp.max(1) as f64);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let mut opened = 0;
    for i in 0..n {
        let ws = match only {
            Some(t) => t == Transport::Ws,
            None => i % 2 == 0,
        };
        if ws {
            if let Ok((ws, _)) =
                tokio_tungstenite::connect_async(format!("{}/api/ws?streams=chat", ws_url(base)))
                    .await
            {
                held.push(Box::new(ws) as Box<dyn std::any::Any + Send>);
                opened += 1;
            }
        } else if let Ok(r) = client
            .get(format!("{base}/api/sse?streams=chat"))
            .send()
            .await
        {
            held.push(Box::new(r));
            opened += 1;
        }
        progress.inc(1);
        if i % 100 == 99 {
            tokio::time::sleep(gap * 100).await;
        }
    }
    progress.finish_and_clear();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = ProcStat::read(pid).map_or(0, |s| s.rss_kib);
    drop(held);
    IdleResult {
        connections: opened,
        rss_before_kib: before,
        rss_after_kib: after,
        bytes_per_connection: (after.saturating_sub(before) * 1024) as f64 / opened.max(1) as f64,
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct PollRateResult {
    pub requests: u64,
    pub requests_per_sec: f64,
    pub errors: u64,
}

/// Hammers empty polls (`since` = the head) from `concurrency` loops for `duration`.
pub async fn empty_poll_rate(base: &str, concurrency: usize, duration: Duration) -> PollRateResult {
    let client = reqwest::Client::new();
    let cursor = head_cursor(&client, base).await.unwrap_or(0);
    let url = format!("{base}/api/poll?streams=chat&since={cursor}");
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + duration;
    let started = Instant::now();
    let mut loops = Vec::new();
    for _ in 0..concurrency {
        let (client, url, count, errors) =
            (client.clone(), url.clone(), count.clone(), errors.clone());
        loops.push(tokio::spawn(async move {
            while Instant::now() < until {
                let ok = match client.get(&url).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    count.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for l in loops {
        let _ = l.await;
    }
    let n = count.load(Ordering::Relaxed);
    PollRateResult {
        requests: n,
        requests_per_sec: n as f64 / started.elapsed().as_secs_f64(),
        errors: errors.load(Ordering::Relaxed),
    }
}

/// Adds subscribers in steps at `rate` events/s until p99 exceeds `bound_ms` (or `max` is
/// reached); returns the figures of each step.
pub async fn ramp(
    base: &str,
    transport: Transport,
    step: usize,
    max: usize,
    rate: u32,
    bound_ms: f64,
    pid: Option<u32>,
) -> Vec<FanoutResult> {
    let mut out = Vec::new();
    let mut n = step;
    while n <= max {
        let r = fanout(Fanout {
            base: base.into(),
            transport,
            subscribers: n,
            rate,
            events: (rate as usize * 3).max(50),
            ramp: 2000,
            interval: Duration::from_secs(1),
            pid,
            quiet: true,
            spread: vec![],
        })
        .await;
        eprintln!(
            "ramp: {n} subscribers: p99 {:.2} ms, {:.0} deliveries/s, lost {}",
            r.p99_ms, r.deliveries_per_sec, r.lost
        );
        let over = r.p99_ms > bound_ms || r.lost > 0;
        out.push(r);
        if over {
            break;
        }
        n += step;
    }
    out
}
