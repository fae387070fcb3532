//! Keeping the page in sync with the server, apart from the live connection itself: startup
//! (one snapshot: the head of the log and the newest of each stream, then live from
//! there), reloading history
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
use std::cell::{Cell, RefCell};
use std::collections::HashSet;

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
                load_snapshot(store, Some(upto)).await;
                load_presence(store).await;
            });
        }
    });
    // Back online (or live for the first time): send what waits.
    Effect::new(move |was_live: Option<bool>| {
        let live = store.conn.get() == ConnState::Live;
        if live && was_live != Some(true) {
            flush_now(store);
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
        // Who is signed in is asked beside the snapshot, not after it.
        let (_, session) = futures_util::future::join(load_snapshot(store, None), api::me()).await;
        // Who is online: asked after the snapshot, so the list is at or past its cursor
        // (presence events up to it are not delivered again).
        store.streams.update(|s| s.insert(Stream::Presence));
        spawn_local(load_presence(store));
        if let Some(session) = session {
            load_notices(store).await;
            store.streams.update(|s| s.insert(Stream::Notifications));
            store.account.set(Some(session.name));
        }
        crate::tabs::lead_or_follow(store, store.kind.get_untracked());
    });
}

/// Loads the newest feed items, chat messages and prices into the store, retrying (with
/// the transports' backoff) until the server answers: at startup (`upto` None) up to the
/// snapshot's cursor, which becomes the store's; after a reset, up to the cursor the live
/// connection continues from (anything newer in the snapshot arrives live).
async fn load_snapshot(store: LiveStore, upto: Option<u64>) {
    let mut failures = 0u32;
    let query = match upto {
        Some(upto) => format!("{}&upto={upto}", crate::SNAPSHOT_QUERY),
        None => crate::SNAPSHOT_QUERY.to_owned(),
    };
    let snapshot = loop {
        match api::snapshot(&query).await {
            Ok(s) => break s,
            Err(_) => {
                failures += 1;
                if upto.is_none() {
                    store.conn.set(ConnState::Reconnecting);
                }
                transport::retry_after_failure(store, failures).await;
            }
        }
    };
    let upto = upto.unwrap_or_else(|| {
        store.cursor.set(snapshot.cursor);
        snapshot.cursor
    });
    let chat = snapshot
        .events
        .iter()
        .filter(|e| e.payload.stream() == Stream::Chat)
        .count();
    store.older_chat.set(chat == CHAT_PAGE);
    store.load(upto, snapshot.events);
}

/// Who is online in chat, as of now (the live `presence` events continue it); asked again
/// until an answer is taken (1, 2, 4 ... 30 s apart: the list is not worth a busy loop,
/// and the connection's own status is not this request's to show).
async fn load_presence(store: LiveStore) {
    for attempt in 0u32.. {
        if let Ok(list) = api::presence(store.cursor.get_untracked()).await {
            if store.set_online(list) {
                return;
            }
        }
        let wait = (1_000u32 << attempt.min(5)).min(30_000);
        gloo_timers::future::TimeoutFuture::new(wait).await;
    }
}

/// The account's latest notifications (and read marks) up to the store's cursor; the
/// live connection then continues after it.
async fn load_notices(store: LiveStore) {
    let upto = store.cursor.get_untracked();
    if let Ok(events) = api::history(Stream::Notifications, upto.saturating_add(1), 100).await {
        store.take_notices(
            events
                .into_iter()
                .filter_map(|e| match e.payload {
                    Payload::Notifications(n) => Some((e.id, e.ts, n)),
                    _ => None,
                })
                .collect(),
        );
    }
}

/// Marks one notification (or, with `None`, all) read; the mark comes back on the
/// account's stream to every tab.
pub fn mark_read(store: LiveStore, id: Option<u64>) {
    let body = match id {
        Some(id) => format!(r#"{{"id":{id}}}"#),
        None => r#"{"all":true}"#.to_owned(),
    };
    spawn_local(async move {
        if let Err(e) = api::post_json("/api/notifications/read", body).await {
            store.notice.set(Some(e));
        }
    });
}

/// The account's price alerts.
pub async fn alerts() -> Result<Vec<crate::protocol::AlertRule>, String> {
    let (text, _) = api::get_text("/api/alerts", 15_000).await?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// Adds (`POST`) or removes (`DELETE`) a price alert; the server's message on refusal.
pub async fn alert_change(method: &str, path: String, body: Option<String>) -> Result<(), String> {
    api::send(method, &path, body, None).await.map(|_| ())
}

/// Signs in (or up, `create`); on success every tab starts again with the session.
pub async fn sign_in(name: String, password: String, create: bool) -> Result<(), String> {
    let body = serde_json::to_string(&crate::protocol::Credentials { name, password })
        .map_err(|e| e.to_string())?;
    let path = if create {
        "/api/auth/signup"
    } else {
        "/api/auth/signin"
    };
    api::post_json(path, body).await?;
    crate::tabs::session_changed();
    Ok(())
}

pub fn sign_out() {
    spawn_local(async move {
        let _ = api::post_json("/api/auth/signout", String::new()).await;
        crate::tabs::session_changed();
    });
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
    store.keep_chat.set(true);
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

/// How long after first queueing a message is still resent by itself: inside the server's
/// idempotency window (10 min) with a margin, so a resend can never store a second copy.
const RESEND_FOR_MS: f64 = 9.0 * 60_000.0;
/// The longest a publish may take before it counts as unanswered (and is resent, same key).
const PUBLISH_TIMEOUT_MS: u32 = 15_000;

thread_local! {
    /// A flush is running: messages go out one at a time, in order.
    static FLUSHING: Cell<bool> = const { Cell::new(false) };
    /// Every key this tab has held: its entries in localStorage are this tab's to rewrite;
    /// the others belong to other tabs and are left alone.
    static KNOWN: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
}

/// Puts a chat message in the outbox and sends it (after any still waiting, in order).
/// `Err` is a reason to show at once (nothing was queued): the message breaks a rule and
/// would never be accepted.
pub fn send(store: LiveStore, author: String, body: String) -> Result<(), String> {
    let Payload::Chat(msg) = crate::protocol::validate(Payload::Chat(ChatMessage {
        author,
        body,
        user: None,
    }))?
    else {
        unreachable!("validate keeps the stream")
    };
    let key = new_key();
    KNOWN.with(|k| k.borrow_mut().insert(key.clone()));
    store.outbox.update(|o| {
        o.push(Outgoing {
            key,
            msg,
            status: OutStatus::Queued,
            since: js_sys::Date::now(),
            via_ws: false,
            attempts: 0,
            retry_at: 0.0,
        })
    });
    flush(store);
    Ok(())
}

/// The next message to send: the first queued one, if it is due. Messages leave in the
/// order they were written, so one that must wait holds back those behind it.
fn next_due(store: LiveStore) -> Option<Outgoing> {
    let now = js_sys::Date::now();
    store.outbox.with_untracked(|o| {
        o.iter()
            .find(|m| m.status == OutStatus::Queued)
            .filter(|m| m.retry_at <= now)
            .cloned()
    })
}

/// Sends what is queued, one message at a time and in order: on the WebSocket when it is
/// the open transport (acks come back on it), else `POST /api/publish`, each with its key.
/// Called on every send, when the connection turns live, and each second while live.
fn flush(store: LiveStore) {
    if FLUSHING.with(|f| f.replace(true)) {
        return; // the running flush picks up what was just queued
    }
    spawn_local(async move {
        while let Some(m) = next_due(store) {
            if js_sys::Date::now() - m.since > RESEND_FOR_MS {
                store.update_outgoing(&m.key, |o| {
                    o.status = OutStatus::Failed(
                        "not confirmed for over 9 minutes, so not resent by itself: it may have \
                         been stored (check the chat). Edit to send it again, or discard."
                            .into(),
                    );
                });
                continue;
            }
            let payload = Payload::Chat(m.msg.clone());
            if let Some(ws) = transport::open_socket() {
                let frame = ClientFrame::Publish {
                    reference: m.key.clone(),
                    key: Some(m.key.clone()),
                    payload,
                };
                let sent = serde_json::to_string(&frame)
                    .ok()
                    .is_some_and(|text| ws.send_with_str(&text).is_ok());
                if !sent {
                    break; // the socket is closing; its close queues and flushes again
                }
                store.update_outgoing(&m.key, |o| {
                    o.status = OutStatus::Sending;
                    o.via_ws = true;
                });
                continue; // the ack or error frame settles it; the socket keeps the order
            }
            store.update_outgoing(&m.key, |o| {
                o.status = OutStatus::Sending;
                o.via_ws = false;
            });
            let body = serde_json::to_string(&payload).unwrap_or_default();
            match api::publish(body, &m.key, PUBLISH_TIMEOUT_MS).await {
                Ok(event) => store.ack(&m.key, event.id),
                Err(ErrorBody { error, code }) => {
                    if store.refused(&m.key, &code, error) {
                        break; // it waits its backoff, and holds the rest back, in order
                    }
                }
            }
        }
        FLUSHING.with(|f| f.set(false));
    });
}

/// The connection is live again: what waits goes now, without waiting out its backoff.
fn flush_now(store: LiveStore) {
    store.outbox.update(|o| {
        for m in o.iter_mut().filter(|m| m.status == OutStatus::Queued) {
            m.retry_at = 0.0;
        }
    });
    flush(store);
}

/// "Retry now" on one message.
pub fn retry(store: LiveStore, key: &str) {
    store.update_outgoing(key, |o| o.retry_at = 0.0);
    flush(store);
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
    since: f64,
}

fn read_saved() -> Vec<Saved> {
    api::local_storage()
        .and_then(|s| s.get_item(OUTBOX_KEY).ok().flatten())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Writes this tab's unsent messages, merged with other tabs': entries whose keys this tab
/// never held are kept as they are, this tab's are replaced by what it still has to send.
fn save_outbox(outbox: &Vec<Outgoing>) {
    let Some(storage) = api::local_storage() else {
        return;
    };
    let mut saved: Vec<Saved> = KNOWN.with(|k| {
        let k = k.borrow();
        read_saved()
            .into_iter()
            .filter(|s| !k.contains(&s.key))
            .collect()
    });
    saved.extend(outbox.iter().filter(|m| m.status.unsent()).map(|m| Saved {
        key: m.key.clone(),
        author: m.msg.author.clone(),
        body: m.msg.body.clone(),
        since: m.since,
    }));
    let _ = if saved.is_empty() {
        storage.remove_item(OUTBOX_KEY)
    } else {
        storage.set_item(
            OUTBOX_KEY,
            &serde_json::to_string(&saved).unwrap_or_default(),
        )
    };
}

/// Messages left unsent by an earlier visit (or another tab): queued, to be sent with their
/// own keys once live. If an earlier send did reach the server, the key makes the server
/// answer with that event instead of storing it twice.
fn restore_outbox(store: LiveStore) {
    let saved = read_saved();
    if saved.is_empty() {
        return;
    }
    KNOWN.with(|k| k.borrow_mut().extend(saved.iter().map(|s| s.key.clone())));
    store.outbox.set(
        saved
            .into_iter()
            .map(|s| Outgoing {
                key: s.key,
                msg: ChatMessage {
                    author: s.author,
                    body: s.body,
                    user: None,
                },
                status: OutStatus::Queued,
                since: s.since,
                via_ws: false,
                attempts: 0,
                retry_at: 0.0,
            })
            .collect(),
    );
}
