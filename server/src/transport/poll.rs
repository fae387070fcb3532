//! `GET /api/poll?streams=..&since=ID[&wait=S][&limit=N]`: short and long polling.

use crate::api::Query;
use crate::error::ApiError;
use crate::log::{Page, Read};
use crate::AppState;
use app::protocol::{PollQuery, PollResponse};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;
use std::time::Duration;

pub const MAX_WAIT_SECS: u64 = 30;
pub const DEFAULT_LIMIT: usize = 500;
pub const MAX_LIMIT: usize = 1000;

pub async fn handler(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Query(p): Query<PollQuery>,
) -> Result<Response, ApiError> {
    crate::metrics::lab::POLLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let who = state.identify(&headers, p.token.as_deref());
    let filter = state.filter_for(super::streams(p.streams.as_deref())?, &who)?;
    let wait = p.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(ApiError::BadRequest(format!(
            "wait must be between 0 and {MAX_WAIT_SECS} seconds"
        )));
    }
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    // A valid poll by a signed-in reader of chat keeps its account online for a while.
    if let Some(user) = state.online_in_chat(&filter) {
        state.presence.touch(&user);
    }
    // No cursor: the client starts from "now" and gets no backlog.
    let Some(since) = p.since else {
        return Ok(json(encode(&Read::Events(Page {
            events: vec![],
            cursor: state.log.latest(),
            more: false,
        }))));
    };

    // Answered from the in-memory window only: an empty poll never touches the store.
    state.catch_up(since).await;
    let mut read = state.log.read(since, &filter, limit);
    if let Read::Events(Page { events, cursor, .. }) = &read {
        if events.is_empty() && wait > 0 {
            let mut sub = state.subscribe(filter.clone(), Some(*cursor)).await?;
            let _open = crate::metrics::OpenStream::new("long_poll");
            // A signed-in wait ends with its session: nothing private goes out after it.
            let expired = tokio::select! {
                _ = sub.next(limit) => false,
                _ = tokio::time::sleep(Duration::from_secs(wait)) => false,
                _ = state.shutdown.cancelled() => false,
                _ = crate::auth::session_end(who.user().map(|v| v.deadline())) => true,
            };
            if !expired {
                read = state.log.read(*cursor, &filter, limit);
            }
        }
    }
    // The lease runs from the answer: a long wait or a slow one must not let it lapse.
    if let Some(user) = state.online_in_chat(&filter) {
        state.presence.touch(&user);
    }
    match &read {
        Read::Events(Page { events, .. }) => {
            crate::metrics::lab::DELIVERED
                .fetch_add(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("tidings_events_delivered_total", "transport" => "poll")
                .increment(events.len() as u64)
        }
        Read::Reset { .. } => {
            metrics::counter!("tidings_resets_total", "transport" => "poll").increment(1)
        }
    }
    Ok(json(encode(&read)))
}

fn json(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Writes the body from the events' stored JSON (no per-poll serialisation of events).
fn encode(read: &Read<Page>) -> Vec<u8> {
    let body: PollResponse<&RawValue> = match read {
        Read::Reset { cursor } => PollResponse {
            events: vec![],
            cursor: *cursor,
            more: false,
            reset: true,
        },
        Read::Events(Page {
            events,
            cursor,
            more,
        }) => PollResponse {
            events: events.iter().map(|e| &*e.json).collect(),
            cursor: *cursor,
            more: *more,
            reset: false,
        },
    };
    let size = 64 + body.events.iter().map(|e| e.get().len() + 1).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    serde_json::to_writer(&mut out, &body).expect("wire types serialise");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_bodies_parse_as_poll_responses() {
        let r: PollResponse = serde_json::from_slice(&encode(&Read::Reset { cursor: 5 })).unwrap();
        assert_eq!((r.reset, r.cursor, r.events.len()), (true, 5, 0));
        let r: PollResponse = serde_json::from_slice(&encode(&Read::Events(Page {
            events: vec![],
            cursor: 9,
            more: true,
        })))
        .unwrap();
        assert_eq!((r.reset, r.cursor, r.more), (false, 9, true));
    }
}
