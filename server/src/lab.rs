//! The transport lab's load generator: events on the `lab` stream at a chosen rate, so the
//! differences between transports show. `POST /api/lab/load` controls it.
//!
//! It must not become an abuse vector: it exists only on servers started with
//! `--admin-token` and answers only that token; the rate is at most [`MAX_RATE`]/s; a burst
//! is [`BURST`] events at most once per [`BURST_EVERY`]; and it stops by itself unless the
//! lab page keeps it alive (the page repeats its setting every 10 s; after [`KEEPALIVE`]
//! without one, nothing more is generated). Only the generator writes the `lab` stream.
//!
//! In cluster mode each server has its own generator: behind a round-robin balancer the
//! lab's keep-alives reach several, so the rate seen can be a multiple of the one set (at
//! most the number of servers).

use crate::engine::now_ms;
use crate::error::ApiError;
use crate::state::Caller;
use crate::AppState;
use app::protocol::{LabTick, Payload};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

pub const MAX_RATE: u32 = 50;
pub const BURST: u64 = 100;
const BURST_EVERY: u64 = 5_000;
const KEEPALIVE: u64 = 30_000;

#[derive(Default)]
pub struct LabLoad {
    rate: AtomicU32,
    /// Generating stops after this (ms since the epoch) unless a keep-alive moves it.
    until: AtomicU64,
    last_burst: AtomicU64,
    n: AtomicU64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Events per second, 0 to stop.
    pub rate: Option<u32>,
    /// Publish a burst of 100 now.
    #[serde(default)]
    pub burst: bool,
}

#[derive(Serialize)]
pub struct Status {
    pub rate: u32,
    /// Events generated so far (all runs).
    pub generated: u64,
}

/// `POST /api/lab/load` with `{"rate": 0..=50}` and/or `{"burst": true}`, admin token only.
pub async fn handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Status>, ApiError> {
    if state.config.admin_token.is_none() {
        return Err(ApiError::NotFound(
            "the lab's load generator is off on this server; start the server with \
             --admin-token to enable it"
                .into(),
        ));
    }
    if !state.is_admin(crate::api::bearer(&headers)) {
        return Err(ApiError::Unauthorized);
    }
    let control: Control = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "expected {{\"rate\": 0..{MAX_RATE}}} and/or {{\"burst\": true}}: {e}"
        ))
    })?;
    let lab = &state.lab;
    let now = now_ms();
    if let Some(rate) = control.rate {
        if rate > MAX_RATE {
            return Err(ApiError::BadRequest(format!(
                "rate is {rate} events/s; the most is {MAX_RATE}"
            )));
        }
        lab.rate.store(rate, Relaxed);
    }
    lab.until.store(now + KEEPALIVE, Relaxed);
    if control.burst {
        let last = lab.last_burst.load(Relaxed);
        if now.saturating_sub(last) < BURST_EVERY {
            return Err(ApiError::RateLimited(Duration::from_millis(
                BURST_EVERY - now.saturating_sub(last),
            )));
        }
        lab.last_burst.store(now, Relaxed);
        let state = state.clone();
        tokio::spawn(async move {
            for _ in 0..BURST {
                publish(&state).await;
            }
        });
    }
    Ok(Json(Status {
        rate: lab.rate.load(Relaxed),
        generated: lab.n.load(Relaxed),
    }))
}

async fn publish(state: &AppState) {
    let n = state.lab.n.fetch_add(1, Relaxed) + 1;
    if let Err(e) = state
        .publish(Payload::Lab(LabTick { n }), None, &Caller::SERVER)
        .await
    {
        tracing::warn!(error = e.message(), "lab load could not publish");
    }
}

/// The generator: idle (a check every 250 ms) unless a rate is set and kept alive.
pub fn spawn(state: AppState) {
    tokio::spawn(async move {
        loop {
            let rate = state.lab.rate.load(Relaxed);
            let alive = now_ms() < state.lab.until.load(Relaxed);
            let wait = if rate > 0 && alive {
                publish(&state).await;
                Duration::from_millis(1_000 / u64::from(rate))
            } else {
                Duration::from_millis(250)
            };
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
}
