//! The HTTP endpoints that are not transports: publish, history, health, metrics and the
//! Leptos server function; and the extractors every handler shares.

use crate::auth::{Identity, Via};
use crate::error::ApiError;
use crate::limits::ClientAddr;
use crate::state::Caller;
use crate::AppState;
use app::info::InfoSource;
use app::protocol::{
    parse_publish, valid_idempotency_key, HistoryQuery, Snapshot, SnapshotQuery, Stream,
    MAX_PUBLISH_BYTES, MAX_SNAPSHOT_EVENTS, MAX_SNAPSHOT_TOTAL,
};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// A query string, refused with our JSON 400 when it does not parse.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> ApiError {
        ApiError::BadRequest(format!("invalid query: {}", e.body_text()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    /// Set by the accept loop on every request. A request that did not come through it
    /// (a `Router::oneshot` test) is attributed to the unspecified address.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<ClientAddr, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientAddr>()
            .copied()
            .unwrap_or(ClientAddr(std::net::Ipv4Addr::UNSPECIFIED.into())))
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
                header::HeaderName::from_static("idempotency-key"),
            ])
            // What a cross-origin script may read of an answer beyond the basics.
            .expose_headers([
                header::RETRY_AFTER,
                header::HeaderName::from_static("idempotent-replayed"),
            ]),
    )
}

/// `POST /api/publish` with `{"stream": ..., "data": {...}}` -> `201` and the stored event.
/// With an `Idempotency-Key` header, a retry of the same publish answers `201` with the
/// event stored the first time.
pub async fn publish(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(&state, body, MAX_PUBLISH_BYTES).await?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let key = v.to_str().map_err(|_| {
                ApiError::BadRequest("Idempotency-Key must be visible ASCII".into())
            })?;
            valid_idempotency_key(key)?;
            Some(key.to_owned())
        }
    };
    let payload = parse_publish(&body)?;
    let who = state.identify(&headers, None);
    // A chat message from a session that is not valid (expired) is refused, not posted
    // anonymously; on the admin's streams a wrong token is answered by the admin rule.
    if let (Identity::Refused(e), Stream::Chat) = (&who, payload.stream()) {
        return Err(e.into_api());
    }
    // A cookie is sent by the browser whatever page asks: a state change that relies on it
    // must come from an allowed origin (a cross-site form or fetch is refused).
    if matches!(who, Identity::User(_, Via::Cookie)) && !state.origin_allowed(&headers) {
        return Err(ApiError::Forbidden(
            "this origin may not publish with this browser's session".into(),
        ));
    }
    let caller = Caller {
        admin: state.is_admin(bearer(&headers)),
        client: Some(client),
        user: who.user().map(|v| v.name.clone()),
        refused: None,
    };
    let (event, replayed) = state.publish(payload, key, &caller).await?;
    let mut response = created(&event);
    if replayed {
        // As Stripe does: the answer is the stored one, not a new event.
        response.headers_mut().insert(
            header::HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// `201 Created` with a stored event's JSON as it is: the answer to every request that
/// stores one (a publish, a broadcast, a read mark).
pub fn created(event: &crate::log::StoredEvent) -> Response {
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        event.json.get().to_owned(),
    )
        .into_response()
}

/// A request body of at most `max` bytes, within the head deadline too: a client
/// trickling it a byte at a time would otherwise hold its connection as long as it likes.
pub async fn read_body(
    state: &AppState,
    body: Body,
    max: usize,
) -> Result<axum::body::Bytes, ApiError> {
    let limit = std::time::Duration::from_secs(state.config.head_timeout_secs.max(1));
    tokio::time::timeout(limit, axum::body::to_bytes(body, max))
        .await
        .map_err(|_| ApiError::Timeout("the request body did not arrive in time".into()))?
        .map_err(|e| {
            // `to_bytes` fails for a body over the limit or a broken connection.
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            {
                ApiError::TooLarge(format!("the request body is larger than {max} bytes"))
            } else {
                ApiError::BadRequest("could not read the request body".into())
            }
        })
}

/// `GET /api/history?stream=chat[&before=ID][&limit=N]`: full history from the store.
pub async fn history(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<HistoryQuery>,
) -> Result<Response, ApiError> {
    let name = p
        .stream
        .ok_or_else(|| ApiError::BadRequest("missing query parameter `stream`".into()))?;
    let stream = Stream::parse(&name)
        .ok_or_else(|| ApiError::BadRequest(app::protocol::unknown_stream_message(&name)))?;
    let limit = p.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 200".into(),
        ));
    }
    let who = state.identify(&headers, p.token.as_deref());
    let user = match stream {
        Stream::Notifications => Some(who.require("read your notifications")?.name.clone()),
        _ => None,
    };
    let events = state
        .engine
        .history(stream, user.as_deref(), p.before.unwrap_or(u64::MAX), limit)
        .await
        .map_err(|_| ApiError::Unavailable("history is unavailable right now".into()))?;
    Ok(axum::Json(app::protocol::HistoryResponse { events }).into_response())
}

/// `GET /api/snapshot?feed=20&chat=50&ticker=50`: the latest id and the newest events of
/// each stream asked for, in one answer (a page's first paint waits for one round trip,
/// not a cursor and then a history page per stream).
pub async fn snapshot(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<SnapshotQuery>,
) -> Result<Response, ApiError> {
    let asked = [
        (Stream::Feed, p.feed),
        (Stream::Chat, p.chat),
        (Stream::Ticker, p.ticker),
        (Stream::Lab, p.lab),
        (Stream::Notifications, p.notifications),
    ];
    let user = match p.notifications {
        Some(n) if n > 0 => {
            let who = state.identify(&headers, p.token.as_deref());
            Some(who.require("read your notifications")?.name.clone())
        }
        _ => None,
    };
    for (stream, n) in asked {
        if n.is_some_and(|n| n > MAX_SNAPSHOT_EVENTS) {
            return Err(ApiError::BadRequest(format!(
                "{stream} must be between 0 and {MAX_SNAPSHOT_EVENTS} (events of that stream)"
            )));
        }
    }
    if asked.iter().filter_map(|(_, n)| *n).sum::<usize>() > MAX_SNAPSHOT_TOTAL {
        return Err(ApiError::BadRequest(format!(
            "a snapshot holds at most {MAX_SNAPSHOT_TOTAL} events in all"
        )));
    }
    // Taken first: the histories below stop at it, and a client resumes after it. Never
    // below `upto`: in cluster mode this server's window may lag the cursor a client was
    // reset to by another server, and the store's history (Redis) is complete up to it.
    let cursor = state.log.latest().max(p.upto.unwrap_or(0));
    let pages = asked
        .into_iter()
        .filter_map(|(stream, n)| Some((stream, n.filter(|&n| n > 0)?)))
        .map(|(stream, n)| {
            state
                .engine
                .history(stream, user.as_deref(), cursor.saturating_add(1), n)
        });
    let mut events = Vec::new();
    for page in futures_util::future::join_all(pages).await {
        events.extend(
            page.map_err(|_| ApiError::Unavailable("history is unavailable right now".into()))?,
        );
    }
    Ok(axum::Json(Snapshot { cursor, events }).into_response())
}

/// `GET /api/presence[?after=ID]`: who is online in chat, and the cursor the list is exact
/// at (apply the `presence` events after it), never below `after` (the asker's stream
/// cursor). Public: names of signed-in accounts only.
pub async fn presence(
    State(state): State<AppState>,
    Query(p): Query<app::protocol::PresenceQuery>,
) -> Result<Response, ApiError> {
    let body = state
        .presence
        .list(&state.engine, p.after.unwrap_or(0))
        .await
        .map_err(|_| ApiError::Unavailable("presence is unavailable right now".into()))?;
    Ok((
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_TYPE, "application/json"),
        ],
        body,
    )
        .into_response())
}

/// `GET /api/stats`: open streams per transport and request/delivery counters (the
/// transport lab's server side), with the server's clock. Public: counts only.
pub async fn stats() -> Response {
    (
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        axum::Json(crate::metrics::lab::stats()),
    )
        .into_response()
}

/// `GET /metrics`: Prometheus text format (see [`crate::metrics`]); with `--metrics-token`,
/// only for `Authorization: Bearer <token>`.
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(token) = &state.config.metrics_token {
        if !crate::state::same_secret(token, bearer(&headers)) {
            return Err(ApiError::Forbidden(
                "/metrics needs the metrics token (Authorization: Bearer <token>)".into(),
            ));
        }
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response())
}

/// RFC 9112 §3.2 on every path: an HTTP/1.1 request without exactly one `Host` is a 400.
/// (Event-stream connections are parsed by `wire::http` but come through here too.)
pub async fn require_host(request: Request, next: axum::middleware::Next) -> Response {
    match wire::http::check_host(request.version(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(why) => ApiError::BadRequest(why.into()).into_response(),
    }
}

/// `GET /healthz`: liveness. Embedded mode: 200 when the store answers. Cluster mode: 200
/// while the process serves (a Redis outage is a readiness matter, see `/readyz`).
pub async fn healthz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.engine.is_embedded() {
        return readyz(State(state)).await;
    }
    Ok("ok")
}

/// `GET /readyz`: 200 when this server can publish and deliver (store or Redis reachable
/// and, in cluster mode, the tail current); 503 otherwise. For load-balancer health checks.
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.engine.ready().await.map_err(|err| {
        ApiError::Unavailable(
            match err {
                crate::engine::EngineError::Store => "not ready: the store does not answer",
                crate::engine::EngineError::Closed => "not ready: shutting down",
                crate::engine::EngineError::Unavailable
                | crate::engine::EngineError::NotReplicated => {
                    "not ready: Redis is unreachable, or this server has not caught up with it"
                }
            }
            .into(),
        )
    })?;
    Ok("ok")
}

/// Leptos server functions (`app::info::get_server_info`), with the server's state reachable
/// from them through context.
pub async fn server_fn(State(state): State<AppState>, req: Request<Body>) -> impl IntoResponse {
    // The asking page's origin: a browser sends `Origin` with this POST, so the app learns
    // whether its WebSockets would be refused (it cannot see a refused upgrade's status).
    let headers = req.headers().clone();
    let source = InfoSource(Arc::new(move || state.info(&headers)));
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
