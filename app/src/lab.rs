//! The transport lab (`/lab/`, its own bundle so the main page does not carry it): lanes
//! side by side, each its own live connection over one transport to the same streams, with
//! what each costs and how late it is, charts, a verdict per lane in plain words, and the
//! server's side of the picture (`GET /api/stats`).
//!
//! Each lane is a [`LiveStore`] of its own fed by [`transport::connect`]: the same clients,
//! resume rule and de-duplication as the app, so the lab measures what the app does.

use crate::api;
use crate::protocol::ServerStats;
use crate::store::{ConnState, Kind, LiveStore};
use crate::transport::{self, Connection};
use leptos::prelude::*;
use leptos::task::spawn_local;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

/// Okabe-Ito: distinguishable with every common colour-vision deficiency (its yellow is
/// left out: too faint on white). A new lane takes the first colour no lane has.
const PALETTE: [&str; 7] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000",
];

/// Bytes the lab cannot see and estimates (browsers expose no request headers to scripts,
/// and Resource Timing has no entries for an open EventSource or any WebSocket). Measured
/// once against this server with Chromium 156 (request headers as sent, response headers as
/// received): a fetch GET ~430 B out and ~190 B of response headers back; an EventSource
/// GET ~470 B / ~170 B; a WebSocket handshake ~520 B / ~130 B.
const POLL_REQUEST_BYTES: u64 = 430;
const POLL_RESPONSE_HEADER_BYTES: u64 = 190;
const SSE_REQUEST_BYTES: u64 = 470;
const SSE_RESPONSE_HEADER_BYTES: u64 = 170;
/// Per SSE event: `id: N\n` and `data: ` and the blank line around the JSON.
const SSE_EVENT_OVERHEAD: u64 = 18;
const WS_HANDSHAKE_OUT: u64 = 520;
const WS_HANDSHAKE_IN: u64 = 130;
/// Per WebSocket message: the frame header (2 bytes up to 125, 4 up to 64 KiB).
const WS_FRAME_OVERHEAD: u64 = 4;

#[derive(Clone, Copy, Default, PartialEq, Debug)]
struct Summary {
    events: u64,
    p50: Option<f64>,
    p95: Option<f64>,
    max: Option<f64>,
    requests: u64,
    empty: u64,
    recv: u64,
    sent: u64,
    reconnects: u64,
    dups: u64,
    missed: u64,
    /// The server said it could not resume this lane (its cursor had left the window).
    reset: bool,
}

/// One sample of a lane's running totals, for the cumulative charts.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: f64,
    requests: u64,
    bytes: u64,
}

#[derive(Clone, Copy)]
struct Lane {
    id: u32,
    kind: Kind,
    store: LiveStore,
    color: &'static str,
    paused: RwSignal<bool>,
    /// The cursor it started from: ids after it are the ones it must see.
    start: RwSignal<u64>,
    summary: RwSignal<Summary>,
    samples: RwSignal<Vec<Sample>>,
}

thread_local! {
    /// The lanes' connections, by lane id (dropping one closes it).
    static CONNS: RefCell<HashMap<u32, Connection>> = RefCell::new(HashMap::new());
}

fn now() -> f64 {
    js_sys::Date::now()
}

fn lane_name(kind: Kind) -> String {
    match kind {
        Kind::Poll(ms) => format!("Polling every {} s", ms / 1000),
        Kind::LongPoll => "Long polling".into(),
        Kind::Sse => "Server-Sent Events".into(),
        Kind::Ws => "WebSocket".into(),
        Kind::Auto => "Auto".into(),
    }
}

/// The transport a lane really uses (Auto: the one it settled on).
fn effective(lane: &Lane) -> Kind {
    match lane.kind {
        Kind::Auto => lane.store.auto.get_untracked().map_or(Kind::Ws, |a| a.on),
        k => k,
    }
}

/// Bytes in and out, headers included: the bodies as received, plus the estimates above.
fn bytes(kind: Kind, s: &crate::store::Stats) -> (u64, u64) {
    match kind {
        Kind::Poll(_) | Kind::LongPoll => (
            s.bytes + s.requests * POLL_RESPONSE_HEADER_BYTES,
            s.requests * POLL_REQUEST_BYTES,
        ),
        Kind::Sse => (
            s.bytes + s.requests * SSE_RESPONSE_HEADER_BYTES + s.events * SSE_EVENT_OVERHEAD,
            s.requests * SSE_REQUEST_BYTES,
        ),
        _ => (
            s.bytes + s.requests * WS_HANDSHAKE_IN + s.events * WS_FRAME_OVERHEAD,
            s.requests * WS_HANDSHAKE_OUT,
        ),
    }
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    Some(sorted[i])
}

/// "4 ms", "2.4 s".
fn ms(v: f64) -> String {
    if v.abs() < 1000.0 {
        format!("{v:.0} ms")
    } else {
        format!("{:.1} s", v / 1000.0)
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("–".into(), ms)
}

fn kb(b: u64) -> String {
    format!("{:.1} KB", b as f64 / 1024.0)
}

/// The lane's result in the words of the note we start from.
fn verdict(kind: Kind, on: Kind, s: &Summary) -> String {
    let median = opt_ms(s.p50);
    let per_event = if s.events == 0 {
        "no event yet".to_string()
    } else {
        format!(
            "{:.2} KB per event",
            (s.recv + s.sent) as f64 / 1024.0 / s.events as f64
        )
    };
    let empty = if s.requests == 0 {
        0
    } else {
        s.empty * 100 / s.requests
    };
    let plural = |n: u64, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
    let lost = match (s.missed, s.reset) {
        (0, _) => String::new(),
        (n, true) => format!(
            " Missed {}: more events came while it was not listening (between two polls, or \
             while disconnected) than the server keeps for resuming, so it skipped ahead (a \
             reset).",
            plural(n, "event")
        ),
        (n, false) => format!(" Missed {}.", plural(n, "event")),
    };
    let verdict = match on {
        Kind::Poll(p) => format!(
            "{}polling every {} s: median delay {median}, {empty}% of requests empty, {per_event}.",
            if kind == Kind::Auto { "Auto, " } else { "" },
            p / 1000
        ),
        Kind::LongPoll => format!(
            "{}long polling: median delay {median}, {} for {}, {empty}% empty, {per_event}.",
            if kind == Kind::Auto { "Auto, " } else { "" },
            plural(s.requests, "request"),
            plural(s.events, "event")
        ),
        Kind::Sse => format!(
            "{}SSE: {}, median delay {median}, {per_event}; one-way, the browser reconnects by itself.",
            if kind == Kind::Auto { "Auto, " } else { "" },
            plural(s.requests, "request")
        ),
        _ => format!(
            "{}WebSocket: {}, median delay {median}, {per_event}; two-way.",
            if kind == Kind::Auto { "Auto, " } else { "" },
            plural(s.requests, "connection")
        ),
    };
    verdict + &lost
}

/// NTP-style: the server's clock minus the browser's, from the round trip with the
/// shortest time (its error is at most half that round trip). `(offset, rtt)`.
async fn clock_offset() -> Option<(f64, f64)> {
    let mut best: Option<(f64, f64)> = None;
    for _ in 0..5 {
        let sent = now();
        let Ok((text, _)) = api::get_text("/api/stats", 5_000).await else {
            continue;
        };
        let received = now();
        let Ok(s) = serde_json::from_str::<ServerStats>(&text) else {
            continue;
        };
        let rtt = received - sent;
        let offset = s.now_ms as f64 - (sent + received) / 2.0;
        if best.is_none_or(|(_, r)| rtt < r) {
            best = Some((offset, rtt));
        }
    }
    best
}

fn start(lane: Lane) {
    CONNS.with(|c| {
        c.borrow_mut()
            .insert(lane.id, transport::connect(lane.store, lane.kind))
    });
}

fn stop(lane: &Lane) {
    CONNS.with(|c| c.borrow_mut().remove(&lane.id));
    lane.store.conn.set(ConnState::Offline);
}

fn new_lane(id: u32, kind: Kind, cursor: u64, taken: &[&'static str]) -> Lane {
    let store = LiveStore {
        streams: RwSignal::new(crate::protocol::StreamSet::WITH_LAB),
        ..LiveStore::new()
    };
    store.stats.update(|s| s.record = true);
    store.cursor.set(cursor);
    let lane = Lane {
        id,
        kind,
        store,
        color: PALETTE
            .into_iter()
            .find(|c| !taken.contains(c))
            .unwrap_or(PALETTE[id as usize % PALETTE.len()]),
        paused: RwSignal::new(false),
        start: RwSignal::new(cursor),
        summary: RwSignal::new(Summary::default()),
        samples: RwSignal::new(Vec::new()),
    };
    start(lane);
    lane
}

/// Once a second: each lane's summary and samples, and which events each missed.
fn tick(lanes: &[Lane], offset: f64) {
    let t = now();
    // The ids every lane should have seen: after the latest start, up to the lowest cursor
    // of the lanes that are running.
    let running: Vec<&Lane> = lanes.iter().filter(|l| !l.paused.get_untracked()).collect();
    let lo = running
        .iter()
        .map(|l| l.start.get_untracked())
        .max()
        .unwrap_or(0);
    let hi = running
        .iter()
        .map(|l| l.store.cursor.get_untracked())
        .min()
        .unwrap_or(0);
    // Only ids every lane still holds: a lane keeps its latest arrivals, not all of them.
    let lo = running
        .iter()
        .filter_map(|l| {
            l.store.stats.with_untracked(|s| {
                (s.arrivals.len() >= crate::store::MAX_ARRIVALS)
                    .then(|| s.arrivals.front().map(|a| a.id))
                    .flatten()
            })
        })
        .fold(lo, u64::max);
    let mut seen: Vec<HashSet<u64>> = Vec::with_capacity(running.len());
    let mut union = HashSet::new();
    for l in &running {
        let ids: HashSet<u64> = l.store.stats.with_untracked(|s| {
            s.arrivals
                .iter()
                .map(|a| a.id)
                .filter(|id| *id > lo && *id <= hi)
                .collect()
        });
        union.extend(ids.iter().copied());
        seen.push(ids);
    }
    for lane in lanes {
        let on = effective(lane);
        let missed = running
            .iter()
            .position(|l| l.id == lane.id)
            .map_or(0, |i| (union.len() - seen[i].len()) as u64);
        let summary = lane.store.stats.with_untracked(|s| {
            let mut delays: Vec<f64> = s.arrivals.iter().map(|a| a.latency_ms + offset).collect();
            delays.sort_by(|a, b| a.total_cmp(b));
            let (recv, sent) = bytes(on, s);
            Summary {
                events: s.events,
                p50: percentile(&delays, 0.5),
                p95: percentile(&delays, 0.95),
                max: delays.last().copied(),
                requests: s.requests,
                empty: s.empty,
                recv,
                sent,
                reconnects: s.reconnects,
                dups: s.dups,
                missed,
                // A lane's store asks for a reload on a reset; nothing answers it here.
                reset: lane.store.reload.with_untracked(Option::is_some),
            }
        });
        lane.summary.set(summary);
        lane.samples.update(|v| {
            v.push(Sample {
                at: t,
                requests: summary.requests,
                bytes: summary.recv + summary.sent,
            });
            if v.len() > 900 {
                v.remove(0);
            }
        });
    }
}

#[component]
pub fn Lab() -> impl IntoView {
    let base = api::base();
    if !base.is_empty() {
        leptos::server_fn::client::set_server_url(Box::leak(base.into_boxed_str()));
    }
    let lanes = RwSignal::new(Vec::<Lane>::new());
    let next_id = RwSignal::new(0u32);
    let offset = RwSignal::new(None::<(f64, f64)>);
    let server = RwSignal::new(None::<(ServerStats, Option<ServerStats>)>);
    let clock = RwSignal::new(now());
    let add = move |kind: Kind| {
        spawn_local(async move {
            let cursor = loop {
                match api::latest_cursor().await {
                    Ok(c) => break c,
                    Err(_) => gloo_timers::future::TimeoutFuture::new(1_000).await,
                }
            };
            let id = next_id.get_untracked();
            next_id.set(id + 1);
            lanes.update(|l| {
                let taken: Vec<&'static str> = l.iter().map(|x| x.color).collect();
                l.push(new_lane(id, kind, cursor, &taken))
            });
        });
    };
    spawn_local(async move {
        offset.set(clock_offset().await);
        for k in Kind::ALL {
            add(k);
        }
    });
    let every_second = gloo_timers::callback::Interval::new(1_000, move || {
        clock.set(now());
        let off = offset.get_untracked().map_or(0.0, |(o, _)| o);
        lanes.with_untracked(|l| tick(l, off));
    });
    every_second.forget();
    let every_two = gloo_timers::callback::Interval::new(2_000, move || {
        spawn_local(async move {
            if let Ok((text, _)) = api::get_text("/api/stats", 5_000).await {
                if let Ok(s) = serde_json::from_str::<ServerStats>(&text) {
                    // Rates against the first sample: streams report their deliveries
                    // once per heartbeat, so two-second differences would be all spikes.
                    server.update(|v| {
                        let first = match v.take() {
                            Some((prev, None)) => Some(prev),
                            Some((_, first)) => first,
                            None => None,
                        };
                        *v = Some((s, first))
                    });
                }
            }
        });
    });
    every_two.forget();

    let choice = RwSignal::new("ws".to_string());
    view! {
        <a class="skip" href="#lanes">"Skip to the lanes"</a>
        <header class="top">
            <h1>"Tidings lab"</h1>
            <span class="lab-sub">"polling, long polling, SSE and WebSocket side by side, live"</span>
            <a class="back" href="/">"← back to the app"</a>
        </header>
        <main class="lab">
            <section class="panel lab-controls" aria-label="Lab controls">
                <p data-testid="clock-offset">
                    {move || match offset.get() {
                        Some((o, rtt)) => format!("Clock offset to the server: {:+.0} ms (± {:.0} ms); delays below are corrected by it.", o, rtt / 2.0),
                        None => "Measuring the clock offset to the server…".to_string(),
                    }}
                </p>
                <div class="add-lane">
                <label>
                    "Add a lane: "
                    <select aria-label="Transport of the new lane" on:change=move |ev| choice.set(event_target_value(&ev))>
                        <option value="ws">"WebSocket"</option>
                        <option value="sse">"SSE"</option>
                        <option value="longpoll">"Long polling"</option>
                        <option value="poll-1000">"Polling every 1 s"</option>
                        <option value="poll-5000">"Polling every 5 s"</option>
                        <option value="poll-30000">"Polling every 30 s"</option>
                        <option value="auto">"Auto"</option>
                    </select>
                </label>
                " "
                <button data-testid="add-lane" on:click=move |_| {
                    if let Some(k) = Kind::from_key(&choice.get_untracked()) {
                        add(k);
                    }
                }>"Add"</button>
                </div>
                <LoadControl/>
                <ServerPanel server=server/>
            </section>
            <section id="lanes" class="lanes" aria-label="Lanes" tabindex="-1">
                <For each=move || lanes.get() key=|l| l.id children=move |lane| view! { <LaneCard lane=lane lanes=lanes/> }/>
            </section>
            <section class="panel charts" aria-label="Charts">
                <h2>"Delay of each event, last minute"</h2>
                <DelayChart lanes=lanes clock=clock offset=offset/>
                <h2>"Requests and bytes so far"</h2>
                <Cumulative lanes=lanes pick=|s: &Sample| s.requests as f64 label="requests"/>
                <Cumulative lanes=lanes pick=|s: &Sample| s.bytes as f64 / 1024.0 label="KB in + out"/>
                <p class="note">
                    "Missed: events the other running lanes saw (since this lane started) that this one did not. Duplicated: events a transport delivered twice (a resume overlap); the page drops them, so none is shown twice. "
                    "How bytes are counted: bodies exactly as received; HTTP headers, SSE and WebSocket framing estimated (browsers show scripts neither request headers nor an open stream's or socket's bytes): "
                    "per request ~430 B out and ~190 B of headers back (polling), ~470/170 B (SSE), a WebSocket handshake ~520/130 B; SSE adds ~18 B per event, WebSocket ~4 B."
                </p>
            </section>
        </main>
    }
}

#[component]
fn ServerPanel(server: RwSignal<Option<(ServerStats, Option<ServerStats>)>>) -> impl IntoView {
    let rate = |now: u64, prev: Option<u64>, dt: f64| match prev {
        Some(p) if dt > 0.0 => format!("{:.1}/s", now.saturating_sub(p) as f64 / dt),
        _ => "…".into(),
    };
    view! {
        <div class="server" data-testid="server-stats">
            <h2>"The server's side (rates averaged since the lab opened)"</h2>
            {move || server.get().map(|(s, prev)| {
                let dt = prev.as_ref().map_or(0.0, |p| (s.now_ms.saturating_sub(p.now_ms)) as f64 / 1000.0);
                view! {
                    <p>
                        "open: " <b data-testid="server-open-ws">{s.open_ws}</b> " WebSocket · "
                        <b data-testid="server-open-sse">{s.open_sse}</b> " SSE · "
                        <b>{s.open_long_poll}</b> " long polls waiting"
                    </p>
                    <p>
                        "polls " {rate(s.polls, prev.as_ref().map(|p| p.polls), dt)}
                        " · publishes " {rate(s.publishes, prev.as_ref().map(|p| p.publishes), dt)}
                        " · deliveries " {rate(s.delivered, prev.as_ref().map(|p| p.delivered), dt)}
                    </p>
                }
            })}
        </div>
    }
}

#[component]
fn LaneCard(lane: Lane, lanes: RwSignal<Vec<Lane>>) -> impl IntoView {
    let s = lane.summary;
    let state = move || {
        if lane.paused.get() {
            return "paused".to_string();
        }
        let auto = lane
            .store
            .auto
            .get()
            .map(|a| format!(" · on {}", transport::auto_name(a.on)));
        format!(
            "{}{}",
            lane.store.conn.get().label(),
            auto.unwrap_or_default()
        )
    };
    let toggle = move |_| {
        if lane.paused.get_untracked() {
            lane.paused.set(false);
            start(lane);
        } else {
            lane.paused.set(true);
            stop(&lane);
        }
    };
    let remove = move |_| {
        stop(&lane);
        lanes.update(|l| l.retain(|x| x.id != lane.id));
    };
    let row =
        |label: &'static str, value: Signal<String>| view! { <dt>{label}</dt><dd>{value}</dd> };
    view! {
        <article class="panel lane" data-testid="lane" data-kind=lane.kind.key() style=format!("border-top: 4px solid {}", lane.color)>
            <header>
                <h2><span class="swatch" style=format!("background: {}", lane.color) aria-hidden="true"></span>{lane_name(lane.kind)}</h2>
                <span class="lane-state" data-testid="lane-state">{state}</span>
                <button on:click=toggle aria-label=move || format!("{} {}", if lane.paused.get() { "Resume" } else { "Pause" }, lane_name(lane.kind))>
                    {move || if lane.paused.get() { "Resume" } else { "Pause" }}
                </button>
                <button on:click=remove aria-label=format!("Remove {}", lane_name(lane.kind))>"Remove"</button>
            </header>
            <dl class="figures">
                {row("events", Signal::derive(move || s.get().events.to_string()))}
                {row("delay p50 / p95 / max", Signal::derive(move || { let v = s.get(); format!("{} / {} / {}", opt_ms(v.p50), opt_ms(v.p95), opt_ms(v.max)) }))}
                {row("requests", Signal::derive(move || s.get().requests.to_string()))}
                {row("empty answers", Signal::derive(move || { let v = s.get(); if v.requests == 0 { "0".into() } else { format!("{} ({}%)", v.empty, v.empty * 100 / v.requests) } }))}
                {row("received / sent", Signal::derive(move || { let v = s.get(); format!("{} / {}", kb(v.recv), kb(v.sent)) }))}
                {row("reconnects", Signal::derive(move || s.get().reconnects.to_string()))}
                {row("missed / duplicated", Signal::derive(move || { let v = s.get(); format!("{} / {}", v.missed, v.dups) }))}
            </dl>
            <p class="verdict" data-testid="verdict">{move || verdict(lane.kind, effective(&lane), &s.get())}</p>
            <span class="hidden" data-testid="lane-events">{move || s.get().events}</span>
            <span class="hidden" data-testid="lane-missed">{move || s.get().missed}</span>
            <span class="hidden" data-testid="lane-requests">{move || s.get().requests}</span>
        </article>
    }
}

const W: f64 = 640.0;
const H: f64 = 200.0;
const PAD_L: f64 = 56.0;
const PAD_B: f64 = 24.0;

/// Each event's delay against when it arrived, the last 60 s, on a log scale (1 ms .. 100 s):
/// a push transport's dots lie along the bottom, a poll's climb like a saw to its interval.
#[component]
fn DelayChart(
    lanes: RwSignal<Vec<Lane>>,
    clock: RwSignal<f64>,
    offset: RwSignal<Option<(f64, f64)>>,
) -> impl IntoView {
    let y = |ms: f64| {
        let v = ms.clamp(1.0, 100_000.0).log10() / 5.0;
        (H - PAD_B) * (1.0 - v)
    };
    let ticks = [
        (1.0, "1 ms"),
        (10.0, "10 ms"),
        (100.0, "100 ms"),
        (1_000.0, "1 s"),
        (10_000.0, "10 s"),
        (100_000.0, "100 s"),
    ];
    view! {
        <svg class="chart" viewBox=format!("0 0 {W} {H}") role="img" aria-label="Delay of each event over the last minute, per lane, log scale" data-testid="delay-chart">
            {ticks.into_iter().map(|(v, label)| view! {
                <line x1=PAD_L x2=W y1=y(v) y2=y(v) class="grid-line"/>
                <text x=PAD_L - 6.0 y=y(v) + 4.0 text-anchor="end" class="axis">{label}</text>
            }).collect_view()}
            <text x=PAD_L y=H - 4.0 class="axis">"60 s ago"</text>
            <text x=W y=H - 4.0 text-anchor="end" class="axis">"now"</text>
            {move || {
                let t = clock.get();
                let off = offset.get().map_or(0.0, |(o, _)| o);
                lanes.get().into_iter().map(|l| {
                    // One path of dots per lane (a zero-length segment with a round cap).
                    let mut d = String::new();
                    l.store.stats.with_untracked(|s| {
                        for a in s.arrivals.iter().rev().take_while(|a| t - a.at <= 60_000.0) {
                            let x = PAD_L + (W - PAD_L) * (1.0 - (t - a.at) / 60_000.0);
                            d.push_str(&format!("M{x:.1} {:.1}h0", y(a.latency_ms + off)));
                        }
                    });
                    view! { <path d=d stroke=l.color class="dots"/> }
                }).collect_view()
            }}
        </svg>
    }
}

/// A running total per lane since the lab opened (requests, or bytes).
#[component]
fn Cumulative(
    lanes: RwSignal<Vec<Lane>>,
    pick: fn(&Sample) -> f64,
    label: &'static str,
) -> impl IntoView {
    view! {
        <svg class="chart small" viewBox=format!("0 0 {W} {H}") role="img" aria-label=format!("Cumulative {label} per lane")>
            {move || {
                let all = lanes.get();
                let (t0, t1, top) = all.iter().fold((f64::MAX, 0.0f64, 1.0f64), |(a, b, m), l| {
                    l.samples.with(|v| {
                        let first = v.first().map_or(a, |s| s.at.min(a));
                        let last = v.last().map_or(b, |s| s.at.max(b));
                        let max = v.iter().map(pick).fold(m, f64::max);
                        (first, last, max)
                    })
                });
                let span = (t1 - t0).max(1.0);
                let lines = all.iter().map(|l| {
                    let points = l.samples.with(|v| v.iter().map(|s| format!("{:.1},{:.1}", PAD_L + (W - PAD_L) * (s.at - t0) / span, (H - PAD_B) * (1.0 - pick(s) / top))).collect::<Vec<_>>().join(" "));
                    view! { <polyline points=points stroke=l.color class="line"/> }
                }).collect_view();
                view! {
                    <line x1=PAD_L x2=W y1=H - PAD_B y2=H - PAD_B class="grid-line"/>
                    <text x=PAD_L - 6.0 y=12.0 text-anchor="end" class="axis">{format!("{top:.0}")}</text>
                    <text x=PAD_L - 6.0 y=H - PAD_B text-anchor="end" class="axis">"0"</text>
                    <text x=PAD_L y=H - 4.0 class="axis">{label}</text>
                    <text x=W y=H - 4.0 text-anchor="end" class="axis">{format!("over {:.0} s", span / 1000.0)}</text>
                    {lines}
                }
            }}
        </svg>
    }
}

/// The lab's load: events on the `lab` stream at 1-50/s, or a burst of 100, generated by
/// the server (only on servers started with `--admin-token`, and only for that token). The
/// page repeats its setting every 10 s; the server stops by itself 30 s after the last.
#[component]
fn LoadControl() -> impl IntoView {
    let token = RwSignal::new(String::new());
    let rate = RwSignal::new(0u32);
    let status = RwSignal::new(String::from(
        "Off. The server generates this load only when started with --admin-token; enter it here.",
    ));
    let send = move |body: String| {
        spawn_local(async move {
            let answer = api::post_authorized("/api/lab/load", body, &token.get_untracked()).await;
            status.set(match answer {
                Ok(_) if rate.get_untracked() == 0 => "Off.".into(),
                Ok(_) => format!(
                    "Generating {} events/s on the lab stream.",
                    rate.get_untracked()
                ),
                Err(e) => format!("Refused: {e}"),
            });
        });
    };
    let keepalive = gloo_timers::callback::Interval::new(10_000, move || {
        if rate.get_untracked() > 0 {
            send(format!("{{\"rate\":{}}}", rate.get_untracked()));
        }
    });
    keepalive.forget();
    view! {
        <div class="load" data-testid="load-control">
            <label>
                "Admin token "
                <input type="password" autocomplete="off" data-testid="load-token" on:input=move |ev| token.set(event_target_value(&ev))/>
            </label>
            <label>
                " Load "
                <select data-testid="load-rate" on:change=move |ev| {
                    let r = event_target_value(&ev).parse::<u32>().unwrap_or(0);
                    rate.set(r);
                    send(format!("{{\"rate\":{r}}}"));
                }>
                    {[0u32, 1, 5, 10, 20, 50].into_iter().map(|r| view! {
                        <option value=r.to_string()>{if r == 0 { "off".to_string() } else { format!("{r} events/s") }}</option>
                    }).collect_view()}
                </select>
            </label>
            " "
            <button data-testid="load-burst" on:click=move |_| send("{\"burst\":true}".into())>"Burst of 100"</button>
            <p data-testid="load-status" role="status">{move || status.get()}</p>
        </div>
    }
}
