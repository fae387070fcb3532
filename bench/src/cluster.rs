//! `tidings-bench cluster`: cluster mode against embedded mode on the same box (issue #11).
//!
//! A redis-server started here (unix socket, AOF with `appendfsync always`: the setting the
//! README recommends, under which an acknowledged publish survives a Redis crash), and
//! release `tidings` servers in cluster mode on it, beside one in embedded mode. Rounds
//! interleaved, medians reported:
//! - publish throughput: publishes/s accepted from 32 concurrent publishers, embedded, one
//!   cluster server, and N cluster servers with the publishers spread over them; then one
//!   cluster server on a Redis with a replica, without and with `--redis-wait-replicas 1`
//!   (the cost of an ack that survives a failover), and through three sentinels
//!   (Sentinel mode's default: `WAIT 1`, and the sentinels asked before each batch's ack);
//!   those three over TCP;
//! - per-server fan-out: 1,000 WebSocket subscribers on one server, events as fast as
//!   accepted, embedded against one cluster server (the cluster path's own cost);
//! - latency: 1,000 WebSocket subscribers x 100 events/s, embedded against N cluster servers
//!   with the subscribers spread over them (publish on the first, receive on any).
//!
//! Everything shares two cores: N servers and Redis compete with the load generator, so
//! the N-server rows say what the cluster costs here, not what N machines would give.

use crate::load::{self, Fanout, FanoutResult, Transport};
use crate::Server;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Options {
    pub tidings: PathBuf,
    pub smoke: bool,
    pub rounds: usize,
    pub servers: usize,
    pub subscribers: usize,
    pub no_publish: bool,
    pub json: Option<PathBuf>,
}

#[derive(Serialize, Default)]
struct Report {
    smoke: bool,
    servers: usize,
    /// Accepted publishes/s: embedded, one cluster server, N cluster servers.
    publish: Vec<(String, f64)>,
    fanout: Vec<(String, FanoutResult)>,
    latency: Vec<(String, FanoutResult)>,
}

/// A redis-server of our own on a unix socket in `dir` (and, with a replica, on a TCP port
/// for it: replication runs over TCP only).
struct Redis {
    child: Child,
    replica: Option<Child>,
    /// Sentinels monitoring it (as service `bench`), and their ports.
    sentinels: Vec<(Child, u16)>,
    /// Its TCP port (0: unix socket only).
    port: u16,
    dir: PathBuf,
}

/// Starts a redis-server with AOF (fsync always) in `dir` with `args` added.
fn redis_server(dir: &Path, args: &[&str]) -> std::io::Result<Child> {
    std::fs::create_dir_all(dir)?;
    Command::new("redis-server")
        .arg("--dir")
        .arg(dir)
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .args(["--repl-diskless-sync-delay", "0"])
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| {
            std::io::Error::other(format!("redis-server: {e} (apt-get install redis-server)"))
        })
}

fn redis_cli(socket_or_port: &[&str], args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(socket_or_port)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Redis {
    fn start(with_replica: bool) -> std::io::Result<Redis> {
        let dir = std::env::temp_dir().join(format!("tidings-bench-redis-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let port = if with_replica {
            std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port()
        } else {
            0
        };
        let port_arg = port.to_string();
        let socket = dir.join("r.sock").display().to_string();
        let child = redis_server(
            &dir,
            &[
                "--port",
                &port_arg,
                "--bind",
                "127.0.0.1",
                "--unixsocket",
                &socket,
                "--unixsocketperm",
                "700",
            ],
        )?;
        let mut r = Redis {
            child,
            replica: None,
            sentinels: Vec::new(),
            port,
            dir,
        };
        let socket = r.socket().display().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis_cli(&["-s", &socket], &["PING"]).starts_with("PONG") {
            if Instant::now() > deadline {
                return Err(std::io::Error::other("redis-server did not start"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if with_replica {
            // A socket of its own: Redis refuses to start listening nowhere.
            let own = r.dir.join("replica.sock").display().to_string();
            r.replica = Some(redis_server(
                &r.dir.join("replica"),
                &[
                    "--port",
                    "0",
                    "--unixsocket",
                    &own,
                    "--replicaof",
                    "127.0.0.1",
                    &port_arg,
                ],
            )?);
            while !redis_cli(&["-s", &socket], &["INFO", "replication"]).contains("state=online") {
                if Instant::now() > deadline {
                    return Err(std::io::Error::other("the Redis replica did not sync"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(r)
    }

    /// Adds three sentinels (quorum 2) watching it, and waits until each knows it.
    fn watch(&mut self) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        for i in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let dir = self.dir.join(format!("sentinel{i}"));
            std::fs::create_dir_all(&dir)?;
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nsentinel monitor bench 127.0.0.1 {} 2\n",
                    self.port
                ),
            )?;
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .spawn()?;
            self.sentinels.push((child, port));
            let port = port.to_string();
            while !redis_cli(&["-p", &port], &["SENTINEL", "MASTER", "bench"]).contains("master") {
                if Instant::now() > deadline {
                    return Err(std::io::Error::other("a sentinel did not start"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("r.sock")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let sentinels = self.sentinels.iter_mut().map(|(c, _)| c);
        for c in std::iter::once(&mut self.child)
            .chain(&mut self.replica)
            .chain(sentinels)
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The flags of every server here: the load generator is one address with thousands of
/// connections and a publisher as fast as it can (the abuse limits would measure
/// themselves), and cluster mode needs one session secret for all.
const FLAGS: [&str; 6] = [
    "--max-conns-per-ip",
    "0",
    "--publish-rate",
    "0",
    "--secret",
    "tidings-bench-cluster-secret-0123456789abcdef",
];

fn embedded(tidings: &Path) -> std::io::Result<Server> {
    crate::tidings_server(Command::new(tidings), "embedded", &FLAGS)
}

/// Redis and `n` cluster-mode servers on it.
fn cluster(tidings: &Path, n: usize) -> std::io::Result<(Redis, Vec<Server>)> {
    cluster_with(tidings, n, Replica::None)
}

#[derive(Clone, Copy, PartialEq)]
enum Replica {
    None,
    /// A replica, and the servers acknowledge without waiting for it.
    NoWait,
    /// A replica, and `--redis-wait-replicas 1`.
    Wait,
    /// A replica and three sentinels; the servers find the primary through them
    /// (`--redis-sentinel`: `WAIT 1`, then the sentinels asked before each ack).
    Sentinel,
}

fn cluster_with(
    tidings: &Path,
    n: usize,
    replica: Replica,
) -> std::io::Result<(Redis, Vec<Server>)> {
    let mut redis = Redis::start(replica != Replica::None)?;
    // With a replica, over TCP for every row (Sentinel names the primary by address), so
    // the rows differ only in what they wait for.
    let url = match replica {
        Replica::None => format!("redis+unix://{}", redis.socket().display()),
        _ => format!("redis://127.0.0.1:{}", redis.port),
    };
    let mut flags: Vec<&str> = FLAGS.to_vec();
    let sentinels;
    match replica {
        Replica::Sentinel => {
            redis.watch()?;
            sentinels = redis
                .sentinels
                .iter()
                .map(|(_, p)| format!("127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(",");
            flags.extend(["--redis-sentinel", &sentinels, "--redis-service", "bench"]);
        }
        Replica::Wait => flags.extend(["--redis", &url, "--redis-wait-replicas", "1"]),
        _ => flags.extend(["--redis", &url]),
    }
    let servers = (0..n)
        .map(|i| {
            let mut c = Command::new(tidings);
            // Several servers on one box: one runtime thread each, as one would run them on
            // a machine with a core per server (tokio reads this variable), rather than
            // 2 x N threads fighting over two cores.
            if n > 1 {
                c.env("TOKIO_WORKER_THREADS", "1");
            }
            crate::tidings_server(c, &format!("cluster{i}"), &flags)
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok((redis, servers))
}

/// Publishes/s accepted (`201`) from `concurrency` publishers for `secs`, each publisher
/// on one of `bases` in turn.
async fn publish_rate(bases: &[String], concurrency: usize, secs: f64) -> f64 {
    let client = reqwest::Client::new();
    let ok = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let (client, ok, stop) = (client.clone(), ok.clone(), stop.clone());
            let url = format!("{}/api/publish", bases[w % bases.len()]);
            tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let body = format!(
                        r#"{{"stream":"chat","data":{{"author":"bench","body":"p{w}-{seq}"}}}}"#
                    );
                    if load::post_publish(&client, &url, body).await == Some(201) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    ok.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn fanout(
    s: &Server,
    spread: &[Server],
    subs: usize,
    rate: u32,
    events: usize,
    quiet: bool,
) -> Fanout {
    Fanout {
        base: s.base.clone(),
        transport: Transport::Ws,
        subscribers: subs,
        rate,
        events,
        ramp: 2000,
        interval: Duration::from_secs(1),
        pid: Some(s.pid()),
        quiet,
        spread: spread.iter().map(|s| s.base.clone()).collect(),
    }
}

pub async fn run(o: Options) -> Result<(), Box<dyn std::error::Error>> {
    let n = o.servers.max(1);
    let rounds = if o.smoke { 1 } else { o.rounds.max(1) };
    let (subs, events, lat_events, conc, secs) = if o.smoke {
        (20, 50, 50, 4, 1.0)
    } else {
        (o.subscribers.max(1), 1000, 1000, 32, 5.0)
    };
    let mut publish: [Vec<f64>; 6] = Default::default();
    let (mut fan, mut lat): ([Vec<FanoutResult>; 2], [Vec<FanoutResult>; 2]) = Default::default();
    let labels_publish = [
        "embedded".to_string(),
        "cluster x1".into(),
        format!("cluster x{n}"),
        "x1 +replica".into(),
        "x1 +replica, WAIT 1".into(),
        "x1 Sentinel".into(),
    ];
    for round in 1..=rounds {
        if !o.no_publish {
            eprintln!("[{round}/{rounds}] publish throughput: {conc} publishers, {secs} s each");
            {
                let s = embedded(&o.tidings)?;
                publish[0].push(publish_rate(&[s.base.clone()], conc, secs).await);
            }
            {
                let (_redis, s) = cluster(&o.tidings, 1)?;
                publish[1].push(publish_rate(&[s[0].base.clone()], conc, secs).await);
            }
            {
                let (_redis, s) = cluster(&o.tidings, n)?;
                let bases: Vec<String> = s.iter().map(|s| s.base.clone()).collect();
                publish[2].push(publish_rate(&bases, conc, secs).await);
            }
            for (i, replica) in [
                (3, Replica::NoWait),
                (4, Replica::Wait),
                (5, Replica::Sentinel),
            ] {
                let (_redis, s) = cluster_with(&o.tidings, 1, replica)?;
                publish[i].push(publish_rate(&[s[0].base.clone()], conc, secs).await);
            }
            eprintln!(
                "  {}",
                (0..publish.len())
                    .map(|i| format!("{} {:.0}/s", labels_publish[i], publish[i].last().unwrap()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }

        eprintln!("[{round}/{rounds}] per-server fan-out: {subs} WS subscribers, {events} events as fast as accepted");
        {
            let s = embedded(&o.tidings)?;
            fan[0].push(load::fanout(fanout(&s, &[], subs, 0, events, o.smoke)).await);
        }
        {
            let (_redis, s) = cluster(&o.tidings, 1)?;
            fan[1].push(load::fanout(fanout(&s[0], &[], subs, 0, events, o.smoke)).await);
        }
        eprintln!(
            "  embedded {:.0}/s, cluster x1 {:.0}/s",
            fan[0].last().unwrap().deliveries_per_sec,
            fan[1].last().unwrap().deliveries_per_sec
        );

        eprintln!("[{round}/{rounds}] latency: {subs} WS subscribers x 100 events/s");
        {
            let s = embedded(&o.tidings)?;
            lat[0].push(load::fanout(fanout(&s, &[], subs, 100, lat_events, o.smoke)).await);
        }
        {
            let (_redis, s) = cluster(&o.tidings, n)?;
            lat[1].push(load::fanout(fanout(&s[0], &s[1..], subs, 100, lat_events, o.smoke)).await);
        }
        eprintln!(
            "  p99 embedded {:.2} ms, cluster x{n} {:.2} ms",
            lat[0].last().unwrap().p99_ms,
            lat[1].last().unwrap().p99_ms
        );
    }

    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[(v.len() - 1) / 2]
    };
    let mut report = Report {
        smoke: o.smoke,
        servers: n,
        ..Default::default()
    };
    for (label, runs) in labels_publish.iter().zip(publish) {
        if !runs.is_empty() {
            report.publish.push((label.clone(), med(runs)));
        }
    }
    let [fe, fc] = fan;
    report.fanout.push((
        "embedded".into(),
        crate::median(fe, |r| -r.deliveries_per_sec),
    ));
    report.fanout.push((
        "cluster x1".into(),
        crate::median(fc, |r| -r.deliveries_per_sec),
    ));
    let [le, lc] = lat;
    report
        .latency
        .push(("embedded".into(), crate::median(le, |r| r.p99_ms)));
    report
        .latency
        .push((format!("cluster x{n}"), crate::median(lc, |r| r.p99_ms)));

    println!();
    println!(
        "{}",
        if o.smoke {
            "CLUSTER SMOKE RUN (tiny N: checks the tool, not the server)"
        } else {
            "CLUSTER MODE AGAINST EMBEDDED (medians of interleaved rounds; Redis AOF appendfsync always)"
        }
    );
    let e = report.publish.first().map_or(0.0, |p| p.1);
    for (label, v) in &report.publish {
        // With `conc` publishers always waiting, the mean time to an answer is conc / rate.
        println!(
            "publish throughput, {label:<20} {v:>10.0} publishes/s  {:>6}  (mean answer {:.2} ms)",
            crate::ratio(*v, e),
            conc as f64 * 1000.0 / v
        );
    }
    let fe = report.fanout[0].1.deliveries_per_sec;
    for (label, r) in &report.fanout {
        println!(
            "WS fan-out x{subs} on one server, {label:<12} {:>10.0} deliveries/s  {:>6}",
            r.deliveries_per_sec,
            crate::ratio(r.deliveries_per_sec, fe)
        );
    }
    for (label, r) in &report.latency {
        println!(
            "latency x{subs} at 100 ev/s, {label:<12} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, lost {}",
            r.p50_ms, r.p99_ms, r.max_ms, r.lost
        );
    }
    println!("(ratios: against embedded)");
    if let Some(p) = &o.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)?;
    }
    let lost: u64 = report
        .fanout
        .iter()
        .chain(&report.latency)
        .map(|(_, r)| r.lost + r.duplicated)
        .sum();
    if lost > 0 {
        return Err(format!("{lost} deliveries lost or duplicated").into());
    }
    Ok(())
}
