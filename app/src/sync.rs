//! Keeping the page in sync with the server, apart from the live connection itself: startup
//! (find the head of the log, show history up to it, go live from there), reloading history
//! after a reset, loading older chat, the clock behind "12 s ago", and the outbox of chat
//! messages, which survives a failed send, a reconnect and a reload and is delivered once.
//!
//! Depends on `store` and `transport`; neither depends on it (the store asks for a reload
//! through its `reload` signal, which an effect here answers).

use crate::api;
use crate::protocol::{ChatMessage, ClientFrame, ErrorBody, Event, Payload, Stream};
use crate::store::{ChatEntry, ConnState, Kind, LiveStore, OutStatus, Outgoing};
use crate::transport;
use leptos::prelude::*;
use leptos::task::spawn_local;
use serde::{Deserialize, Serialize};

/// Chat messages per history page (first load and each "load older").
pub const CHAT_PAGE: usize = 50;
/// Where unsent messages are kept across reloads.
const OUTBOX_KEY: &str = "tidings.outbox";

/// Starts everything for a page: the outbox from the last visit, the clock, the effects,
/// then (once the cursor and history are known) the live connection on `kind`.
pub fn start(store: LiveStore, kind: Kind) {
    store.kind.set(kind);
    restore_outbox(store);
    // Persist what is not yet sent whenever the outbox changes.
    Effect::new(move |_| {
        store.outbox.with(save_outbox);
    });
    // A reset asks for history up to the new cursor.
    Effect::new(move |_| {
        if let Some(upto) = store.reload.get() {
            spawn_local(async move {
                load_history(store, upto).await;
            });
        }
    });
    // Back online (or live for the first time): send what waits.
    Effect::new(move |was_live: Option<bool>| {
        let live = store.conn.get() == ConnState::Live;
        if live && was_live != Some(true) {
            flush(store);
        }
        live
    });
    // The clock for relative times; it also retries queued messages that are due.
    let tick = gloo_timers::callback::Interval::new(1_000, move || {
        store.now.set(js_sys::Date::now());
        if store.conn.get_untracked() == ConnState::Live {
            flush(store);
        }
    });
    tick.forget(); // for the page's lifetime
    spawn_local(async move {
        let mut failures = 0u32;
        let cursor = loop {
            match api::latest_cursor().await {
                Ok(c) => break c,
                Err(_) => {
                    failures += 1;
                    store.conn.set(ConnState::Reconnecting);
                    transport::retry_after_failure(store, failures).await;
                }
            }
        };
        store.cursor.set(cursor);
        load_history(store, cursor).await;
        transport::activate(store, store.kind.get_untracked());
    });
}

/// Loads the latest feed items, chat messages and prices up to `upto` into the store.
async fn load_history(store: LiveStore, upto: u64) {
    let feed = api::history(Stream::Feed, upto + 1, 20)
        .await
        .unwrap_or_default();
    let chat = api::history(Stream::Chat, upto + 1, CHAT_PAGE)
        .await
        .unwrap_or_default();
    let ticks = api::history(Stream::Ticker, upto + 1, 50)
        .await
        .unwrap_or_default();
    store.older_chat.set(chat.len() == CHAT_PAGE);
    store.load(upto, feed, chat, ticks);
}

/// Prepends the page of chat history before the oldest message shown.
pub async fn load_older(store: LiveStore) {
    let Some(oldest) = store.chat.with_untracked(|c| c.first().map(|m| m.id)) else {
        return;
    };
    let Ok(events) = api::history(Stream::Chat, oldest, CHAT_PAGE).await else {
        store.notice.set(Some(
            "Older messages could not be loaded; try again.".into(),
        ));
        return;
    };
    store.older_chat.set(events.len() == CHAT_PAGE);
    let older: Vec<ChatEntry> = events.into_iter().filter_map(chat_entry).collect();
    store.chat.update(|c| {
        let first = c.first().map_or(u64::MAX, |m| m.id);
        let mut all: Vec<ChatEntry> = older.into_iter().filter(|m| m.id < first).collect();
        all.append(c);
        *c = all;
    });
}

fn chat_entry(e: Event) -> Option<ChatEntry> {
    match e.payload {
        Payload::Chat(msg) => Some(ChatEntry {
            id: e.id,
            ts: e.ts,
            msg,
        }),
        _ => None,
    }
}

/// A fresh idempotency key: 104 random bits and the time, unique per message in practice.
fn new_key() -> String {
    let r = || (js_sys::Math::random() * 9_007_199_254_740_992.0) as u64;
    format!("{:x}-{:x}-{:x}", js_sys::Date::now() as u64, r(), r())
}

/// Puts a chat message in the outbox and sends it. `Err` is a reason to show at once
/// (nothing was queued): the message breaks a rule and would never be accepted.
pub fn send(store: LiveStore, author: String, body: String) -> Result<(), String> {
    let Payload::Chat(msg) =
        crate::protocol::validate(Payload::Chat(ChatMessage { author, body }))?
    else {
        unreachable!("validate keeps the stream")
    };
    let key = new_key();
    store.outbox.update(|o| {
        o.push(Outgoing {
            key: key.clone(),
            msg,
            status: OutStatus::Sending,
        })
    });
    dispatch(store, key);
    Ok(())
}

/// Sends (or resends) one message: on the WebSocket when it is the open transport (the ack
/// comes back on it), else with `POST /api/publish`. Both carry the message's key.
fn dispatch(store: LiveStore, key: String) {
    let Some(msg) = store.outbox.with_untracked(|o| {
        o.iter()
            .find(|m| m.key == key && m.status.unsent())
            .map(|m| m.msg.clone())
    }) else {
        return;
    };
    store.set_status(&key, OutStatus::Sending);
    let payload = Payload::Chat(msg);
    if let Some(ws) = transport::open_socket() {
        let frame = ClientFrame::Publish {
            reference: key.clone(),
            key: Some(key.clone()),
            payload,
        };
        let sent = serde_json::to_string(&frame)
            .ok()
            .is_some_and(|text| ws.send_with_str(&text).is_ok());
        if !sent {
            store.set_status(&key, OutStatus::Queued);
        }
        // Otherwise the ack or error frame settles it; a close requeues it.
        return;
    }
    let Ok(body) = serde_json::to_string(&payload) else {
        return;
    };
    spawn_local(async move {
        match api::publish(body, &key).await {
            Ok(event) => store.ack(&key, event.id),
            Err(ErrorBody { error, code }) => {
                store.set_status(&key, OutStatus::after_refusal(&code, error))
            }
        }
    });
}

/// Sends every queued message (when the connection is live again, and each second while
/// it is, for messages a rate limit or a busy store turned back).
fn flush(store: LiveStore) {
    let queued: Vec<String> = store.outbox.with_untracked(|o| {
        o.iter()
            .filter(|m| m.status == OutStatus::Queued)
            .map(|m| m.key.clone())
            .collect()
    });
    for key in queued {
        dispatch(store, key);
    }
}

/// "Retry now" on one message.
pub fn retry(store: LiveStore, key: &str) {
    store.set_status(key, OutStatus::Queued);
    dispatch(store, key.to_string());
}

/// Forgets a message the person discarded (or took back to edit).
pub fn discard(store: LiveStore, key: &str) {
    store.outbox.update(|o| o.retain(|m| m.key != key));
}

/// The stored form of an unsent message.
#[derive(Serialize, Deserialize)]
struct Saved {
    key: String,
    author: String,
    body: String,
}

fn save_outbox(outbox: &Vec<Outgoing>) {
    let Some(storage) = api::local_storage() else {
        return;
    };
    let unsent: Vec<Saved> = outbox
        .iter()
        .filter(|m| m.status.unsent())
        .map(|m| Saved {
            key: m.key.clone(),
            author: m.msg.author.clone(),
            body: m.msg.body.clone(),
        })
        .collect();
    let _ = if unsent.is_empty() {
        storage.remove_item(OUTBOX_KEY)
    } else {
        storage.set_item(
            OUTBOX_KEY,
            &serde_json::to_string(&unsent).unwrap_or_default(),
        )
    };
}

/// Messages left unsent by an earlier visit (or another tab): queued, to be sent with their
/// own keys once live. If the earlier send did reach the server, the key makes the server
/// answer with that event instead of storing it twice.
fn restore_outbox(store: LiveStore) {
    let saved: Vec<Saved> = api::local_storage()
        .and_then(|s| s.get_item(OUTBOX_KEY).ok().flatten())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if saved.is_empty() {
        return;
    }
    store.outbox.set(
        saved
            .into_iter()
            .map(|s| Outgoing {
                key: s.key,
                msg: ChatMessage {
                    author: s.author,
                    body: s.body,
                },
                status: OutStatus::Queued,
            })
            .collect(),
    );
}
