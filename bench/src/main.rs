//! `tidings-bench`: a load generator for any Tidings deployment, and the side-by-side
//! comparison with the Node.js `ws` / SSE peer and the raw-socket ceiling.
//!
//! ```sh
//! tidings-bench fanout --url http://127.0.0.1:3000 --transport ws --subscribers 1000 --events 1000
//! tidings-bench compare            # starts every server itself; see docs/performance.md
//! tidings-bench compare --smoke    # seconds, tiny N (run by scripts/test.sh)
//! tidings-bench abuse              # stalled readers and a publish flood vs a baseline
//! ```
//!
//! - `load`: subscribers on each transport, the publisher, latency/loss accounting.
//! - `ceiling`: the raw tokio ceiling and the bare axum poll handler.
//! - `procstat`: CPU seconds and RSS of a local server process.
//! - `parse`: our WebSocket frame reader against tungstenite and fastwebsockets.
//! - `abuse`: what stalled readers and a publish flood cost the other subscribers.

mod abuse;
mod capacity;
mod ceiling;
mod cluster;
mod lean;
mod load;
mod notify;
mod parse;
mod procstat;

use clap::{Parser, Subcommand};
use load::{Fanout, FanoutResult, IdleResult, PollRateResult, Transport};
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "tidings-bench",
    about = "Load generator and benchmarks for Tidings"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// N subscribers on one transport; publish E events at rate R; report deliveries/s,
    /// latency percentiles, loss, duplicates, requests and bytes per event.
    Fanout {
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        url: String,
        #[arg(long, value_enum, default_value = "ws")]
        transport: Transport,
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        /// Events per second (0: as fast as the server accepts).
        #[arg(long, default_value_t = 100)]
        rate: u32,
        #[arg(long, default_value_t = 1000)]
        events: usize,
        /// New connections per second while ramping up.
        #[arg(long, default_value_t = 1000)]
        ramp: u32,
        /// Poll interval (ms) for `--transport poll`.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// A local server's pid, for its CPU seconds and RSS.
        #[arg(long)]
        pid: Option<u32>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// N idle connections (half WebSocket, half SSE): server memory per connection.
    Idle {
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        url: String,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long)]
        pid: u32,
        /// Only this transport (ws or sse); default half and half.
        #[arg(long, value_enum)]
        only: Option<Transport>,
    },
    /// The highest empty-poll rate (requests/s) from C concurrent pollers.
    Poll {
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        url: String,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Add subscribers in steps until p99 exceeds a bound (websocket-shootout style).
    Ramp {
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        url: String,
        #[arg(long, value_enum, default_value = "ws")]
        transport: Transport,
        #[arg(long, default_value_t = 500)]
        step: usize,
        #[arg(long, default_value_t = 10_000)]
        max: usize,
        #[arg(long, default_value_t = 100)]
        rate: u32,
        #[arg(long, default_value_t = 10.0)]
        bound_ms: f64,
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Run the raw-socket ceiling server.
    Ceiling {
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: String,
    },
    /// Run the bare axum empty-poll server.
    BarePoll {
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: String,
    },
    /// Start Tidings, the Node peer and the ceilings one after another, run every scenario
    /// against each, print the table with ratios.
    Compare {
        /// Seconds and tiny N: checks the tool works, measures nothing meaningful.
        #[arg(long)]
        smoke: bool,
        #[arg(long, default_value = "target/release/tidings")]
        tidings: PathBuf,
        #[arg(long, default_value = "bench/peers/node-peer.js")]
        node_peer: PathBuf,
        #[arg(long)]
        json: Option<PathBuf>,
        /// Pin each server to CPU 0 and this load generator to CPU 1 (taskset), so the
        /// server under test has one core of its own instead of sharing both.
        #[arg(long)]
        pin: bool,
        /// Runs of each fan-out and latency scenario per server, interleaved; the median
        /// run is reported (this machine's noise is about +-15 % run to run). 1 for --smoke.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Start Tidings with its abuse limits on and measure the fan-out latency of normal
    /// subscribers alone, beside connections that never read (WS, then SSE), and beside a
    /// client flooding publishes from another address; rounds interleaved, medians reported.
    Abuse {
        #[arg(long, default_value = "target/release/tidings")]
        tidings: PathBuf,
        /// Seconds and tiny N: checks the tool works, measures nothing meaningful.
        #[arg(long)]
        smoke: bool,
        /// Runs of each scenario, interleaved; the median by p99 is reported. 1 for --smoke.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// As many connections as this box allows (half WS, half SSE) on one server, a broadcast
    /// to all: p50/p99/max, lost, server memory per connection.
    Capacity {
        #[arg(long, default_value = "target/release/tidings")]
        tidings: PathBuf,
        #[arg(long, default_value_t = 19_000)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        rate: u32,
        #[arg(long, default_value_t = 300)]
        events: usize,
        /// Seconds and tiny N: checks the tool works, measures nothing meaningful.
        #[arg(long)]
        smoke: bool,
    },
    /// Cluster mode (Redis and N servers, all started here) against embedded mode: publish
    /// throughput, per-server fan-out, latency with subscribers spread over the servers.
    Cluster {
        #[arg(long, default_value = "target/release/tidings")]
        tidings: PathBuf,
        /// Seconds and tiny N: checks the tool works, measures nothing meaningful.
        #[arg(long)]
        smoke: bool,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Cluster-mode servers.
        #[arg(long, default_value_t = 3)]
        servers: usize,
        /// WebSocket subscribers in the fan-out and latency runs.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Only the fan-out and latency runs (no publish throughput).
        #[arg(long)]
        no_publish: bool,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The notification service under load: A signed-in accounts among N connections, chat
    /// at R messages/s to all, every k-th mentioning an account; mention-to-notification
    /// delay p50/p99/max, lost and misdelivered notifications.
    Notify {
        #[arg(long, default_value = "target/release/tidings")]
        tidings: PathBuf,
        /// Seconds and tiny N: checks the tool works, measures nothing meaningful.
        #[arg(long)]
        smoke: bool,
        #[arg(long, default_value_t = 200)]
        accounts: usize,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        rate: u32,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Every k-th chat message mentions a random account.
        #[arg(long, default_value_t = 5)]
        mention_every: usize,
    },
    /// Parse the same client frames with our reader (`wire::ws::FrameReader`), tungstenite
    /// and fastwebsockets: ns/message, MB/s and idle memory per connection, with ratios.
    Parse {
        /// Messages per run (16 KiB messages: N/16).
        #[arg(long, default_value_t = 1_000_000)]
        n: usize,
        /// N = 10,000: checks the tool, measures little.
        #[arg(long)]
        smoke: bool,
        /// Interleaved rounds; the median is reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Readers held for the idle-memory figure.
        #[arg(long, default_value_t = 1000)]
        conns: usize,
    },
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().cmd {
        Cmd::Fanout {
            url,
            transport,
            subscribers,
            rate,
            events,
            ramp,
            interval_ms,
            pid,
            json,
        } => {
            let r = load::fanout(Fanout {
                base: url,
                transport,
                subscribers,
                rate,
                events,
                ramp,
                interval: Duration::from_millis(interval_ms),
                pid,
                quiet: false,
                spread: vec![],
            })
            .await;
            print_fanout(&r);
            write_json(json, &r)?;
        }
        Cmd::Idle {
            url,
            connections,
            pid,
            only,
        } => {
            let r = load::idle(&url, connections, 2000, pid, false, only).await;
            println!(
                "{} idle connections: RSS {} -> {} KiB, {:.0} B per connection",
                r.connections, r.rss_before_kib, r.rss_after_kib, r.bytes_per_connection
            );
        }
        Cmd::Poll {
            url,
            concurrency,
            seconds,
        } => {
            let r = load::empty_poll_rate(&url, concurrency, Duration::from_secs(seconds)).await;
            println!(
                "empty polls: {:.0} requests/s ({} requests, {} errors)",
                r.requests_per_sec, r.requests, r.errors
            );
        }
        Cmd::Ramp {
            url,
            transport,
            step,
            max,
            rate,
            bound_ms,
            pid,
        } => {
            let steps = load::ramp(&url, transport, step, max, rate, bound_ms, pid).await;
            let ok = steps
                .iter()
                .filter(|r| r.p99_ms <= bound_ms && r.lost == 0)
                .map(|r| r.subscribers)
                .max();
            println!(
                "largest N with p99 <= {bound_ms} ms at {rate} events/s: {}",
                ok.map_or("none".into(), |n| n.to_string())
            );
        }
        Cmd::Ceiling { bind } => {
            let l = tokio::net::TcpListener::bind(&bind).await?;
            println!("listening on http://{}", l.local_addr()?);
            ceiling::raw(l).await?;
        }
        Cmd::BarePoll { bind } => {
            let l = tokio::net::TcpListener::bind(&bind).await?;
            println!("listening on http://{}", l.local_addr()?);
            ceiling::bare_poll(l).await?;
        }
        Cmd::Compare {
            smoke,
            tidings,
            node_peer,
            json,
            pin,
            rounds,
        } => compare(smoke, tidings, node_peer, json, pin, rounds).await?,
        Cmd::Capacity {
            tidings,
            connections,
            rate,
            events,
            smoke,
        } => {
            capacity::run(capacity::Options {
                tidings,
                connections,
                rate,
                events,
                smoke,
            })
            .await?
        }
        Cmd::Cluster {
            tidings,
            smoke,
            rounds,
            servers,
            subscribers,
            no_publish,
            json,
        } => {
            cluster::run(cluster::Options {
                tidings,
                smoke,
                rounds,
                servers,
                subscribers,
                no_publish,
                json,
            })
            .await?
        }
        Cmd::Notify {
            tidings,
            smoke,
            accounts,
            connections,
            rate,
            seconds,
            mention_every,
        } => {
            notify::run(notify::Options {
                tidings,
                smoke,
                accounts,
                connections,
                rate,
                seconds,
                mention_every,
            })
            .await?
        }
        Cmd::Abuse {
            tidings,
            smoke,
            rounds,
            json,
        } => {
            abuse::run(abuse::Options {
                tidings,
                smoke,
                rounds,
                json,
            })
            .await?
        }
        Cmd::Parse {
            n,
            smoke,
            rounds,
            conns,
        } => parse::run(if smoke { 10_000 } else { n }, rounds, conns)?,
    }
    Ok(())
}

fn print_fanout(r: &FanoutResult) {
    println!(
        "{:?} x{}: {} published, {} deliveries, {:.0}/s; latency p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} ms; lost {}, duplicated {}; {:.3} requests and {:.0} bytes per event; server {:.2} CPU s, {} KiB RSS",
        r.transport.unwrap_or(Transport::Ws), r.subscribers, r.published, r.deliveries, r.deliveries_per_sec, r.p50_ms, r.p90_ms,
        r.p99_ms, r.max_ms, r.lost, r.duplicated, r.requests_per_event, r.bytes_per_event, r.server_cpu_secs, r.server_rss_kib
    );
}

fn write_json<T: Serialize>(path: Option<PathBuf>, v: &T) -> std::io::Result<()> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_string_pretty(v).expect("serialisable"))?;
    }
    Ok(())
}

/// A server under test, as a child process on a free port.
struct Server {
    child: Child,
    base: String,
    _tmp: Option<PathBuf>,
}

impl Server {
    fn start(mut cmd: Command, tmp: Option<PathBuf>) -> std::io::Result<Server> {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .map(str::to_string)
            .ok_or_else(|| {
                std::io::Error::other(format!("{cmd:?} did not print its address: {line:?}"))
            })?;
        Ok(Server {
            child,
            base,
            _tmp: tmp,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = &self._tmp {
            let _ = std::fs::remove_dir_all(t);
        }
    }
}

/// A Tidings server for a benchmark run: a free port, no demo, no static files, data in a
/// fresh temporary directory (`tag` names it), RUST_LOG=error, plus `flags`.
fn tidings_server(mut c: Command, tag: &str, flags: &[&str]) -> std::io::Result<Server> {
    let dir = std::env::temp_dir().join(format!("tidings-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    c.args([
        "--bind",
        "127.0.0.1:0",
        "--no-demo",
        "--static-dir",
        "/nonexistent",
    ])
    .args(flags)
    .arg("--data-dir")
    .arg(&dir)
    .env("RUST_LOG", "error");
    Server::start(c, Some(dir))
}

#[derive(Serialize, Default)]
struct Report {
    smoke: bool,
    pinned: bool,
    subscribers: usize,
    events: usize,
    ws_fanout: Vec<(String, FanoutResult)>,
    sse_fanout: Vec<(String, FanoutResult)>,
    latency: Vec<(String, FanoutResult)>,
    latency_large: Vec<(String, FanoutResult)>,
    idle: Vec<(String, IdleResult)>,
    empty_poll: Vec<(String, PollRateResult)>,
}

async fn compare(
    smoke: bool,
    tidings: PathBuf,
    node_peer: PathBuf,
    json: Option<PathBuf>,
    pin: bool,
    rounds: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let rounds = if smoke { 1 } else { rounds.max(1) };
    let me = std::env::current_exe()?;
    // A server command, on CPU 0 when pinning (taskset execs, so the pid is the server's).
    let command = |program: &std::ffi::OsStr| {
        if pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    };
    if pin {
        // Every thread of this process (the runtime's workers exist already) to CPU 1.
        Command::new("taskset")
            .args(["-a", "-p", "-c", "1"])
            .arg(std::process::id().to_string())
            .stdout(Stdio::null())
            .status()?;
    }
    let (subs, events, lat_n, lat_events, large_n, idle_n, poll_secs) = if smoke {
        (20, 50, 20, 50, 50, 100, 1)
    } else {
        (1000, 1000, 1000, 1000, 10_000, 10_000, 5)
    };
    let mut report = Report {
        pinned: pin,
        smoke,
        subscribers: subs,
        events,
        ..Default::default()
    };

    let start_tidings = || {
        // The load generator is one address opening thousands of connections and
        // publishing as fast as it can: the abuse limits would measure themselves
        // (`tidings-bench abuse` measures them).
        tidings_server(
            command(tidings.as_os_str()),
            "compare",
            &["--max-conns-per-ip", "0", "--publish-rate", "0"],
        )
    };
    let start_node = || {
        let mut c = command("node".as_ref());
        c.arg(&node_peer).arg("0");
        Server::start(c, None)
    };
    // Beside node-peer.js: the Socket.IO 4.8 peer (WebSocket fan-out and latency only: it
    // has no SSE, and Engine.IO's own framing is what its users get).
    let socketio_peer = node_peer.with_file_name("socketio-peer.js");
    let start_socketio = || {
        let mut c = command("node".as_ref());
        c.arg(&socketio_peer).arg("0");
        Server::start(c, None)
    };
    let start_raw = || {
        let mut c = command(me.as_os_str());
        c.args(["ceiling", "--bind", "127.0.0.1:0"]);
        Server::start(c, None)
    };
    let fan = |base: &str, t: Transport, n: usize, rate: u32, ev: usize, pid: u32| Fanout {
        base: base.to_string(),
        transport: t,
        subscribers: n,
        rate,
        events: ev,
        ramp: 2000,
        interval: Duration::from_secs(1),
        pid: Some(pid),
        quiet: smoke,
        spread: vec![],
    };

    let servers: [(&str, &dyn Fn() -> std::io::Result<Server>); 4] = [
        ("tidings", &start_tidings),
        ("node", &start_node),
        ("raw", &start_raw),
        ("socket.io", &start_socketio),
    ];
    // What each server is measured on: its WebSocket (Socket.IO's own protocol over it for
    // the Socket.IO peer), and SSE where it has it.
    let transports = |name: &str| -> &'static [Transport] {
        if name == "socket.io" {
            &[Transport::Socketio]
        } else {
            &[Transport::Ws, Transport::Sse]
        }
    };
    let websocket = |name: &str| transports(name)[0];
    // Every run of every server, rounds interleaved so that a slow minute of this shared
    // machine falls on all servers alike; the median run of each is reported.
    let (mut ws_runs, mut sse_runs, mut latency_runs) =
        (vec![vec![]; 4], vec![vec![]; 4], vec![vec![]; 4]);
    for round in 1..=rounds {
        for (i, (name, start)) in servers.iter().enumerate() {
            for &t in transports(name) {
                let s = start()?;
                eprintln!(
                    "[{round}/{rounds}] {name} {t:?} fan-out: {subs} subscribers, {events} events as fast as accepted"
                );
                let r = load::fanout(fan(&s.base, t, subs, 0, events, s.pid())).await;
                print_fanout(&r);
                let runs = if t != Transport::Sse {
                    &mut ws_runs
                } else {
                    &mut sse_runs
                };
                runs[i].push(r);
            }
        }
        for (i, (name, start)) in servers.iter().enumerate() {
            let s = start()?;
            eprintln!("[{round}/{rounds}] {name} latency: {lat_n} WS subscribers x 100 events/s");
            let r = load::fanout(fan(
                &s.base,
                websocket(name),
                lat_n,
                100,
                lat_events,
                s.pid(),
            ))
            .await;
            print_fanout(&r);
            latency_runs[i].push(r);
        }
    }
    for (i, (name, _)) in servers.iter().enumerate() {
        let name = name.to_string();
        let by_rate = |r: &FanoutResult| -r.deliveries_per_sec;
        report.ws_fanout.push((
            name.clone(),
            median(std::mem::take(&mut ws_runs[i]), by_rate),
        ));
        if !sse_runs[i].is_empty() {
            report.sse_fanout.push((
                name.clone(),
                median(std::mem::take(&mut sse_runs[i]), by_rate),
            ));
        }
        report.latency.push((
            name,
            median(std::mem::take(&mut latency_runs[i]), |r| r.p99_ms),
        ));
    }
    // Tidings and the ceiling at 10,000: 1M deliveries/s, near what this box does at all
    // with the load generator on the same cores; the ceiling says how much of the tail is
    // the box's.
    for (name, start) in [
        ("tidings", &start_tidings as &dyn Fn() -> _),
        ("ceiling", &start_raw),
    ] {
        let s = start()?;
        eprintln!("{name} latency: {large_n} WS subscribers x 100 events/s");
        let r = load::fanout(fan(
            &s.base,
            Transport::Ws,
            large_n,
            100,
            lat_events / 2,
            s.pid(),
        ))
        .await;
        print_fanout(&r);
        report.latency_large.push((name.into(), r));
    }
    // Tidings and Node: the ceiling holds no per-connection state worth comparing.
    for &(name, start) in &servers[..2] {
        let s = start()?;
        eprintln!("{name} idle: {idle_n} connections");
        let r = load::idle(&s.base, idle_n, 2000, s.pid(), smoke, None).await;
        report.idle.push((name.into(), r));
    }
    let start_bare = || {
        let mut c = command(me.as_os_str());
        c.args(["bare-poll", "--bind", "127.0.0.1:0"]);
        Server::start(c, None)
    };
    for (name, start) in [
        (
            "tidings",
            &start_tidings as &dyn Fn() -> std::io::Result<Server>,
        ),
        ("bare-axum", &start_bare),
    ] {
        let s = start()?;
        eprintln!("{name} empty polls for {poll_secs} s");
        let r = load::empty_poll_rate(&s.base, 32, Duration::from_secs(poll_secs)).await;
        report.empty_poll.push((name.into(), r));
    }

    print_table(&report);
    write_json(json, &report)?;
    let lost: u64 = report
        .ws_fanout
        .iter()
        .chain(&report.sse_fanout)
        .chain(&report.latency)
        .filter(|(n, _)| n == "tidings")
        .map(|(_, r)| r.lost + r.duplicated)
        .sum();
    if lost > 0 {
        return Err(format!("Tidings lost or duplicated {lost} deliveries").into());
    }
    Ok(())
}

/// The middle run by `key` (of an even count, the better of the two middle ones). All runs
/// count for losses: the loss figures are summed over every run.
fn median(mut runs: Vec<FanoutResult>, key: impl Fn(&FanoutResult) -> f64) -> FanoutResult {
    let (lost, duplicated) = runs
        .iter()
        .fold((0, 0), |(l, d), r| (l + r.lost, d + r.duplicated));
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let mut m = runs.swap_remove((runs.len() - 1) / 2);
    (m.lost, m.duplicated) = (lost, duplicated);
    m
}

fn get<'a, T>(v: &'a [(String, T)], name: &str) -> Option<&'a T> {
    v.iter().find(|(n, _)| n == name).map(|(_, r)| r)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

fn print_table(r: &Report) {
    let d = |v: &[(String, FanoutResult)], n: &str| get(v, n).map_or(0.0, |x| x.deliveries_per_sec);
    println!();
    println!(
        "{}",
        if r.smoke {
            "SMOKE RUN (tiny N: checks the tool, not the server)"
        } else {
            "TIDINGS BENCHMARK"
        }
    );
    if r.pinned {
        println!("(servers pinned to CPU 0, load generator to CPU 1)");
    }
    println!(
        "{:<44} {:>14} {:>14} {:>14} {:>10} {:>10}",
        "scenario", "tidings", "node", "ceiling", "vs node", "vs ceiling"
    );
    let row = |label: &str, t: f64, n: f64, c: f64| {
        println!(
            "{label:<44} {t:>14.0} {n:>14.0} {c:>14.0} {:>10} {:>10}",
            ratio(t, n),
            ratio(t, c)
        );
    };
    row(
        &format!("WS fan-out x{} (deliveries/s)", r.subscribers),
        d(&r.ws_fanout, "tidings"),
        d(&r.ws_fanout, "node"),
        d(&r.ws_fanout, "raw"),
    );
    row(
        &format!("SSE fan-out x{} (deliveries/s)", r.subscribers),
        d(&r.sse_fanout, "tidings"),
        d(&r.sse_fanout, "node"),
        d(&r.sse_fanout, "raw"),
    );
    println!(
        "{:<44} {:>14}",
        "SSE / WS fan-out (tidings)",
        ratio(d(&r.sse_fanout, "tidings"), d(&r.ws_fanout, "tidings"))
    );
    if let (Some(t), Some(n), Some(c)) = (
        get(&r.latency, "tidings"),
        get(&r.latency, "node"),
        get(&r.latency, "raw"),
    ) {
        println!(
            "{:<44} {:>14.2} {:>14.2} {:>14.2} {:>10} {:>10}",
            format!("p99 latency ms, x{} at 100 ev/s", t.subscribers),
            t.p99_ms,
            n.p99_ms,
            c.p99_ms,
            ratio(n.p99_ms, t.p99_ms),
            ratio(c.p99_ms, t.p99_ms)
        );
        println!(
            "{:<44} {:>14.2} {:>14.2} {:>14.2}",
            "p50 latency ms", t.p50_ms, n.p50_ms, c.p50_ms
        );
    }
    // Socket.IO: one more peer, its WebSocket fan-out and latency against Tidings'.
    if let (Some(t), Some(sio)) = (get(&r.ws_fanout, "tidings"), get(&r.ws_fanout, "socket.io")) {
        println!(
            "{:<44} {:>14.0} {:>14.0} {:>14} {:>10}",
            format!("WS fan-out x{}: tidings, socket.io", r.subscribers),
            t.deliveries_per_sec,
            sio.deliveries_per_sec,
            "",
            ratio(t.deliveries_per_sec, sio.deliveries_per_sec)
        );
    }
    if let (Some(t), Some(sio)) = (get(&r.latency, "tidings"), get(&r.latency, "socket.io")) {
        println!(
            "{:<44} {:>14.2} {:>14.2} {:>14} {:>10}",
            "p99 latency ms: tidings, socket.io",
            t.p99_ms,
            sio.p99_ms,
            "",
            ratio(sio.p99_ms, t.p99_ms)
        );
    }
    if let Some(t) = get(&r.latency_large, "tidings") {
        println!(
            "{:<44} {:>14.2}   (p50 {:.2}, lost {})",
            format!("p99 latency ms, x{} at 100 ev/s", t.subscribers),
            t.p99_ms,
            t.p50_ms,
            t.lost
        );
        if let Some(c) = get(&r.latency_large, "ceiling") {
            println!(
                "{:<44} {:>14.2}   (p50 {:.2}, lost {}; tidings / ceiling {})",
                "  same, the ceiling",
                c.p99_ms,
                c.p50_ms,
                c.lost,
                ratio(t.p99_ms, c.p99_ms)
            );
        }
    }
    if let (Some(t), Some(n)) = (get(&r.idle, "tidings"), get(&r.idle, "node")) {
        println!(
            "{:<44} {:>14.0} {:>14.0} {:>14} {:>10}",
            format!("idle RSS bytes/connection (x{})", t.connections),
            t.bytes_per_connection,
            n.bytes_per_connection,
            "",
            ratio(n.bytes_per_connection, t.bytes_per_connection)
        );
    }
    if let (Some(t), Some(b)) = (
        get(&r.empty_poll, "tidings"),
        get(&r.empty_poll, "bare-axum"),
    ) {
        println!(
            "{:<44} {:>14.0} {:>14} {:>14.0} {:>10} {:>10}",
            "empty polls/s (ceiling: bare axum)",
            t.requests_per_sec,
            "",
            b.requests_per_sec,
            "",
            ratio(t.requests_per_sec, b.requests_per_sec)
        );
    }
    let lost: Vec<String> = r
        .ws_fanout
        .iter()
        .chain(&r.sse_fanout)
        .chain(&r.latency)
        .chain(&r.latency_large)
        .map(|(n, x)| {
            format!(
                "{n} {:?}: lost {} dup {}",
                x.transport.unwrap_or(Transport::Ws),
                x.lost,
                x.duplicated
            )
        })
        .collect();
    println!("losses: {}", lost.join("; "));
    println!("(vs node and vs ceiling: ratio of Tidings to the peer; for latency and memory, peer / Tidings, so > 1 means Tidings is better)");
}
