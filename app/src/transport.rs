//! The three client transports, over the browser's own fetch, EventSource and WebSocket.
//!
//! Each one only opens its connection from the store's cursor, decodes what arrives and
//! hands it to [`LiveStore`]; resume, de-duplication and display live in the store. One
//! connection is active at a time; dropping it (on a switch) stops it for good.

use crate::api;
use crate::protocol::{ClientFrame, Event, Payload, PollResponse, ServerFrame, StreamSet};
use crate::store::{ConnState, LiveStore, OutStatus, Outgoing};
use leptos::prelude::*;
use leptos::task::spawn_local;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;
use web_sys::{EventSource, MessageEvent, WebSocket};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Short polling every `n` milliseconds.
    Poll(u32),
    /// Long polling: the server holds each request until an event arrives (or 25 s).
    LongPoll,
    Sse,
    Ws,
}

impl Kind {
    pub fn key(self) -> String {
        match self {
            Kind::Poll(ms) => format!("poll-{ms}"),
            Kind::LongPoll => "longpoll".into(),
            Kind::Sse => "sse".into(),
            Kind::Ws => "ws".into(),
        }
    }

    pub fn from_key(k: &str) -> Option<Kind> {
        match k {
            "longpoll" => Some(Kind::LongPoll),
            "sse" => Some(Kind::Sse),
            "ws" => Some(Kind::Ws),
            _ => k.strip_prefix("poll-")?.parse().ok().map(Kind::Poll),
        }
    }

    pub fn label(self) -> String {
        match self {
            Kind::Poll(ms) => format!("Polling every {} s", ms / 1000),
            Kind::LongPoll => "Long polling".into(),
            Kind::Sse => "Server-Sent Events".into(),
            Kind::Ws => "WebSocket".into(),
        }
    }
}

const STREAMS: StreamSet = StreamSet::ALL;

/// Reconnect delay: exponential from 500 ms up to 15 s, with full jitter in its upper half
/// so that clients dropped together (a server restart) do not all come back together.
fn backoff_ms(failures: u32) -> u32 {
    let cap = (500u32 << failures.min(5)).min(15_000);
    let jitter = js_sys::Math::random();
    (cap as f64 * (0.5 + 0.5 * jitter)) as u32
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

/// An open transport. Dropping it closes the socket/stream and stops its loops.
pub struct Connection {
    alive: Rc<Cell<bool>>,
    es: Rc<RefCell<Option<EventSource>>>,
    ws: Rc<RefCell<Option<WebSocket>>>,
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
    }
}

thread_local! {
    static ACTIVE: RefCell<Option<Connection>> = const { RefCell::new(None) };
    static NEXT_REF: Cell<u64> = const { Cell::new(1) };
}

/// Switches to `kind`, resuming from the store's cursor.
pub fn activate(store: LiveStore, kind: Kind) {
    // Drop the old connection first: from here on it can no longer feed the store.
    ACTIVE.with(|a| a.borrow_mut().take());
    store.stats.set(Default::default());
    store.conn.set(ConnState::Connecting);
    let conn = Connection {
        alive: Rc::new(Cell::new(true)),
        es: Rc::new(RefCell::new(None)),
        ws: Rc::new(RefCell::new(None)),
    };
    match kind {
        Kind::Poll(ms) => spawn_local(poll_loop(store, conn.alive.clone(), Some(ms))),
        Kind::LongPoll => spawn_local(poll_loop(store, conn.alive.clone(), None)),
        Kind::Sse => open_sse(store, conn.alive.clone(), conn.es.clone(), 0),
        Kind::Ws => open_ws(store, conn.alive.clone(), conn.ws.clone(), 0),
    }
    ACTIVE.with(|a| *a.borrow_mut() = Some(conn));
}

async fn sleep(ms: u32) {
    gloo_timers::future::TimeoutFuture::new(ms).await;
}

/// Where every transport (re)starts: the streams shown, after the store's cursor.
fn resume_query(store: &LiveStore) -> String {
    format!(
        "streams={}&since={}",
        STREAMS.to_query(),
        store.cursor.get_untracked()
    )
}

/// Short polling (`interval`) or long polling (`None`).
async fn poll_loop(store: LiveStore, alive: Rc<Cell<bool>>, interval: Option<u32>) {
    let mut failures = 0u32;
    let wait = if interval.is_none() { "&wait=25" } else { "" };
    while alive.get() {
        let path = format!("/api/poll?{}&limit=500{wait}", resume_query(&store));
        store.stats.update(|s| s.requests += 1);
        let answer = api::get_text(&path).await;
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
                store.conn.set(ConnState::Live);
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
                set_down(store);
                sleep(backoff_ms(failures)).await;
                continue;
            }
        };
        if !more {
            if let Some(ms) = interval {
                sleep(ms).await;
            }
        }
    }
}

fn open_sse(
    store: LiveStore,
    alive: Rc<Cell<bool>>,
    slot: Rc<RefCell<Option<EventSource>>>,
    failures: u32,
) {
    if !alive.get() {
        return;
    }
    let url = format!("{}/api/sse?{}", api::base(), resume_query(&store));
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
            store.conn.set(ConnState::Live);
        })
    };
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |m: MessageEvent| {
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
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["cursor"].as_u64())
            .unwrap_or(0);
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
                    sleep(backoff_ms(n)).await;
                    open_sse(store, alive, slot, n);
                });
            }
            // Otherwise the browser reconnects by itself and sends Last-Event-ID.
        })
    };
    es.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    es.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    es.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    let _ = es.add_event_listener_with_callback("reset", on_reset.as_ref().unchecked_ref());
    // The handlers live as long as the EventSource; it is closed when the connection drops,
    // after which they are never called again. Leaking them is bounded by reconnects.
    on_open.forget();
    on_message.forget();
    on_error.forget();
    on_reset.forget();
    *slot.borrow_mut() = Some(es);
}

fn open_ws(
    store: LiveStore,
    alive: Rc<Cell<bool>>,
    slot: Rc<RefCell<Option<WebSocket>>>,
    failures: u32,
) {
    if !alive.get() {
        return;
    }
    let url = format!("{}/api/ws?{}", api::ws_base(), resume_query(&store));
    let Ok(ws) = WebSocket::new(&url) else {
        store.conn.set(ConnState::Offline);
        return;
    };
    store.stats.update(|s| s.requests += 1);
    let opened = Rc::new(Cell::new(false));
    let opened_at = Rc::new(Cell::new(0.0));
    let delivered = Rc::new(Cell::new(false));

    let on_open = {
        let (opened, opened_at) = (opened.clone(), opened_at.clone());
        Closure::<dyn FnMut()>::new(move || {
            opened.set(true);
            opened_at.set(js_sys::Date::now());
            if failures > 0 {
                store.stats.update(|s| s.reconnects += 1);
            }
            store.conn.set(ConnState::Live);
        })
    };
    let on_message = {
        let delivered = delivered.clone();
        Closure::<dyn FnMut(MessageEvent)>::new(move |m: MessageEvent| {
            delivered.set(true);
            let Some(text) = m.data().as_string() else {
                return;
            };
            match serde_json::from_str::<ServerFrame>(&text) {
                Ok(ServerFrame::Event { event }) => store.ingest(vec![event], text.len()),
                Ok(ServerFrame::Ack { reference, id }) => store.ack(&reference, id),
                Ok(ServerFrame::Error {
                    reference: Some(r),
                    error,
                    ..
                }) => store.fail(&r, error),
                Ok(ServerFrame::Error {
                    reference: None,
                    error,
                    ..
                }) => store.notice.set(Some(error)),
                Ok(ServerFrame::Reset { cursor }) => reset(store, cursor),
                Ok(ServerFrame::Cursor { cursor }) => store.advance(cursor),
                Err(_) => {}
            }
        })
    };
    let on_close = {
        let (alive, slot) = (alive.clone(), slot.clone());
        Closure::<dyn FnMut()>::new(move || {
            store
                .fail_pending("connection lost before the server confirmed; it may have been sent");
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
                sleep(backoff_ms(n)).await;
                open_ws(store, alive, slot, n);
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
    let origin = web_sys::window()
        .and_then(|w| w.location().origin().ok())
        .unwrap_or_default();
    store.notice.set(Some(format!(
        "The server refuses WebSockets from this page's origin ({origin}). Start it with \
         --allow-origin {origin} (scripts/dev.sh does), or pick SSE or polling. Retrying less \
         and less often."
    )));
}

/// The server said our cursor was outside its window: reload what is shown from history
/// and continue from the cursor it gave.
fn reset(store: LiveStore, cursor: u64) {
    store.reset_to(cursor);
    spawn_local(async move {
        crate::ui::load_history(store, cursor).await;
    });
}

/// Sends a chat message: on the WebSocket (acknowledged there) when that is the active,
/// open transport, otherwise with `POST /api/publish`.
pub fn send_chat(store: LiveStore, author: String, body: String) -> Result<(), String> {
    let payload =
        crate::protocol::validate(Payload::Chat(crate::protocol::ChatMessage { author, body }))?;
    let Payload::Chat(msg) = payload.clone() else {
        unreachable!()
    };
    let reference = NEXT_REF.with(|n| {
        let r = n.get();
        n.set(r + 1);
        format!("m{r}")
    });
    store.outbox.update(|o| {
        o.push(Outgoing {
            reference: reference.clone(),
            msg,
            status: OutStatus::Pending,
        })
    });
    let socket = ACTIVE.with(|a| {
        a.borrow()
            .as_ref()
            .and_then(|c| c.ws.borrow().clone())
            .filter(|ws| ws.ready_state() == WebSocket::OPEN)
    });
    if let Some(ws) = socket {
        let frame = ClientFrame::Publish {
            reference: reference.clone(),
            payload,
        };
        let text = serde_json::to_string(&frame).map_err(|e| e.to_string())?;
        if ws.send_with_str(&text).is_err() {
            store.fail(&reference, "the socket refused the message".into());
        }
        return Ok(());
    }
    let body = serde_json::to_string(&payload).map_err(|e| e.to_string())?;
    spawn_local(async move {
        match api::publish(body).await {
            Ok(event) => store.ack(&reference, event.id),
            Err(e) => store.fail(&reference, e),
        }
    });
    Ok(())
}

/// Forgets a failed message (the user dismissed it or is retrying it).
pub fn dismiss(store: LiveStore, reference: &str) {
    store
        .outbox
        .update(|o| o.retain(|m| m.reference != reference));
}
