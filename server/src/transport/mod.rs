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
use app::protocol::StreamSet;
use serde::Deserialize;

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
