//! The reference points: what this machine can do with no framework at all.
//!
//! - `raw`: a minimal tokio TCP server. It parses just enough HTTP to accept a WebSocket
//!   upgrade or an SSE request and a publish POST; each publish is encoded once into a
//!   WebSocket frame and an SSE message, and the same bytes are written to every socket.
//!   No JSON per client, no per-client queues beyond the broadcast ring. It keeps no
//!   history and no resume, so it is a ceiling, not a product.
//! - `bare-poll`: an axum handler that returns a fixed empty poll answer: the ceiling for an
//!   empty poll (Tidings answers the same from its window).

use base64::Engine as _;
use bytes::Bytes;
use sha1::{Digest, Sha1};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

struct Hub {
    ws: broadcast::Sender<Bytes>,
    sse: broadcast::Sender<Bytes>,
    next: AtomicU64,
}

pub async fn raw(listener: TcpListener) -> std::io::Result<()> {
    // Large enough that a fan-out run never laps a reader; a lapped reader would lose
    // frames, and the load generator would count them as lost.
    let hub = Arc::new(Hub {
        ws: broadcast::channel(1 << 16).0,
        sse: broadcast::channel(1 << 16).0,
        next: AtomicU64::new(0),
    });
    loop {
        let (sock, _) = listener.accept().await?;
        let _ = sock.set_nodelay(true);
        tokio::spawn(conn(sock, hub.clone()));
    }
}

fn ws_frame(payload: &[u8]) -> Bytes {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x81); // FIN + text
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n < 65536 => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    Bytes::from(f)
}

async fn conn(mut sock: TcpStream, hub: Arc<Hub>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        // Read one request head (and its body, for POST).
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        let line = head.lines().next().unwrap_or_default().to_string();
        if line.starts_with("GET /api/ws") {
            let key = header("sec-websocket-key").unwrap_or_default();
            let accept = base64::engine::general_purpose::STANDARD.encode(Sha1::digest(format!(
                "{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            )));
            sock.write_all(format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").as_bytes()).await?;
            return stream(sock, hub.ws.subscribe()).await;
        }
        if line.starts_with("GET /api/sse") {
            sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n").await?;
            return stream(sock, hub.sse.subscribe()).await;
        }
        if line.starts_with("GET /healthz") {
            sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await?;
            buf.drain(..head_end);
            continue;
        }
        if line.starts_with("POST /api/publish") {
            let len: usize = header("content-length")
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                let mut chunk = [0u8; 4096];
                let n = sock.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body: serde_json::Value =
                serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or_default();
            buf.drain(..head_end + len);
            let id = hub.next.fetch_add(1, Ordering::Relaxed) + 1;
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let json = format!(
                r#"{{"id":{id},"ts":{ts},"stream":"chat","data":{}}}"#,
                body["data"]
            );
            let _ = hub.ws.send(ws_frame(
                format!(r#"{{"type":"event","event":{json}}}"#).as_bytes(),
            ));
            let _ = hub
                .sse
                .send(Bytes::from(format!("id: {id}\ndata: {json}\n\n")));
            sock.write_all(format!("HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}", json.len()).as_bytes()).await?;
            continue;
        }
        sock.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            .await?;
        buf.drain(..head_end);
    }
}

/// Writes every broadcast frame to the socket, coalescing whatever is already queued into
/// one write; reads and discards what the client sends (WebSocket control frames).
async fn stream(sock: TcpStream, mut rx: broadcast::Receiver<Bytes>) -> std::io::Result<()> {
    let (mut rd, mut wr) = sock.into_split();
    let reader = tokio::spawn(async move {
        let mut sink = [0u8; 1024];
        while rd.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    });
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        match rx.recv().await {
            Ok(b) => out.extend_from_slice(&b),
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => break,
        }
        while let Ok(b) = rx.try_recv() {
            out.extend_from_slice(&b);
        }
        if wr.write_all(&out).await.is_err() || reader.is_finished() {
            break;
        }
        out.clear();
    }
    reader.abort();
    Ok(())
}

pub async fn bare_poll(listener: TcpListener) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/api/poll",
            get(|| async {
                (
                    [("content-type", "application/json")],
                    r#"{"events":[],"cursor":0,"more":false}"#,
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    axum::serve(listener, app).await
}
