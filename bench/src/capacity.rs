//! `tidings-bench capacity`: as many connections as this box allows (issue #11). The
//! process limit on open files here is 20,000 (hard); a server holding N connections needs N
//! descriptors, and so does this load generator (it runs in its own process, so each side
//! has its own limit). Both raise their soft limit to the hard one; when the hard limit is
//! lower than what was asked, the run says so and holds what fits.
//!
//! N connections, half WebSocket and half SSE, on one release server; a broadcast at R
//! events/s to all of them: publish-to-receive p50/p99/max, lost, and the server's memory
//! per connection (RSS with them open, less RSS before, over N).

use crate::load::{self, Fanout, Transport};
use crate::procstat::ProcStat;
use std::path::PathBuf;
use std::time::Duration;

pub struct Options {
    pub tidings: PathBuf,
    pub connections: usize,
    pub rate: u32,
    pub events: usize,
    pub smoke: bool,
}

/// Descriptors this process keeps for itself (the runtime, the publisher's HTTP client,
/// /proc reads) beside its connections.
const SPARE_FDS: u64 = 200;

/// Raises this process's soft open-file limit to its hard limit; returns the limit now.
/// Children (the server started below) inherit it.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to and read from the struct passed, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            }
        }
    }
    lim.rlim_cur as u64
}

pub async fn run(o: Options) -> Result<(), Box<dyn std::error::Error>> {
    let (asked, rate, events) = if o.smoke {
        (200, 10, 20)
    } else {
        (o.connections, o.rate, o.events)
    };
    let limit = raise_nofile();
    let fits = limit.saturating_sub(SPARE_FDS) as usize;
    let n = if asked > fits {
        println!(
            "capacity: this box allows {limit} open files per process (the hard limit); {asked} connections asked, holding {fits}"
        );
        fits
    } else {
        asked
    };
    let max_streams = (n + 100).to_string();
    let server = crate::tidings_server(
        std::process::Command::new(&o.tidings),
        "capacity",
        &[
            "--max-conns-per-ip",
            "0",
            "--publish-rate",
            "0",
            "--max-streams",
            &max_streams,
        ],
    )?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = ProcStat::read(server.pid()).map_or(0, |s| s.rss_kib);
    eprintln!("capacity: {n} connections (half WebSocket, half SSE), {events} events at {rate}/s");
    let r = load::fanout(Fanout {
        base: server.base.clone(),
        transport: Transport::Mixed,
        subscribers: n,
        rate,
        events,
        ramp: 2000,
        interval: Duration::from_secs(1),
        pid: Some(server.pid()),
        quiet: o.smoke,
        spread: vec![],
    })
    .await;
    let per_conn =
        (r.server_rss_kib.saturating_sub(before) * 1024) as f64 / r.subscribers.max(1) as f64;
    println!(
        "capacity: {} of {n} connected (open-file limit {limit}); {} events at {rate}/s to all: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} deliveries, lost {}, duplicated {}; server RSS {} KiB before, {} KiB with them: {:.0} B per connection; server CPU {:.2} s",
        r.subscribers,
        r.published,
        r.p50_ms,
        r.p99_ms,
        r.max_ms,
        r.deliveries,
        r.lost,
        r.duplicated,
        before,
        r.server_rss_kib,
        per_conn,
        r.server_cpu_secs
    );
    if r.subscribers < n {
        return Err(format!("only {} of {n} connections opened", r.subscribers).into());
    }
    if r.lost + r.duplicated > 0 {
        return Err("deliveries lost or duplicated".into());
    }
    Ok(())
}
