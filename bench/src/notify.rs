//! `tidings-bench notify`: the notification service under load (issue #10's figure).
//!
//! A release server with its normal limits; A accounts signed up through the API (each from
//! an address of its own, through `X-Forwarded-For` from the trusted local proxy, as behind
//! nginx), each holding one signed-in connection to `chat,notifications` (WebSocket and SSE
//! alternately), beside anonymous chat readers up to N connections. Chat is published at R
//! messages/s to all of them; every k-th message mentions a random account. Measured: from
//! just before the chat message is sent to the mention notification's arrival at its
//! account (the account lookup and the second publish included), and the chat fan-out's own
//! publish-to-receive delay for comparison; lost and misdelivered notifications counted.

use crate::lean::{SseClient, Subscriber, WsClient};
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub struct Options {
    pub tidings: PathBuf,
    pub smoke: bool,
    pub accounts: usize,
    pub connections: usize,
    pub rate: u32,
    pub seconds: u64,
    pub mention_every: usize,
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[derive(Default)]
struct Tally {
    /// (chat id the notification is about, arrival ms), for this subscriber's account.
    notices: Vec<(u64, f64)>,
    /// Notifications for another account (must stay 0).
    misdelivered: u64,
    /// Chat fan-out delays, ms (receive - event ts).
    chat_ms: Vec<f64>,
}

pub async fn run(o: Options) -> Result<(), Box<dyn std::error::Error>> {
    let (accounts, connections, rate, seconds, every) = if o.smoke {
        (4, 8, 20, 1, 2)
    } else {
        (
            o.accounts,
            o.connections.max(o.accounts),
            o.rate,
            o.seconds,
            o.mention_every.max(1),
        )
    };
    let secret = format!("{:064x}", 0xC0FFEEu64);
    let server = crate::tidings_server(
        std::process::Command::new(&o.tidings),
        "notify",
        &[
            "--secret",
            &secret,
            "--trusted-proxy",
            "127.0.0.1",
            "--max-conns-per-ip",
            "0",
            // The bench's one publisher stands for many chat users: no per-address limit.
            "--publish-rate",
            "0",
        ],
    )?;
    let base = server.base.clone();
    eprintln!("notify: signing up {accounts} accounts");
    let tokens = sign_up(&base, accounts).await?;

    let connected = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut readers = Vec::with_capacity(connections);
    for i in 0..connections {
        let path = match tokens.get(i) {
            Some(t) => format!("/api/{{}}?streams=chat,notifications&token={t}"),
            None => "/api/{}?streams=chat".to_owned(),
        };
        let me = (i < accounts).then(|| format!("acct{i}"));
        let (base, connected, stop) = (base.clone(), connected.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let sub = if i % 2 == 0 {
                WsClient::connect(&base, &path.replace("{}", "ws"))
                    .await
                    .map(Subscriber::Ws)
            } else {
                SseClient::connect(&base, &path.replace("{}", "sse"))
                    .await
                    .map(Subscriber::Sse)
            };
            read(sub, me, connected, stop).await
        }));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while connected.load(Ordering::Relaxed) < connections && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let n_connected = connected.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Publish: R chat messages/s for `seconds`, every k-th mentioning a random account.
    let total = rate as usize * seconds as usize;
    eprintln!(
        "notify: {n_connected} connections ({accounts} signed in); {total} chat messages at {rate}/s, every {every} a mention"
    );
    let sent: Arc<Mutex<HashMap<u64, (usize, f64)>>> = Default::default();
    let refused = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for seq in 0..total {
        tick.tick().await;
        let to = (seq % every == 0).then(|| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % accounts as u64) as usize
        });
        let body = match to {
            Some(a) => format!("hey @acct{a} look at m{seq}"),
            None => format!("m{seq}"),
        };
        let (client, url, sent, refused) = (
            client.clone(),
            format!("{base}/api/publish"),
            sent.clone(),
            refused.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let at = now_ms();
            let r = client
                .post(url)
                .json(&serde_json::json!({"stream": "chat", "data": {"author": "bench", "body": body}}))
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 201 => {
                    if let (Some(a), Ok(e)) = (to, r.json::<app::protocol::Event>().await) {
                        sent.lock().unwrap().insert(e.id, (a, at));
                    }
                }
                _ => {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    // Let the last notifications arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.notify_waiters();

    let sent = sent.lock().unwrap().clone();
    let mut notice_hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut chat_hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let (mut got, mut misdelivered, mut extra) = (0usize, 0u64, 0usize);
    for (i, r) in readers.into_iter().enumerate() {
        let t = r.await?;
        misdelivered += t.misdelivered;
        for ms in t.chat_ms {
            chat_hist.record((ms.max(0.0) * 1000.0) as u64 + 1)?;
        }
        for (about, at) in t.notices {
            match sent.get(&about) {
                Some((a, sent_at)) if *a == i => {
                    got += 1;
                    notice_hist.record(((at - sent_at).max(0.0) * 1000.0) as u64 + 1)?;
                }
                _ => extra += 1,
            }
        }
    }
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    println!(
        "notify: {n_connected} connections ({accounts} signed in, WS and SSE alternately), {total} chat messages at {rate}/s ({} refused), {} mentions",
        refused.load(Ordering::Relaxed),
        sent.len()
    );
    println!(
        "  mention -> notification at its account: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} of {} delivered, {} lost, {} misdelivered, {} unexpected",
        q(&notice_hist, 0.5),
        q(&notice_hist, 0.99),
        notice_hist.max() as f64 / 1000.0,
        got,
        sent.len(),
        sent.len().saturating_sub(got),
        misdelivered,
        extra
    );
    println!(
        "  chat fan-out (publish -> receive, every connection): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {} deliveries",
        q(&chat_hist, 0.5),
        q(&chat_hist, 0.99),
        chat_hist.max() as f64 / 1000.0,
        chat_hist.len()
    );
    drop(server);
    if got < sent.len() || misdelivered > 0 || extra > 0 {
        return Err("notifications were lost or misdelivered".into());
    }
    Ok(())
}

/// Signs up `acct0..acctN` (two at a time: hashing is bounded on the server), each from an
/// address of its own so the per-address sign-in limit applies per account, as it would to
/// real users behind a proxy.
async fn sign_up(base: &str, n: usize) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(Mutex::new(vec![String::new(); n]));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (client, next, tokens, base) =
                (client.clone(), next.clone(), tokens.clone(), base.to_owned());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<(), String>(());
                    }
                    let r = client
                        .post(format!("{base}/api/auth/signup"))
                        .header("x-forwarded-for", format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255))
                        .json(&serde_json::json!({"name": format!("acct{i}"), "password": "bench password"}))
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    if r.status() != 201 {
                        return Err(format!("signup acct{i}: {}", r.status()));
                    }
                    let s: app::protocol::Session = r.json().await.map_err(|e| e.to_string())?;
                    tokens.lock().unwrap()[i] = s.token.unwrap_or_default();
                }
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    let tokens = tokens.lock().unwrap().clone();
    Ok(tokens)
}

/// One connection: chat delays and the notifications for `me`, until `stop`.
async fn read(
    sub: std::io::Result<Subscriber>,
    me: Option<String>,
    connected: Arc<AtomicUsize>,
    stop: Arc<tokio::sync::Notify>,
) -> Tally {
    let mut t = Tally::default();
    let Ok(mut sub) = sub else {
        return t;
    };
    connected.fetch_add(1, Ordering::Relaxed);
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            ok = sub.read() => {
                if !ok {
                    break;
                }
                let at = now_ms();
                let open = sub
                    .process(|text| {
                        // A WebSocket frame (`{"type":"event","event":{..}}`), or SSE
                        // messages (`data: {..}` lines, several per call).
                        let jsons: Vec<&str> = if text.starts_with('{') {
                            vec![text]
                        } else {
                            text.lines().filter_map(|l| l.strip_prefix("data: ")).collect()
                        };
                        for json in jsons {
                            note(&mut t, me.as_deref(), json, at);
                        }
                    })
                    .await;
                if !open {
                    break;
                }
            }
        }
    }
    t
}

/// Records one event a connection received at `at`.
fn note(t: &mut Tally, me: Option<&str>, json: &str, at: f64) {
    let Ok(frame) = serde_json::from_str::<serde_json::Value>(json) else {
        return;
    };
    let e = frame.get("event").unwrap_or(&frame);
    match e["stream"].as_str() {
        Some("chat") => {
            if let Some(ts) = e["ts"].as_f64() {
                t.chat_ms.push(at - ts);
            }
        }
        Some("notifications") => {
            let d = &e["data"];
            if d["to"].as_str() == me && d["kind"] == "mention" {
                t.notices.push((d["about"].as_u64().unwrap_or(0), at));
            } else {
                t.misdelivered += 1;
            }
        }
        _ => {}
    }
}
