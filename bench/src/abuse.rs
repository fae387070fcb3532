//! `tidings-bench abuse`: what abusive clients cost everyone else, with the server's abuse
//! limits on (issue "Trust the wire").
//!
//! The same fan-out (N WebSocket subscribers on `chat`, 100 events/s) runs against a fresh
//! Tidings process per run in four scenarios, rounds interleaved, medians reported:
//!
//! - `baseline`: the fan-out alone.
//! - `stalled-ws` / `stalled-sse`: plus K connections that complete the handshake
//!   (`streams=chat&since=0`) and never read a byte, opened with a 4 KiB receive buffer.
//! - `flood`: plus one client from another address (127.0.0.2) publishing to `feed` as fast
//!   as it can with 16 requests in flight, for the whole run.
//!
//! Every run first stores [`PREFILL_EVENTS`] large chat events (from 127.0.0.3-5, so no
//! publish bucket runs dry). They are there for the stalled connections: a loopback socket
//! takes about 3 MB from the server before a write blocks (the kernel grows the send buffer
//! to `tcp_wmem`'s 4 MiB whatever the peer's receive buffer is), while the run's own 1,000
//! events are ~90 KB; replayed from `since=0`, the prefill makes their writes stick at once.
//! The normal subscribers start from the head and never see it (bodies are not `b<seq>`).
//! Every scenario gets the same prefill, so their memory figures stay comparable.

use crate::load::{self, Fanout, FanoutResult, Transport};
use crate::procstat::ProcStat;
use crate::Server;
use serde::Serialize;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Chat events stored before every run (~2 KB each: ~5 MB to replay from `since=0`).
const PREFILL_EVENTS: usize = 2500;
/// The receive buffer of a stalled connection (the kernel doubles it).
const STALLED_RECV_BUFFER: u32 = 4096;
/// Requests in flight from the flooding client.
const FLOOD_IN_FLIGHT: usize = 16;
/// The server's publish limit per address: five times the bench publisher's 100/s.
const PUBLISH_RATE: u32 = 500;
const PUBLISH_BURST: u32 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Scenario {
    Baseline,
    StalledWs,
    StalledSse,
    Flood,
}

impl Scenario {
    const ALL: [Scenario; 4] = [
        Scenario::Baseline,
        Scenario::StalledWs,
        Scenario::StalledSse,
        Scenario::Flood,
    ];

    fn stalled(self) -> Option<Transport> {
        match self {
            Scenario::StalledWs => Some(Transport::Ws),
            Scenario::StalledSse => Some(Transport::Sse),
            _ => None,
        }
    }

    fn label(self, stalled: usize) -> String {
        match self {
            Scenario::Baseline => "baseline".into(),
            Scenario::StalledWs => format!("+{stalled} stalled WS"),
            Scenario::StalledSse => format!("+{stalled} stalled SSE"),
            Scenario::Flood => format!("+flood ({FLOOD_IN_FLIGHT} in flight)"),
        }
    }
}

/// One run of one scenario.
#[derive(Debug, Clone, Serialize)]
struct Run {
    round: usize,
    scenario: Scenario,
    fanout: FanoutResult,
    /// The server's largest RSS, sampled every 50 ms from the ramp-up to the last delivery.
    peak_rss_kib: u64,
    /// CPU seconds of this load generator over the run (subscribers, publisher, flood).
    bench_cpu_secs: f64,
    stalled: Option<StalledResult>,
    flood: Option<FloodResult>,
}

#[derive(Debug, Clone, Serialize, Default)]
struct StalledResult {
    wanted: usize,
    /// Completed the handshake (101 or 200) and were then left unread.
    opened: usize,
    /// Found closed (EOF or reset) by the server when read after the run.
    closed: usize,
    /// Seconds from opening them to reading them.
    checked_after_secs: f64,
    /// `tidings_slow_consumer_closes_total` from `GET /metrics` after the run.
    metric_ws: u64,
    metric_sse: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
struct FloodResult {
    accepted: u64,
    refused: u64,
    /// Other answers, or none (connection errors).
    other: u64,
    requests_per_sec: f64,
}

#[derive(Serialize)]
struct Report {
    smoke: bool,
    subscribers: usize,
    events: usize,
    stalled: usize,
    write_timeout_secs: u64,
    load_average: String,
    runs: Vec<Run>,
}

pub struct Options {
    pub tidings: PathBuf,
    pub smoke: bool,
    pub rounds: usize,
    pub json: Option<PathBuf>,
}

pub async fn run(o: Options) -> Result<(), Box<dyn std::error::Error>> {
    let rounds = if o.smoke { 1 } else { o.rounds.max(1) };
    let (subscribers, events, stalled) = if o.smoke {
        (20, 50, 2)
    } else {
        (1000, 1000, 10)
    };
    // Short enough to show within the run (the default is 30 s); shorter still for --smoke.
    let write_timeout = if o.smoke { 2 } else { 5 };
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let mut report = Report {
        smoke: o.smoke,
        subscribers,
        events,
        stalled,
        write_timeout_secs: write_timeout,
        load_average,
        runs: Vec::new(),
    };
    for round in 1..=rounds {
        // Rotated each round, so that no scenario always runs first (or right after another).
        for k in 0..Scenario::ALL.len() {
            let sc = Scenario::ALL[(k + round - 1) % Scenario::ALL.len()];
            eprintln!(
                "[{round}/{rounds}] {}: {subscribers} WS subscribers x 100 events/s, {events} events",
                sc.label(stalled)
            );
            let s = start_tidings(&o.tidings, write_timeout)?;
            let mut r =
                run_once(&s, sc, subscribers, events, stalled, write_timeout, o.smoke).await?;
            r.round = round;
            drop(s);
            eprintln!("  {}", run_line(&r));
            report.runs.push(r);
        }
    }
    print_report(&report, rounds);
    if let Some(p) = &o.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)?;
    }
    let failed = checks(&report);
    if !failed.is_empty() {
        return Err(format!("abuse checks failed: {}", failed.join("; ")).into());
    }
    Ok(())
}

/// The release binary with its abuse limits on, except the connection count: the load
/// generator is one address. The publish limit is the server's, raised so that the
/// bench's own 100 events/s publisher is never limited (the flood comes from elsewhere).
fn start_tidings(tidings: &Path, write_timeout: u64) -> io::Result<Server> {
    let (rate, burst, timeout) = (
        PUBLISH_RATE.to_string(),
        PUBLISH_BURST.to_string(),
        write_timeout.to_string(),
    );
    crate::tidings_server(
        Command::new(tidings),
        "abuse",
        &[
            "--max-conns-per-ip",
            "0",
            "--publish-rate",
            &rate,
            "--publish-burst",
            &burst,
            "--write-timeout-secs",
            &timeout,
        ],
    )
}

async fn run_once(
    s: &Server,
    sc: Scenario,
    subscribers: usize,
    events: usize,
    stalled: usize,
    write_timeout: u64,
    smoke: bool,
) -> Result<Run, Box<dyn std::error::Error>> {
    prefill(&s.base, PREFILL_EVENTS).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let opened_at = Instant::now();
    let mut held = Vec::new();
    if let Some(t) = sc.stalled() {
        for _ in 0..stalled {
            match open_stalled(&s.base, t).await {
                Ok(tcp) => held.push(tcp),
                Err(e) => eprintln!("  a stalled {t:?} connection failed: {e}"),
            }
        }
    }
    let flood = (sc == Scenario::Flood).then(|| Flood::start(&s.base));
    let rss = RssSampler::start(s.pid());
    let cpu_before = ProcStat::read(std::process::id());
    let fanout = load::fanout(Fanout {
        base: s.base.clone(),
        transport: Transport::Ws,
        subscribers,
        rate: 100,
        events,
        ramp: 2000,
        interval: Duration::from_secs(1),
        pid: Some(s.pid()),
        quiet: smoke,
        spread: vec![],
    })
    .await;
    let cpu_after = ProcStat::read(std::process::id());
    let peak_rss_kib = rss.stop().await;
    let flood = match flood {
        Some(f) => Some(f.stop().await),
        None => None,
    };

    let stalled = match sc.stalled() {
        None => None,
        Some(_) => {
            // Give the server its write timeout (and a margin) from when they opened: the
            // full run takes longer than that anyway, a smoke run does not.
            let due = opened_at + Duration::from_secs(write_timeout + 3);
            tokio::time::sleep_until(due.into()).await;
            let checked_after_secs = opened_at.elapsed().as_secs_f64();
            let opened = held.len();
            let checks = held
                .into_iter()
                .map(|tcp| tokio::spawn(closed_by_server(tcp)));
            let mut closed = 0;
            for c in checks.collect::<Vec<_>>() {
                closed += usize::from(c.await.unwrap_or(false));
            }
            let metrics = reqwest::get(format!("{}/metrics", s.base))
                .await?
                .text()
                .await?;
            Some(StalledResult {
                wanted: stalled,
                opened,
                closed,
                checked_after_secs,
                metric_ws: metric(&metrics, "tidings_slow_consumer_closes_total", "ws"),
                metric_sse: metric(&metrics, "tidings_slow_consumer_closes_total", "sse"),
            })
        }
    };
    Ok(Run {
        round: 0,
        scenario: sc,
        fanout,
        peak_rss_kib,
        bench_cpu_secs: match (cpu_before, cpu_after) {
            (Some(b), Some(a)) => a.cpu_secs - b.cpu_secs,
            _ => 0.0,
        },
        stalled,
        flood,
    })
}

/// A client whose requests come from `ip` (any 127.x address reaches a loopback server).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(ip))
        .pool_max_idle_per_host(64)
        .build()
        .expect("client")
}

/// Stores `n` chat events of the largest body, from three addresses at once (each sends
/// fewer than its burst, so nothing waits for the rate limit; 429s are retried anyway).
async fn prefill(base: &str, n: usize) -> Result<(), String> {
    let body = format!(
        r#"{{"stream":"chat","data":{{"author":"prefill","body":"pad {}"}}}}"#,
        "x".repeat(app::protocol::MAX_CHAT_BODY_CHARS - 4)
    );
    let (addresses, workers) = ([[127, 0, 0, 3], [127, 0, 0, 4], [127, 0, 0, 5]], 5);
    let per_task = n.div_ceil(addresses.len() * workers);
    let url = format!("{base}/api/publish");
    let mut tasks = Vec::new();
    for ip in addresses {
        let client = client_from(ip);
        for _ in 0..workers {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let mut stored = 0;
                while stored < per_task {
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .map_err(|e| format!("prefill: {e}"))?;
                    match r.status().as_u16() {
                        201 => stored += 1,
                        429 => tokio::time::sleep(Duration::from_millis(100)).await,
                        s => {
                            return Err(format!(
                                "prefill: {s} {}",
                                r.text().await.unwrap_or_default()
                            ))
                        }
                    }
                }
                Ok(())
            }));
        }
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Opens a subscription on `chat` from the start of the window with a small receive
/// buffer, reads the response head and nothing more.
async fn open_stalled(base: &str, t: Transport) -> io::Result<TcpStream> {
    let host = base.trim_start_matches("http://");
    let addr: SocketAddr = host
        .parse()
        .map_err(|e| io::Error::other(format!("{host}: {e}")))?;
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(STALLED_RECV_BUFFER)?;
    let mut tcp = socket.connect(addr).await?;
    let (request, status) = if t == Transport::Ws {
        (
            format!(
                "GET /api/ws?streams=chat&since=0 HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            ),
            "HTTP/1.1 101",
        )
    } else {
        (
            format!(
                "GET /api/sse?streams=chat&since=0 HTTP/1.1\r\nHost: {host}\r\n\
                 Accept: text/event-stream\r\n\r\n"
            ),
            "HTTP/1.1 200",
        )
    };
    tcp.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let read_head = async {
        let mut piece = [0u8; 256];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut piece).await?;
            if n == 0 {
                return Err(io::Error::other("closed before the response head"));
            }
            head.extend_from_slice(&piece[..n]);
        }
        Ok(())
    };
    timeout(Duration::from_secs(10), read_head)
        .await
        .map_err(|_| io::Error::other("no response head within 10 s"))??;
    if !head.starts_with(status.as_bytes()) {
        let line = String::from_utf8_lossy(&head);
        return Err(io::Error::other(format!(
            "refused: {}",
            line.lines().next().unwrap_or_default()
        )));
    }
    Ok(tcp)
}

/// Reads a stalled connection to its end: closed by the server (EOF or reset after what
/// was buffered), or still open (silent for a second once drained).
async fn closed_by_server(mut tcp: TcpStream) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match timeout(Duration::from_secs(1), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
    false
}

/// The sum of a Prometheus counter over the series whose labels mention `label_value`
/// (`name{transport="ws"} 3`).
fn metric(text: &str, name: &str, label_value: &str) -> u64 {
    let quoted = format!("\"{label_value}\"");
    text.lines()
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let labels = series.strip_prefix(name)?;
            (labels.starts_with('{') && labels.contains(&quoted)).then_some(value)
        })
        .filter_map(|v| v.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// One client on another address publishing to `feed` as fast as it can.
struct Flood {
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicU64; 3]>,
    loops: Vec<JoinHandle<()>>,
    started: Instant,
}

impl Flood {
    fn start(base: &str) -> Flood {
        let client = client_from([127, 0, 0, 2]);
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let url = format!("{base}/api/publish");
        let loops = (0..FLOOD_IN_FLIGHT)
            .map(|i| {
                let (client, stop, counts, url) =
                    (client.clone(), stop.clone(), counts.clone(), url.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let body = format!(
                            r#"{{"stream":"feed","data":{{"title":"flood","body":"f{i}-{n}","author":"flood"}}}}"#
                        );
                        let slot = match crate::load::post_publish(&client, &url, body).await {
                            Some(201) => 0,
                            Some(429) => 1,
                            _ => 2,
                        };
                        counts[slot].fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Flood {
            stop,
            counts,
            loops,
            started: Instant::now(),
        }
    }

    async fn stop(self) -> FloodResult {
        self.stop.store(true, Ordering::Relaxed);
        for l in self.loops {
            let _ = l.await;
        }
        let [accepted, refused, other] = [0, 1, 2].map(|i| self.counts[i].load(Ordering::Relaxed));
        FloodResult {
            accepted,
            refused,
            other,
            requests_per_sec: (accepted + refused + other) as f64
                / self.started.elapsed().as_secs_f64(),
        }
    }
}

/// Samples a process's RSS until stopped; returns the largest.
struct RssSampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = ProcStat::read(pid).map_or(peak, |s| s.rss_kib.max(peak));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        });
        RssSampler { stop, task }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(0)
    }
}

fn run_line(r: &Run) -> String {
    let f = &r.fanout;
    let mut line = format!(
        "x{} p50 {:.2} p99 {:.2} max {:.2} ms, lost {}, dup {}, published {} refused {}, peak RSS {:.1} MiB, server CPU {:.2} s, bench CPU {:.2} s",
        f.subscribers, f.p50_ms, f.p99_ms, f.max_ms, f.lost, f.duplicated, f.published, f.refused,
        r.peak_rss_kib as f64 / 1024.0, f.server_cpu_secs, r.bench_cpu_secs
    );
    if let Some(s) = &r.stalled {
        line += &format!(
            "; stalled {}/{} opened, {} closed by the server (read {:.1} s after opening), slow_consumer_closes ws {} sse {}",
            s.opened, s.wanted, s.closed, s.checked_after_secs, s.metric_ws, s.metric_sse
        );
    }
    if let Some(fl) = &r.flood {
        line += &format!(
            "; flood {} accepted (201), {} refused (429), {} other, {:.0} requests/s",
            fl.accepted, fl.refused, fl.other, fl.requests_per_sec
        );
    }
    line
}

/// The median run by p99 (of an even count, the better of the two middle ones).
fn median(mut runs: Vec<&Run>) -> Option<&Run> {
    runs.sort_by(|a, b| a.fanout.p99_ms.total_cmp(&b.fanout.p99_ms));
    runs.get(runs.len().checked_sub(1)? / 2).copied()
}

fn print_report(r: &Report, rounds: usize) {
    println!();
    println!(
        "{}",
        if r.smoke {
            "ABUSE SMOKE RUN (tiny N: checks the tool, not the server)"
        } else {
            "TIDINGS UNDER ABUSE"
        }
    );
    println!(
        "{} WS subscribers on chat, {} events at 100/s; fresh server per run with limits on (--publish-rate {PUBLISH_RATE} --publish-burst {PUBLISH_BURST} --write-timeout-secs {}, --max-conns-per-ip 0); {PREFILL_EVENTS} x 2 KB chat events stored first in every run",
        r.subscribers, r.events, r.write_timeout_secs
    );
    println!(
        "median of {rounds} interleaved round(s) by p99 (scenario order rotated each round); lost/dup summed over all rounds; {} cores shared by server, load generator and whatever else runs (load average at start: {})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        r.load_average
    );
    println!(
        "{:<26} {:>9} {:>9} {:>9} {:>6} {:>5} {:>8} {:>13}",
        "scenario", "p50 ms", "p99 ms", "max ms", "lost", "dup", "RSS MiB", "p99/baseline"
    );
    let of = |sc: Scenario| r.runs.iter().filter(move |x| x.scenario == sc);
    let baseline = median(of(Scenario::Baseline).collect()).map(|b| b.fanout.p99_ms);
    for sc in Scenario::ALL {
        let Some(m) = median(of(sc).collect()) else {
            continue;
        };
        let (lost, dup) = of(sc).fold((0, 0), |(l, d), x| {
            (l + x.fanout.lost, d + x.fanout.duplicated)
        });
        let f = &m.fanout;
        println!(
            "{:<26} {:>9.2} {:>9.2} {:>9.2} {:>6} {:>5} {:>8.1} {:>13}",
            sc.label(r.stalled),
            f.p50_ms,
            f.p99_ms,
            f.max_ms,
            lost,
            dup,
            m.peak_rss_kib as f64 / 1024.0,
            baseline.map_or("-".into(), |b| crate::ratio(f.p99_ms, b)),
        );
    }
    println!("(RSS: the server's peak during the run, sampled every 50 ms; goal for the abuse rows: p99 at most 1.10x the baseline, 0 lost)");
    for sc in Scenario::ALL {
        let runs: Vec<&Run> = of(sc).collect();
        if runs.is_empty() {
            continue;
        }
        let join =
            |f: &dyn Fn(&Run) -> String| runs.iter().map(|x| f(x)).collect::<Vec<_>>().join(", ");
        let refused: u64 = runs.iter().map(|x| x.fanout.refused).sum();
        // Each run against the baseline of its own round: a slow minute of this shared
        // machine falls on both.
        let by_round = join(&|x| {
            of(Scenario::Baseline)
                .find(|b| b.round == x.round)
                .map_or("-".into(), |b| {
                    crate::ratio(x.fanout.p99_ms, b.fanout.p99_ms)
                })
        });
        let mut line = format!(
            "{}: p99 ms by round {} (/ that round's baseline {by_round}); bench publisher refused {refused} of {} publishes; server CPU s per run {}; bench CPU s {}",
            sc.label(r.stalled),
            join(&|x| format!("{:.1}", x.fanout.p99_ms)),
            runs.iter().map(|x| x.fanout.published + x.fanout.refused).sum::<u64>(),
            join(&|x| format!("{:.2}", x.fanout.server_cpu_secs)),
            join(&|x| format!("{:.2}", x.bench_cpu_secs)),
        );
        if runs[0].stalled.is_some() {
            let s = |x: &Run| x.stalled.clone().unwrap_or_default();
            line += &format!(
                "; stalled connections opened {}; closed by the server by the end {} (read {} s after opening); tidings_slow_consumer_closes_total ws {} sse {}",
                join(&|x| format!("{}/{}", s(x).opened, s(x).wanted)),
                join(&|x| format!("{}/{}", s(x).closed, s(x).opened)),
                join(&|x| format!("{:.0}", s(x).checked_after_secs)),
                join(&|x| s(x).metric_ws.to_string()),
                join(&|x| s(x).metric_sse.to_string()),
            );
        }
        if runs[0].flood.is_some() {
            let f = |x: &Run| x.flood.clone().unwrap_or_default();
            line += &format!(
                "; flood publishes accepted (201) {}, refused (429) {}, other {}; requests/s {}",
                join(&|x| f(x).accepted.to_string()),
                join(&|x| f(x).refused.to_string()),
                join(&|x| f(x).other.to_string()),
                join(&|x| format!("{:.0}", f(x).requests_per_sec)),
            );
        }
        println!("{line}");
    }
}

/// What must hold for the figures to mean anything (and what the issue asks of the server):
/// everyone connected, nothing lost, the stalled connections really stalled and were
/// dropped, the flood really limited, the bench publisher never limited.
fn checks(r: &Report) -> Vec<String> {
    let mut failed = Vec::new();
    for x in &r.runs {
        let f = &x.fanout;
        let name = x.scenario.label(r.stalled);
        if f.subscribers < r.subscribers {
            failed.push(format!(
                "{name}: {} of {} subscribers connected",
                f.subscribers, r.subscribers
            ));
        }
        if f.lost + f.duplicated > 0 {
            failed.push(format!(
                "{name}: lost {} duplicated {}",
                f.lost, f.duplicated
            ));
        }
        if f.refused > 0 {
            failed.push(format!(
                "{name}: the bench publisher was refused {} times",
                f.refused
            ));
        }
        if let Some(s) = &x.stalled {
            if s.opened < s.wanted {
                failed.push(format!(
                    "{name}: only {} of {} stalled connections opened",
                    s.opened, s.wanted
                ));
            }
            if s.closed < s.opened {
                failed.push(format!(
                    "{name}: the server closed {} of {} stalled connections",
                    s.closed, s.opened
                ));
            }
            if s.metric_ws + s.metric_sse < s.closed as u64 {
                failed.push(format!(
                    "{name}: {} closed but tidings_slow_consumer_closes_total says {}",
                    s.closed,
                    s.metric_ws + s.metric_sse
                ));
            }
        }
        if let Some(fl) = &x.flood {
            if fl.refused == 0 || fl.accepted == 0 {
                failed.push(format!(
                    "{name}: the flood was not limited ({} accepted, {} refused)",
                    fl.accepted, fl.refused
                ));
            }
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_counter_by_label() {
        let text = "# TYPE tidings_slow_consumer_closes_total counter\n\
                    tidings_slow_consumer_closes_total{transport=\"ws\"} 7\n\
                    tidings_slow_consumer_closes_total{transport=\"sse\"} 2\n\
                    tidings_slow_consumer_closes_total_other{transport=\"ws\"} 100\n";
        assert_eq!(metric(text, "tidings_slow_consumer_closes_total", "ws"), 7);
        assert_eq!(metric(text, "tidings_slow_consumer_closes_total", "sse"), 2);
        assert_eq!(metric("", "tidings_slow_consumer_closes_total", "ws"), 0);
    }
}
