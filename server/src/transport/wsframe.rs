//! The WebSocket wire format (RFC 6455), server side: the handshake's accept key, frames
//! out, and an incremental parser for frames in.
//!
//! Why not tungstenite (through axum's `WebSocketUpgrade`), as the axum examples do: a
//! server's frames are unmasked, so an event's frame is the same bytes for every socket. It
//! is built once at publish ([`crate::log::StoredEvent::ws`]) and a connection only copies
//! it into its next write. tungstenite re-frames every message for every socket and keeps
//! read and write buffers per socket; measured on the fan-out benchmark, that framing was
//! about half of the server's per-delivery CPU (docs/performance.md). What Tidings needs of
//! the protocol is small: text frames out, and in: text, binary (refused), ping, pong,
//! close, fragmentation, masking and the size limit.

use base64::Engine as _;
use sha1::{Digest, Sha1};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Appends one complete (FIN), unmasked frame.
pub fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.reserve(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= u16::MAX as usize => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Appends a close frame with a status code and a reason (at most 123 bytes).
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    encode(out, OP_CLOSE, &payload);
}

/// A complete message from the client.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Text(String),
    Binary,
    Ping(Vec<u8>),
    Pong,
    /// The close code the client sent, if any.
    Close(Option<u16>),
}

/// Why the connection must be closed, as the close code and reason to send.
#[derive(Debug, PartialEq)]
pub struct Violation {
    pub code: u16,
    pub reason: String,
}

fn violation(code: u16, reason: impl Into<String>) -> Violation {
    Violation {
        code,
        reason: reason.into(),
    }
}

/// Client frames in. Bytes read from the socket are appended to [`FrameReader::buf`]; each
/// [`FrameReader::next_message`] takes one complete message out, if the buffer holds one.
///
/// Holds nothing between messages (the buffer is freed when it is empty), so an idle socket
/// costs no buffer at all.
pub struct FrameReader {
    pub buf: Vec<u8>,
    /// Largest message accepted (text or binary, all fragments together).
    limit: usize,
    /// A fragmented message in progress: its opcode and the payload so far.
    partial: Option<(u8, Vec<u8>)>,
}

impl FrameReader {
    pub fn new(limit: usize) -> FrameReader {
        FrameReader {
            buf: Vec::new(),
            limit,
            partial: None,
        }
    }

    /// The next complete message, `Ok(None)` if more bytes are needed, or the protocol
    /// violation that ends the connection.
    pub fn next_message(&mut self) -> Result<Option<Incoming>, Violation> {
        loop {
            let Some((fin, opcode, payload)) = self.frame()? else {
                if self.buf.is_empty() && self.buf.capacity() > 0 {
                    self.buf = Vec::new();
                }
                return Ok(None);
            };
            match opcode {
                OP_CLOSE => {
                    return match payload.len() {
                        0 => Ok(Some(Incoming::Close(None))),
                        1 => Err(violation(1002, "malformed close frame")),
                        _ => Ok(Some(Incoming::Close(Some(u16::from_be_bytes([
                            payload[0], payload[1],
                        ]))))),
                    }
                }
                OP_PING => return Ok(Some(Incoming::Ping(payload))),
                OP_PONG => return Ok(Some(Incoming::Pong)),
                OP_CONTINUATION => {
                    let Some((_, so_far)) = self.partial.as_mut() else {
                        return Err(violation(1002, "continuation frame without a message"));
                    };
                    so_far.extend_from_slice(&payload);
                    if fin {
                        let (op, whole) = self.partial.take().expect("checked above");
                        return message(op, whole).map(Some);
                    }
                }
                _ => {
                    if self.partial.is_some() {
                        return Err(violation(1002, "new message inside a fragmented one"));
                    }
                    if fin {
                        return message(opcode, payload).map(Some);
                    }
                    self.partial = Some((opcode, payload));
                }
            }
        }
    }

    /// Takes one frame off the buffer: (FIN, opcode, unmasked payload).
    fn frame(&mut self) -> Result<Option<(bool, u8, Vec<u8>)>, Violation> {
        let b = &self.buf;
        if b.len() < 2 {
            return Ok(None);
        }
        let (fin, rsv, opcode) = (b[0] & 0x80 != 0, b[0] & 0x70, b[0] & 0x0F);
        if rsv != 0 {
            return Err(violation(
                1002,
                "reserved bits set (no extension was agreed)",
            ));
        }
        if !matches!(
            opcode,
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
        ) {
            return Err(violation(1002, "unknown opcode"));
        }
        if b[1] & 0x80 == 0 {
            return Err(violation(1002, "client frames must be masked"));
        }
        let (len, mut at) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as u64, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()), 10),
            126 | 127 => return Ok(None),
            n => (n as u64, 2),
        };
        let control = opcode >= OP_CLOSE;
        if control && (!fin || len > 125) {
            return Err(violation(1002, "control frames must be whole and short"));
        }
        // Refused on the header, before the payload is buffered: a client cannot make the
        // server hold more than `limit` bytes for one message.
        let so_far = self.partial.as_ref().map_or(0, |(_, p)| p.len() as u64);
        if !control && len + so_far > self.limit as u64 {
            return Err(violation(
                1009,
                format!("message larger than {} bytes", self.limit),
            ));
        }
        let len = len as usize;
        if b.len() < at + 4 + len {
            return Ok(None);
        }
        let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        at += 4;
        let mut payload = b[at..at + len].to_vec();
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i & 3];
        }
        self.buf.drain(..at + len);
        Ok(Some((fin, opcode, payload)))
    }
}

fn message(opcode: u8, payload: Vec<u8>) -> Result<Incoming, Violation> {
    if opcode == OP_BINARY {
        return Ok(Incoming::Binary);
    }
    String::from_utf8(payload)
        .map(Incoming::Text)
        .map_err(|_| violation(1007, "text frame is not valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as browsers send them.
    fn client(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        f
    }

    fn reader_with(bytes: &[u8]) -> FrameReader {
        let mut r = FrameReader::new(16384);
        r.buf.extend_from_slice(bytes);
        r
    }

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn encodes_all_three_length_forms() {
        for (n, header) in [(5usize, 2usize), (300, 4), (70_000, 10)] {
            let mut out = Vec::new();
            encode(&mut out, OP_TEXT, &vec![b'a'; n]);
            assert_eq!(out.len(), n + header);
            assert_eq!(out[0], 0x81);
        }
        let mut out = Vec::new();
        encode_close(&mut out, 1009, "too big");
        assert_eq!(out, b"\x88\x09\x03\xf1too big");
    }

    #[test]
    fn reads_messages_split_anywhere_and_fragmented() {
        let mut bytes = client(0x01, "héllo".as_bytes()); // text, not FIN
        bytes.extend(client(0x89, b"p")); // a ping between fragments
        bytes.extend(client(0x80, &[b'x'; 200])); // continuation, FIN, 16-bit length
        bytes.extend(client(0x8A, b"")); // pong
        bytes.extend(client(0x88, &[0x03, 0xE8])); // close 1000
                                                   // Fed one byte at a time: every prefix must parse as "need more".
        let mut r = FrameReader::new(16384);
        let mut got = Vec::new();
        for b in bytes {
            r.buf.push(b);
            while let Some(m) = r.next_message().unwrap() {
                got.push(m);
            }
        }
        let text = format!("héllo{}", "x".repeat(200));
        assert_eq!(
            got,
            vec![
                Incoming::Ping(b"p".to_vec()),
                Incoming::Text(text),
                Incoming::Pong,
                Incoming::Close(Some(1000))
            ]
        );
        assert_eq!(r.buf.capacity(), 0, "an empty reader holds no buffer");
    }

    #[test]
    fn violations_get_their_close_codes() {
        let unmasked = [0x81, 0x01, b'a'];
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (unmasked.to_vec(), 1002),
            (client(0xC1, b"a"), 1002),        // RSV1 without an extension
            (client(0x83, b"a"), 1002),        // reserved opcode
            (client(0x09, b"a"), 1002),        // fragmented ping
            (client(0x89, &[0u8; 126]), 1002), // ping too long
            (client(0x80, b"a"), 1002),        // continuation with nothing to continue
            (client(0x88, &[3]), 1002),        // close with half a code
            (client(0x81, &[0xff, 0xfe]), 1007), // not UTF-8
            (client(0x81, &vec![b'a'; 16385]), 1009), // over the limit
            (client(0x82, &vec![0u8; 70_000]), 1009), // over the limit, 64-bit length
        ];
        for (bytes, code) in cases {
            assert_eq!(
                reader_with(&bytes).next_message().unwrap_err().code,
                code,
                "{bytes:x?}"
            );
        }
        // A new message may not start inside a fragmented one.
        let mut bytes = client(0x01, b"a");
        bytes.extend(client(0x81, b"b"));
        assert_eq!(reader_with(&bytes).next_message().unwrap_err().code, 1002);
        // The limit counts all fragments of a message together.
        let mut bytes = client(0x01, &vec![b'a'; 10_000]);
        bytes.extend(client(0x80, &vec![b'a'; 10_000]));
        assert_eq!(reader_with(&bytes).next_message().unwrap_err().code, 1009);
        // Oversize is refused from the header alone, before the payload arrives.
        let header = &client(0x81, &vec![b'a'; 20_000])[..8];
        assert_eq!(reader_with(header).next_message().unwrap_err().code, 1009);
    }

    #[test]
    fn binary_messages_are_reported_without_their_payload() {
        assert_eq!(
            reader_with(&client(0x82, &[1, 2, 3]))
                .next_message()
                .unwrap(),
            Some(Incoming::Binary)
        );
    }
}
