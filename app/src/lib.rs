//! Tidings browser app, and the wire types it shares with the server.
//!
//! - [`protocol`]: serde-only wire types and publish validation (used by both sides); its
//!   own crate, `app/protocol`, so nothing but serde can creep in.
//! - [`resume`]: the store's rule for what is new (cursor, dedup, reset), tested natively.
//! - [`info`]: the `server_info` server function (csr: the client stub; ssr: the handler).
//! - `store` (csr): the one reactive store of live state; every transport feeds it.
//! - `transport` (csr): polling, SSE and WebSocket clients over the browser's native
//!   fetch, EventSource and WebSocket; they decode, hand events to the store, reconnect.
//! - `sync` (csr): startup, history, the outbox of unsent messages, the clock.
//! - `ui` (csr): components, which read the store and call `sync`/`transport`.
//!
//! - `tabs` (csr): one live connection per browser; the other tabs follow the leading one.
//!
//! Dependencies point one way: ui -> sync -> tabs -> transport -> store -> protocol.

/// The wire types: a crate of its own (app/protocol), re-exported as `app::protocol`.
pub use protocol;
pub mod resume;

#[cfg(any(feature = "csr", feature = "ssr"))]
pub mod info;

#[cfg(feature = "csr")]
pub mod api;
#[cfg(feature = "csr")]
pub mod lab;
#[cfg(feature = "csr")]
pub mod store;
#[cfg(feature = "csr")]
pub mod sync;
#[cfg(feature = "csr")]
pub mod tabs;
#[cfg(feature = "csr")]
pub mod transport;
#[cfg(feature = "csr")]
pub mod ui;

/// What the page shows first (`GET /api/snapshot?...`). index.html asks for the same before
/// the app has loaded, and the app takes that answer: the test below keeps the two equal.
pub const SNAPSHOT_QUERY: &str = "feed=20&chat=50&ticker=50";

#[cfg(test)]
mod tests {
    #[test]
    fn index_html_asks_for_the_same_snapshot() {
        let html = include_str!("../index.html");
        let asked = format!("\"/api/snapshot?{}\"", super::SNAPSHOT_QUERY);
        assert!(html.contains(&asked), "index.html must fetch {asked}");
        assert_eq!(super::SNAPSHOT_QUERY.matches("chat=50").count(), 1);
    }
}

/// Starts a page (the app or the lab): panics reported to the console, the static loading
/// state of its HTML removed, then `view` mounted in its place.
#[cfg(feature = "csr")]
pub fn start<F, N>(view: F)
where
    F: FnOnce() -> N + 'static,
    N: leptos::prelude::IntoView,
{
    console_error_panic_hook::set_once();
    if let Some(boot) = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.get_element_by_id("boot"))
    {
        boot.remove();
    }
    leptos::mount::mount_to_body(view);
}
