//! Components. They read the [`LiveStore`] and call [`sync`] and [`transport`]; none of them
//! talks to the network itself.

use crate::api;
use crate::info::get_server_info;
use crate::protocol::{thousands, ServerInfo, Tick, MAX_CHAT_BODY_CHARS};
use crate::store::{ConnState, Kind, LiveStore, OutStatus};
use crate::{sync, transport};
use leptos::either::Either;
use leptos::html;
use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;

const TRANSPORT_KEY: &str = "tidings.transport";
const NICK_KEY: &str = "tidings.nick";
const TITLE: &str = "Tidings — live updates over polling, SSE and WebSocket";

fn stored(key: &str) -> Option<String> {
    api::local_storage()?.get_item(key).ok().flatten()
}

fn store_item(key: &str, value: &str) {
    if let Some(s) = api::local_storage() {
        let _ = s.set_item(key, value);
    }
}

fn date(ts: u64) -> js_sys::Date {
    js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(ts as f64))
}

fn clock(ts: u64) -> String {
    date(ts)
        .to_locale_time_string("en-GB")
        .as_string()
        .unwrap_or_default()
}

/// The full local date and time, for a tooltip.
fn full_date(ts: u64) -> String {
    date(ts)
        .to_locale_string("en-GB", &wasm_bindgen::JsValue::UNDEFINED)
        .as_string()
        .unwrap_or_default()
}

fn iso(ts: u64) -> String {
    date(ts).to_iso_string().as_string().unwrap_or_default()
}

/// A duration in words people use: "3 s", "2 min", "5 h".
fn span(ms: f64) -> String {
    let s = (ms.max(0.0) / 1000.0).round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

/// "just now", "40 s ago", "2 min ago", "3 h ago", else the date.
fn ago(now: f64, ts: u64) -> String {
    let ms = now - ts as f64;
    if ms < 10_000.0 {
        "just now".into()
    } else if ms < 86_400_000.0 {
        format!("{} ago", span(ms))
    } else {
        full_date(ts)
    }
}

/// The name used when the nickname box is left empty: one per browser, kept.
fn default_nick() -> String {
    const KEY: &str = "tidings.guest";
    stored(KEY).unwrap_or_else(|| {
        let n = format!("guest-{}", (js_sys::Math::random() * 9000.0) as u32 + 1000);
        store_item(KEY, &n);
        n
    })
}

fn document() -> Option<web_sys::Document> {
    web_sys::window()?.document()
}

fn page_hidden() -> bool {
    document().is_some_and(|d| d.hidden())
}

#[component]
pub fn App() -> impl IntoView {
    let store = LiveStore {
        relays: true,
        ..LiveStore::new()
    };
    provide_context(store);
    let base = api::base();
    if !base.is_empty() {
        // Server functions go to the same API base as everything else. Set once per page.
        leptos::server_fn::client::set_server_url(Box::leak(base.into_boxed_str()));
    }
    let initial = stored(TRANSPORT_KEY)
        .and_then(|k| Kind::from_key(&k))
        .unwrap_or(Kind::Auto);
    let info = RwSignal::new(None::<ServerInfo>);
    let panel = RwSignal::new(Panel::None);
    provide_context(panel);
    sync::start(store, initial);
    desktop_alerts(store);
    spawn_local(async move { info.set(get_server_info().await.ok()) });

    let choose = move |k: Kind| {
        store_item(TRANSPORT_KEY, &k.key());
        if store.ready.get_untracked() {
            crate::tabs::choose(store, k);
        } else {
            store.kind.set(k);
        }
    };
    // Wide screens show the connection details open; phones keep them folded.
    let wide = web_sys::window()
        .and_then(|w| w.inner_width().ok())
        .and_then(|w| w.as_f64())
        .is_some_and(|w| w > 800.0);

    view! {
        <a class="skip" href="#draft">"Skip to the chat"</a>
        <header class="top">
            <h1>"Tidings"</h1>
            <Status/>
            <a class="lab-link" href="/lab/" data-testid="lab-link" title="All transports side by side, measured">"Lab"</a>
            <AccountBar open=panel/>
            <nav class="picker" aria-label="Transport">
                {Kind::ALL
                    .into_iter()
                    .map(|k| {
                        view! {
                            <button
                                data-testid=format!("transport-{}", k.key())
                                class:active=move || store.kind.get() == k
                                aria-pressed=move || (store.kind.get() == k).to_string()
                                title=k.title()
                                on:click=move |_| choose(k)
                            >
                                {k.label()}
                            </button>
                        }
                    })
                    .collect_view()}
            </nav>
        </header>
        // Either, not AnyView: type-erased views cost the app ~20 KB of wasm.
        {move || match panel.get() {
            Panel::SignIn => Some(Either::Left(view! { <SignIn/> })),
            Panel::Notices => Some(Either::Right(view! { <NoticePanel/> })),
            Panel::None => None,
        }}
        <Notice/>
        <details class="details" open=wide>
            <summary>"Connection details"</summary>
            <StatsStrip/>
        </details>
        <main class="grid">
            <TickerPanel/>
            <FeedPanel/>
            <ChatPanel/>
        </main>
        <footer>
            {move || match info.get() {
                Some(i) => format!(
                    "{}The server keeps the last {} events, so a page that reconnects catches up on what it missed. Tidings {}.",
                    if i.demo { "News and prices are a demo, generated by the server. " } else { "" },
                    thousands(i.retention),
                    i.version,
                ),
                None => "Loading server details…".to_string(),
            }}
            {(!api::base().is_empty()).then(|| format!(" API: {}", api::base()))}
            " " <a href="/lab/">"Transport lab: every transport side by side"</a>
        </footer>
    }
}

/// The connection badge: what the page really knows. "live" only for a transport that
/// pushes; polling says when it last asked and when it asks next; a reconnect says when the
/// next attempt is and offers one now.
#[component]
fn Status() -> impl IntoView {
    let store = expect_context::<LiveStore>();
    let text = move || {
        let now = store.now.get();
        if let Some(a) = store.auto.get().filter(|a| a.trying) {
            // Auto is still finding out: its trial's failures are not reconnects.
            return format!("connecting · Auto: trying {}", transport::auto_name(a.on));
        }
        match store.conn.get() {
            ConnState::Connecting => match store.auto.get() {
                Some(a) => format!("connecting · Auto: trying {}", transport::auto_name(a.on)),
                None => "connecting…".to_string(),
            },
            ConnState::Offline => "offline · waiting for the network".to_string(),
            ConnState::Reconnecting => match store.next_attempt.get() {
                Some(at) if at > now => format!("reconnecting · next try in {}", span(at - now)),
                _ => "reconnecting…".to_string(),
            },
            ConnState::Live => {
                (match store.kind.get() {
                    Kind::Poll(_) => {
                        let checked = store.last_contact.get().map_or_else(
                            || "checked".to_string(),
                            |t| format!("checked {} ago", span(now - t)),
                        );
                        match store.next_check.get() {
                            Some(at) => format!("{checked} · next in {}", span(at - now)),
                            None => format!("{checked} · checking…"),
                        }
                    }
                    Kind::Auto => match store.auto.get() {
                        Some(a) if a.why.is_empty() => {
                            format!("live · Auto: {}", transport::auto_name(a.on))
                        }
                        Some(a) => {
                            format!("live · Auto: {} — {}", transport::auto_name(a.on), a.why)
                        }
                        None => "live · Auto".to_string(),
                    },
                    k => format!("live · {}", k.label()),
                }) + if store.follower.get() {
                    " · via another tab"
                } else {
                    ""
                }
            }
        }
    };
    view! {
        <div class="status" role="status">
            <span class="conn" data-testid="conn-state" data-state=move || store.conn.get().label()
                data-auto=move || store.auto.get().map(|a| if a.trying { "trying".to_string() } else { a.on.key() })>
                {text}
            </span>
            {move || (store.conn.get() == ConnState::Reconnecting).then(|| view! {
                <button class="retry" data-testid="retry-now" on:click=move |_| crate::tabs::retry_now(store)>
                    "Retry now"
                </button>
            })}
        </div>
    }
}

/// What opens below the header.
#[derive(Clone, Copy, PartialEq)]
enum Panel {
    None,
    SignIn,
    Notices,
}

/// Sign in, or the bell with the unread count and the account's name.
#[component]
fn AccountBar(open: RwSignal<Panel>) -> impl IntoView {
    let store = expect_context::<LiveStore>();
    let toggle = move |p: Panel| open.update(|o| *o = if *o == p { Panel::None } else { p });
    let unread = move || store.notices.with(|n| n.iter().filter(|n| !n.read).count());
    move || match store.account.get() {
        None => Either::Left(view! {
            <button class="account" data-testid="sign-in-open" aria-expanded=move || (open.get() == Panel::SignIn).to_string() on:click=move |_| toggle(Panel::SignIn)>"Sign in"</button>
        }),
        Some(name) => Either::Right(view! {
            <button
                class="account bell"
                data-testid="bell"
                aria-expanded=move || (open.get() == Panel::Notices).to_string()
                aria-label=move || format!("Notifications for {}, {} unread", name, unread())
                on:click=move |_| toggle(Panel::Notices)
            >
                "🔔"
                <span class="count" data-testid="unread" class:zero=move || unread() == 0>{unread}</span>
            </button>
        }),
    }
}

#[component]
fn SignIn() -> impl IntoView {
    // Read from the inputs on submit (no signal per keystroke: less code in the app).
    let name = NodeRef::<html::Input>::new();
    let password = NodeRef::<html::Input>::new();
    let error = RwSignal::new(None::<String>);
    let busy = RwSignal::new(false);
    let go = move |create: bool| {
        let value =
            |r: NodeRef<html::Input>| r.get_untracked().map(|i| i.value()).unwrap_or_default();
        let (n, p) = (value(name), value(password));
        busy.set(true);
        error.set(None);
        spawn_local(async move {
            if let Err(e) = sync::sign_in(n, p, create).await {
                error.set(Some(e));
            }
            busy.set(false);
        });
    };
    view! {
        <form class="signin" data-testid="sign-in" on:submit=move |ev| { ev.prevent_default(); go(false) }>
            <label>"Name" <input autocomplete="username" data-testid="sign-in-name" node_ref=name/></label>
            <label>"Password" <input type="password" autocomplete="current-password" data-testid="sign-in-password" node_ref=password/></label>
            <button type="submit" data-testid="sign-in-submit" disabled=busy>"Sign in"</button>
            <button type="button" data-testid="sign-up-submit" disabled=busy on:click=move |_| go(true)>"Create account"</button>
            <p class="error" role="alert" data-testid="sign-in-error">{move || error.get()}</p>
        </form>
    }
}

#[component]
fn NoticePanel() -> impl IntoView {
    let store = expect_context::<LiveStore>();
    let ask = move |_| {
        let _ = web_sys::Notification::request_permission();
    };
    let may_ask = web_sys::Notification::permission() == web_sys::NotificationPermission::Default;
    view! {
        <section class="notices" data-testid="notices" aria-label="Notifications">
            <div class="notices-head">
                <span>"Signed in as " <b data-testid="account-name">{move || store.account.get()}</b></span>
                <button data-testid="mark-all-read" on:click=move |_| sync::mark_read(store, None)>"Mark all read"</button>
                {may_ask.then(|| view! { <button on:click=ask>"Desktop alerts"</button> })}
                <button data-testid="sign-out" on:click=move |_| sync::sign_out()>"Sign out"</button>
            </div>
            <ol aria-live="polite">
                {move || {
                    let now = store.now.get();
                    store.notices.get().into_iter().rev().map(|n| {
                        let id = n.id;
                        view! {
                            <li class="notice-item" class:unread=!n.read data-testid="notice-item" data-kind=n.notice.kind.clone()>
                                <span class="text">{n.notice.text.clone()}</span>
                                <time title=full_date(n.ts)>{ago(now, n.ts)}</time>
                                {(!n.read).then(|| view! { <button data-testid="mark-read" on:click=move |_| sync::mark_read(store, Some(id))>"Mark read"</button> })}
                            </li>
                        }
                    }).collect_view()
                }}
            </ol>
            {move || store.notices.with(Vec::is_empty).then(|| view! { <p class="empty">"No notifications yet. Mentions (@name), price alerts and announcements appear here."</p> })}
            <PriceAlerts/>
        </section>
    }
}

/// The account's price alerts: a list with Remove, and a line to add one.
#[component]
fn PriceAlerts() -> impl IntoView {
    let store = expect_context::<LiveStore>();
    let rules = RwSignal::new(Vec::<crate::protocol::AlertRule>::new());
    let error = RwSignal::new(None::<String>);
    let reload = move || {
        spawn_local(async move {
            match sync::alerts().await {
                Ok(r) => rules.set(r),
                Err(e) => error.set(Some(e)),
            }
        })
    };
    reload();
    let symbol = NodeRef::<html::Select>::new();
    let op = NodeRef::<html::Select>::new();
    let price = NodeRef::<html::Input>::new();
    let add = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let (Some(s), Some(o), Some(p)) = (symbol.get(), op.get(), price.get()) else {
            return;
        };
        let body = format!(
            r#"{{"symbol":{:?},"op":{:?},"price":{}}}"#,
            s.value(),
            o.value(),
            p.value().trim()
        );
        spawn_local(async move {
            match sync::alert_change("POST", "/api/alerts".into(), Some(body)).await {
                Ok(()) => {
                    error.set(None);
                    reload();
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };
    let remove = move |id: u64| {
        spawn_local(async move {
            match sync::alert_change("DELETE", format!("/api/alerts/{id}"), None).await {
                Ok(()) => reload(),
                Err(e) => error.set(Some(e)),
            }
        })
    };
    view! {
        <h3 class="alerts-h">"Price alerts"</h3>
        <ul class="alerts" data-testid="alerts">
            {move || rules.get().into_iter().map(|r| {
                let id = r.id;
                view! {
                    <li data-testid="alert-rule">
                        {format!("{} {} {}", r.symbol, r.op, r.price)}
                        {(!r.armed).then_some(" (fired; arms again when the price is back)")}
                        <button aria-label=format!("Remove the alert {} {} {}", r.symbol, r.op, r.price) on:click=move |_| remove(id)>"Remove"</button>
                    </li>
                }
            }).collect_view()}
        </ul>
        <form class="alert-form" on:submit=add>
            <select aria-label="Symbol" data-testid="alert-symbol" node_ref=symbol>
                {move || store.ticker.get().into_iter().map(|t| view! { <option>{t.tick.symbol}</option> }).collect_view()}
            </select>
            <select aria-label="Direction" data-testid="alert-op" node_ref=op>
                <option value="above">"above"</option>
                <option value="below">"below"</option>
            </select>
            <input aria-label="Price" data-testid="alert-price" inputmode="decimal" size="8" node_ref=price/>
            <button type="submit" data-testid="alert-add">"Add alert"</button>
            <span class="error" role="alert" data-testid="alert-error">{move || error.get()}</span>
        </form>
    }
}

/// While the page is hidden, new notifications also show as the browser's own (when the
/// person allowed it).
fn desktop_alerts(store: LiveStore) {
    Effect::new(move |seen: Option<u64>| {
        let newest = store.notices.with(|n| {
            n.iter()
                .filter(|n| !n.read)
                .map(|n| n.id)
                .max()
                .unwrap_or(0)
        });
        let seen = seen.unwrap_or(newest);
        if newest > seen
            && page_hidden()
            && web_sys::Notification::permission() == web_sys::NotificationPermission::Granted
        {
            if let Some(text) = store
                .notices
                .with_untracked(|n| n.last().map(|n| n.notice.text.clone()))
            {
                let opts = web_sys::NotificationOptions::new();
                opts.set_body(&text);
                let _ = web_sys::Notification::new_with_options("Tidings", &opts);
            }
        }
        newest.max(seen)
    });
}

#[component]
fn Notice() -> impl IntoView {
    let store = expect_context::<LiveStore>();
    move || {
        store.notice.get().map(|n| {
            view! {
                <div class="notice" data-testid="notice" role="alert">
                    {n}
                    <button aria-label="Dismiss notice" on:click=move |_| store.notice.set(None)>"×"</button>
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
            {stat("last delay", "stat-latency", Signal::derive(move || store.stats.with(|s| ms(s.last_latency_ms))))}
            {stat("median delay", "stat-median", Signal::derive(move || store.stats.with(|s| ms(s.median_latency_ms()))))}
            {stat("reconnects", "stat-reconnects", Signal::derive(move || store.stats.with(|s| s.reconnects.to_string())))}
            {stat("last event #", "stat-cursor", Signal::derive(move || store.cursor.get().to_string()))}
        </section>
    }
}

/// The points of a 60 x 18 sparkline of `prices` (scaled to their own range).
fn sparkline(prices: &[f64]) -> String {
    let (lo, hi) = prices
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(*p), hi.max(*p)));
    let span = (hi - lo).max(f64::EPSILON);
    let step = 60.0 / (prices.len().max(2) - 1) as f64;
    prices
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "{:.1},{:.1}",
                i as f64 * step,
                17.0 - (p - lo) / span * 16.0
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// "▲ +1.20 (+1.05%)": the sign and arrow carry the direction for readers who do not see
/// the colour; the percentage is against the day's open when the tick gives one.
fn change_text(t: &Tick) -> String {
    let arrow = if t.change > 0.0 {
        "▲"
    } else if t.change < 0.0 {
        "▼"
    } else {
        "■"
    };
    match t.open {
        Some(open) => format!(
            "{arrow} {:+.2} ({:+.2}%)",
            t.change,
            t.change / open * 100.0
        ),
        None => format!("{arrow} {:+.2}", t.change),
    }
}

#[component]
fn TickerPanel() -> impl IntoView {
    let store = expect_context::<LiveStore>();
    view! {
        <section class="panel ticker" aria-labelledby="ticker-h">
            <h2 id="ticker-h">"Ticker" <span class="basis">"change since today's open (00:00 UTC)"</span></h2>
            <div class="ticks" data-testid="ticker" tabindex="0" aria-label="Prices">
                <For
                    each=move || store.ticker.get()
                    key=|t| (t.tick.symbol.clone(), t.tick.price.to_bits())
                    children=move |t| {
                        let dir = if t.tick.change > 0.0 { "up" } else if t.tick.change < 0.0 { "down" } else { "flat" };
                        let flash = match t.moved { 1 => "flash-up", -1 => "flash-down", _ => "" };
                        let basis = t.tick.open.map(|o| format!("opened today at {o:.2}"));
                        view! {
                            <div class=format!("tick {dir} {flash}") data-testid="tick" data-symbol=t.tick.symbol.clone() title=basis>
                                <span class="symbol">{t.tick.symbol.clone()}</span>
                                <svg class="spark" viewBox="0 0 60 18" aria-hidden="true">
                                    <polyline points=sparkline(&t.recent)/>
                                </svg>
                                <span class="price">{format!("{:.2}", t.tick.price)}</span>
                                <span class="change" data-testid="tick-change">{change_text(&t.tick)}</span>
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
        <section class="panel feed" aria-labelledby="feed-h">
            <h2 id="feed-h">"News"</h2>
            // Focusable so keyboard users can scroll it; announced politely when a story arrives.
            <ol class="items" data-testid="feed" tabindex="0" aria-label="News stories" aria-live="polite">
                <For
                    each=move || store.feed.get()
                    // An id with its time: after a wiped store ids start again, and the row
                    // must be redrawn for the new event that has the old one's id.
                    key=|f| (f.id, f.ts)
                    children=move |f| {
                        let ts = f.ts;
                        view! {
                            <li class="item" class:fresh=f.fresh data-testid="feed-item" data-id=f.id.to_string()>
                                <h3 dir="auto">
                                    {f.fresh.then(|| view! { <span class="new" data-testid="feed-new">"new"</span> })}
                                    {f.item.title.clone()}
                                </h3>
                                <p dir="auto">{f.item.body.clone()}</p>
                                <small>
                                    {f.item.author.clone()} " · "
                                    <time datetime=iso(ts) title=full_date(ts) data-testid="feed-time">
                                        {move || ago(store.now.get(), ts)}
                                    </time>
                                </small>
                            </li>
                        }
                    }
                />
            </ol>
        </section>
    }
}

/// Counts chat messages from others that arrive while `pending` is true (the tab is hidden,
/// or the person has scrolled up), into `count`. Only live arrivals count: the history a
/// page loads (or reloads after a reset) is not news.
fn count_arrivals(
    store: LiveStore,
    nick: RwSignal<String>,
    pending: impl Fn() -> bool + 'static,
    count: RwSignal<u32>,
) {
    Effect::new(move |before: Option<(bool, u64)>| {
        let newest = store.chat.with(|c| c.last().map_or(0, |m| m.id));
        let ready = store.ready.get();
        if let Some((true, seen)) = before {
            if newest > seen && pending() {
                let me = nick.get_untracked();
                let n = store.chat.with_untracked(|c| {
                    c.iter()
                        .filter(|m| m.id > seen && m.msg.author != me)
                        .count()
                });
                count.update(|c| *c += n as u32);
            }
        }
        (ready, newest)
    });
}

/// Who is online in chat: signed-in accounts, each once whatever its tabs and devices.
#[component]
fn Online() -> impl IntoView {
    let store = expect_context::<LiveStore>();
    view! {
        <p class="online" data-testid="online" aria-live="polite">
            {move || store.online.with(|o| match o.len() {
                0 => "Nobody signed in is here".to_string(),
                n => {
                    // A long list would push the chat down: the first few, and a count.
                    let shown = o[..n.min(12)].join(", ");
                    match n {
                        ..=12 => format!("{n} online: {shown}"),
                        _ => format!("{n} online: {shown} and {} more", n - 12),
                    }
                }
            })}
        </p>
    }
}

#[component]
fn ChatPanel() -> impl IntoView {
    let store = expect_context::<LiveStore>();
    let fallback = default_nick();
    let nick = RwSignal::new(
        stored(NICK_KEY)
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| fallback.clone()),
    );
    // Signed in, the account's name is the author (the server sets it anyway).
    Effect::new(move |_| {
        if let Some(account) = store.account.get() {
            nick.set(account);
        }
    });
    let draft = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    let scroller = NodeRef::<html::Div>::new();
    // Whether the view is at the newest message (the list is anchored at the bottom).
    let at_bottom = RwSignal::new(true);
    let below = RwSignal::new(0u32);
    let unread = RwSignal::new(0u32);
    count_arrivals(store, nick, move || !at_bottom.get_untracked(), below);
    count_arrivals(store, nick, page_hidden, unread);
    // The tab title carries the unread count while the tab is hidden.
    Effect::new(move |_| {
        let n = unread.get();
        if let Some(d) = document() {
            d.set_title(&if n == 0 {
                TITLE.to_string()
            } else {
                format!("({n}) {TITLE}")
            });
        }
    });
    if let Some(d) = document() {
        let seen = Closure::<dyn FnMut()>::new(move || {
            if !page_hidden() {
                unread.set(0);
            }
        });
        let _ =
            d.add_event_listener_with_callback("visibilitychange", seen.as_ref().unchecked_ref());
        seen.forget(); // for the page's lifetime
    }
    let to_bottom = move || {
        if let Some(el) = scroller.get_untracked() {
            el.set_scroll_top(0);
        }
        below.set(0);
    };
    let send = move || {
        let author = nick.get_untracked();
        let author = if author.trim().is_empty() {
            fallback.clone()
        } else {
            author
        };
        match sync::send(store, author, draft.get_untracked()) {
            Ok(()) => {
                draft.set(String::new());
                error.set(None);
                to_bottom();
            }
            Err(e) => error.set(Some(e)),
        }
    };
    let loading_older = RwSignal::new(false);
    let older = move |_| {
        loading_older.set(true);
        spawn_local(async move {
            sync::load_older(store).await;
            loading_older.set(false);
        });
    };
    let count = Memo::new(move |_| draft.with(|d| d.trim().chars().count()));
    view! {
        <section class="panel chat" aria-labelledby="chat-h">
            <h2 id="chat-h">"Chat"</h2>
            <Online/>
            // column-reverse keeps the view anchored at the newest message: scrollTop is 0 at
            // the bottom and negative above it.
            <div
                class="scroll"
                node_ref=scroller
                tabindex="0"
                aria-label="Chat messages"
                role="log"
                aria-live="polite"
                on:scroll=move |_| {
                    if let Some(el) = scroller.get_untracked() {
                        let bottom = el.scroll_top() > -40;
                        at_bottom.set(bottom);
                        if bottom {
                            below.set(0);
                        }
                    }
                }
            >
                <ul class="messages" data-testid="chat">
                    {move || store.older_chat.get().then(|| view! {
                        <li class="older">
                            <button data-testid="load-older" disabled=move || loading_older.get() on:click=older>
                                {move || if loading_older.get() { "Loading…" } else { "Load older messages" }}
                            </button>
                        </li>
                    })}
                    <For
                        each=move || store.chat.get()
                        // (id, ts) for the same reason as the news list's key.
                        key=|m| (m.id, m.ts)
                        children=move |m| {
                            let author = m.msg.author.clone();
                            view! {
                                <li class="message" class:mine=move || nick.with(|n| *n == author)
                                    data-testid="chat-message" data-id=m.id.to_string()>
                                    <span class="author" dir="auto" title=m.msg.author.clone()>{m.msg.author.clone()}</span>
                                    // A signed-in account's name, checked by the server; anyone else's is typed.
                                    {m.msg.user.is_some().then(|| view! { <span class="verified" data-testid="verified" title="Signed-in account">"✓"</span> })}
                                    <time datetime=iso(m.ts) title=full_date(m.ts)>{clock(m.ts)}</time>
                                    <span class="body" dir="auto">{m.msg.body.clone()}</span>
                                </li>
                            }
                        }
                    />
                    <For
                        each=move || store.outbox.get()
                        key=|o| o.key.clone()
                        children=move |o| view! { <OutboxItem o=o draft=draft/> }
                    />
                </ul>
            </div>
            {move || (below.get() > 0).then(|| view! {
                <button class="jump" data-testid="new-messages" on:click=move |_| to_bottom()>
                    {move || format!("{} new message{} ↓", below.get(), if below.get() == 1 { "" } else { "s" })}
                </button>
            })}
            <form class="composer" on:submit=move |ev| {
                ev.prevent_default();
                send();
            }>
                <input
                    class="nick"
                    data-testid="nick"
                    aria-label="Your name"
                    placeholder="Your name"
                    maxlength="40"
                    // Signed in, messages go out under the account's verified name.
                    disabled=move || store.account.get().is_some()
                    prop:value=move || store.account.get().unwrap_or_else(|| nick.get())
                    on:input=move |ev| {
                        let v = event_target_value(&ev);
                        if !v.trim().is_empty() {
                            store_item(NICK_KEY, &v);
                        }
                        nick.set(v);
                    }
                    on:blur=move |_| {
                        // Never keep an empty name: back to the default.
                        if nick.with_untracked(|n| n.trim().is_empty()) {
                            nick.set(default_nick());
                            store_item(NICK_KEY, &nick.get_untracked());
                        }
                    }
                />
                <input
                    class="draft"
                    id="draft"
                    data-testid="chat-input"
                    aria-label="Message"
                    aria-describedby="chat-error chat-count"
                    aria-invalid=move || error.get().is_some().to_string()
                    placeholder="Say something…"
                    autocomplete="off"
                    prop:value=move || draft.get()
                    on:input=move |ev| {
                        draft.set(event_target_value(&ev));
                        error.set(None);
                    }
                />
                <button type="submit" data-testid="chat-send">"Send"</button>
            </form>
            <p class="count" id="chat-count" data-testid="chat-count" class:over=move || { count.get() > MAX_CHAT_BODY_CHARS }>
                {move || (count.get() * 10 >= MAX_CHAT_BODY_CHARS * 9).then(|| format!("{} / {}", thousands(count.get()), thousands(MAX_CHAT_BODY_CHARS)))}
            </p>
            <p class="error" id="chat-error" data-testid="chat-error" role="alert">{move || error.get()}</p>
        </section>
    }
}

/// One message of the outbox: where it stands, in words, and what the person can do. Keyed
/// by its idempotency key alone, so a change of status updates the row in place (focus on
/// its buttons stays put) instead of replacing it.
#[component]
fn OutboxItem(o: crate::store::Outgoing, draft: RwSignal<String>) -> impl IntoView {
    let store = expect_context::<LiveStore>();
    let key = o.key.clone();
    let status = {
        let key = key.clone();
        Memo::new(move |_| {
            store.outbox.with(|o| {
                o.iter()
                    .find(|m| m.key == key)
                    .map_or(OutStatus::Sending, |m| m.status.clone())
            })
        })
    };
    let class = move || match status.get() {
        OutStatus::Sending | OutStatus::Acked(_) => "pending",
        OutStatus::Queued => "queued",
        OutStatus::Failed(_) => "failed",
    };
    let note = move || match status.get() {
        OutStatus::Sending => "sending…".to_string(),
        OutStatus::Acked(_) => match (store.kind.get(), store.next_check.get()) {
            (Kind::Poll(_), Some(at)) => format!(
                "sent · appears at the next check, in {}",
                span(at - store.now.get())
            ),
            (Kind::Poll(_), None) => "sent · appears at the next check".into(),
            _ => "sent".into(),
        },
        OutStatus::Queued if store.conn.get() == ConnState::Live => {
            "not sent yet · retrying".into()
        }
        OutStatus::Queued => "not sent yet · will send when the connection is back".into(),
        OutStatus::Failed(e) => format!("not sent: {e}"),
    };
    let body = o.msg.body.clone();
    let (k1, k2) = (key.clone(), key.clone());
    view! {
        <li class=move || format!("message outgoing {}", class()) data-testid="chat-outgoing" data-status=class data-key=o.key.clone()>
            <span class="author" dir="auto">{o.msg.author.clone()}</span>
            <span class="status">{note}</span>
            <span class="body" dir="auto">{o.msg.body.clone()}</span>
            <span class="actions" class:idle=move || matches!(status.get(), OutStatus::Sending | OutStatus::Acked(_))>
                <button data-testid="outbox-retry" class:gone=move || status.get() != OutStatus::Queued
                    on:click=move |_| sync::retry(store, &k1)>"Retry now"</button>
                <button data-testid="outbox-edit" class:gone=move || !matches!(status.get(), OutStatus::Failed(_))
                    on:click=move |_| {
                        draft.set(body.clone());
                        sync::discard(store, &k2);
                    }>"Edit"</button>
                <button data-testid="outbox-discard" on:click=move |_| sync::discard(store, &key)>"Discard"</button>
            </span>
        </li>
    }
}
