//! The three transport adapters. Each one only turns what a [`Subscription`] yields into its
//! wire format; where a reader starts, what it missed and when it is reset are decided
//! once, in [`crate::log`].
//!
//! [`Subscription`]: crate::log::Subscription

pub mod poll;
pub mod sse;
pub mod ws;
pub mod wsframe;

use crate::error::ApiError;
use crate::AppState;
use app::protocol::StreamSet;
use serde::Deserialize;
use std::time::Duration;
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};

/// Query parameters shared by `/api/sse` and `/api/ws`.
#[derive(Deserialize)]
pub struct SubscribeParams {
    pub streams: Option<String>,
    pub since: Option<u64>,
    /// Admin token for WebSocket publishing to feed/ticker (browsers cannot set headers
    /// on a WebSocket upgrade).
    pub token: Option<String>,
}

pub fn streams(list: Option<&str>) -> Result<StreamSet, ApiError> {
    StreamSet::parse(list).map_err(ApiError::BadRequest)
}

/// The heartbeat of a long-lived stream (SSE comment, WS ping): first one after a full
/// period, and a late tick is not made up for.
pub fn heartbeat(state: &AppState) -> Interval {
    let period = Duration::from_secs(state.config.heartbeat_secs.max(1));
    let mut ticks = interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}
