//! The demo simulators: a newsroom that files a story every ~20 s and a ticker that moves
//! five symbols a few times a second. They publish through the same path as any client.
//! In cluster mode every server runs them, but only the holder of the Redis demo lease
//! publishes, so a cluster has one newsroom and one ticker, and a new leader takes over
//! within seconds when the old one dies.

use crate::state::Caller;
use crate::AppState;
use app::protocol::{FeedItem, Payload, Tick};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::Ordering;
use std::time::Duration;

const HEADLINES: &[(&str, &str, &str)] = &[
    (
        "Harbour bridge reopens after repairs",
        "Traffic is flowing again across the old harbour bridge, two weeks ahead of schedule.",
        "City desk",
    ),
    (
        "Local bakery wins national award",
        "The family-run bakery on Mill Street took first prize for its rye loaf.",
        "Features",
    ),
    (
        "Rain expected through the weekend",
        "Forecasters expect steady rain until Monday; river levels are being watched.",
        "Weather",
    ),
    (
        "Council approves new cycle lanes",
        "Twelve kilometres of protected lanes will be built over the next two years.",
        "Politics",
    ),
    (
        "Library extends opening hours",
        "The central library will open until 10 pm on weekdays from next month.",
        "City desk",
    ),
    (
        "Startup ships realtime feeds in Rust",
        "A small team shows polling, SSE and WebSockets side by side.",
        "Tech",
    ),
    (
        "Football club signs young striker",
        "The 19-year-old joins on a three-year contract.",
        "Sport",
    ),
    (
        "Night market returns to the square",
        "Food stalls and live music every Friday through the summer.",
        "Culture",
    ),
];

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
    let mut i = rng.random_range(0..HEADLINES.len());
    loop {
        if !state.demo_leader.load(Ordering::Relaxed) {
            // Another server holds the demo lease; look again shortly.
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
        }
        let (title, body, author) = HEADLINES[i % HEADLINES.len()];
        i += 1;
        let item = FeedItem {
            title: title.into(),
            body: body.into(),
            author: author.into(),
        };
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

async fn ticker(state: AppState) {
    let mut rng = StdRng::from_os_rng();
    let mut prices: Vec<f64> = SYMBOLS.iter().map(|(_, p)| *p).collect();
    loop {
        let wait = Duration::from_millis(rng.random_range(200..500));
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let k = rng.random_range(0..SYMBOLS.len());
        let old = prices[k];
        // A small random walk, kept above zero.
        let new = (old * (1.0 + rng.random_range(-0.01..0.01))).max(0.01);
        prices[k] = (new * 100.0).round() / 100.0;
        let change = ((prices[k] - SYMBOLS[k].1) * 100.0).round() / 100.0;
        let tick = Tick {
            symbol: SYMBOLS[k].0.into(),
            price: prices[k],
            change,
        };
        if !state.demo_leader.load(Ordering::Relaxed) {
            continue;
        }
        if let Err(e) = state
            .publish(Payload::Ticker(tick), None, &Caller::SERVER)
            .await
        {
            tracing::warn!(error = e.message(), "ticker could not publish");
        }
    }
}
