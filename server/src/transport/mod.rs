//! The three transport adapters. Each one only turns what a [`Subscription`] yields into its
//! wire format; where a reader starts, what it missed and when it is reset are decided
//! once, in [`crate::log`].
//!
//! [`Subscription`]: crate::log::Subscription

pub mod poll;
pub mod sse;
pub mod ws;

use crate::error::ApiError;
use crate::AppState;
use app::protocol::StreamSet;
pub use app::protocol::SubscribeQuery as SubscribeParams;
use std::time::Duration;
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};

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
