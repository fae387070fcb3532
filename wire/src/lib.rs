//! Tidings' own wire formats, without I/O: everything a peer sends is parsed here.
//!
//! - [`ws`]: RFC 6455 WebSocket frames (server side): the handshake's accept key, frames
//!   out, and [`ws::FrameReader`], which turns bytes in into whole messages or a protocol
//!   violation with its close code.
//! - [`http`]: HTTP/1.1 request heads for the connections the server frames itself (event
//!   streams).
//!
//! Kept apart from the server so the parsers can be fuzzed (`fuzz/`) and tested against the
//! RFCs without building the rest, and so every byte a peer controls goes through one place
//! where length arithmetic is checked.

pub mod http;
pub mod ws;
