//! The accept loop: hyper's HTTP/1.1 connection driven directly, as in axum's
//! `serve-with-hyper` example, instead of `axum::serve`. Two reasons:
//! - `TCP_NODELAY` on every socket. Events are small writes; with Nagle's algorithm a
//!   write waits while an earlier one is unacknowledged, which showed up as latency.
//! - The WebSocket adapter takes the `TcpStream` back out of hyper's upgrade
//!   (`Upgraded::downcast`), which needs to know the IO type; `axum::serve`'s
//!   HTTP/1-or-2 builder wraps it in a private one.
//!
//! - A connection whose first request is `GET /api/sse` is served by [`sse_connection`]
//!   instead of hyper: see there.
//!
//! HTTP/2 without TLS (h2c) is not served: browsers speak HTTP/2 only over TLS, and a
//! TLS-terminating proxy such as nginx talks HTTP/1.1 to its upstream.

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, Response, Uri, Version};
use axum::response::IntoResponse;
use axum::Router;
use futures_util::StreamExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and waits
/// for the open connections to finish (streams end on their own shutdown signal).
pub async fn serve(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()>) {
    // Dropping `stop` tells every connection to finish; each holds a `done` receiver, so
    // `all_done.closed()` resolves when the last one has ended (axum::serve does the same).
    let (stop, stopping) = watch::channel(());
    let (all_done, done) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was
                    // accepted: pause briefly (as axum::serve does) rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let (router, stopping, done) = (router.clone(), stopping.clone(), done.clone());
        tokio::spawn(async move {
            if starts_with_sse(&tcp).await {
                if let Err(e) = sse_connection(tcp, router, stopping).await {
                    tracing::trace!(error = %e, "event stream connection ended with an error");
                }
            } else {
                http_connection(tcp, router, stopping).await;
            }
            drop(done);
        });
    }
    drop(listener);
    drop((stop, stopping, done));
    all_done.closed().await;
}

/// One connection served by hyper (HTTP/1.1 keep-alive, upgrades).
async fn http_connection(tcp: TcpStream, router: Router, mut stopping: watch::Receiver<()>) {
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(router))
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stopping.changed() => {
            // Finish the request in progress, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::trace!(error = %e, "connection ended with an error");
    }
}

const SSE_REQUEST_LINE: &[u8] = b"GET /api/sse";

/// Whether the first bytes on the connection are `GET /api/sse` followed by `?` or a space,
/// looked at without consuming them (`peek`), so hyper can still have the connection.
async fn starts_with_sse(tcp: &TcpStream) -> bool {
    let look = async {
        let mut first = [0u8; SSE_REQUEST_LINE.len() + 1];
        loop {
            let n = tcp.peek(&mut first).await.unwrap_or(0);
            let seen = &first[..n];
            if n == first.len() {
                return seen.starts_with(SSE_REQUEST_LINE)
                    && matches!(seen[SSE_REQUEST_LINE.len()], b'?' | b' ');
            }
            if n == 0 || !SSE_REQUEST_LINE.starts_with(seen) {
                return false;
            }
            // A request line arriving in pieces: peek returns at once while any byte is
            // waiting, so wait a little before looking again.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    // A client that connects and says nothing is hyper's to time out.
    tokio::time::timeout(Duration::from_secs(5), look)
        .await
        .unwrap_or(false)
}

/// Largest request head accepted on an event stream connection.
const MAX_HEAD: usize = 16 * 1024;

/// Serves a connection that opens with `GET /api/sse`: the head is parsed here, the request
/// goes through the same [`Router`] as every other (same handler, validation and errors),
/// and the response is written here: JSON errors with a length, the event stream chunked,
/// `Connection: close` on both.
///
/// Why not hyper: an event stream lives as long as its connection, and hyper keeps an 8 KiB
/// read buffer and an 8 KiB write buffer per connection (not configurable below that):
/// measured, two thirds of an idle SSE connection's memory. Here the head is read into a
/// buffer that is freed before the stream starts, and each batch of events is written from
/// a buffer that lives only for that write.
async fn sse_connection(
    mut tcp: TcpStream,
    router: Router,
    mut stopping: watch::Receiver<()>,
) -> io::Result<()> {
    let head = tokio::select! {
        head = read_head(&mut tcp) => head?,
        // Shutting down: a request not yet read in full is dropped, as hyper does.
        _ = stopping.changed() => return Ok(()),
    };
    let (request, http10) = match head {
        Some(Ok(head)) => head,
        Some(Err(message)) => {
            let response = crate::error::ApiError::BadRequest(message).into_response();
            return write_response(&mut tcp, response, false).await;
        }
        None => return Ok(()),
    };
    let response = router.oneshot(request).await.unwrap_or_else(|e| match e {});
    write_response(&mut tcp, response, http10).await
}

type Head = Result<(Request<Body>, bool), String>;

/// Reads and parses the request head. `None`: the client left; `Some(Err)`: a bad request.
async fn read_head(tcp: &mut TcpStream) -> io::Result<Option<Head>> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() >= MAX_HEAD {
            return Ok(Some(Err(format!(
                "request head larger than {MAX_HEAD} bytes"
            ))));
        }
        buf.reserve(1024);
        let read = tokio::time::timeout(Duration::from_secs(30), tcp.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Err(_) => return Ok(None),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(_)) => return Ok(Some(to_request(&parsed))),
            Err(e) => return Ok(Some(Err(format!("malformed request: {e}")))),
        }
    }
}

fn to_request(parsed: &httparse::Request) -> Head {
    let uri: Uri = parsed
        .path
        .unwrap_or("/")
        .parse()
        .map_err(|e| format!("malformed request target: {e}"))?;
    let http10 = parsed.version == Some(0);
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .version(if http10 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        });
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("malformed header name {:?}", h.name))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| format!("malformed value of header {:?}", h.name))?;
        request = request.header(name, value);
    }
    request
        .body(Body::empty())
        .map(|r| (r, http10))
        .map_err(|e| format!("malformed request: {e}"))
}

/// Writes `response`, then closes. A streaming body (the event stream) is written as it
/// comes, chunked (HTTP/1.1) or until close (HTTP/1.0); the connection is watched for the
/// client leaving meanwhile, so a gone client ends its stream at once.
async fn write_response(
    tcp: &mut TcpStream,
    response: Response<Body>,
    http10: bool,
) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    let streaming = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\ndate: {}\r\nconnection: close\r\n",
            parts.status.as_u16(),
            parts.status.canonical_reason().unwrap_or(""),
            httpdate::fmt_http_date(std::time::SystemTime::now())
        )
        .as_bytes(),
    );
    for (name, value) in &parts.headers {
        if matches!(
            *name,
            header::CONNECTION | header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::DATE
        ) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let chunked = streaming && !http10;
    if !streaming {
        let body = axum::body::to_bytes(body, 1 << 20)
            .await
            .map_err(io::Error::other)?;
        out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(&body);
        tcp.write_all(&out).await?;
        return tcp.shutdown().await;
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    tcp.write_all(&out).await?;
    drop(out);
    let mut chunks = body.into_data_stream();
    loop {
        tokio::select! {
            chunk = chunks.next() => match chunk {
                // An empty chunk would read as the end of a chunked body.
                Some(Ok(data)) if data.is_empty() => {}
                Some(Ok(data)) => {
                    let mut out = Vec::with_capacity(data.len() + 12);
                    if chunked {
                        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    }
                    out.extend_from_slice(&data);
                    if chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                    tcp.write_all(&out).await?;
                }
                // The stream ended (server shutting down): finish the response properly.
                _ => {
                    if chunked {
                        tcp.write_all(b"0\r\n\r\n").await?;
                    }
                    return tcp.shutdown().await;
                }
            },
            readable = tcp.readable() => {
                readable?;
                // Anything the client sends now is ignored (the connection closes when the
                // stream ends); zero bytes means it has gone.
                let mut ignored = [0u8; 256];
                match tcp.try_read(&mut ignored) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}
