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
use bytes::Bytes;
use std::time::Duration;
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};

/// How a streaming transport puts one event on the wire, given its id and JSON. Made once
/// per event, when it enters the log; every connection of that transport then copies the
/// same bytes.
pub type Encoding = fn(id: u64, json: &serde_json::value::RawValue) -> Bytes;

/// The encodings the log makes for every event, one per streaming transport; each
/// transport's `ENCODING` is its index here.
pub const ENCODINGS: [Encoding; 2] = [sse::encode_event, ws::encode_event];

/// Writes `bytes` for a streaming transport, giving up on a client that has not taken them
/// within `limit`: it stopped reading, and holding its connection would only hold memory (it
/// resumes from its cursor when it reconnects). Counted as a slow-consumer close of
/// `transport`.
pub async fn write_or_drop(
    io: &mut (impl tokio::io::AsyncWrite + Unpin),
    bytes: &[u8],
    limit: Duration,
    transport: &'static str,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    match tokio::time::timeout(limit, io.write_all(bytes)).await {
        Ok(result) => result,
        Err(_) => {
            metrics::counter!("tidings_slow_consumer_closes_total", "transport" => transport)
                .increment(1);
            tracing::debug!(transport, "dropping a client that stopped reading");
            Err(std::io::ErrorKind::TimedOut.into())
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_are_the_wire_formats() {
        let json = r#"{"id":7,"ts":1,"stream":"chat","data":{"author":"a","body":"b"}}"#;
        let raw = serde_json::value::RawValue::from_string(json.into()).unwrap();
        let sse = ENCODINGS[sse::ENCODING](7, &raw);
        assert_eq!(sse, format!("id: 7\ndata: {json}\n\n"));
        // A FIN text frame with a 7-bit length, then the message.
        let ws = ENCODINGS[ws::ENCODING](7, &raw);
        assert_eq!((ws[0], ws[1] as usize), (0x81, ws.len() - 2));
        let frame: app::protocol::ServerFrame = serde_json::from_slice(&ws[2..]).unwrap();
        assert!(matches!(frame, app::protocol::ServerFrame::Event { event } if event.id == 7));
    }
}
