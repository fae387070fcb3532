//! One live connection per browser, however many tabs: the tab that holds a Web Lock leads
//! (runs the transport and relays what it receives over a BroadcastChannel); the others
//! follow (show what it relays, send their chat over HTTP, ask it to switch). When the
//! leader closes, the browser hands the lock to a waiting tab, which starts the transport
//! from its own cursor: the last event it was relayed, so nothing is missed or repeated.
//!
//! Why: over HTTP/1.1 a browser opens at most 6 connections per origin, so a seventh tab's
//! event stream would hang; and N tabs would cost the server N connections for one person.
//! Where Web Locks are missing (an insecure origin other than localhost), every tab leads.

use crate::store::{set_relay, AutoState, ConnState, Kind, LiveStore, Relay};
use crate::transport;
use leptos::prelude::*;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{BroadcastChannel, MessageEvent};

const CHANNEL: &str = "tidings-live";
const LOCK: &str = "tidings-live";

fn post(channel: &BroadcastChannel, message: &Relay) {
    if let Ok(text) = serde_json::to_string(message) {
        let _ = channel.post_message(&JsValue::from_str(&text));
    }
}

fn state_of(store: LiveStore) -> Relay {
    Relay::State {
        conn: store.conn.get_untracked().label().to_string(),
        kind: store.kind.get_untracked().key(),
        auto: store.auto.get_untracked().map(|a| {
            (
                if a.trying {
                    "trying".into()
                } else {
                    a.on.key()
                },
                a.why,
            )
        }),
        next_check: store.next_check.get_untracked(),
        next_attempt: store.next_attempt.get_untracked(),
        last_contact: store.last_contact.get_untracked(),
    }
}

/// Shows the leader's state in this (following) tab.
fn mirror(store: LiveStore, state: Relay) {
    let Relay::State {
        conn,
        kind,
        auto,
        next_check,
        next_attempt,
        last_contact,
    } = state
    else {
        return;
    };
    store.conn.set(match conn.as_str() {
        "live" => ConnState::Live,
        "reconnecting" => ConnState::Reconnecting,
        "offline" => ConnState::Offline,
        _ => ConnState::Connecting,
    });
    if let Some(k) = Kind::from_key(&kind) {
        store.kind.set(k);
    }
    store.auto.set(auto.map(|(on, why)| AutoState {
        trying: on == "trying",
        on: Kind::from_key(&on).unwrap_or(Kind::Ws),
        why,
    }));
    store.next_check.set(next_check);
    store.next_attempt.set(next_attempt);
    store.last_contact.set(last_contact);
}

/// Leads when this tab gets the lock (at once, or when the leading tab closes); follows
/// until then. `kind` is the transport to start when it leads.
pub fn lead_or_follow(store: LiveStore, kind: Kind) {
    let Ok(channel) = BroadcastChannel::new(CHANNEL) else {
        transport::activate(store, kind);
        return;
    };
    let leading = std::rc::Rc::new(std::cell::Cell::new(false));
    // Events published between this tab's snapshot and its listening were relayed before
    // it listened. So the first relay a follower gets starts one poll from its cursor, and
    // what is relayed meanwhile waits here (`Some`) to apply after it, in order. A tab that
    // leads at once never gets a relay and never polls.
    let held = std::rc::Rc::new(std::cell::RefCell::new(None::<Vec<Relay>>));
    let caught_up = std::rc::Rc::new(std::cell::Cell::new(false));
    let on_message = {
        let (channel, leading) = (channel.clone(), leading.clone());
        Closure::<dyn FnMut(MessageEvent)>::new(move |m: MessageEvent| {
            let Some(message) = m
                .data()
                .as_string()
                .and_then(|t| serde_json::from_str::<Relay>(&t).ok())
            else {
                return;
            };
            match (leading.get(), message) {
                (true, Relay::Hello) => post(&channel, &state_of(store)),
                (true, Relay::Switch { kind }) => {
                    if let Some(k) = Kind::from_key(&kind) {
                        transport::activate(store, k);
                    }
                }
                (true, Relay::Retry) => transport::retry_now(store),
                (_, Relay::Session) => reload_page(),
                (
                    false,
                    r @ (Relay::Events { .. } | Relay::Cursor { .. } | Relay::Reset { .. }),
                ) => {
                    if !caught_up.replace(true) {
                        *held.borrow_mut() = Some(Vec::new());
                        let held = held.clone();
                        leptos::task::spawn_local(async move {
                            transport::catch_up(store).await;
                            for r in held.borrow_mut().take().unwrap_or_default() {
                                apply(store, r);
                            }
                        });
                    }
                    match held.borrow_mut().as_mut() {
                        Some(waiting) => waiting.push(r),
                        None => apply(store, r),
                    }
                }
                (false, state @ Relay::State { .. }) => mirror(store, state),
                _ => {}
            }
        })
    };
    channel.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    // For the page's lifetime.
    on_message.forget();

    // The lock may be granted long after this runs (from a browser callback): the effect
    // below is created under the page's owner either way.
    let owner = Owner::current();
    let lead = {
        let (channel, leading) = (channel.clone(), leading.clone());
        move || {
            let _guard = owner.as_ref().map(|o| o.clone().set());
            leading.set(true);
            store.follower.set(false);
            set_relay(Some(channel.clone()));
            transport::activate(store, store.kind.get_untracked());
            // Every change of the connection's state goes to the followers.
            let channel = channel.clone();
            Effect::new(move |_| {
                store.conn.track();
                store.kind.track();
                store.auto.track();
                store.next_check.track();
                store.next_attempt.track();
                post(&channel, &state_of(store));
            });
        }
    };
    store.kind.set(kind);
    if !request_lock(lead.clone()) {
        lead();
        return;
    }
    // Until the lock comes: a follower, as long as a leader answers; the lock request
    // itself is what makes this tab lead when the leader goes.
    store.follower.set(true);
    post(&channel, &Relay::Hello);
}

fn apply(store: LiveStore, relay: Relay) {
    match relay {
        Relay::Events { events, bytes } => store.ingest(events, bytes),
        Relay::Cursor { cursor } => store.advance(cursor),
        Relay::Reset { cursor } => store.reset_to(cursor),
        _ => {}
    }
}

/// Asks for the leader lock; `granted` runs when this tab holds it (it keeps it until it
/// closes). False when the browser has no Web Locks.
fn request_lock(granted: impl FnOnce() + 'static) -> bool {
    let Some(window) = web_sys::window() else {
        return false;
    };
    let navigator: JsValue = window.navigator().into();
    let Ok(locks) = js_sys::Reflect::get(&navigator, &JsValue::from_str("locks")) else {
        return false;
    };
    if locks.is_undefined() {
        return false;
    }
    let Ok(request) = js_sys::Reflect::get(&locks, &JsValue::from_str("request"))
        .and_then(|f| f.dyn_into::<js_sys::Function>())
    else {
        return false;
    };
    let mut granted = Some(granted);
    let callback = Closure::<dyn FnMut(JsValue) -> js_sys::Promise>::new(move |_lock: JsValue| {
        if let Some(g) = granted.take() {
            g();
        }
        // Held until the tab closes: a promise that never settles.
        js_sys::Promise::new(&mut |_, _| {})
    });
    let ok = request
        .call2(&locks, &JsValue::from_str(LOCK), callback.as_ref())
        .is_ok();
    callback.forget(); // for the page's lifetime
    ok
}

/// The picker in this tab: a follower asks the leader; the leader switches.
pub fn choose(store: LiveStore, kind: Kind) {
    if store.follower.get_untracked() {
        store.kind.set(kind);
        if let Ok(channel) = BroadcastChannel::new(CHANNEL) {
            post(&channel, &Relay::Switch { kind: kind.key() });
            channel.close();
        }
    } else {
        transport::activate(store, kind);
    }
}

/// "Retry now" in this tab.
pub fn retry_now(store: LiveStore) {
    if store.follower.get_untracked() {
        if let Ok(channel) = BroadcastChannel::new(CHANNEL) {
            post(&channel, &Relay::Retry);
            channel.close();
        }
    } else {
        transport::retry_now(store);
    }
}

/// Starts the page again (a new session changes what it may receive).
pub fn reload_page() {
    if let Some(w) = web_sys::window() {
        let _ = w.location().reload();
    }
}

/// Tells the other tabs the account signed in or out, then starts this one again.
pub fn session_changed() {
    if let Ok(channel) = BroadcastChannel::new(CHANNEL) {
        post(&channel, &Relay::Session);
        channel.close();
    }
    reload_page();
}
