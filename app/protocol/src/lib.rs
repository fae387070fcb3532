//! The Tidings wire protocol: the one definition of every type that crosses the network,
//! used by the server to encode and by the browser app to decode.
//!
//! This crate depends on serde only (no Leptos, no axum), so any Rust client can use it.
//! `docs/protocol.md` documents the same shapes for clients in other languages.
//!
//! Publishing is validated here too ([`parse_publish`]) so the HTTP endpoint, the
//! WebSocket `publish` frame and the app's composer all apply exactly the same rules.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Largest publish request accepted (HTTP body or WebSocket frame), in bytes.
pub const MAX_PUBLISH_BYTES: usize = 16 * 1024;

/// Most stream names one subscription may list (`streams=`).
pub const MAX_STREAM_NAMES: usize = 8;
/// Limits on user-supplied text, counted in Unicode scalar values (what a person sees as
/// characters), not bytes, so the limits are the same for every script.
pub const MAX_AUTHOR_CHARS: usize = 40;
pub const MAX_CHAT_BODY_CHARS: usize = 2000;
pub const MAX_FEED_TITLE_CHARS: usize = 140;
pub const MAX_FEED_BODY_CHARS: usize = 4000;
pub const MAX_SYMBOL_CHARS: usize = 12;

/// One of the live streams a client can subscribe to.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Feed,
    Chat,
    Ticker,
    /// The transport lab's load: written only by the server's generator, and delivered only
    /// to subscriptions that name it (never part of "all streams").
    Lab,
    /// Personal notifications: each event is for one account (or every signed-in one) and
    /// only connections signed in as it receive it. Written by the server only; delivered
    /// only to subscriptions that name it.
    Notifications,
    /// Who is online in chat: a signed-in account joining (its first connection anywhere
    /// in the cluster) or leaving (its last one gone). Written by the server only;
    /// delivered only to subscriptions that name it.
    Presence,
}

impl Stream {
    /// Every stream a subscription may name.
    pub const ALL: [Stream; 6] = [
        Stream::Feed,
        Stream::Chat,
        Stream::Ticker,
        Stream::Lab,
        Stream::Notifications,
        Stream::Presence,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Feed => "feed",
            Stream::Chat => "chat",
            Stream::Ticker => "ticker",
            Stream::Lab => "lab",
            Stream::Notifications => "notifications",
            Stream::Presence => "presence",
        }
    }

    pub fn parse(s: &str) -> Option<Stream> {
        Stream::ALL.into_iter().find(|st| st.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of streams, as given by `?streams=feed,chat`. A bit set: it is checked once per
/// event per connection on the delivery path, so it must be a copy type with no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct StreamSet(u8);

impl StreamSet {
    /// The app's streams, what an absent or empty `streams=` means: feed, chat, ticker.
    pub const ALL: StreamSet = StreamSet(0b111);
    /// The app's streams and the lab's load (the lab's lanes subscribe to this).
    pub const WITH_LAB: StreamSet = StreamSet(0b1111);

    pub fn contains(self, s: Stream) -> bool {
        self.0 & s.bit() != 0
    }

    pub fn insert(&mut self, s: Stream) {
        self.0 |= s.bit();
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Parses a comma-separated list. An absent or empty list means every stream;
    /// an unknown name is an error (a typo should not silently subscribe to nothing).
    /// At most [`MAX_STREAM_NAMES`] names: a subscription is a handful of streams, and a
    /// list of thousands is an abuse of the parser, not a request.
    pub fn parse(list: Option<&str>) -> Result<StreamSet, String> {
        let list = match list.map(str::trim) {
            None | Some("") => return Ok(StreamSet::ALL),
            Some(l) => l,
        };
        let mut set = StreamSet::default();
        for (i, name) in list
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .enumerate()
        {
            if i == MAX_STREAM_NAMES {
                return Err(format!(
                    "too many streams in one subscription (at most {MAX_STREAM_NAMES})"
                ));
            }
            match Stream::parse(name) {
                Some(s) => set.insert(s),
                None => return Err(unknown_stream_message(name)),
            }
        }
        if set.is_empty() {
            return Ok(StreamSet::ALL);
        }
        Ok(set)
    }

    /// The canonical `feed,chat,ticker` form, for building URLs.
    pub fn to_query(self) -> String {
        Stream::ALL
            .into_iter()
            .filter(|s| self.contains(*s))
            .map(Stream::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What a client that named an unknown stream is told (every endpoint says the same).
pub fn unknown_stream_message(name: &str) -> String {
    format!("unknown stream '{name}' (expected one of: feed, chat, ticker, lab, notifications, presence)")
}

/// A news feed item.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub struct FeedItem {
    pub title: String,
    pub body: String,
    pub author: String,
}

/// A chat message.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub author: String,
    pub body: String,
    /// The signed-in account that sent it, set by the server (a publisher cannot give
    /// it): the verified author. Absent for anonymous visitors, whose `author` is only a
    /// display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// A personal notification (stream `notifications`).
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub struct Notice {
    /// The account it is for, or `*` for every signed-in account (an admin broadcast).
    pub to: String,
    /// What happened: `mention`, `alert` or `broadcast`.
    pub kind: String,
    /// For people, e.g. "ann mentioned you: ...".
    pub text: String,
    /// The event it is about (the chat message of a mention), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub about: Option<u64>,
}

impl Notice {
    /// `to` for a notification every signed-in account receives.
    pub const EVERYONE: &'static str = "*";
}

/// A stock ticker move.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub struct Tick {
    pub symbol: String,
    pub price: f64,
    /// `price - open` when `open` is given (the demo ticker always gives it).
    pub change: f64,
    /// The day's opening price (the first price of the UTC day): the basis of `change`.
    /// Optional for publishers that do not track one; clients then show `change` alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<f64>,
}

/// What was published: the stream and its typed data. Serialises as
/// `{"stream": "chat", "data": {...}}`, which is exactly the publish request body.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(tag = "stream", content = "data", rename_all = "lowercase")]
pub enum Payload {
    Feed(FeedItem),
    Chat(ChatMessage),
    Ticker(Tick),
    Lab(LabTick),
    Notifications(Notice),
    Presence(PresenceChange),
}

/// A presence event: `user` came online in chat (`online: true`: their first connection
/// anywhere) or went offline (their last connection closed, or its server stopped
/// answering). One of each per change, cluster-wide, whatever the number of tabs.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub struct PresenceChange {
    pub user: String,
    pub online: bool,
}

/// The query of `GET /api/presence`.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct PresenceQuery {
    /// The asker's stream cursor: the answer's `cursor` is at least this (a list older than
    /// the stream would miss the presence events in between).
    pub after: Option<u64>,
}

/// `GET /api/presence` answer: who is online now. `cursor` is an event id such that the
/// list reflects every presence event up to it: a client applies the presence events it
/// receives with a higher id, and ignores the rest.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct PresenceList {
    pub cursor: u64,
    /// Account names, sorted.
    pub online: Vec<String>,
}

/// One event of the lab's generated load: its number in the run.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub struct LabTick {
    pub n: u64,
}

impl Payload {
    /// The `data` member of the event's JSON, exactly as serde writes it inside an
    /// [`Event`] (the cluster's publish script and the idempotency check build on it).
    pub fn data_json(&self) -> String {
        match self {
            Payload::Feed(d) => serde_json::to_string(d),
            Payload::Chat(d) => serde_json::to_string(d),
            Payload::Ticker(d) => serde_json::to_string(d),
            Payload::Lab(d) => serde_json::to_string(d),
            Payload::Notifications(d) => serde_json::to_string(d),
            Payload::Presence(d) => serde_json::to_string(d),
        }
        .expect("payload data serialises")
    }

    pub fn stream(&self) -> Stream {
        match self {
            Payload::Feed(_) => Stream::Feed,
            Payload::Chat(_) => Stream::Chat,
            Payload::Ticker(_) => Stream::Ticker,
            Payload::Lab(_) => Stream::Lab,
            Payload::Notifications(_) => Stream::Notifications,
            Payload::Presence(_) => Stream::Presence,
        }
    }
}

/// A stored event: `{"id": 42, "stream": "chat", "ts": 1764375000123, "data": {...}}`.
///
/// `id` is > 0, strictly increasing in delivery order across all streams and never reused;
/// it is the cursor every transport resumes from. `ts` is the server's publish time in
/// milliseconds since the Unix epoch (clients compute latency as receive time minus `ts`).
#[derive(Serialize, Clone, PartialEq, Debug)]
pub struct Event {
    pub id: u64,
    pub ts: u64,
    #[serde(flatten)]
    pub payload: Payload,
}

/// An event's JSON with its `data` in any form: `Envelope<&RawValue>` is how the server
/// reads a stored event's data as it is (the idempotency check), and how [`Event`] is
/// decoded. The field order is [`Event`]'s (a test holds them together).
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Envelope<D> {
    pub id: u64,
    pub ts: u64,
    pub stream: Stream,
    pub data: D,
}

// Decoding by hand: serde's derived `flatten` and internally tagged enums buffer every value
// through a generic intermediate form, which costs the browser app several KB of wasm and
// time per message. These read plain structs instead; the JSON is the same.
impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = Envelope::<serde_json::Value>::deserialize(d)?;
        let e = |e: serde_json::Error| <D::Error as serde::de::Error>::custom(e);
        let payload = match r.stream {
            Stream::Feed => Payload::Feed(serde_json::from_value(r.data).map_err(e)?),
            Stream::Chat => Payload::Chat(serde_json::from_value(r.data).map_err(e)?),
            Stream::Ticker => Payload::Ticker(serde_json::from_value(r.data).map_err(e)?),
            Stream::Lab => Payload::Lab(serde_json::from_value(r.data).map_err(e)?),
            Stream::Notifications => {
                Payload::Notifications(serde_json::from_value(r.data).map_err(e)?)
            }
            Stream::Presence => Payload::Presence(serde_json::from_value(r.data).map_err(e)?),
        };
        Ok(Event {
            id: r.id,
            ts: r.ts,
            payload,
        })
    }
}

impl<'de> Deserialize<'de> for ServerFrame<Event> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Repr {
            #[serde(rename = "type")]
            kind: String,
            event: Option<Event>,
            #[serde(rename = "ref")]
            reference: Option<String>,
            id: Option<u64>,
            error: Option<String>,
            code: Option<String>,
            cursor: Option<u64>,
        }
        let r = Repr::deserialize(d)?;
        let missing = |f: &'static str| <D::Error as serde::de::Error>::missing_field(f);
        Ok(match r.kind.as_str() {
            "event" => ServerFrame::Event {
                event: r.event.ok_or_else(|| missing("event"))?,
            },
            "ack" => ServerFrame::Ack {
                reference: r.reference.ok_or_else(|| missing("ref"))?,
                id: r.id.ok_or_else(|| missing("id"))?,
            },
            "error" => ServerFrame::Error {
                reference: r.reference,
                error: r.error.ok_or_else(|| missing("error"))?,
                code: r.code.unwrap_or_default(),
            },
            "reset" => ServerFrame::Reset {
                cursor: r.cursor.ok_or_else(|| missing("cursor"))?,
            },
            "cursor" => ServerFrame::Cursor {
                cursor: r.cursor.ok_or_else(|| missing("cursor"))?,
            },
            "hello" => ServerFrame::Hello {
                cursor: r.cursor.ok_or_else(|| missing("cursor"))?,
            },
            other => {
                return Err(<D::Error as serde::de::Error>::unknown_variant(
                    other,
                    &["event", "ack", "error", "reset", "cursor", "hello"],
                ))
            }
        })
    }
}

/// Frames the server sends on a WebSocket (JSON text frames).
///
/// `E` is how the event is held: an [`Event`] for clients; the server writes its stored
/// events' JSON as it is (`ServerFrame<&RawValue>`), once per event, not once per socket.
#[derive(Serialize, Clone, PartialEq, Debug)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<E = Event> {
    /// A live or resumed event.
    Event { event: E },
    /// A `publish` frame was stored as event `id`.
    Ack {
        #[serde(rename = "ref")]
        reference: String,
        id: u64,
    },
    /// A client frame was rejected; the socket stays usable. `ref` echoes the frame's
    /// `ref` when it could be read.
    Error {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// For people: what is wrong and what to do.
        error: String,
        /// For programs: a stable identifier of the kind of error (docs/protocol.md lists
        /// them), e.g. `rate_limited`.
        code: String,
    },
    /// The requested cursor is outside the retention window (too old, or ahead of the
    /// latest id, e.g. after the store was wiped): events may have been missed. Delivery
    /// continues live from `cursor`; the client should reload what it shows (history).
    Reset { cursor: u64 },
    /// Sent on heartbeats when the connection's cursor moved past events of streams the
    /// client did not subscribe to, so a client that resumes later does not fall out of
    /// retention because its own streams were quiet.
    Cursor { cursor: u64 },
    /// With `?hello=true`: the first frame on the socket (where delivery starts), and a
    /// `cursor` frame on every heartbeat after it, so a client can tell a socket that
    /// delivers from one a proxy accepted and then left silent (pings are invisible to
    /// browser scripts).
    Hello { cursor: u64 },
}

/// Frames a client sends on a WebSocket.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientFrame {
    Publish {
        #[serde(rename = "ref")]
        reference: String,
        /// Idempotency key, as the `Idempotency-Key` header of `POST /api/publish`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        #[serde(flatten)]
        payload: Payload,
    },
}

/// The query of `GET /api/sse` and `GET /api/ws`.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug, Default)]
pub struct SubscribeQuery {
    /// Comma-separated stream names; absent or empty: all.
    pub streams: Option<String>,
    /// Resume after this event id (SSE: `Last-Event-ID` wins over it).
    pub since: Option<u64>,
    /// Admin token for WebSocket publishing to feed/ticker (browsers cannot set headers
    /// on a WebSocket upgrade).
    pub token: Option<String>,
    /// SSE: start the stream with an `event: hello` message (`data: {"cursor": N}`), which
    /// scripts can see, unlike comments: how a client tells a flowing stream from one a
    /// buffering proxy holds back. Off by default (plain clients need not know it).
    pub hello: Option<bool>,
}

/// The query of `GET /api/poll`.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug, Default)]
pub struct PollQuery {
    pub streams: Option<String>,
    pub since: Option<u64>,
    /// Long poll: seconds to wait for an event when there is none.
    pub wait: Option<u64>,
    pub limit: Option<usize>,
    /// A session token, for clients that can set neither a header nor a cookie.
    pub token: Option<String>,
}

/// The query of `GET /api/history`.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug, Default)]
pub struct HistoryQuery {
    pub stream: Option<String>,
    pub before: Option<u64>,
    pub limit: Option<usize>,
    /// A session token (the `notifications` stream's history is the signed-in account's).
    pub token: Option<String>,
}

/// The query of `GET /api/snapshot`: how many of the newest events of each stream (0 or
/// absent: none of that stream; at most [`MAX_SNAPSHOT_EVENTS`] each).
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct SnapshotQuery {
    pub feed: Option<usize>,
    pub chat: Option<usize>,
    pub ticker: Option<usize>,
    pub lab: Option<usize>,
    /// Up to this id at least (a client reset to it): the answer's `cursor` is then never
    /// below it, even from a server whose window is a moment behind the cluster.
    pub upto: Option<u64>,
    /// The signed-in account's own notifications (needs a session).
    pub notifications: Option<usize>,
    pub token: Option<String>,
}

/// Most events of one stream in a snapshot.
pub const MAX_SNAPSHOT_EVENTS: usize = 200;
/// Most events of a snapshot in all (a bound on the answer's size).
pub const MAX_SNAPSHOT_TOTAL: usize = 400;

/// `GET /api/snapshot` answer: what a page shows first, in one round trip. `cursor` is
/// the latest id when it was taken and every event is at or below it, so a client that
/// shows these and then subscribes with `since=cursor` misses nothing and sees nothing
/// twice. Events are grouped by stream (feed, chat, ticker, lab), each group oldest first.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Snapshot {
    pub cursor: u64,
    pub events: Vec<Event>,
}

/// `GET /api/poll` answer. `E` as in [`ServerFrame`]: the server writes stored JSON.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct PollResponse<E = Event> {
    pub events: Vec<E>,
    /// Pass this as `since` on the next poll.
    pub cursor: u64,
    /// More events are ready right away (the answer was cut at `limit`).
    pub more: bool,
    /// The `since` cursor was outside the retention window; see [`ServerFrame::Reset`].
    #[serde(default, skip_serializing_if = "is_false")]
    pub reset: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The `data` of the SSE events `hello` (`?hello=true`: where delivery starts) and `reset`
/// (see [`ServerFrame::Reset`]).
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Debug)]
pub struct CursorData {
    pub cursor: u64,
}

/// Names of the SSE events that are not stream events (those have no `event:` line).
pub const SSE_HELLO: &str = "hello";
pub const SSE_RESET: &str = "reset";
/// The stream was opened with a session that has now expired: `data` is an [`ErrorBody`]
/// (`code` `session_expired`) and the response ends. (A WebSocket closes with code 4001.)
pub const SSE_EXPIRED: &str = "expired";

/// `GET /api/history` answer.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug, Default)]
pub struct HistoryResponse {
    pub events: Vec<Event>,
}

/// The body of every error answer: `{"error": "...", "code": "..."}`.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct ErrorBody {
    /// For people: what is wrong and what to do.
    pub error: String,
    /// For programs: a stable identifier of the kind of error (docs/protocol.md).
    #[serde(default)]
    pub code: String,
}

/// `GET /api/stats`: the server's side of the transport lab. Counters only grow (since
/// the process started); a client takes two samples for rates. `now_ms` is the server's
/// clock, for the lab's NTP-style estimate of the browser's clock offset.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug, Default)]
pub struct ServerStats {
    pub now_ms: u64,
    /// Open streams by transport: `ws`, `sse`, `long_poll` (requests waiting for events).
    pub open_ws: u64,
    pub open_sse: u64,
    pub open_long_poll: u64,
    /// `GET /api/poll` requests answered.
    pub polls: u64,
    /// Publishes accepted (HTTP and WebSocket).
    pub publishes: u64,
    /// Events written to subscribers (all transports).
    pub delivered: u64,
}

/// What the server says about itself (the `server_info` server function).
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug, Default)]
pub struct ServerInfo {
    pub version: String,
    /// Latest event id (0 when there is none).
    pub latest_id: u64,
    /// Oldest event id still in the resume window (0 when empty).
    pub oldest_id: u64,
    /// How many events are kept for resume.
    pub retention: usize,
    /// Whether the demo newsroom and ticker are running.
    pub demo: bool,
    /// Whether publishing to feed/ticker needs the admin token.
    pub admin_protected: bool,
    /// Whether this server is the one running the simulators (in cluster mode only the
    /// holder of the demo lease does).
    #[serde(default)]
    pub demo_leader: bool,
    /// Whether this server accepts WebSocket upgrades from the origin that asked (the
    /// request's `Origin`). A browser cannot see why a WebSocket was refused (the 403 is
    /// hidden from scripts), so the app asks here and can say so on screen.
    #[serde(default = "yes")]
    pub websocket_origin_allowed: bool,
}

fn yes() -> bool {
    true
}

/// Why a publish was refused. The kind maps to an HTTP status (400 / 422 / 413) and the
/// message is shown to the client verbatim, so it names the field and the rule.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PublishError {
    /// Not JSON, or not the `{"stream", "data"}` shape, or `data` lacks a field. (400)
    Malformed(String),
    /// `stream` names no stream. (400)
    UnknownStream(String),
    /// Well-formed but a field breaks a rule. (422)
    Invalid(String),
    /// Larger than [`MAX_PUBLISH_BYTES`]. (413)
    TooLarge,
}

impl PublishError {
    pub fn message(&self) -> String {
        match self {
            PublishError::Malformed(m)
            | PublishError::UnknownStream(m)
            | PublishError::Invalid(m) => m.clone(),
            PublishError::TooLarge => {
                format!("request body is larger than {MAX_PUBLISH_BYTES} bytes")
            }
        }
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

/// Parses and validates a publish request body (`{"stream": ..., "data": {...}}`).
/// The single entry point for every publish path, so the rules cannot drift apart.
pub fn parse_publish(body: &[u8]) -> Result<Payload, PublishError> {
    if body.len() > MAX_PUBLISH_BYTES {
        return Err(PublishError::TooLarge);
    }
    let raw: RawPublish = serde_json::from_slice(body)
        .map_err(|e| PublishError::Malformed(format!("malformed JSON: {e}")))?;
    payload_from_raw(raw)
}

/// A WebSocket `publish` frame, parsed and validated.
#[derive(Clone, PartialEq, Debug)]
pub struct PublishFrame {
    /// The client's name for this request, echoed in the ack or error (any string up to
    /// 64 bytes; need not be unique).
    pub reference: String,
    /// Idempotency key: a publish retried with the same key is stored once (see
    /// [`valid_idempotency_key`]).
    pub key: Option<String>,
    pub payload: Payload,
}

/// Longest idempotency key (`key` of a WS publish, `Idempotency-Key` header).
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// An idempotency key is 1-128 visible ASCII characters (a UUID, say).
pub fn valid_idempotency_key(key: &str) -> Result<(), PublishError> {
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(PublishError::Malformed(format!(
            "an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        )));
    }
    Ok(())
}

/// Parses a WebSocket client frame. On error, also returns the frame's `ref` when it could
/// be read, so the error frame can be matched to the request.
pub fn parse_client_frame(text: &str) -> Result<PublishFrame, (Option<String>, PublishError)> {
    if text.len() > MAX_PUBLISH_BYTES {
        return Err((None, PublishError::TooLarge));
    }
    let raw: RawFrame = serde_json::from_str(text).map_err(|e| {
        (
            None,
            PublishError::Malformed(format!("malformed JSON: {e}")),
        )
    })?;
    let reference = raw.reference.clone();
    match raw.kind.as_deref() {
        Some("publish") => {}
        Some(other) => {
            return Err((
                reference,
                PublishError::Malformed(format!(
                    "unknown frame type '{other}' (expected 'publish')"
                )),
            ))
        }
        None => {
            return Err((
                reference,
                PublishError::Malformed("missing field `type`".into()),
            ))
        }
    }
    let Some(r) = reference.clone() else {
        return Err((None, PublishError::Malformed("missing field `ref`".into())));
    };
    if r.len() > 64 {
        return Err((
            None,
            PublishError::Malformed("`ref` is longer than 64 bytes".into()),
        ));
    }
    if let Some(key) = &raw.key {
        valid_idempotency_key(key).map_err(|e| (reference.clone(), e))?;
    }
    let payload = payload_from_raw(RawPublish {
        stream: raw.stream,
        data: raw.data,
    })
    .map_err(|e| (reference, e))?;
    Ok(PublishFrame {
        reference: r,
        key: raw.key,
        payload,
    })
}

/// Parsing in two steps gives each mistake its own message and status: first the outer
/// shape, then the stream name, then the stream's typed data, then the field rules.
#[derive(Deserialize)]
struct RawPublish {
    stream: Option<String>,
    data: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawFrame {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "ref")]
    reference: Option<String>,
    key: Option<String>,
    stream: Option<String>,
    data: Option<serde_json::Value>,
}

fn payload_from_raw(raw: RawPublish) -> Result<Payload, PublishError> {
    let name = raw
        .stream
        .ok_or_else(|| PublishError::Malformed("missing field `stream`".into()))?;
    let stream = Stream::parse(&name)
        .ok_or_else(|| PublishError::UnknownStream(unknown_stream_message(&name)))?;
    let data = raw
        .data
        .ok_or_else(|| PublishError::Malformed("missing field `data`".into()))?;
    let bad = |e: serde_json::Error| {
        PublishError::Malformed(format!("invalid data for stream {stream}: {e}"))
    };
    let payload = match stream {
        Stream::Feed => Payload::Feed(serde_json::from_value(data).map_err(bad)?),
        Stream::Chat => Payload::Chat(serde_json::from_value(data).map_err(bad)?),
        Stream::Ticker => Payload::Ticker(serde_json::from_value(data).map_err(bad)?),
        Stream::Lab => Payload::Lab(serde_json::from_value(data).map_err(bad)?),
        Stream::Notifications => Payload::Notifications(serde_json::from_value(data).map_err(bad)?),
        Stream::Presence => Payload::Presence(serde_json::from_value(data).map_err(bad)?),
    };
    validate(payload).map_err(PublishError::Invalid)
}

/// Applies the field rules and normalises text (surrounding whitespace is trimmed, so what
/// is stored is what was checked).
pub fn validate(payload: Payload) -> Result<Payload, String> {
    Ok(match payload {
        Payload::Feed(f) => Payload::Feed(FeedItem {
            title: text_field("Title", &f.title, MAX_FEED_TITLE_CHARS, false)?,
            body: text_field("Story text", &f.body, MAX_FEED_BODY_CHARS, true)?,
            author: text_field("Author", &f.author, MAX_AUTHOR_CHARS, false)?,
        }),
        Payload::Chat(c) => Payload::Chat(ChatMessage {
            author: text_field("Name", &c.author, MAX_AUTHOR_CHARS, false)?,
            body: text_field("Message", &c.body, MAX_CHAT_BODY_CHARS, true)?,
            user: c.user,
        }),
        Payload::Ticker(t) => {
            let symbol = text_field("Symbol", &t.symbol, MAX_SYMBOL_CHARS, false)?;
            if !symbol
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            {
                return Err("Symbol may only contain ASCII letters, digits, '.' and '-'".into());
            }
            if !t.price.is_finite() || t.price <= 0.0 {
                return Err("Price must be a finite number greater than 0".into());
            }
            if !t.change.is_finite() {
                return Err("Change must be a finite number".into());
            }
            if t.open.is_some_and(|o| !o.is_finite() || o <= 0.0) {
                return Err("Opening price must be a finite number greater than 0".into());
            }
            Payload::Ticker(Tick {
                symbol,
                price: t.price,
                change: t.change,
                open: t.open,
            })
        }
        Payload::Lab(l) => Payload::Lab(l),
        Payload::Presence(p) => {
            validate_account_name(&p.user)?;
            Payload::Presence(p)
        }
        Payload::Notifications(n) => Payload::Notifications(Notice {
            text: text_field("Text", &n.text, MAX_CHAT_BODY_CHARS, true)?,
            ..n
        }),
    })
}

/// `POST /api/auth/signup` and `POST /api/auth/signin` body.
#[derive(Serialize, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub name: String,
    pub password: String,
}

// Never printed: a password must not reach a log through a `{:?}`.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A session: the answer to sign-up and sign-in (with `token`, for API clients; browsers
/// get the same token as an HttpOnly cookie), and to `GET /api/auth/me` (without).
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Session {
    pub name: String,
    /// When the session ends, in seconds since the Unix epoch.
    pub expires: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

pub const MIN_ACCOUNT_NAME: usize = 2;
pub const MAX_ACCOUNT_NAME: usize = 32;
pub const MIN_PASSWORD: usize = 8;
/// Bytes: hashing cost grows with the length, and no one types more.
pub const MAX_PASSWORD_BYTES: usize = 1024;

fn account_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// An account name is 2-32 ASCII letters, digits, `_` or `-` (so `@name` in a message is
/// unambiguous); unique without regard to case.
pub fn validate_account_name(name: &str) -> Result<(), String> {
    let n = name.chars().count();
    if !(MIN_ACCOUNT_NAME..=MAX_ACCOUNT_NAME).contains(&n) || !name.chars().all(account_char) {
        return Err(format!(
            "A name is {MIN_ACCOUNT_NAME} to {MAX_ACCOUNT_NAME} letters, digits, '_' or '-'"
        ));
    }
    Ok(())
}

pub fn validate_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(format!("A password is at least {MIN_PASSWORD} characters"));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!("A password is at most {MAX_PASSWORD_BYTES} bytes"));
    }
    Ok(())
}

/// A price alert: "ACME above 120". `armed`: it fires at the next price that meets it.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct AlertRule {
    pub id: u64,
    pub symbol: String,
    /// `above` (a price at or over `price`) or `below` (at or under).
    pub op: String,
    pub price: f64,
    pub armed: bool,
}

impl AlertRule {
    pub fn is_met(&self, price: f64) -> bool {
        match self.op.as_str() {
            "above" => price >= self.price,
            _ => price <= self.price,
        }
    }
}

/// `POST /api/alerts` and `PUT /api/alerts/{id}` body.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub struct NewAlert {
    pub symbol: String,
    pub op: String,
    pub price: f64,
}

/// Most price alerts one account may have.
pub const MAX_ALERTS: usize = 20;

impl NewAlert {
    /// The rule made from this one, under `id`, armed.
    pub fn rule(&self, id: u64) -> AlertRule {
        AlertRule {
            id,
            symbol: self.symbol.clone(),
            op: self.op.clone(),
            price: self.price,
            armed: true,
        }
    }

    /// The rule as stored: the symbol upper-cased (the ticker's symbols are), checked.
    pub fn validate(self) -> Result<NewAlert, String> {
        let symbol = text_field("Symbol", &self.symbol, MAX_SYMBOL_CHARS, false)?.to_uppercase();
        if !symbol
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            return Err("Symbol may only contain ASCII letters, digits, '.' and '-'".into());
        }
        if self.op != "above" && self.op != "below" {
            return Err("An alert is for a price 'above' or 'below' a level".into());
        }
        if !self.price.is_finite() || self.price <= 0.0 {
            return Err("Price must be a finite number greater than 0".into());
        }
        Ok(NewAlert {
            symbol,
            op: self.op,
            price: self.price,
        })
    }
}

/// Most accounts one message notifies.
pub const MAX_MENTIONS: usize = 10;

/// The account names a message mentions (`@name`, not inside a word or an address like
/// `a@b`), each once, in order, at most [`MAX_MENTIONS`].
pub fn mentions(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut prev: Option<char> = None;
    for (i, c) in text.char_indices() {
        if c == '@' && !prev.is_some_and(|p| account_char(p) || p == '@') {
            let rest = &text[i + 1..];
            let len = rest.find(|c: char| !account_char(c)).unwrap_or(rest.len());
            let name = &rest[..len];
            if validate_account_name(name).is_ok()
                && !out.iter().any(|n| n.eq_ignore_ascii_case(name))
            {
                out.push(name.to_owned());
                if out.len() == MAX_MENTIONS {
                    break;
                }
            }
        }
        prev = Some(c);
    }
    out
}

/// `n` with a comma every three digits ("3,000"), as people read counts.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Multi-line fields (bodies) may contain newlines and tabs; every other control character
/// is refused, because it can corrupt terminals, logs and line-based protocols (SSE).
///
/// `name` is the label a person knows the field by ("Message", not `body`): the same text
/// is shown in the app and returned to API clients (docs/protocol.md maps labels to fields).
fn text_field(
    name: &str,
    value: &str,
    max_chars: usize,
    multiline: bool,
) -> Result<String, String> {
    let v = value.trim();
    if v.is_empty() {
        return Err(format!("{name} is empty"));
    }
    let n = v.chars().count();
    if n > max_chars {
        return Err(format!(
            "{name} is {} characters; the limit is {}",
            thousands(n),
            thousands(max_chars)
        ));
    }
    if let Some(c) = v
        .chars()
        .find(|c| c.is_control() && !(multiline && (*c == '\n' || *c == '\t')))
    {
        return Err(format!(
            "{name} contains a control character (U+{:04X})",
            c as u32
        ));
    }
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_shape_is_the_documented_one() {
        let e = Event {
            id: 42,
            ts: 1764375000123,
            payload: Payload::Chat(ChatMessage {
                author: "ann".into(),
                body: "hi".into(),
                user: None,
            }),
        };
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": 42, "ts": 1764375000123u64, "stream": "chat", "data": {"author": "ann", "body": "hi"}})
        );
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn server_frames_round_trip() {
        let frames = [
            (
                ServerFrame::Ack {
                    reference: "r1".into(),
                    id: 7,
                },
                r#"{"type":"ack","ref":"r1","id":7}"#,
            ),
            (
                ServerFrame::Reset { cursor: 9 },
                r#"{"type":"reset","cursor":9}"#,
            ),
            (
                ServerFrame::Hello { cursor: 4 },
                r#"{"type":"hello","cursor":4}"#,
            ),
            (
                ServerFrame::Error {
                    reference: None,
                    error: "x".into(),
                    code: "rate_limited".into(),
                },
                r#"{"type":"error","error":"x","code":"rate_limited"}"#,
            ),
        ];
        for (frame, text) in frames {
            assert_eq!(serde_json::to_string(&frame).unwrap(), text);
            assert_eq!(serde_json::from_str::<ServerFrame>(text).unwrap(), frame);
        }
        assert!(serde_json::from_str::<ServerFrame>(r#"{"type":"nope"}"#).is_err());
        assert!(serde_json::from_str::<ServerFrame>(r#"{"type":"ack","ref":"r1"}"#).is_err());
        assert!(serde_json::from_str::<Event>(
            r#"{"id":1,"ts":2,"stream":"chat","data":{"author":"a"}}"#
        )
        .is_err());
    }

    #[test]
    fn client_frame_parses_and_keeps_ref_on_error() {
        let f = parse_client_frame(
            r#"{"type":"publish","ref":"r1","key":"k-1","stream":"chat","data":{"author":" ann ","body":"hi"}}"#,
        )
        .unwrap();
        assert_eq!(
            (f.reference.as_str(), f.key.as_deref()),
            ("r1", Some("k-1"))
        );
        assert_eq!(
            f.payload,
            Payload::Chat(ChatMessage {
                author: "ann".into(),
                body: "hi".into(),
                user: None,
            })
        );

        let (r, e) =
            parse_client_frame(r#"{"type":"publish","ref":"r2","stream":"nope","data":{}}"#)
                .unwrap_err();
        assert_eq!(r.as_deref(), Some("r2"));
        assert!(matches!(e, PublishError::UnknownStream(_)));

        let (r, e) = parse_client_frame("not json").unwrap_err();
        assert_eq!(r, None);
        assert!(matches!(e, PublishError::Malformed(_)));

        let (_, e) = parse_client_frame(r#"{"type":"subscribe","ref":"r3"}"#).unwrap_err();
        assert!(e.message().contains("unknown frame type"));

        for key in ["", " spaces ", &"k".repeat(129)] {
            let frame = format!(
                r#"{{"type":"publish","ref":"r4","key":{},"stream":"chat","data":{{"author":"a","body":"b"}}}}"#,
                serde_json::to_string(key).unwrap()
            );
            let (r, e) = parse_client_frame(&frame).unwrap_err();
            assert_eq!(r.as_deref(), Some("r4"));
            assert!(e.message().contains("idempotency key"), "{key:?}");
        }
    }

    #[test]
    fn publish_errors_have_the_right_kind() {
        use PublishError::*;
        let cases: &[(&str, fn(&PublishError) -> bool)] = &[
            ("{", |e| matches!(e, Malformed(_))),
            (r#"{"stream":"chat"}"#, |e| matches!(e, Malformed(_))),
            (r#"{"stream":"weather","data":{}}"#, |e| {
                matches!(e, UnknownStream(_))
            }),
            (r#"{"stream":"chat","data":{"author":"a"}}"#, |e| {
                matches!(e, Malformed(_))
            }),
            (
                r#"{"stream":"chat","data":{"author":"a","body":"b","x":1}}"#,
                |e| matches!(e, Malformed(_)),
            ),
            (
                r#"{"stream":"chat","data":{"author":"   ","body":"b"}}"#,
                |e| matches!(e, Invalid(_)),
            ),
            (
                r#"{"stream":"chat","data":{"author":"a","body":"b\u0007"}}"#,
                |e| matches!(e, Invalid(_)),
            ),
            (
                r#"{"stream":"ticker","data":{"symbol":"AB","price":-1,"change":0}}"#,
                |e| matches!(e, Invalid(_)),
            ),
        ];
        for (body, ok) in cases {
            let e = parse_publish(body.as_bytes()).unwrap_err();
            assert!(ok(&e), "{body} gave {e:?}");
        }
        let big = vec![b' '; MAX_PUBLISH_BYTES + 1];
        assert_eq!(parse_publish(&big).unwrap_err(), TooLarge);
    }

    #[test]
    fn length_limits_count_characters_at_the_boundary() {
        let author = "é".repeat(MAX_AUTHOR_CHARS);
        let ok = validate(Payload::Chat(ChatMessage {
            author: author.clone(),
            body: "b".into(),
            user: None,
        }));
        assert!(ok.is_ok());
        let too_long = validate(Payload::Chat(ChatMessage {
            author: format!("{author}x"),
            body: "b".into(),
            user: None,
        }));
        assert!(too_long.unwrap_err().contains("limit is 40"));
        let body = "x".repeat(3000);
        assert_eq!(
            validate(Payload::Chat(ChatMessage {
                author: "a".into(),
                body,
                user: None,
            }))
            .unwrap_err(),
            "Message is 3,000 characters; the limit is 2,000"
        );
        let title = "t".repeat(MAX_FEED_TITLE_CHARS + 1);
        let feed = FeedItem {
            title,
            body: "b".into(),
            author: "a".into(),
        };
        assert!(validate(Payload::Feed(feed))
            .unwrap_err()
            .starts_with("Title is 141"));
    }

    #[test]
    fn counts_are_written_with_thousands_separators() {
        for (n, s) in [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (65536, "65,536"),
            (1234567, "1,234,567"),
        ] {
            assert_eq!(thousands(n), s);
        }
    }

    #[test]
    fn bodies_keep_newlines_but_names_do_not() {
        assert!(validate(Payload::Chat(ChatMessage {
            author: "a".into(),
            body: "line1\nline2".into(),
            user: None,
        }))
        .is_ok());
        assert!(validate(Payload::Chat(ChatMessage {
            author: "a\nb".into(),
            body: "x".into(),
            user: None,
        }))
        .is_err());
    }

    #[test]
    fn stream_sets_parse() {
        assert_eq!(StreamSet::parse(None).unwrap(), StreamSet::ALL);
        let s = StreamSet::parse(Some("chat, feed")).unwrap();
        assert!(
            s.contains(Stream::Chat) && s.contains(Stream::Feed) && !s.contains(Stream::Ticker)
        );
        assert_eq!(s.to_query(), "feed,chat");
        assert!(StreamSet::parse(Some("chat,bogus"))
            .unwrap_err()
            .contains("bogus"));
        let eight = vec!["chat"; MAX_STREAM_NAMES].join(",");
        assert!(StreamSet::parse(Some(&eight)).is_ok());
        assert!(StreamSet::parse(Some(&format!("{eight},feed")))
            .unwrap_err()
            .contains("too many streams"));
    }

    #[test]
    fn poll_response_omits_reset_when_false() {
        let r: PollResponse = PollResponse {
            events: vec![],
            cursor: 3,
            more: false,
            reset: false,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"events":[],"cursor":3,"more":false}"#
        );
    }

    #[test]
    fn an_envelope_is_written_as_the_event_is() {
        fn check<D: Serialize + Clone>(data: D, payload: Payload) {
            let event = Event {
                id: 7,
                ts: 99,
                payload,
            };
            let envelope = Envelope {
                id: 7,
                ts: 99,
                stream: event.payload.stream(),
                data,
            };
            let json = serde_json::to_string(&event).unwrap();
            assert_eq!(serde_json::to_string(&envelope).unwrap(), json);
            assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), event);
        }
        let chat = ChatMessage {
            author: "a \"q\"".into(),
            body: "<b>é</b>\n".into(),
            user: None,
        };
        check(chat.clone(), Payload::Chat(chat));
        let tick = Tick {
            symbol: "AB".into(),
            price: 1.25,
            change: -0.5,
            open: Some(1.75),
        };
        check(tick.clone(), Payload::Ticker(tick));
    }

    #[test]
    fn mentions_are_names_after_an_at_sign() {
        assert_eq!(
            mentions("hi @bob and @Ann-2, @bob again"),
            vec!["bob", "Ann-2"]
        );
        assert_eq!(mentions("mail me at x@bob.com"), Vec::<String>::new());
        assert_eq!(mentions("@b @@bob (@carol)"), vec!["carol"]);
        let many: String = (0..20).map(|i| format!("@user{i} ")).collect();
        assert_eq!(mentions(&many).len(), MAX_MENTIONS);
    }

    #[test]
    fn account_names_and_passwords_have_rules() {
        assert!(validate_account_name("ann_2-x").is_ok());
        for bad in ["a", "", "ann smith", "ännä", &"x".repeat(33)] {
            assert!(validate_account_name(bad).is_err(), "{bad}");
        }
        assert!(validate_password("short").is_err());
        assert!(validate_password("long enough").is_ok());
        assert!(validate_password(&"p".repeat(1025)).is_err());
        let c = Credentials {
            name: "ann".into(),
            password: "secret-pw".into(),
        };
        assert!(!format!("{c:?}").contains("secret-pw"));
    }
}
