//! Where the API lives and plain HTTP calls to it (browser `fetch` via gloo-net).
//!
//! The API base defaults to the page's own origin. A static copy of the app on another
//! origin is pointed at a server with `?api=https://tidings.example.com` once; the choice
//! is kept in localStorage.

use crate::protocol::{ErrorBody, Event, HistoryResponse, PollResponse, Session, Snapshot, Stream};
use gloo_net::http::Request;
use wasm_bindgen::{JsCast, JsValue};

const API_KEY: &str = "tidings.api";

pub fn local_storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}

/// The API base URL without a trailing slash; "" means same origin.
pub fn base() -> String {
    thread_local! {
        static BASE: String = compute_base();
    }
    BASE.with(Clone::clone)
}

fn compute_base() -> String {
    let from_query = web_sys::window()
        .and_then(|w| w.location().search().ok())
        .and_then(|s| web_sys::UrlSearchParams::new_with_str(&s).ok())
        .and_then(|p| p.get("api"));
    let storage = local_storage();
    if let Some(api) = from_query {
        if let Some(s) = &storage {
            let _ = s.set_item(API_KEY, &api);
        }
        return api.trim_end_matches('/').to_string();
    }
    storage
        .and_then(|s| s.get_item(API_KEY).ok().flatten())
        .map(|a| a.trim_end_matches('/').to_string())
        .unwrap_or_default()
}

/// `ws://` or `wss://` URL of the same API base.
pub fn ws_base() -> String {
    let b = base();
    if let Some(rest) = b.strip_prefix("https://") {
        return format!("wss://{rest}");
    }
    if let Some(rest) = b.strip_prefix("http://") {
        return format!("ws://{rest}");
    }
    let loc = web_sys::window().map(|w| w.location());
    let host = loc.as_ref().and_then(|l| l.host().ok()).unwrap_or_default();
    let secure = loc
        .and_then(|l| l.protocol().ok())
        .is_some_and(|p| p == "https:");
    format!("{}://{host}", if secure { "wss" } else { "ws" })
}

/// A failed call: a message fit to show a person.
pub type ApiResult<T> = Result<T, String>;

/// Aborts a request that has not been answered within `ms` (a half-open connection would
/// otherwise hold it forever). Keep the pair alive for as long as the request runs: dropping
/// the timer cancels the deadline.
fn deadline(ms: u32) -> Option<(web_sys::AbortController, gloo_timers::callback::Timeout)> {
    let controller = web_sys::AbortController::new().ok()?;
    let abort = controller.clone();
    let timer = gloo_timers::callback::Timeout::new(ms, move || abort.abort());
    Some((controller, timer))
}

/// GET returning the body text and its length (for the bytes-received statistic); an
/// error when no answer came within `timeout_ms`.
pub async fn get_text(path: &str, timeout_ms: u32) -> ApiResult<(String, usize)> {
    let limit = deadline(timeout_ms);
    let signal = limit.as_ref().map(|(c, _)| c.signal());
    let resp = Request::get(&format!("{}{path}", base()))
        .abort_signal(signal.as_ref())
        .send()
        .await
        .map_err(|e| format!("network error: {e}"))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("network error: {e}"))?;
    if !(200..300).contains(&status) {
        return Err(error_message(status, &text));
    }
    let n = text.len();
    Ok((text, n))
}

pub fn error_message(status: u16, body: &str) -> String {
    serde_json::from_str::<ErrorBody>(body).map_or_else(|_| format!("HTTP {status}"), |e| e.error)
}

/// `GET /api/poll` without `since`: the latest id, where a fresh client starts.
pub async fn latest_cursor() -> ApiResult<u64> {
    let (text, _) = get_text("/api/poll", 15_000).await?;
    serde_json::from_str::<PollResponse>(&text)
        .map(|r| r.cursor)
        .map_err(|e| e.to_string())
}

/// What the page shows first: `GET /api/snapshot` with `query` (e.g. `feed=20&chat=50`).
/// index.html asks for it before the app has loaded (`window.tidingsSnapshot`, a promise
/// of the body text or null, for [`crate::SNAPSHOT_QUERY`]: a unit test keeps the two
/// equal); the first call takes that answer when the API is this origin, later calls
/// (retries, reloads after a reset) ask again.
pub async fn snapshot(query: &str) -> ApiResult<Snapshot> {
    let text = match take_early_snapshot() {
        Some(promise) => wasm_bindgen_futures::JsFuture::from(promise)
            .await
            .ok()
            .and_then(|v| v.as_string()),
        None => None,
    };
    let text = match text {
        Some(text) => text,
        None => get_text(&format!("/api/snapshot?{query}"), 15_000).await?.0,
    };
    serde_json::from_str::<Snapshot>(&text).map_err(|e| e.to_string())
}

fn take_early_snapshot() -> Option<js_sys::Promise> {
    let window: JsValue = web_sys::window()?.into();
    let name = JsValue::from_str("tidingsSnapshot");
    let promise = js_sys::Reflect::get(&window, &name).ok()?;
    // Used once: a retry must not get the same (failed or old) answer.
    let _ = js_sys::Reflect::set(&window, &name, &JsValue::UNDEFINED);
    promise
        .dyn_into::<js_sys::Promise>()
        .ok()
        .filter(|_| base().is_empty())
}

/// Who is online in chat (`GET /api/presence`), as of `after` (the store's cursor) or later.
pub async fn presence(after: u64) -> ApiResult<crate::protocol::PresenceList> {
    let (text, _) = get_text(&format!("/api/presence?after={after}"), 15_000).await?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

pub async fn history(stream: Stream, before: u64, limit: usize) -> ApiResult<Vec<Event>> {
    let (text, _) = get_text(
        &format!("/api/history?stream={stream}&before={before}&limit={limit}"),
        15_000,
    )
    .await?;
    serde_json::from_str::<HistoryResponse>(&text)
        .map(|r| r.events)
        .map_err(|e| e.to_string())
}

/// `POST /api/publish` with an idempotency key; the stored event on success. A failure is
/// an [`ErrorBody`] whose `code` is the server's, or `network` when no answer came.
pub async fn publish(body: String, key: &str, timeout_ms: u32) -> Result<Event, ErrorBody> {
    let network = |e: gloo_net::Error| ErrorBody {
        error: format!("no answer from the server ({e})"),
        code: "network".into(),
    };
    let limit = deadline(timeout_ms);
    let signal = limit.as_ref().map(|(c, _)| c.signal());
    let resp = Request::post(&format!("{}/api/publish", base()))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .abort_signal(signal.as_ref())
        .body(body)
        .map_err(network)?
        .send()
        .await
        .map_err(network)?;
    let status = resp.status();
    // An answer cut off after its status is no answer: resent with the same key, the
    // server replays the stored event (a lost 201 body once showed as a final failure).
    let text = resp.text().await.map_err(network)?;
    if status != 201 {
        return Err(
            serde_json::from_str::<ErrorBody>(&text).unwrap_or_else(|_| ErrorBody {
                error: format!("the server answered HTTP {status}"),
                // An answer without our JSON comes from something in between (a proxy that
                // could not reach the server): worth another try.
                code: if status == 429 || status >= 500 {
                    "unavailable"
                } else {
                    ""
                }
                .into(),
            }),
        );
    }
    serde_json::from_str(&text).map_err(|e| ErrorBody {
        error: format!("an unreadable answer ({e})"),
        code: "network".into(),
    })
}

/// The signed-in account (the session cookie), if any. Asked only when the server's hint
/// cookie says there is a session (an anonymous visit makes no request that fails); a hint
/// whose session is over is removed.
pub async fn me() -> Option<Session> {
    const HINT: &str = "tidings_account=";
    let doc = web_sys::window()?
        .document()?
        .dyn_into::<web_sys::HtmlDocument>()
        .ok()?;
    if !doc
        .cookie()
        .ok()?
        .split(';')
        .any(|c| c.trim().starts_with(HINT))
    {
        return None;
    }
    let session = match get_text("/api/auth/me", 15_000).await {
        Ok((text, _)) => serde_json::from_str(&text).ok(),
        Err(_) => None,
    };
    if session.is_none() {
        let _ = doc.set_cookie(&format!("{HINT}; Max-Age=0; Path=/"));
    }
    session
}

/// POST a JSON body (the session cookie goes with it); the answer's text, or the server's
/// error message.
pub async fn post_json(path: &str, body: String) -> Result<String, String> {
    send("POST", path, Some(body), None).await
}

/// A request with an optional JSON body (and `Authorization: Bearer <token>`); the
/// answer's text, or the server's error message.
pub async fn send(
    method: &str,
    path: &str,
    body: Option<String>,
    token: Option<&str>,
) -> Result<String, String> {
    let url = format!("{}{path}", base());
    let mut builder = match method {
        "DELETE" => Request::delete(&url),
        "PUT" => Request::put(&url),
        _ => Request::post(&url),
    };
    if let Some(token) = token {
        builder = builder.header("authorization", &format!("Bearer {token}"));
    }
    let request = match body {
        Some(b) => builder.header("content-type", "application/json").body(b),
        None => builder.build(),
    };
    let resp = request
        .map_err(|e| e.to_string())?
        .send()
        .await
        .map_err(|e| format!("no answer from the server ({e})"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if (200..300).contains(&status) {
        Ok(text)
    } else {
        Err(error_message(status, &text))
    }
}

/// POST a JSON body with `Authorization: Bearer <token>` (the lab's load control).
pub async fn post_authorized(path: &str, body: String, token: &str) -> Result<String, String> {
    send("POST", path, Some(body), Some(token)).await
}
