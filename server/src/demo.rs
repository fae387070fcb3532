//! The demo simulators: a newsroom that files a story every ~20 s and a ticker that moves
//! five symbols a few times a second, continuing from the last stored prices after a
//! restart (with `change` against the UTC day's opening price). They publish through the same path as any client.
//! In cluster mode every server runs them, but only the holder of the Redis demo lease
//! publishes, so a cluster has one newsroom and one ticker, and a new leader takes over
//! within seconds when the old one dies.

use crate::engine::now_ms;
use crate::state::Caller;
use crate::AppState;
use app::protocol::{FeedItem, Payload, Stream, Tick};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The newsroom writes from templates: `{p}` is a place, `{n}` a number. With 24 templates,
/// 12 places and varied numbers a reader sees no repeat for hours, and the last stories
/// published (read back on start) are never filed again right away, also across restarts.
const TEMPLATES: &[(&str, &str, &str)] = &[
    (
        "{p} bridge reopens after repairs",
        "Traffic is flowing again across the bridge in {p}, {n} days ahead of schedule.",
        "City desk",
    ),
    (
        "{p} bakery wins national award",
        "The family-run bakery in {p} took first prize for its rye loaf, beating {n} entries.",
        "Features",
    ),
    (
        "Rain expected in {p} through the weekend",
        "Steady rain in {p} until Monday; {n} volunteers are filling sandbags by the river.",
        "Weather",
    ),
    (
        "Council approves new cycle lanes in {p}",
        "Protected lanes will be built in {p} over two years; {n} residents wrote in support.",
        "Politics",
    ),
    (
        "{p} library extends opening hours",
        "The library in {p} will open until 10 pm on weekdays; {n} readers signed the petition.",
        "City desk",
    ),
    (
        "Startup in {p} ships realtime feeds in Rust",
        "{n} developers watched polling, SSE and WebSockets side by side.",
        "Tech",
    ),
    (
        "{p} football club signs young striker",
        "The 19-year-old joins on a three-year contract; {n} fans watched the first training.",
        "Sport",
    ),
    (
        "Night market returns to {p}",
        "{n} food stalls and live music every Friday through the summer.",
        "Culture",
    ),
    (
        "{p} school garden feeds its canteen",
        "Pupils in {p} grew {n} kg of vegetables this term.",
        "Features",
    ),
    (
        "New ferry route links {p} to the islands",
        "{n} residents rode the first crossing for free.",
        "Transport",
    ),
    (
        "{p} marathon draws record field",
        "{n} runners start on Sunday; roads close from 7 am.",
        "Sport",
    ),
    (
        "Power cut hits {p} for two hours",
        "About {n} homes in {p} lost power after a cable fault; supply is restored.",
        "City desk",
    ),
    (
        "{p} museum opens its archive online",
        "{n} photographs from the city's past can now be browsed for free.",
        "Culture",
    ),
    (
        "Heat wave: {p} opens cooling centres",
        "Libraries and halls in {p} stay open late; {n} volunteers check on older neighbours.",
        "Weather",
    ),
    (
        "{p} hospital adds night clinic",
        "The clinic will see up to {n} patients a night without an appointment.",
        "Health",
    ),
    (
        "Tram extension to {p} approved",
        "{n} residents spoke at the final hearing; it opens in three years.",
        "Transport",
    ),
    (
        "{p} recycling rate hits new high",
        "Households in {p} recycled {n} tonnes more than the year before.",
        "Environment",
    ),
    (
        "Jazz festival returns to {p}",
        "{n} concerts over four days, a third of them free.",
        "Culture",
    ),
    (
        "{p} harbour welcomes tall ships",
        "{n} sailing ships are moored in {p} until Tuesday.",
        "City desk",
    ),
    (
        "Chess club in {p} wins league",
        "The club's {n} members celebrated unbeaten at the town hall.",
        "Sport",
    ),
    (
        "{p} opens its first repair café",
        "Volunteers fixed {n} appliances on the first afternoon.",
        "Features",
    ),
    (
        "Water main replaced under {p} high street",
        "Works affect {n} households for a fortnight; shops stay open.",
        "City desk",
    ),
    (
        "{p} park gets 300 new trees",
        "{n} volunteers planted them on Saturday.",
        "Environment",
    ),
    (
        "Coding club in {p} builds a live scoreboard",
        "{n} teenagers wrote it over WebSockets in a weekend.",
        "Tech",
    ),
];

const PLACES: &[&str] = &[
    "Northgate",
    "Riverside",
    "Old Town",
    "Harbourside",
    "Westfield",
    "Millbrook",
    "Eastcliff",
    "Kingsmoor",
    "Southbay",
    "Ashford",
    "Greenhill",
    "Lowmarsh",
];

/// How many recent titles the newsroom refuses to repeat.
const NO_REPEAT: usize = 40;

const SYMBOLS: &[(&str, f64)] = &[
    ("TIDE", 42.0),
    ("RUST", 118.5),
    ("AXUM", 23.75),
    ("LEPT", 64.2),
    ("WASM", 9.9),
];

pub fn spawn(state: AppState) {
    tokio::spawn(newsroom(state.clone()));
    tokio::spawn(ticker(state));
}

async fn newsroom(state: AppState) {
    let mut rng = StdRng::from_os_rng();
    // What was filed recently (also before a restart, or by another server of the cluster).
    let mut recent: VecDeque<String> = match state
        .engine
        .history(Stream::Feed, None, u64::MAX, NO_REPEAT)
        .await
    {
        Ok(events) => events
            .into_iter()
            .filter_map(|e| match e.payload {
                Payload::Feed(f) => Some(f.title),
                _ => None,
            })
            .collect(),
        Err(_) => VecDeque::new(),
    };
    loop {
        if !state.demo_leader.load(Ordering::Relaxed) {
            // Another server holds the demo lease; look again shortly.
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
        }
        let item = story(&mut rng, &recent);
        recent.push_back(item.title.clone());
        if recent.len() > NO_REPEAT {
            recent.pop_front();
        }
        if let Err(e) = state
            .publish(Payload::Feed(item), None, &Caller::SERVER)
            .await
        {
            tracing::warn!(error = e.message(), "newsroom could not publish");
        }
        let wait = Duration::from_millis(rng.random_range(15_000..25_000));
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// A story whose title is not among `recent` (a few tries; 288 titles make a clash rare).
fn story(rng: &mut StdRng, recent: &VecDeque<String>) -> FeedItem {
    loop {
        let (title, body, author) = TEMPLATES[rng.random_range(0..TEMPLATES.len())];
        let place = PLACES[rng.random_range(0..PLACES.len())];
        let n = rng.random_range(3..400).to_string();
        let fill = |t: &str| t.replace("{p}", place).replace("{n}", &n);
        let item = FeedItem {
            title: fill(title),
            body: fill(body),
            author: author.into(),
        };
        if !recent.contains(&item.title) {
            return item;
        }
    }
}

/// One symbol's state: its price and the day's opening price (the basis of `change`).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Quote {
    price: f64,
    open: f64,
    /// The UTC day (days since the epoch) `open` belongs to.
    day: u64,
}

fn utc_day(ts_ms: u64) -> u64 {
    ts_ms / 86_400_000
}

/// The quotes to continue from: the last stored price of each symbol (so a restart, or a new
/// leader in a cluster, does not jump back to the listing price) and its day's open.
async fn last_quotes(state: &AppState) -> Vec<Quote> {
    let today = utc_day(now_ms());
    let mut quotes: Vec<Quote> = SYMBOLS
        .iter()
        .map(|(_, p)| Quote {
            price: *p,
            open: *p,
            day: today,
        })
        .collect();
    let events = state
        .engine
        .history(Stream::Ticker, None, u64::MAX, 200)
        .await
        .unwrap_or_default();
    for e in events {
        let Payload::Ticker(t) = e.payload else {
            continue;
        };
        let Some(k) = SYMBOLS.iter().position(|(s, _)| *s == t.symbol) else {
            continue;
        };
        let day = utc_day(e.ts);
        quotes[k] = Quote {
            price: t.price,
            open: t.open.unwrap_or(t.price),
            day,
        };
    }
    quotes
}

/// Moves one quote by `factor` at time `now_ms`; the first move of a new UTC day opens it
/// at the previous close.
fn step(q: Quote, factor: f64, now_ms: u64) -> Quote {
    let day = utc_day(now_ms);
    let open = if day != q.day { q.price } else { q.open };
    // A small random walk in cents, kept above zero.
    let price = ((q.price * factor).max(0.01) * 100.0).round() / 100.0;
    Quote { price, open, day }
}

async fn ticker(state: AppState) {
    let mut rng = StdRng::from_os_rng();
    let mut quotes = last_quotes(&state).await;
    let mut leading = true;
    loop {
        let wait = Duration::from_millis(rng.random_range(200..500));
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if !state.demo_leader.load(Ordering::Relaxed) {
            leading = false;
            continue;
        }
        if !leading {
            // Just took over from another server: continue from its last prices.
            quotes = last_quotes(&state).await;
            leading = true;
        }
        let k = rng.random_range(0..SYMBOLS.len());
        let q = step(quotes[k], 1.0 + rng.random_range(-0.01..0.01), now_ms());
        quotes[k] = q;
        let tick = Tick {
            symbol: SYMBOLS[k].0.into(),
            price: q.price,
            change: ((q.price - q.open) * 100.0).round() / 100.0,
            open: Some(q.open),
        };
        if let Err(e) = state
            .publish(Payload::Ticker(tick), None, &Caller::SERVER)
            .await
        {
            tracing::warn!(error = e.message(), "ticker could not publish");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stories_do_not_repeat_recent_titles() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut recent = VecDeque::new();
        for _ in 0..NO_REPEAT {
            let s = story(&mut rng, &recent);
            assert!(!recent.contains(&s.title), "{} repeated", s.title);
            assert!(!s.title.contains('{') && !s.body.contains('{'), "{s:?}");
            recent.push_back(s.title);
        }
    }

    #[test]
    fn a_new_utc_day_opens_at_the_previous_close() {
        let day = 20_000 * 86_400_000;
        let q = Quote {
            price: 100.0,
            open: 90.0,
            day: 19_999,
        };
        let moved = step(q, 1.01, day + 5);
        assert_eq!((moved.open, moved.day, moved.price), (100.0, 20_000, 101.0));
        let same_day = step(moved, 1.0, day + 10);
        assert_eq!(
            same_day.open, 100.0,
            "the open holds for the rest of the day"
        );
    }
}
