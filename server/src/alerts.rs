//! Price alerts (issue #10): an account's rules on the ticker's symbols ("ACME above 120"),
//! checked on every price the server publishes. A rule fires once per crossing: it is armed
//! when made (or edited), fires a notification and disarms when a price meets it, and arms
//! again when a price is back on the other side. Disarming is one atomic step in the store
//! (SQLite `UPDATE ... WHERE armed = 1`, Redis `HDEL`), so with many servers a crossing still
//! notifies once.

use crate::auth::{Identity, Via};
use crate::error::ApiError;
use crate::state::Caller;
use crate::AppState;
use app::protocol::{AlertRule, NewAlert, Notice, Payload, Tick, MAX_ALERTS};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Who may change alerts: a signed-in account, and with a cookie only from an allowed origin.
fn account(state: &AppState, headers: &HeaderMap, change: bool) -> Result<String, ApiError> {
    let who = state.identify(headers, None);
    let name = who.require("manage price alerts")?.name.to_string();
    if change && matches!(who, Identity::User(_, Via::Cookie)) && !state.origin_allowed(headers) {
        return Err(ApiError::Forbidden(
            "this origin may not change this account's alerts".into(),
        ));
    }
    Ok(name)
}

async fn parse(state: &AppState, body: axum::body::Body) -> Result<NewAlert, ApiError> {
    let body = crate::api::read_body(state, body, 1024).await?;
    let alert: NewAlert = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "expected {{\"symbol\": \"ACME\", \"op\": \"above\" or \"below\", \"price\": 120}}: {e}"
        ))
    })?;
    alert.validate().map_err(ApiError::Unprocessable)
}

/// `GET /api/alerts`: the account's rules.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<AlertRule>>, ApiError> {
    let user = account(&state, &headers, false)?;
    Ok(Json(state.engine.alerts_of(&user).await?))
}

/// `POST /api/alerts` `{"symbol", "op", "price"}`: 201 with the rule (armed).
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let user = account(&state, &headers, true)?;
    let alert = parse(&state, body).await?;
    if state.engine.alerts_of(&user).await?.len() >= MAX_ALERTS {
        return Err(ApiError::Unprocessable(format!(
            "An account has at most {MAX_ALERTS} price alerts; remove one first"
        )));
    }
    let rule = state.engine.create_alert(&user, &alert).await?;
    Ok((StatusCode::CREATED, Json(rule)).into_response())
}

/// `PUT /api/alerts/{id}` `{"symbol", "op", "price"}`: the rule changed and armed again.
pub async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    body: axum::body::Body,
) -> Result<Json<AlertRule>, ApiError> {
    let user = account(&state, &headers, true)?;
    let alert = parse(&state, body).await?;
    state
        .engine
        .update_alert(&user, id, &alert)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no price alert {id} of yours")))
}

/// `DELETE /api/alerts/{id}`: 204.
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Result<StatusCode, ApiError> {
    let user = account(&state, &headers, true)?;
    if state.engine.delete_alert(&user, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no price alert {id} of yours")))
    }
}

/// Prices waiting to be checked, in the order they were stored.
pub type Queue = tokio::sync::mpsc::Sender<(u64, Tick)>;

/// How many stored prices may wait for their check (a slow store holds them here; past
/// this, a price is not checked and the next one is).
pub const QUEUE: usize = 1024;

/// Queues a stored price for checking (see [`run`]).
pub fn check(state: &AppState, event_id: u64, tick: Tick) {
    if state.alert_queue.try_send((event_id, tick)).is_err() {
        tracing::warn!("price alerts are behind; a price was not checked");
    }
}

/// Checks stored prices against the rules on their symbols, one price at a time and in
/// order: rules a price meets fire (once: the store disarms each atomically) and rules it
/// no longer meets arm again. One at a time because order matters: checked concurrently,
/// a later price could fire a rule first (reporting the wrong price), or an earlier price's
/// re-arm could land after a later price's check and leave a met rule armed.
pub async fn run(state: AppState, mut prices: tokio::sync::mpsc::Receiver<(u64, Tick)>) {
    loop {
        // It holds the state (and so the queue's sender): it ends on shutdown, not when
        // the queue closes.
        let (event_id, tick) = tokio::select! {
            next = prices.recv() => match next {
                Some(p) => p,
                None => return,
            },
            _ = state.shutdown.cancelled() => return,
        };
        let rules = match state.engine.alerts_on(&tick.symbol.to_uppercase()).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(symbol = tick.symbol, "price alerts unavailable");
                continue;
            }
        };
        for (user, rule) in rules {
            let met = rule.is_met(tick.price);
            if met && rule.armed {
                match state.engine.disarm_alert(&rule.symbol, rule.id).await {
                    Ok(true) => {}
                    // Another server fired it (or the store failed): nothing to send.
                    Ok(false) | Err(_) => continue,
                }
                let notice = Notice {
                    to: user,
                    kind: "alert".into(),
                    text: format!(
                        "{} is {} {} (now {:.2})",
                        rule.symbol, rule.op, rule.price, tick.price
                    ),
                    about: Some(event_id),
                };
                if let Err(e) = state
                    .publish(Payload::Notifications(notice), None, &Caller::SERVER)
                    .await
                {
                    tracing::warn!(error = %e.message(), "price alert not delivered");
                }
            } else if !met && !rule.armed {
                let _ = state.engine.arm_alert(&rule.symbol, rule.id).await;
            }
        }
    }
}
