//! The HTTP endpoints that are not transports: publish, history, health and the Leptos
//! server function; plus the origin and admin-token rules every entry point shares.

use crate::error::ApiError;
use crate::log::StoredEvent;
use crate::AppState;
use app::info::InfoSource;
use app::protocol::{parse_publish, Payload, ServerInfo, Stream};
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;
use tower_http::cors::{AllowOrigin, CorsLayer};

impl AppState {
    /// The one publish path (HTTP, WebSocket and the simulators all come through here).
    /// `payload` is already validated; `admin` says whether the caller showed the token.
    pub async fn publish(
        &self,
        payload: Payload,
        admin: bool,
    ) -> Result<Arc<StoredEvent>, ApiError> {
        if payload.stream() != Stream::Chat && self.config.admin_token.is_some() && !admin {
            return Err(ApiError::Unauthorized);
        }
        Ok(self.engine.publish(payload).await?)
    }

    /// A subscription for a streaming transport or a waiting long poll, from `cursor` (after
    /// catching up to it) or from now. It holds one of the `--max-streams` permits for as long
    /// as it lives; when none is left the client gets a 503 instead of exhausting the
    /// server's file descriptors for everyone.
    pub async fn subscribe(
        &self,
        filter: app::protocol::StreamSet,
        cursor: Option<u64>,
    ) -> Result<crate::log::Subscription, ApiError> {
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            ApiError::Unavailable(
                "this server holds as many open streams as it is allowed; try again later".into(),
            )
        })?;
        let cursor = match cursor {
            Some(c) => {
                self.catch_up(c).await;
                c
            }
            None => self.log.latest(),
        };
        Ok(self.log.subscribe(filter, cursor).with_permit(permit))
    }

    /// Where a reader with `cursor` can start. In cluster mode a client may arrive with a
    /// cursor from another server whose events this server's window has not received yet
    /// (it is milliseconds behind Redis): wait for them briefly rather than reset a client
    /// that missed nothing. A cursor beyond the cluster's head is left alone: it gets a reset.
    pub async fn catch_up(&self, cursor: u64) {
        if cursor <= self.log.latest() {
            return;
        }
        match self.engine.head().await {
            Some(head) if cursor <= head => {
                self.log
                    .wait_for(cursor, std::time::Duration::from_secs(3))
                    .await;
            }
            _ => {}
        }
    }

    /// Whether `presented` is the admin token (compared in constant time).
    pub fn is_admin(&self, presented: Option<&str>) -> bool {
        match (&self.config.admin_token, presented) {
            (Some(token), Some(p)) => {
                let (a, b) = (token.as_bytes(), p.as_bytes());
                a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
            }
            _ => false,
        }
    }

    pub fn info(&self) -> ServerInfo {
        ServerInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            latest_id: self.log.latest(),
            oldest_id: self.log.oldest(),
            retention: self.log.retention(),
            demo: !self.config.no_demo,
            admin_protected: self.config.admin_token.is_some(),
            demo_leader: !self.config.no_demo
                && self.demo_leader.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// A browser's `Origin` is acceptable when it is this server's own origin (same
    /// host:port as the request's `Host`) or one of `--allow-origin`. Requests without an
    /// `Origin` (curl, native clients) are not browser cross-origin requests and pass.
    pub fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
            return true;
        };
        let own = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|host| {
                origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"))
                    == Some(host)
            });
        own || self
            .config
            .allow_origins
            .iter()
            .any(|a| a.trim_end_matches('/') == origin)
    }
}

/// `Authorization: Bearer <token>`, if present.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// CORS for the `--allow-origin` list (none: same-origin only, no CORS headers).
pub fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
        .collect();
    if list.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(list))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                header::HeaderName::from_static("last-event-id"),
            ]),
    )
}

/// Maps a query-string rejection to our JSON 400.
pub fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))
}

/// `POST /api/publish` with `{"stream": ..., "data": {...}}` -> `201` and the stored event.
pub async fn publish(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::from(app::protocol::PublishError::TooLarge),
        _ => ApiError::BadRequest(format!(
            "could not read the request body: {}",
            e.body_text()
        )),
    })?;
    let payload = parse_publish(&body)?;
    let admin = state.is_admin(bearer(&headers));
    let event = state.publish(payload, admin).await?;
    Ok((
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        event.json.clone(),
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct HistoryParams {
    stream: Option<String>,
    before: Option<u64>,
    limit: Option<usize>,
}

/// `GET /api/history?stream=chat[&before=ID][&limit=N]`: full history from the store.
pub async fn history(
    State(state): State<AppState>,
    q: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = query(q)?;
    let name = p
        .stream
        .ok_or_else(|| ApiError::BadRequest("missing query parameter `stream`".into()))?;
    let stream = Stream::parse(&name).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "unknown stream '{name}' (expected one of: feed, chat, ticker)"
        ))
    })?;
    let limit = p.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 200".into(),
        ));
    }
    let events = state
        .engine
        .history(stream, p.before.unwrap_or(u64::MAX), limit)
        .await
        .map_err(|err| {
            tracing::error!(%err, "history query failed");
            ApiError::Unavailable("history is unavailable right now".into())
        })?;
    Ok(axum::Json(app::protocol::HistoryResponse { events }).into_response())
}

/// `GET /healthz`: liveness. Embedded mode: 200 when the store answers. Cluster mode: 200
/// while the process serves (a Redis outage is a readiness matter, see `/readyz`).
pub async fn healthz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if let crate::engine::Engine::Embedded { .. } = state.engine {
        return readyz(State(state)).await;
    }
    Ok("ok")
}

/// `GET /readyz`: 200 when this server can publish and deliver (store or Redis reachable
/// and, in cluster mode, the tail current); 503 otherwise. For load-balancer health checks.
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.engine.ready().await.map_err(|err| {
        tracing::warn!(%err, "not ready");
        ApiError::Unavailable(format!("not ready: {err}"))
    })?;
    Ok("ok")
}

/// Leptos server functions (`app::info::get_server_info`), with the server's state reachable
/// from them through context.
pub async fn server_fn(State(state): State<AppState>, req: Request<Body>) -> impl IntoResponse {
    let source = InfoSource(Arc::new(move || state.info()));
    leptos_axum::handle_server_fns_with_context(
        move || leptos::context::provide_context(source.clone()),
        req,
    )
    .await
}

/// `GET` on an unknown `/api/...` path (the wildcard is there for server functions).
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint; see docs/protocol.md".into())
}
