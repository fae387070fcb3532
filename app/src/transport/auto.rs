//! The Auto transport: WebSocket, else SSE, else long polling, whichever works here, as
//! Socket.IO, SignalR and Centrifugo's clients do. It proves a transport before it settles
//! on it, falls back (saying why) when it does not work while the server itself answers,
//! and probes the better ones in the background to climb back when they work again.
//!
//! Switching never loses or repeats an event: every transport resumes from the store's
//! cursor, and the store drops anything at or below it.

use super::{open, sleep, Connection};
use crate::api;
use crate::store::{AutoState, ConnState, Kind, LiveStore};
use leptos::prelude::*;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;
use web_sys::{EventSource, WebSocket};

/// Best first.
const LADDER: [Kind; 3] = [Kind::Ws, Kind::Sse, Kind::LongPoll];
/// How long WebSocket and SSE have to prove themselves (an open socket; a first message).
const PROOF_MS: f64 = 3_000.0;
/// Long polling's first request does not wait, so it answers quickly when it can.
const POLL_PROOF_MS: f64 = 15_000.0;
/// How long the settled transport may be down, while the server answers plain requests,
/// before Auto gives up on it.
const DOWN_MS: f64 = 8_000.0;
/// How often a better transport is probed; `tidings.probe-ms` in localStorage overrides it
/// (the tests and the lab use a shorter one).
const PROBE_MS: f64 = 30_000.0;

fn now() -> f64 {
    js_sys::Date::now()
}

pub fn name(kind: Kind) -> &'static str {
    match kind {
        Kind::Ws => "WebSocket",
        Kind::Sse => "SSE",
        _ => "long polling",
    }
}

fn probe_every() -> f64 {
    api::local_storage()
        .and_then(|s| s.get_item("tidings.probe-ms").ok().flatten())
        // An integer: parsing a float would pull the float parser's tables (~14 KB) into
        // the app.
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(PROBE_MS, |v| f64::from(v.max(1_000)))
}

/// Whether the server answers a plain request: when it does and a transport does not, the
/// transport is what is blocked; when it does not, the server is away and no transport is
/// to blame.
async fn reachable() -> bool {
    api::get_text("/api/poll", 3_000).await.is_ok()
}

enum Next {
    /// Climb to this rung.
    Up(usize),
    /// The settled transport stopped working: fall back, for this reason.
    Down(String),
    Stop,
}

/// Runs until `alive` is cleared (the person picked another transport), keeping the
/// transport it runs in `inner`.
pub async fn run(store: LiveStore, alive: Rc<Cell<bool>>, inner: Rc<RefCell<Option<Connection>>>) {
    let mut rung = 0usize;
    // why[i]: why rung i was left.
    let mut why: Vec<String> = Vec::new();
    while alive.get() {
        let kind = LADDER[rung];
        let state = |trying| AutoState {
            on: kind,
            why: why.join(", "),
            trying,
        };
        store.auto.set(Some(state(true)));
        inner.borrow_mut().take(); // the previous one stops before the next starts
        store.conn.set(ConnState::Connecting);
        let heard = store.heard.get_untracked();
        *inner.borrow_mut() = Some(open(store, kind, true));
        let verdict = prove(store, &alive, kind, heard).await;
        if !alive.get() {
            return;
        }
        match verdict {
            Ok(()) => {
                store.auto.set(Some(state(false)));
                match settled(store, &alive, rung).await {
                    Next::Up(better) => {
                        rung = better;
                        why.truncate(better);
                    }
                    Next::Down(reason) => {
                        why.truncate(rung);
                        why.push(reason);
                        rung += 1;
                    }
                    Next::Stop => return,
                }
            }
            Err(reason) if rung + 1 < LADDER.len() && reachable().await => {
                why.truncate(rung);
                why.push(reason);
                rung += 1;
            }
            // The server is away (or even long polling fails): nothing to learn about the
            // transports; try the same one again shortly.
            Err(_) => sleep(1_000).await,
        }
    }
}

/// Whether `kind`, just opened, really works here.
async fn prove(store: LiveStore, alive: &Cell<bool>, kind: Kind, heard: u64) -> Result<(), String> {
    let start = now();
    let live = || store.conn.get_untracked() == ConnState::Live;
    let heard_since = || store.heard.get_untracked() > heard;
    match kind {
        Kind::Ws => {
            while !live() {
                if !alive.get() || now() - start > PROOF_MS {
                    return Err("WebSocket blocked".into());
                }
                sleep(100).await;
            }
            // Open is not enough: a proxy may accept the upgrade and forward nothing. The
            // socket was asked for a hello, which must come through.
            let opened = now();
            while !heard_since() {
                if !live() {
                    return Err("WebSocket closes right after opening".into());
                }
                if now() - opened > PROOF_MS {
                    return Err("WebSocket opens but nothing comes through".into());
                }
                sleep(100).await;
            }
            Ok(())
        }
        Kind::Sse => {
            while !heard_since() {
                if !alive.get() || now() - start > PROOF_MS {
                    // Refused (the browser reported an error): blocked. Open, or still
                    // waiting for the response to begin, but no first message: a proxy holds
                    // the stream back (a compressing one holds the headers too).
                    let refused = matches!(
                        store.conn.get_untracked(),
                        ConnState::Reconnecting | ConnState::Offline
                    );
                    return Err(if refused {
                        "SSE blocked".into()
                    } else {
                        "event stream held back by a proxy".into()
                    });
                }
                sleep(100).await;
            }
            Ok(())
        }
        _ => {
            while !heard_since() {
                if !alive.get() || now() - start > POLL_PROOF_MS {
                    return Err("long polling gets no answer".into());
                }
                sleep(100).await;
            }
            Ok(())
        }
    }
}

/// Watches the settled transport and probes the better ones.
async fn settled(store: LiveStore, alive: &Cell<bool>, rung: usize) -> Next {
    let every = probe_every();
    let mut next_probe = now() + every;
    let mut down_since: Option<f64> = None;
    loop {
        sleep(250).await;
        if !alive.get() {
            return Next::Stop;
        }
        if store.conn.get_untracked() == ConnState::Live {
            down_since = None;
        } else {
            let since = *down_since.get_or_insert_with(now);
            if now() - since > DOWN_MS && rung + 1 < LADDER.len() {
                if reachable().await {
                    // The server answers; the transport may just be in its last backoff
                    // after the server came back (a restart is not the transport's fault):
                    // give it that long before leaving it.
                    sleep(3_000).await;
                    if store.conn.get_untracked() == ConnState::Live {
                        down_since = None;
                        continue;
                    }
                    return Next::Down(format!("{} stopped working", name(LADDER[rung])));
                }
                down_since = Some(now()); // the server is away: keep waiting
            }
        }
        if rung > 0 && now() >= next_probe {
            for better in 0..rung {
                if probe(LADDER[better]).await {
                    return Next::Up(better);
                }
            }
            next_probe = now() + every;
        }
    }
}

/// Tries a better transport on the side, without touching the store: a WebSocket that opens
/// and stays open, or an event stream whose first message arrives, within the proof time.
async fn probe(kind: Kind) -> bool {
    // 0: waiting, 1: open, 2: proven, 3: failed.
    let state = Rc::new(Cell::new(0u8));
    let start = now();
    match kind {
        Kind::Ws => {
            let url = format!("{}/api/ws?streams=chat&hello=true", api::ws_base());
            let Ok(ws) = WebSocket::new(&url) else {
                return false;
            };
            // Proven by the hello: a frame that came through, not just an open socket.
            let on_message = {
                let state = state.clone();
                Closure::<dyn FnMut()>::new(move || state.set(2))
            };
            let on_close = {
                let state = state.clone();
                Closure::<dyn FnMut()>::new(move || state.set(3))
            };
            ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
            ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
            while state.get() == 0 && now() - start < PROOF_MS {
                sleep(100).await;
            }
            ws.set_onmessage(None);
            ws.set_onclose(None);
            let _ = ws.close();
            state.get() == 2
        }
        _ => {
            let url = format!("{}/api/sse?streams=chat&hello=true", api::base());
            let Ok(es) = EventSource::new(&url) else {
                return false;
            };
            let on_hello = {
                let state = state.clone();
                Closure::<dyn FnMut()>::new(move || state.set(2))
            };
            let _ = es.add_event_listener_with_callback(
                crate::protocol::SSE_HELLO,
                on_hello.as_ref().unchecked_ref(),
            );
            while state.get() != 2 && now() - start < PROOF_MS {
                sleep(100).await;
            }
            es.close();
            let _ = es.remove_event_listener_with_callback(
                crate::protocol::SSE_HELLO,
                on_hello.as_ref().unchecked_ref(),
            );
            state.get() == 2
        }
    }
}
