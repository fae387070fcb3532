//! The three client transports, over the browser's own fetch, EventSource and WebSocket.
//!
//! Each one only opens its connection from the store's cursor, decodes what arrives and
//! hands it to [`LiveStore`]; resume, de-duplication and display live in the store. One
//! connection is active at a time; dropping it (on a switch) stops it for good.
//!
//! Reconnecting is theirs too, with one rule ([`retry_after_failure`]): a short, capped,
//! jittered backoff the person can cut short ("retry now").

use crate::api;
use crate::protocol::{CursorData, Event, PollResponse, ServerFrame, SSE_HELLO, SSE_RESET};
pub use crate::store::Kind;
use crate::store::{ConnState, LiveStore};
use leptos::prelude::*;
use leptos::task::spawn_local;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;
use web_sys::{EventSource, MessageEvent, WebSocket};

/// Reconnect delay: doubling from 500 ms to a cap of 2 s, with full jitter in its upper
/// half so that clients dropped together (a server restart) do not all come back together.
/// The cap is what finds a server that is back within 1-2 s; a socket the server has said
/// it refuses (wrong origin) waits up to 15 s instead, as retrying sooner cannot help.
fn backoff_ms(failures: u32, refused: bool) -> u32 {
    let cap = if refused {
        15_000
    } else {
        (250u32 << failures.min(3)).min(2_000)
    };
    let jitter = js_sys::Math::random();
    (cap as f64 * (0.5 + 0.5 * jitter)) as u32
}

/// Waits out the backoff after `failures` failures, showing when the next attempt is; the
/// wait ends early when the person asks to retry now (`next_attempt` set to 0).
pub async fn retry_after_failure(store: LiveStore, failures: u32) {
    wait_backoff(store, backoff_ms(failures, false)).await;
}

async fn wait_backoff(store: LiveStore, ms: u32) {
    let until = js_sys::Date::now() + ms as f64;
    store.next_attempt.set(Some(until));
    loop {
        let due = store.next_attempt.get_untracked().unwrap_or(0.0);
        let left = due - js_sys::Date::now();
        if left <= 0.0 {
            break;
        }
        sleep(left.min(100.0) as u32).await;
    }
    store.next_attempt.set(None);
}

fn is_online() -> bool {
    web_sys::window()
        .map(|w| w.navigator().on_line())
        .unwrap_or(true)
}

fn set_down(store: LiveStore) {
    store.conn.set(if is_online() {
        ConnState::Reconnecting
    } else {
        ConnState::Offline
    });
}

mod auto;
pub use auto::name as auto_name;

/// An open transport. Dropping it closes the socket/stream and stops its loops.
pub struct Connection {
    alive: Rc<Cell<bool>>,
    es: Rc<RefCell<Option<EventSource>>>,
    ws: Rc<RefCell<Option<WebSocket>>>,
    /// Auto: the transport it runs now.
    inner: Rc<RefCell<Option<Connection>>>,
}

impl Connection {
    /// The WebSocket of this connection (or of the one Auto runs), when it is open.
    fn open_ws(&self) -> Option<WebSocket> {
        let own = self
            .ws
            .borrow()
            .clone()
            .filter(|ws| ws.ready_state() == WebSocket::OPEN);
        own.or_else(|| self.inner.borrow().as_ref().and_then(Connection::open_ws))
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.alive.set(false);
        if let Some(es) = self.es.borrow_mut().take() {
            es.close();
        }
        if let Some(ws) = self.ws.borrow_mut().take() {
            let _ = ws.close();
        }
        self.inner.borrow_mut().take();
    }
}

/// Opens `kind` from the store's cursor. `hello`: SSE asks for a first message scripts can
/// see (Auto's proof that the stream is not held back by a proxy).
fn open(store: LiveStore, kind: Kind, hello: bool) -> Connection {
    let conn = Connection {
        alive: Rc::new(Cell::new(true)),
        es: Rc::new(RefCell::new(None)),
        ws: Rc::new(RefCell::new(None)),
        inner: Rc::new(RefCell::new(None)),
    };
    match kind {
        Kind::Poll(ms) => spawn_local(poll_loop(store, conn.alive.clone(), Some(ms))),
        Kind::LongPoll => spawn_local(poll_loop(store, conn.alive.clone(), None)),
        Kind::Sse => open_sse(store, conn.alive.clone(), conn.es.clone(), 0, hello),
        // Always with a hello: it feeds the watchdog (a silent socket is not "live").
        Kind::Ws => open_ws(store, conn.alive.clone(), conn.ws.clone(), 0, true),
        Kind::Auto => spawn_local(auto::run(store, conn.alive.clone(), conn.inner.clone())),
    }
    conn
}

thread_local! {
    static ACTIVE: RefCell<Option<Connection>> = const { RefCell::new(None) };
    /// The server said it refuses WebSockets from this page's origin.
    static REFUSED: Cell<bool> = const { Cell::new(false) };
}

/// Opens `kind` for a store of its own (a lab lane), from that store's cursor. The page's
/// own connection ([`activate`]) is not touched; dropping the result closes this one.
pub fn connect(store: LiveStore, kind: Kind) -> Connection {
    store.kind.set(kind);
    store.conn.set(ConnState::Connecting);
    open(store, kind, false)
}

/// "Retry now": cuts a backoff short, or, when the transport is reconnecting by itself (the
/// browser's EventSource, a WebSocket handshake that hangs), starts over from the cursor.
pub fn retry_now(store: LiveStore) {
    if store.next_attempt.get_untracked().is_some() || !store.ready.get_untracked() {
        store.next_attempt.set(Some(0.0));
    } else {
        activate(store, store.kind.get_untracked());
    }
}

/// The active WebSocket, when it is open: chat messages go over it.
pub fn open_socket() -> Option<WebSocket> {
    ACTIVE.with(|a| a.borrow().as_ref().and_then(Connection::open_ws))
}

/// Switches to `kind`, resuming from the store's cursor.
pub fn activate(store: LiveStore, kind: Kind) {
    // Drop the old connection first: from here on it can no longer feed the store.
    ACTIVE.with(|a| a.borrow_mut().take());
    store.stats.set(Default::default());
    store.kind.set(kind);
    store.next_check.set(None);
    store.next_attempt.set(None);
    store.conn.set(ConnState::Connecting);
    store.auto.set(None);
    let conn = open(store, kind, false);
    ACTIVE.with(|a| *a.borrow_mut() = Some(conn));
}

async fn sleep(ms: u32) {
    gloo_timers::future::TimeoutFuture::new(ms).await;
}

/// Where every transport (re)starts: the streams shown, after the store's cursor.
fn resume_query(store: &LiveStore) -> String {
    format!(
        "streams={}&since={}",
        store.streams.get_untracked().to_query(),
        store.cursor.get_untracked()
    )
}

/// One poll from the store's cursor (as many pages as there are): what a tab that starts
/// following missed between its snapshot and its first relay. Errors are left to the live
/// connection (the leader's, or this tab's own when it leads).
pub async fn catch_up(store: LiveStore) {
    for _ in 0..20 {
        let path = format!("/api/poll?{}&limit=1000", resume_query(&store));
        let Ok((text, bytes)) = api::get_text(&path, 15_000).await else {
            return;
        };
        let Ok(resp) = serde_json::from_str::<PollResponse>(&text) else {
            return;
        };
        if resp.reset {
            return store.reset_to(resp.cursor);
        }
        store.ingest(resp.events, bytes);
        store.advance(resp.cursor);
        if !resp.more {
            return;
        }
    }
}

/// Short polling (`interval`) or long polling (`None`).
async fn poll_loop(store: LiveStore, alive: Rc<Cell<bool>>, interval: Option<u32>) {
    let mut failures = 0u32;
    // Long polling: the first request (and the first after a failure) does not wait, so the
    // page learns at once that the server is there instead of after 25 quiet seconds.
    let mut reached = false;
    while alive.get() {
        let wait = if interval.is_none() && reached {
            "&wait=25"
        } else {
            ""
        };
        let path = format!("/api/poll?{}&limit=500{wait}", resume_query(&store));
        store.stats.update(|s| s.requests += 1);
        // A long poll is held up to 25 s; anything much longer is a dead connection.
        let limit = if interval.is_none() && reached {
            40_000
        } else {
            15_000
        };
        let answer = api::get_text(&path, limit).await;
        if !alive.get() {
            return; // switched away while the request was in flight
        }
        let more = match answer.and_then(|(t, n)| {
            serde_json::from_str::<PollResponse>(&t)
                .map(|r| (r, n))
                .map_err(|e| e.to_string())
        }) {
            Ok((resp, bytes)) => {
                if failures > 0 {
                    store.stats.update(|s| s.reconnects += 1);
                }
                failures = 0;
                reached = true;
                store.heard.update(|n| *n += 1);
                store.conn.set(ConnState::Live);
                store.last_contact.set(Some(js_sys::Date::now()));
                if resp.events.is_empty() {
                    store.stats.update(|s| s.empty += 1);
                }
                if resp.reset {
                    reset(store, resp.cursor);
                } else {
                    store.ingest(resp.events, bytes);
                    store.advance(resp.cursor);
                }
                resp.more
            }
            Err(_) => {
                failures += 1;
                reached = false;
                set_down(store);
                retry_after_failure(store, failures).await;
                continue;
            }
        };
        if !more {
            if let Some(ms) = interval {
                store
                    .next_check
                    .set(Some(js_sys::Date::now() + f64::from(ms)));
                sleep(ms).await;
                store.next_check.set(None);
            }
        }
    }
}

fn open_sse(
    store: LiveStore,
    alive: Rc<Cell<bool>>,
    slot: Rc<RefCell<Option<EventSource>>>,
    failures: u32,
    hello: bool,
) {
    if !alive.get() {
        return;
    }
    let url = format!(
        "{}/api/sse?{}{}",
        api::base(),
        resume_query(&store),
        if hello { "&hello=true" } else { "" }
    );
    let Ok(es) = EventSource::new(&url) else {
        store.conn.set(ConnState::Offline);
        return;
    };
    store.stats.update(|s| s.requests += 1);
    // Whether the browser is between an error and the next successful (re)connect.
    let dropped = Rc::new(Cell::new(failures > 0));

    let on_open = {
        let dropped = dropped.clone();
        Closure::<dyn FnMut()>::new(move || {
            if dropped.replace(false) {
                store.stats.update(|s| s.reconnects += 1);
            }
            store.last_contact.set(Some(js_sys::Date::now()));
            store.conn.set(ConnState::Live);
        })
    };
    let on_hello = Closure::<dyn FnMut()>::new(move || store.heard.update(|n| *n += 1));
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |m: MessageEvent| {
        store.heard.update(|n| *n += 1);
        let Some(text) = m.data().as_string() else {
            return;
        };
        if let Ok(event) = serde_json::from_str::<Event>(&text) {
            store.ingest(vec![event], text.len());
        }
    });
    let on_reset = Closure::<dyn FnMut(MessageEvent)>::new(move |m: MessageEvent| {
        let cursor = m
            .data()
            .as_string()
            .and_then(|t| serde_json::from_str::<CursorData>(&t).ok())
            .map_or(0, |d| d.cursor);
        reset(store, cursor);
    });
    let on_error = {
        let (alive, slot, dropped) = (alive.clone(), slot.clone(), dropped.clone());
        Closure::<dyn FnMut()>::new(move || {
            if !alive.get() {
                return;
            }
            if !dropped.replace(true) {
                store.stats.update(|s| s.requests += 1);
            }
            set_down(store);
            let closed = slot
                .borrow()
                .as_ref()
                .is_some_and(|es| es.ready_state() == EventSource::CLOSED);
            if closed {
                // The browser gave up (e.g. an error status): reconnect ourselves, from the
                // store's cursor, after a backoff.
                slot.borrow_mut().take();
                let (alive, slot) = (alive.clone(), slot.clone());
                let n = failures + 1;
                spawn_local(async move {
                    retry_after_failure(store, n).await;
                    open_sse(store, alive, slot, n, hello);
                });
            }
            // Otherwise the browser reconnects by itself and sends Last-Event-ID.
        })
    };
    es.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    es.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    es.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    let _ = es.add_event_listener_with_callback(SSE_RESET, on_reset.as_ref().unchecked_ref());
    let _ = es.add_event_listener_with_callback(SSE_HELLO, on_hello.as_ref().unchecked_ref());
    on_hello.forget();
    // The handlers live as long as the EventSource; it is closed when the connection drops,
    // after which they are never called again. Leaking them is bounded by reconnects.
    on_open.forget();
    on_message.forget();
    on_error.forget();
    on_reset.forget();
    *slot.borrow_mut() = Some(es);
}

/// Silence after which a WebSocket opened with `hello` counts as dead: two heartbeats
/// (15 s each) and a margin. A proxy that accepted the socket and forwards nothing, or a
/// half-open connection, is closed and reconnected instead of showing "live" forever.
const WS_SILENCE_MS: f64 = 40_000.0;

fn open_ws(
    store: LiveStore,
    alive: Rc<Cell<bool>>,
    slot: Rc<RefCell<Option<WebSocket>>>,
    failures: u32,
    hello: bool,
) {
    if !alive.get() {
        return;
    }
    let url = format!(
        "{}/api/ws?{}{}",
        api::ws_base(),
        resume_query(&store),
        if hello { "&hello=true" } else { "" }
    );
    let Ok(ws) = WebSocket::new(&url) else {
        store.conn.set(ConnState::Offline);
        return;
    };
    store.stats.update(|s| s.requests += 1);
    let opened = Rc::new(Cell::new(false));
    let opened_at = Rc::new(Cell::new(0.0));
    let delivered = Rc::new(Cell::new(false));
    let last_heard = Rc::new(Cell::new(js_sys::Date::now()));
    if hello {
        // The watchdog: the server sends a frame at least every heartbeat on this socket.
        let (alive, last_heard, socket) = (alive.clone(), last_heard.clone(), ws.clone());
        spawn_local(async move {
            while alive.get() && socket.ready_state() != WebSocket::CLOSED {
                sleep(5_000).await;
                if socket.ready_state() == WebSocket::OPEN
                    && js_sys::Date::now() - last_heard.get() > WS_SILENCE_MS
                {
                    let _ = socket.close();
                }
            }
        });
    }

    let on_open = {
        let (opened, opened_at) = (opened.clone(), opened_at.clone());
        Closure::<dyn FnMut()>::new(move || {
            opened.set(true);
            opened_at.set(js_sys::Date::now());
            if failures > 0 {
                store.stats.update(|s| s.reconnects += 1);
            }
            store.last_contact.set(Some(js_sys::Date::now()));
            store.conn.set(ConnState::Live);
        })
    };
    let on_message = {
        let delivered = delivered.clone();
        let last_heard = last_heard.clone();
        Closure::<dyn FnMut(MessageEvent)>::new(move |m: MessageEvent| {
            delivered.set(true);
            last_heard.set(js_sys::Date::now());
            store.heard.update(|n| *n += 1);
            // A socket that delivers is accepted: whatever was refused before is not now.
            REFUSED.with(|r| r.set(false));
            let Some(text) = m.data().as_string() else {
                return;
            };
            match serde_json::from_str::<ServerFrame>(&text) {
                Ok(ServerFrame::Event { event }) => store.ingest(vec![event], text.len()),
                Ok(ServerFrame::Ack { reference, id }) => store.ack(&reference, id),
                Ok(ServerFrame::Error {
                    reference: Some(r),
                    error,
                    code,
                }) => {
                    store.refused(&r, &code, error);
                }
                Ok(ServerFrame::Error {
                    reference: None,
                    error,
                    ..
                }) => store.notice.set(Some(error)),
                Ok(ServerFrame::Reset { cursor }) => reset(store, cursor),
                Ok(ServerFrame::Cursor { cursor }) => store.advance(cursor),
                Ok(ServerFrame::Hello { .. }) => {}
                Err(_) => {}
            }
        })
    };
    let on_close = {
        let (alive, slot) = (alive.clone(), slot.clone());
        Closure::<dyn FnMut()>::new(move || {
            store.requeue_sent_on_socket();
            if !alive.get() {
                return;
            }
            set_down(store);
            slot.borrow_mut().take();
            // A socket that opened and then closed without delivering anything is a failure
            // too: behind a proxy (trunk serve, a load balancer) the browser's socket opens
            // even when the server refuses it, and counting that as success retried every
            // half second forever.
            let lived = js_sys::Date::now() - opened_at.get();
            let useful = opened.get() && (delivered.get() || lived >= 3_000.0);
            let n = if useful { 1 } else { failures + 1 };
            if n == 2 {
                spawn_local(explain_refusal(store));
            }
            let (alive, slot) = (alive.clone(), slot.clone());
            spawn_local(async move {
                wait_backoff(store, backoff_ms(n, REFUSED.with(Cell::get))).await;
                open_ws(store, alive, slot, n, hello);
            });
        })
    };
    ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    on_open.forget();
    on_message.forget();
    on_close.forget();
    *slot.borrow_mut() = Some(ws);
}

/// A WebSocket keeps failing: the browser hides why (a refused upgrade's 403 is not shown to
/// scripts), so ask the server whether it accepts this page's origin, and say so on screen.
async fn explain_refusal(store: LiveStore) {
    let Ok(info) = crate::info::get_server_info().await else {
        return;
    };
    if info.websocket_origin_allowed {
        return;
    }
    REFUSED.with(|r| r.set(true));
    let origin = web_sys::window()
        .and_then(|w| w.location().origin().ok())
        .unwrap_or_default();
    store.notice.set(Some(format!(
        "The server refuses WebSockets from this page's origin ({origin}). Start it with \
         --allow-origin {origin} (scripts/dev.sh does), or pick SSE or polling. Retrying \
         every 15 s."
    )));
}

/// The server said our cursor was outside its window: continue from the cursor it gave;
/// the store asks `sync` to reload what is shown from history.
fn reset(store: LiveStore, cursor: u64) {
    store.reset_to(cursor);
}
