//! Components. They read the [`LiveStore`] and call [`transport`]; none of them talks to the
//! network itself.

use crate::api;
use crate::info::get_server_info;
use crate::protocol::{ServerInfo, Stream};
use crate::store::{ConnState, LiveStore, OutStatus};
use crate::transport::{self, Kind};
use leptos::prelude::*;
use leptos::task::spawn_local;

const TRANSPORT_KEY: &str = "tidings.transport";
const NICK_KEY: &str = "tidings.nick";
const KINDS: [Kind; 6] = [
    Kind::Poll(1000),
    Kind::Poll(5000),
    Kind::Poll(30000),
    Kind::LongPoll,
    Kind::Sse,
    Kind::Ws,
];

fn stored(key: &str) -> Option<String> {
    api::local_storage()?.get_item(key).ok().flatten()
}

fn store_item(key: &str, value: &str) {
    if let Some(s) = api::local_storage() {
        let _ = s.set_item(key, value);
    }
}

/// Loads the latest feed items, chat messages and prices up to `upto` into the store.
pub async fn load_history(store: LiveStore, upto: u64) {
    let feed = api::history(Stream::Feed, upto + 1, 20)
        .await
        .unwrap_or_default();
    let chat = api::history(Stream::Chat, upto + 1, 50)
        .await
        .unwrap_or_default();
    let ticks = api::history(Stream::Ticker, upto + 1, 50)
        .await
        .unwrap_or_default();
    store.load(upto, feed, chat, ticks);
}

fn clock(ts: u64) -> String {
    js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(ts as f64))
        .to_locale_time_string("en-GB")
        .as_string()
        .unwrap_or_default()
}

#[component]
pub fn App() -> impl IntoView {
    let store = LiveStore::new();
    provide_context(store);
    let base = api::base();
    if !base.is_empty() {
        // Server functions go to the same API base as everything else. Set once per page.
        leptos::server_fn::client::set_server_url(Box::leak(base.into_boxed_str()));
    }
    let kind = RwSignal::new(
        stored(TRANSPORT_KEY)
            .and_then(|k| Kind::from_key(&k))
            .unwrap_or(Kind::Ws),
    );
    let info = RwSignal::new(None::<ServerInfo>);

    // Start: find the head of the log, show history up to it, then go live from there.
    spawn_local(async move {
        let mut failures = 0u32;
        let cursor = loop {
            match api::latest_cursor().await {
                Ok(c) => break c,
                Err(_) => {
                    failures += 1;
                    store.conn.set(ConnState::Reconnecting);
                    gloo_timers::future::TimeoutFuture::new((500 * failures).min(5000)).await;
                }
            }
        };
        store.cursor.set(cursor);
        load_history(store, cursor).await;
        transport::activate(store, kind.get_untracked());
        info.set(get_server_info().await.ok());
    });

    let choose = move |k: Kind| {
        kind.set(k);
        store_item(TRANSPORT_KEY, &k.key());
        if store.ready.get_untracked() {
            transport::activate(store, k);
        }
    };

    view! {
        <header class="top">
            <h1>"Tidings"</h1>
            <nav class="picker" aria-label="Transport">
                {KINDS
                    .into_iter()
                    .map(|k| {
                        view! {
                            <button
                                data-testid=format!("transport-{}", k.key())
                                class:active=move || kind.get() == k
                                on:click=move |_| choose(k)
                            >
                                {k.label()}
                            </button>
                        }
                    })
                    .collect_view()}
            </nav>
            <span class="conn" data-testid="conn-state" data-state=move || store.conn.get().label()>
                {move || store.conn.get().label()}
            </span>
        </header>
        <Notice/>
        <StatsStrip/>
        <main class="grid">
            <TickerPanel/>
            <FeedPanel/>
            <ChatPanel/>
        </main>
        <footer>
            {move || match info.get() {
                Some(i) => format!(
                    "server {} · resume window ids {}–{} (keeps {}) · demo {}",
                    i.version, i.oldest_id, i.latest_id, i.retention, match (i.demo, i.demo_leader) { (false, _) => "off", (true, true) => "on (run here)", (true, false) => "on (run by another server)" }
                ),
                None => "server info loading…".to_string(),
            }}
            " · API: "
            {if api::base().is_empty() { "same origin".to_string() } else { api::base() }}
        </footer>
    }
}

#[component]
fn Notice() -> impl IntoView {
    let store = expect_context::<LiveStore>();
    move || {
        store.notice.get().map(|n| {
            view! {
                <div class="notice" data-testid="notice">
                    {n}
                    <button on:click=move |_| store.notice.set(None)>"×"</button>
                </div>
            }
        })
    }
}

#[component]
fn StatsStrip() -> impl IntoView {
    let store = expect_context::<LiveStore>();
    let ms = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0} ms"));
    let stat = move |label: &'static str, id: &'static str, value: Signal<String>| {
        view! {
            <div class="stat">
                <span class="label">{label}</span>
                <span class="value" data-testid=id>{value}</span>
            </div>
        }
    };
    view! {
        <section class="stats" aria-label="Transport statistics">
            {stat("events", "stat-events", Signal::derive(move || store.stats.with(|s| s.events.to_string())))}
            {stat("requests", "stat-requests", Signal::derive(move || store.stats.with(|s| s.requests.to_string())))}
            {stat("received", "stat-bytes", Signal::derive(move || store.stats.with(|s| format!("{:.1} KB", s.bytes as f64 / 1024.0))))}
            {stat("last latency", "stat-latency", Signal::derive(move || store.stats.with(|s| ms(s.last_latency_ms))))}
            {stat("median latency", "stat-median", Signal::derive(move || store.stats.with(|s| ms(s.median_latency_ms()))))}
            {stat("reconnects", "stat-reconnects", Signal::derive(move || store.stats.with(|s| s.reconnects.to_string())))}
            {stat("cursor", "stat-cursor", Signal::derive(move || store.cursor.get().to_string()))}
        </section>
    }
}

#[component]
fn TickerPanel() -> impl IntoView {
    let store = expect_context::<LiveStore>();
    view! {
        <section class="panel ticker">
            <h2>"Ticker"</h2>
            <div class="ticks" data-testid="ticker">
                <For
                    each=move || store.ticker.get()
                    key=|t| (t.tick.symbol.clone(), t.tick.price.to_bits())
                    children=move |t| {
                        let dir = if t.tick.change > 0.0 { "up" } else if t.tick.change < 0.0 { "down" } else { "flat" };
                        let flash = match t.moved { 1 => "flash-up", -1 => "flash-down", _ => "" };
                        view! {
                            <div class=format!("tick {dir} {flash}") data-testid="tick" data-symbol=t.tick.symbol.clone()>
                                <span class="symbol">{t.tick.symbol.clone()}</span>
                                <span class="price">{format!("{:.2}", t.tick.price)}</span>
                                <span class="change">{format!("{:+.2}", t.tick.change)}</span>
                            </div>
                        }
                    }
                />
            </div>
        </section>
    }
}

#[component]
fn FeedPanel() -> impl IntoView {
    let store = expect_context::<LiveStore>();
    view! {
        <section class="panel feed">
            <h2>"News"</h2>
            <ol class="items" data-testid="feed">
                <For
                    each=move || store.feed.get()
                    key=|f| f.id
                    children=move |f| {
                        view! {
                            <li class="item" data-testid="feed-item" data-id=f.id.to_string()>
                                <h3>{f.item.title.clone()}</h3>
                                <p>{f.item.body.clone()}</p>
                                <small>{f.item.author.clone()} " · " {clock(f.ts)}</small>
                            </li>
                        }
                    }
                />
            </ol>
        </section>
    }
}

#[component]
fn ChatPanel() -> impl IntoView {
    let store = expect_context::<LiveStore>();
    let nick =
        RwSignal::new(stored(NICK_KEY).unwrap_or_else(|| {
            format!("guest-{}", (js_sys::Math::random() * 9000.0) as u32 + 1000)
        }));
    let draft = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    let send =
        move || match transport::send_chat(store, nick.get_untracked(), draft.get_untracked()) {
            Ok(()) => {
                draft.set(String::new());
                error.set(None);
            }
            Err(e) => error.set(Some(e)),
        };
    view! {
        <section class="panel chat">
            <h2>"Chat"</h2>
            // column-reverse keeps the view anchored at the newest message.
            <div class="scroll">
                <ul class="messages" data-testid="chat">
                    <For
                        each=move || store.chat.get()
                        key=|m| m.id
                        children=move |m| {
                            view! {
                                <li class="message" data-testid="chat-message" data-id=m.id.to_string()>
                                    <span class="author">{m.msg.author.clone()}</span>
                                    <span class="body">{m.msg.body.clone()}</span>
                                    <time>{clock(m.ts)}</time>
                                </li>
                            }
                        }
                    />
                    <For
                        each=move || store.outbox.get()
                        key=|o| (o.reference.clone(), format!("{:?}", o.status))
                        children=move |o| {
                            let reference = o.reference.clone();
                            let (class, label) = match &o.status {
                                OutStatus::Pending => ("pending", "sending…".to_string()),
                                OutStatus::Acked(_) => ("pending", "sent".to_string()),
                                OutStatus::Failed(e) => ("failed", format!("failed: {e}")),
                            };
                            let failed = matches!(o.status, OutStatus::Failed(_));
                            view! {
                                <li class=format!("message outgoing {class}") data-testid="chat-outgoing" data-status=class>
                                    <span class="author">{o.msg.author.clone()}</span>
                                    <span class="body">{o.msg.body.clone()}</span>
                                    <span class="status">{label}</span>
                                    {failed.then(|| view! {
                                        <button class="dismiss" on:click=move |_| transport::dismiss(store, &reference)>"dismiss"</button>
                                    })}
                                </li>
                            }
                        }
                    />
                </ul>
            </div>
            <form class="composer" on:submit=move |ev| {
                ev.prevent_default();
                send();
            }>
                <input
                    class="nick"
                    data-testid="nick"
                    aria-label="Nickname"
                    maxlength="40"
                    prop:value=move || nick.get()
                    on:input=move |ev| {
                        let v = event_target_value(&ev);
                        store_item(NICK_KEY, &v);
                        nick.set(v);
                    }
                />
                <input
                    class="draft"
                    data-testid="chat-input"
                    aria-label="Message"
                    placeholder="Say something…"
                    prop:value=move || draft.get()
                    on:input=move |ev| draft.set(event_target_value(&ev))
                />
                <button type="submit" data-testid="chat-send">"Send"</button>
            </form>
            {move || error.get().map(|e| view! { <p class="error" data-testid="chat-error">{e}</p> })}
        </section>
    }
}
