//! The one client-side store of live state. Whichever transport is active feeds it through
//! [`LiveStore::ingest`]; components only read it. Because every transport resumes from
//! the store's `cursor` and `ingest` drops anything at or below it, switching transports
//! (or reconnecting) can neither lose nor repeat an event.
//!
//! It depends on nothing else of the app: transports write into it, `sync` (startup,
//! history, the outbox) reads and writes it, views read it.

use crate::protocol::{
    ChatMessage, Event, FeedItem, Notice, Payload, PresenceChange, PresenceList, Tick,
};
use crate::resume::{Cursor, Fresh};
use leptos::prelude::*;
use std::collections::VecDeque;

/// Which transport delivers the live streams.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Short polling every `n` milliseconds.
    Poll(u32),
    /// Long polling: the server holds each request until an event arrives (or 25 s).
    LongPoll,
    Sse,
    Ws,
    /// The best that works here: WebSocket, else SSE, else long polling; falls back by
    /// itself and climbs back when a better one works again.
    Auto,
}

impl Kind {
    /// Every transport the app offers, in the picker's (and the lab's lanes') order.
    pub const ALL: [Kind; 7] = [
        Kind::Auto,
        Kind::Poll(1000),
        Kind::Poll(5000),
        Kind::Poll(30000),
        Kind::LongPoll,
        Kind::Sse,
        Kind::Ws,
    ];

    pub fn key(self) -> String {
        match self {
            Kind::Poll(ms) => format!("poll-{ms}"),
            Kind::LongPoll => "longpoll".into(),
            Kind::Sse => "sse".into(),
            Kind::Ws => "ws".into(),
            Kind::Auto => "auto".into(),
        }
    }

    pub fn from_key(k: &str) -> Option<Kind> {
        match k {
            "longpoll" => Some(Kind::LongPoll),
            "sse" => Some(Kind::Sse),
            "ws" => Some(Kind::Ws),
            "auto" => Some(Kind::Auto),
            _ => k.strip_prefix("poll-")?.parse().ok().map(Kind::Poll),
        }
    }

    /// Short enough for a phone's one-line picker.
    pub fn label(self) -> String {
        match self {
            Kind::Poll(ms) => format!("Poll {} s", ms / 1000),
            Kind::LongPoll => "Long poll".into(),
            Kind::Sse => "SSE".into(),
            Kind::Ws => "WebSocket".into(),
            Kind::Auto => "Auto".into(),
        }
    }

    /// What the short label stands for (tooltip and accessible name).
    pub fn title(self) -> String {
        match self {
            Kind::Poll(ms) => format!("Polling: ask the server every {} s", ms / 1000),
            Kind::LongPoll => "Long polling: the server answers when there is news".into(),
            Kind::Sse => "Server-Sent Events: one long response the server pushes into".into(),
            Kind::Ws => "WebSocket: a two-way socket".into(),
            Kind::Auto => {
                "Auto: WebSocket, else SSE, else long polling, whichever works here".into()
            }
        }
    }
}

/// What the Auto transport is on, and why not on a better one.
#[derive(Clone, PartialEq, Debug)]
pub struct AutoState {
    pub on: Kind,
    /// Why the better transports were left ("WebSocket blocked"); empty on WebSocket.
    pub why: String,
    /// Still finding out whether `on` works.
    pub trying: bool,
}

/// What the tab holding the live connection tells the other tabs of the browser (over a
/// BroadcastChannel), and what they ask of it. See `tabs`.
/// Externally tagged (serde's default): an internally tagged enum buffers through serde's
/// `Content` type, which cost the app ~15 KB gzipped.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub enum Relay {
    /// A batch as the leader's transport received it (the receiving store de-duplicates).
    Events {
        events: Vec<Event>,
        bytes: usize,
    },
    Cursor {
        cursor: u64,
    },
    Reset {
        cursor: u64,
    },
    /// The leader's connection, to show in every tab.
    State {
        conn: String,
        kind: String,
        auto: Option<(String, String)>,
        next_check: Option<f64>,
        next_attempt: Option<f64>,
        last_contact: Option<f64>,
    },
    /// A new tab asks for the state.
    Hello,
    /// Another tab's picker: switch the transport.
    Switch {
        kind: String,
    },
    /// Another tab's "Retry now".
    Retry,
    /// The account signed in or out in another tab: start again with the new session.
    Session,
}

thread_local! {
    /// Set while this tab leads: what the store ingests goes to the other tabs too.
    static RELAY: std::cell::RefCell<Option<web_sys::BroadcastChannel>> = const { std::cell::RefCell::new(None) };
}

/// Starts (or stops, with `None`) relaying what this tab's store ingests.
pub fn set_relay(channel: Option<web_sys::BroadcastChannel>) {
    RELAY.with(|r| *r.borrow_mut() = channel);
}

pub fn relay(message: &Relay) {
    RELAY.with(|r| {
        if let Some(c) = r.borrow().as_ref() {
            if let Ok(text) = serde_json::to_string(message) {
                let _ = c.post_message(&wasm_bindgen::JsValue::from_str(&text));
            }
        }
    });
}

/// Feed items kept on screen.
const FEED_KEEP: usize = 50;
/// Chat messages kept on screen.
const CHAT_KEEP: usize = 200;
/// Latency samples kept for the median.
const LATENCY_SAMPLES: usize = 101;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConnState {
    Connecting,
    Live,
    Reconnecting,
    Offline,
}

impl ConnState {
    pub fn label(self) -> &'static str {
        match self {
            ConnState::Connecting => "connecting",
            ConnState::Live => "live",
            ConnState::Reconnecting => "reconnecting",
            ConnState::Offline => "offline",
        }
    }
}

/// Figures for the active transport (reset when the transport changes).
#[derive(Clone, Default, Debug)]
pub struct Stats {
    pub events: u64,
    pub requests: u64,
    pub bytes: u64,
    pub reconnects: u64,
    pub last_latency_ms: Option<f64>,
    pub latencies: VecDeque<f64>,
    /// Poll answers that brought no event ("useless requests").
    pub empty: u64,
    /// Events received again at or below the cursor (resume overlaps), dropped.
    pub dups: u64,
    /// The lab keeps every arrival (`record` set); the app does not.
    pub record: bool,
    /// The latest arrivals (a ring: the oldest go first).
    pub arrivals: VecDeque<Arrival>,
}

/// One event as it arrived: when (browser clock), which, and `ts` to arrival as the browser's
/// clock sees it (the lab corrects it by the estimated clock offset).
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    pub at: f64,
    pub id: u64,
    pub latency_ms: f64,
}

/// Most arrivals the lab keeps per lane (10 minutes at 30 events/s).
pub const MAX_ARRIVALS: usize = 20_000;

impl Stats {
    pub fn median_latency_ms(&self) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = self.latencies.iter().copied().collect();
        v.sort_by(|a, b| a.total_cmp(b));
        Some(v[v.len() / 2])
    }
}

#[derive(Clone, PartialEq, Debug)]
pub struct FeedEntry {
    pub id: u64,
    pub ts: u64,
    pub item: FeedItem,
    /// Arrived live while the page was open (not loaded from history): marked "new".
    pub fresh: bool,
}

/// A notification as the panel shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct NoticeEntry {
    pub id: u64,
    pub ts: u64,
    pub notice: Notice,
    pub read: bool,
}

/// Notifications kept in the panel (the oldest go first).
pub const NOTICES_KEEP: usize = 100;

#[derive(Clone, PartialEq, Debug)]
pub struct ChatEntry {
    pub id: u64,
    pub ts: u64,
    pub msg: ChatMessage,
}

#[derive(Clone, PartialEq, Debug)]
pub struct TickerEntry {
    pub tick: Tick,
    /// +1 up, -1 down, 0 unchanged since the previous tick (for the flash colour).
    pub moved: i8,
    /// The latest prices, oldest first (the sparkline): from history, then live.
    pub recent: Vec<f64>,
}

/// Prices kept per symbol for its sparkline.
const SPARK: usize = 30;
/// Presence events kept to apply over a list that arrives late.
const PRESENCE_KEEP: usize = 64;

/// A chat message this page sent, until the stream delivers it. `key` is its idempotency
/// key (and its WebSocket `ref`): every retry carries it, so the server stores it once.
#[derive(Clone, PartialEq, Debug)]
pub struct Outgoing {
    pub key: String,
    pub msg: ChatMessage,
    pub status: OutStatus,
    /// When it was first queued (ms since the epoch): after the server's idempotency window
    /// a resend could store it twice, so it is no longer resent by itself.
    pub since: f64,
    /// Last sent on the WebSocket (a close of that socket queues it again).
    pub via_ws: bool,
    /// Resends so far, and when the next may go (a refusal that passes backs off).
    pub attempts: u32,
    pub retry_at: f64,
}

#[derive(Clone, PartialEq, Debug)]
pub enum OutStatus {
    /// On its way; no answer yet.
    Sending,
    /// Not stored yet (no connection, or it was lost before an answer): resent with the
    /// same key when the connection is back, or by hand.
    Queued,
    /// Stored as this id; shown until the stream brings it.
    Acked(u64),
    /// Refused for good (e.g. too long): the reason, for the person to fix or discard.
    Failed(String),
}

impl OutStatus {
    /// What becomes of a message the server refused with this error `code`: a refusal that
    /// passes (rate limit, store unavailable) is queued for a resend; any other is final.
    pub fn after_refusal(code: &str, error: String) -> OutStatus {
        match code {
            "rate_limited" | "unavailable" | "network" | "timeout" => OutStatus::Queued,
            _ => OutStatus::Failed(error),
        }
    }

    /// Whether the message may still need sending (kept across a reload).
    pub fn unsent(&self) -> bool {
        matches!(self, OutStatus::Sending | OutStatus::Queued)
    }
}

#[derive(Clone, Copy)]
pub struct LiveStore {
    /// Newest first.
    pub feed: RwSignal<Vec<FeedEntry>>,
    /// Oldest first.
    pub chat: RwSignal<Vec<ChatEntry>>,
    /// Sorted by symbol.
    pub ticker: RwSignal<Vec<TickerEntry>>,
    pub outbox: RwSignal<Vec<Outgoing>>,
    /// Highest event id received: every transport resumes after it.
    pub cursor: RwSignal<u64>,
    pub conn: RwSignal<ConnState>,
    /// The transport feeding the store.
    pub kind: RwSignal<Kind>,
    /// When the server last answered (a poll, an event, a heartbeat): ms since the epoch.
    pub last_contact: RwSignal<Option<f64>>,
    /// Short polling: when the next request goes out.
    pub next_check: RwSignal<Option<f64>>,
    /// While reconnecting: when the next attempt is. Setting it to `Some(0.0)` makes the
    /// waiting transport try at once ("retry now").
    pub next_attempt: RwSignal<Option<f64>>,
    /// Messages of any kind the server sent (events, hellos, acks, poll answers): what the
    /// Auto transport takes as proof that a transport really delivers here.
    pub heard: RwSignal<u64>,
    /// The Auto transport's state (None for the other kinds).
    pub auto: RwSignal<Option<AutoState>>,
    /// The page's own store (not a lab lane): it relays to other tabs while it leads.
    pub relays: bool,
    /// The streams its transports subscribe to (the lab's lanes add `lab`; a signed-in
    /// page adds `notifications`).
    pub streams: RwSignal<crate::protocol::StreamSet>,
    /// The signed-in account's name.
    pub account: RwSignal<Option<String>>,
    /// The account's notifications, oldest first, with whether each has been read.
    pub notices: RwSignal<Vec<NoticeEntry>>,
    /// Who is online in chat (account names, sorted).
    pub online: RwSignal<Vec<String>>,
    /// The presence list reflects every presence event up to this id.
    pub presence_at: StoredValue<u64>,
    /// The latest presence events, to apply again over a list that arrives after them, and
    /// the newest id let go of (a list older than that is asked again).
    pub presence_recent: StoredValue<(Vec<(u64, PresenceChange)>, u64)>,
    /// This tab shows what another tab's connection receives.
    pub follower: RwSignal<bool>,
    /// Wall clock, ticking once a second, for "12 s ago" and "in 3 s".
    pub now: RwSignal<f64>,
    /// Whether history may hold chat messages older than the oldest shown.
    pub older_chat: RwSignal<bool>,
    /// The person loaded older messages: keep them all (no trimming while they read).
    pub keep_chat: RwSignal<bool>,
    /// History to reload up to this cursor (set by a reset; `sync` does the loading).
    pub reload: RwSignal<Option<u64>>,
    pub stats: RwSignal<Stats>,
    /// Set once history is loaded and the cursor is known.
    pub ready: RwSignal<bool>,
    /// A notice to show (e.g. after a reset).
    pub notice: RwSignal<Option<String>>,
}

impl LiveStore {
    pub fn new() -> LiveStore {
        LiveStore {
            feed: RwSignal::new(Vec::new()),
            chat: RwSignal::new(Vec::new()),
            ticker: RwSignal::new(Vec::new()),
            outbox: RwSignal::new(Vec::new()),
            cursor: RwSignal::new(0),
            conn: RwSignal::new(ConnState::Connecting),
            kind: RwSignal::new(Kind::Ws),
            last_contact: RwSignal::new(None),
            next_check: RwSignal::new(None),
            next_attempt: RwSignal::new(None),
            now: RwSignal::new(js_sys::Date::now()),
            heard: RwSignal::new(0),
            relays: false,
            streams: RwSignal::new(crate::protocol::StreamSet::ALL),
            account: RwSignal::new(None),
            notices: RwSignal::new(Vec::new()),
            online: RwSignal::new(Vec::new()),
            presence_at: StoredValue::new(0),
            presence_recent: StoredValue::new((Vec::new(), 0)),
            follower: RwSignal::new(false),
            auto: RwSignal::new(None),
            older_chat: RwSignal::new(false),
            keep_chat: RwSignal::new(false),
            reload: RwSignal::new(None),
            stats: RwSignal::new(Stats::default()),
            ready: RwSignal::new(false),
            notice: RwSignal::new(None),
        }
    }

    /// Takes a batch from any transport. Events at or below the cursor were already shown
    /// (a resume overlap) and are dropped; `bytes` is what the transport received for them.
    pub fn ingest(&self, events: Vec<Event>, bytes: usize) {
        if self.relays {
            relay(&Relay::Events {
                events: events.clone(),
                bytes,
            });
        }
        let received = events.len();
        let mut cursor = Cursor(self.cursor.get_untracked());
        let Fresh {
            events,
            latencies_ms: latencies,
        } = cursor.take(events, js_sys::Date::now());
        let cursor = cursor.0;
        let now = js_sys::Date::now();
        self.last_contact.set(Some(now));
        // Raw (the browser's clock may be behind: the lab corrects by the offset it measured).
        let arrivals: Vec<Arrival> = if self.stats.with_untracked(|s| s.record) {
            events
                .iter()
                .map(|e| Arrival {
                    at: now,
                    id: e.id,
                    latency_ms: now - e.ts as f64,
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut feed = Vec::new();
        let mut chat = Vec::new();
        let mut ticks = Vec::new();
        let mut notices = Vec::new();
        let mut presence = Vec::new();
        for e in events {
            match e.payload {
                Payload::Feed(item) => feed.push(FeedEntry {
                    id: e.id,
                    ts: e.ts,
                    item,
                    fresh: true,
                }),
                Payload::Chat(msg) => chat.push(ChatEntry {
                    id: e.id,
                    ts: e.ts,
                    msg,
                }),
                Payload::Ticker(t) => ticks.push(t),
                Payload::Notifications(n) => notices.push((e.id, e.ts, n)),
                Payload::Presence(p) => presence.push((e.id, p)),
                // The lab's load: counted in the stats, nothing to show.
                Payload::Lab(_) => {}
            }
        }
        self.take_notices(notices);
        self.take_presence(presence);
        self.stats.update(|s| {
            s.bytes += bytes as u64;
            s.events += latencies.len() as u64;
            s.dups += received.saturating_sub(latencies.len()) as u64;
            s.arrivals.extend(arrivals);
            let excess = s.arrivals.len().saturating_sub(MAX_ARRIVALS);
            s.arrivals.drain(..excess);
            for l in &latencies {
                s.last_latency_ms = Some(*l);
                s.latencies.push_back(*l);
                if s.latencies.len() > LATENCY_SAMPLES {
                    s.latencies.pop_front();
                }
            }
        });
        if cursor == self.cursor.get_untracked() {
            return;
        }
        self.cursor.set(cursor);
        if !feed.is_empty() {
            self.feed.update(|f| {
                for item in feed {
                    f.insert(0, item);
                }
                f.truncate(FEED_KEEP);
            });
        }
        if !chat.is_empty() {
            let delivered: Vec<u64> = chat.iter().map(|c| c.id).collect();
            self.chat.update(|c| {
                c.extend(chat);
                let keep = if self.keep_chat.get_untracked() {
                    usize::MAX
                } else {
                    CHAT_KEEP
                };
                let excess = c.len().saturating_sub(keep);
                c.drain(..excess);
            });
            self.outbox.update(|o| {
                o.retain(|m| !matches!(m.status, OutStatus::Acked(id) if delivered.contains(&id)))
            });
        }
        self.apply_ticks(ticks);
    }

    /// Folds ticks (oldest first) into the one row per symbol.
    fn apply_ticks(&self, ticks: Vec<Tick>) {
        if ticks.is_empty() {
            return;
        }
        self.ticker.update(|rows| {
            for t in ticks {
                match rows.iter_mut().find(|r| r.tick.symbol == t.symbol) {
                    Some(r) => {
                        r.moved = (t.price - r.tick.price).signum() as i8;
                        r.recent.push(t.price);
                        let excess = r.recent.len().saturating_sub(SPARK);
                        r.recent.drain(..excess);
                        r.tick = t;
                    }
                    None => rows.push(TickerEntry {
                        recent: vec![t.price],
                        tick: t,
                        moved: 0,
                    }),
                }
            }
            rows.sort_by(|a, b| a.tick.symbol.cmp(&b.tick.symbol));
        });
    }

    /// Moves the cursor past events of streams this page does not show (never backwards).
    pub fn advance(&self, cursor: u64) {
        if self.relays {
            relay(&Relay::Cursor { cursor });
        }
        let mut c = Cursor(self.cursor.get_untracked());
        c.advance(cursor);
        if c.0 != self.cursor.get_untracked() {
            self.cursor.set(c.0);
        }
    }

    /// Shows history up to `upto` (first load, or after a reset), keeping anything newer
    /// that a transport delivered meanwhile (a snapshot taken after a reset can hold some
    /// of it: what is above `upto` comes live). Does not move the cursor.
    pub fn load(&self, upto: u64, events: Vec<Event>) {
        // The latest prices, so the ticker is not empty until the next move; never over a
        // price a transport already delivered (that one is newer).
        let known: Vec<String> = self
            .ticker
            .with_untracked(|rows| rows.iter().map(|r| r.tick.symbol.clone()).collect());
        let (mut feed, mut chat, mut ticks) = (Vec::new(), Vec::new(), Vec::new());
        for Event { id, ts, payload } in events.into_iter().filter(|e| e.id <= upto) {
            match payload {
                Payload::Feed(item) => feed.push(FeedEntry {
                    id,
                    ts,
                    item,
                    fresh: false,
                }),
                Payload::Chat(msg) => chat.push(ChatEntry { id, ts, msg }),
                Payload::Ticker(t) if !known.contains(&t.symbol) => ticks.push(t),
                _ => {}
            }
        }
        self.apply_ticks(ticks);
        self.feed.update(|f| {
            let newer: Vec<FeedEntry> = f.drain(..).filter(|e| e.id > upto).collect();
            *f = newer
                .into_iter()
                .chain(feed.into_iter().rev())
                .take(FEED_KEEP)
                .collect();
        });
        self.chat.update(|c| {
            let newer = c.drain(..).filter(|e| e.id > upto).collect::<Vec<_>>();
            chat.extend(newer);
            *c = chat;
        });
        // Messages acknowledged but not yet delivered when a reset skipped past them are in
        // the history just loaded.
        self.outbox
            .update(|o| o.retain(|m| !matches!(m.status, OutStatus::Acked(id) if id <= upto)));
        self.ready.set(true);
    }

    /// Adds notifications (history or live, in id order) and applies read marks: `read`
    /// marks the one it is `about`, `read-all` every one up to its `about`. Marks are events
    /// of the account's stream, so every tab and device ends up with the same state.
    pub fn take_notices(&self, items: Vec<(u64, u64, Notice)>) {
        if items.is_empty() {
            return;
        }
        self.notices.update(|list| {
            for (id, ts, notice) in items {
                let about = notice.about.unwrap_or(0);
                match notice.kind.as_str() {
                    "read" => list
                        .iter_mut()
                        .filter(|n| n.id == about)
                        .for_each(|n| n.read = true),
                    "read-all" => list
                        .iter_mut()
                        .filter(|n| n.id <= about)
                        .for_each(|n| n.read = true),
                    _ if list.iter().all(|n| n.id != id) => list.push(NoticeEntry {
                        id,
                        ts,
                        notice,
                        read: false,
                    }),
                    _ => {}
                }
            }
            list.sort_by_key(|n| n.id);
            let excess = list.len().saturating_sub(NOTICES_KEEP);
            list.drain(..excess);
        });
    }

    /// Applies presence events newer than the list, and keeps the latest few for a list
    /// that arrives after them ([`LiveStore::set_online`]).
    pub fn take_presence(&self, changes: Vec<(u64, PresenceChange)>) {
        if changes.is_empty() {
            return;
        }
        self.presence_recent.update_value(|(r, dropped)| {
            r.extend(changes.iter().cloned());
            let excess = r.len().saturating_sub(PRESENCE_KEEP);
            if let Some((id, _)) = r.drain(..excess).last() {
                *dropped = id;
            }
        });
        self.apply_presence(changes);
    }

    /// Takes `GET /api/presence`: the list as of its cursor, with the events received
    /// since applied on top (an event may arrive before the answer that predates it).
    /// `false` when it cannot be used: events newer than it were already let go (a burst
    /// while it was on its way); ask again.
    pub fn set_online(&self, list: PresenceList) -> bool {
        let (recent, dropped) = self.presence_recent.get_value();
        if dropped > list.cursor {
            return false;
        }
        self.online.set(list.online);
        self.presence_at.set_value(list.cursor);
        self.apply_presence(recent);
        true
    }

    fn apply_presence(&self, changes: Vec<(u64, PresenceChange)>) {
        let mut at = self.presence_at.get_value();
        let mut online = self.online.get_untracked();
        if crate::resume::apply_presence(&mut online, &mut at, changes) {
            self.presence_at.set_value(at);
            self.online.set(online);
        }
    }

    /// The server could not resume from our cursor (too old, or ahead of a wiped store):
    /// continue from the cursor it gives, even if that is lower than ours.
    pub fn reset_to(&self, cursor: u64) {
        if self.relays {
            relay(&Relay::Reset { cursor });
        }
        self.cursor.set(cursor);
        // Presence starts again from the list `reload` fetches: ids may now run lower
        // than the ones it was applied up to (a wiped store).
        self.presence_at.set_value(0);
        self.presence_recent.set_value((Vec::new(), 0));
        // Above the new cursor is only what the server no longer has (a wiped store); what
        // arrives live from here is kept by `load`, the rest is replaced by history.
        self.feed.update(|f| f.retain(|e| e.id <= cursor));
        self.chat.update(|c| c.retain(|e| e.id <= cursor));
        self.reload.set(Some(cursor));
        self.notice.set(Some(
            "Some events could not be resumed; reloaded from history.".into(),
        ));
    }

    pub fn ack(&self, key: &str, id: u64) {
        let delivered = id <= self.cursor.get_untracked();
        self.outbox.update(|o| {
            if delivered {
                o.retain(|m| m.key != key);
            } else if let Some(m) = o.iter_mut().find(|m| m.key == key) {
                m.status = OutStatus::Acked(id);
            }
        });
    }

    /// Changes the outgoing message `key`, unless it is already acknowledged: an answer that
    /// arrives late (a failed retry racing the ack) never undoes "stored".
    pub fn update_outgoing(&self, key: &str, f: impl FnOnce(&mut Outgoing)) {
        self.outbox.update(|o| {
            if let Some(m) = o.iter_mut().find(|m| m.key == key) {
                if !matches!(m.status, OutStatus::Acked(_)) {
                    f(m);
                }
            }
        });
    }

    /// The server (or the network) turned a message back: final refusals are shown; ones
    /// that pass are queued again with a growing wait (1, 2, 4 ... 30 s), so a rate limit or
    /// an outage is not answered with a resend every second. Returns whether it was queued.
    pub fn refused(&self, key: &str, code: &str, error: String) -> bool {
        let status = OutStatus::after_refusal(code, error);
        let again = status == OutStatus::Queued;
        let now = js_sys::Date::now();
        self.update_outgoing(key, |m| {
            if again {
                m.attempts += 1;
                m.retry_at = now + f64::from((1_000u32 << m.attempts.min(5)).min(30_000));
            }
            m.status = status;
        });
        again
    }

    /// Messages sent on the WebSocket that closed before their ack: they may or may not have
    /// been stored. Queued again: the resend carries the same idempotency key, so if the
    /// first copy was stored the server answers with it instead of storing a second.
    pub fn requeue_sent_on_socket(&self) {
        self.outbox.update(|o| {
            for m in o
                .iter_mut()
                .filter(|m| m.via_ws && m.status == OutStatus::Sending)
            {
                m.status = OutStatus::Queued;
            }
        });
    }
}

impl Default for LiveStore {
    fn default() -> Self {
        Self::new()
    }
}
