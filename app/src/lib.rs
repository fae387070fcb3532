//! Tidings browser app, and the wire types it shares with the server.
//!
//! - [`protocol`]: serde-only wire types and publish validation (used by both sides).
//! - [`resume`]: the store's rule for what is new (cursor, dedup, reset), tested natively.
//! - [`info`]: the `server_info` server function (csr: the client stub; ssr: the handler).
//! - `store` (csr): the one reactive store of live state; every transport feeds it.
//! - `transport` (csr): polling, SSE and WebSocket clients over the browser's native
//!   fetch, EventSource and WebSocket; they only decode and hand events to the store.
//! - `ui` (csr): components, which only read the store.

pub mod protocol;
pub mod resume;

#[cfg(any(feature = "csr", feature = "ssr"))]
pub mod info;

#[cfg(feature = "csr")]
pub mod api;
#[cfg(feature = "csr")]
pub mod store;
#[cfg(feature = "csr")]
pub mod transport;
#[cfg(feature = "csr")]
pub mod ui;
