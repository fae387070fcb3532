//! Minimal WebSocket and SSE clients for the fan-out subscribers: one socket, one read
//! buffer, messages found in place.
//!
//! Why not tungstenite and reqwest, as everywhere else: the load generator shares the two
//! cores with the server under test, so whatever it spends is taken from the server and
//! shows up as latency. With tungstenite the 1,000 subscribers used 1.8x the CPU of the
//! server they measured (6.9 s against 3.7 s for 500 events at 100/s). These readers do
//! the same job for every server alike, and only understand what the servers measured here
//! send: WebSocket text frames, pings and close (no fragmentation, no extensions); SSE over
//! HTTP/1.1, chunked or not; Socket.IO's Engine.IO v4 packets over WebSocket (see
//! `load::socketio`).

use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects to the `host:port` of `base` (`http://host:port`), sends `request` and reads the
/// response head. Returns the socket, the head and the bytes read past it.
async fn open(
    base: &str,
    request: impl FnOnce(&str) -> String,
) -> io::Result<(TcpStream, String, Vec<u8>)> {
    let host = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    let mut tcp = TcpStream::connect(host).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(request(host).as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if tcp.read_buf(&mut buf).await? == 0 || buf.len() > 16 * 1024 {
            return Err(io::Error::other("no response head"));
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    Ok((tcp, head, buf))
}

/// Reads what has arrived into `buf`. False when the connection has ended. Cancel-safe.
async fn fill(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    matches!(tcp.read_buf(buf).await, Ok(n) if n > 0)
}

/// A fan-out subscriber on either streaming transport, or Socket.IO's protocol over a
/// WebSocket (the Socket.IO peer).
pub enum Subscriber {
    Ws(WsClient),
    Sse(SseClient),
    /// A WebSocket past Socket.IO's handshake (`load::socketio`).
    SocketIo(WsClient),
}

impl Subscriber {
    /// Waits for bytes. False when the connection has ended. Cancel-safe.
    pub async fn read(&mut self) -> bool {
        match self {
            Subscriber::Ws(c) | Subscriber::SocketIo(c) => c.read().await,
            Subscriber::Sse(c) => c.read().await,
        }
    }

    /// Hands what was received to `on_text`. False once the server has closed the stream.
    pub async fn process(&mut self, mut on_text: impl FnMut(&str)) -> bool {
        match self {
            Subscriber::Ws(c) => c.process(on_text).await,
            Subscriber::Sse(c) => {
                c.process(on_text);
                true
            }
            Subscriber::SocketIo(c) => {
                // Engine.IO packets, one per text frame: `2` a ping (answered `3`, or the
                // server drops us after its timeout), `42[...]` an event.
                let mut pinged = false;
                let open = c
                    .process(|text| match text {
                        "2" => pinged = true,
                        _ => on_text(text),
                    })
                    .await;
                open && !(pinged && c.send_text("3").await.is_err())
            }
        }
    }
}

pub struct WsClient {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl WsClient {
    /// Opens `ws://<host of base><path>`; `base` is the server's `http://host:port`.
    pub async fn connect(base: &str, path: &str) -> io::Result<WsClient> {
        let (tcp, head, buf) = open(base, |host| {
            format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            )
        })
        .await?;
        if !head.starts_with("HTTP/1.1 101") {
            return Err(io::Error::other(format!("upgrade refused: {head}")));
        }
        Ok(WsClient { tcp, buf })
    }

    /// Waits for bytes. False when the connection has ended. Cancel-safe.
    pub async fn read(&mut self) -> bool {
        fill(&mut self.tcp, &mut self.buf).await
    }

    /// Sends a short text message (under 126 bytes: what the Socket.IO reader answers).
    /// Masked, as a client's frames must be, with a zero key (the payload stays as it is).
    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        debug_assert!(text.len() < 126);
        let mut frame = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(text.as_bytes());
        self.tcp.write_all(&frame).await
    }

    /// Hands each complete text message received so far to `on_text` and answers pings.
    /// False once the server has sent a close frame.
    pub async fn process(&mut self, mut on_text: impl FnMut(&str)) -> bool {
        let (mut at, mut open) = (0, true);
        let mut pongs = Vec::new();
        loop {
            let b = &self.buf[at..];
            if b.len() < 2 {
                break;
            }
            let (len, header) = match b[1] & 0x7F {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => (
                    u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if b.len() < header + len {
                break;
            }
            let payload = &b[header..header + len];
            match b[0] & 0x0F {
                0x1 => on_text(std::str::from_utf8(payload).unwrap_or_default()),
                0x8 => open = false,
                0x9 => {
                    // A client's frames are masked; a zero mask keeps the payload as it is.
                    pongs.extend_from_slice(&[0x8A, 0x80 | len as u8, 0, 0, 0, 0]);
                    pongs.extend_from_slice(payload);
                }
                _ => {}
            }
            at += header + len;
        }
        self.buf.drain(..at);
        if !pongs.is_empty() && self.tcp.write_all(&pongs).await.is_err() {
            return false;
        }
        open
    }
}

pub struct SseClient {
    tcp: TcpStream,
    /// Bytes as read, still chunk-encoded.
    raw: Vec<u8>,
    dechunk: Dechunk,
    /// The decoded event stream not yet handed out (a partial message at most).
    text: Vec<u8>,
}

/// Removes HTTP/1.1 chunk framing from a body read in arbitrary pieces.
#[derive(Default)]
struct Dechunk {
    chunked: bool,
    /// Data bytes left in the current chunk, then the CRLF after it to skip.
    in_chunk: usize,
    skip: usize,
}

impl SseClient {
    pub async fn connect(base: &str, path: &str) -> io::Result<SseClient> {
        let (tcp, head, raw) = open(base, |host| {
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n")
        })
        .await?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(io::Error::other(format!("refused: {head}")));
        }
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let mut c = SseClient {
            tcp,
            raw,
            dechunk: Dechunk {
                chunked,
                ..Dechunk::default()
            },
            text: Vec::new(),
        };
        c.dechunk.decode(&mut c.raw, &mut c.text);
        Ok(c)
    }

    /// Waits for bytes. False when the connection has ended. Cancel-safe.
    pub async fn read(&mut self) -> bool {
        let open = fill(&mut self.tcp, &mut self.raw).await;
        self.dechunk.decode(&mut self.raw, &mut self.text);
        open
    }

    /// Hands the complete messages received so far (one string, `\n\n`-separated) to `on_text`.
    pub fn process(&mut self, on_text: impl FnOnce(&str)) {
        if let Some(end) = self.text.windows(2).rposition(|w| w == b"\n\n") {
            on_text(std::str::from_utf8(&self.text[..end]).unwrap_or_default());
            self.text.drain(..end + 2);
        }
    }
}

impl Dechunk {
    /// Moves what has been read from `raw` to `text`, removing the chunk framing.
    fn decode(&mut self, raw: &mut Vec<u8>, text: &mut Vec<u8>) {
        if !self.chunked {
            text.append(raw);
            return;
        }
        let mut at = 0;
        loop {
            let left = raw.len() - at;
            if self.skip > 0 {
                let n = self.skip.min(left);
                (at, self.skip) = (at + n, self.skip - n);
                if self.skip > 0 {
                    break;
                }
                continue;
            }
            if self.in_chunk > 0 {
                let n = self.in_chunk.min(left);
                text.extend_from_slice(&raw[at..at + n]);
                (at, self.in_chunk) = (at + n, self.in_chunk - n);
                if self.in_chunk > 0 {
                    break;
                }
                self.skip = 2;
                continue;
            }
            let Some(i) = raw[at..].windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let line = String::from_utf8_lossy(&raw[at..at + i]);
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16);
            at += i + 2;
            match size {
                Ok(0) | Err(_) => break, // the last chunk (or garbage): nothing more to decode
                Ok(n) => self.in_chunk = n,
            }
        }
        raw.drain(..at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_a_body_read_in_any_pieces() {
        let body =
            b"e\r\nid: 1\ndata: a\n\r\n1\r\n\n\r\n13;ext=1\r\nid: 2\ndata: bcdef\n\n\r\n0\r\n\r\n";
        for piece in 1..body.len() {
            let (mut d, mut raw, mut text) = (
                Dechunk {
                    chunked: true,
                    ..Dechunk::default()
                },
                Vec::new(),
                Vec::new(),
            );
            for part in body.chunks(piece) {
                raw.extend_from_slice(part);
                d.decode(&mut raw, &mut text);
            }
            assert_eq!(
                String::from_utf8(text).unwrap(),
                "id: 1\ndata: a\n\nid: 2\ndata: bcdef\n\n",
                "pieces of {piece}"
            );
        }
    }
}
