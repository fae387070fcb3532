//! The HTTP/1.1 side of event streams: a connection that opens with `GET /api/sse` is
//! served here instead of by hyper. The head is parsed by `wire::http`, the request goes
//! through the same router as every other (same handler, validation and errors), and the
//! response is written here: JSON errors with a length, the event stream chunked,
//! `Connection: close` on both.
//!
//! Why not hyper: an event stream lives as long as its connection, and hyper keeps an 8 KiB
//! read buffer and an 8 KiB write buffer per connection (not configurable below that):
//! measured, two thirds of an idle SSE connection's memory. Here the head is read into a
//! buffer that is freed before the stream starts, and each batch of events is written from
//! a buffer that lives only for that write.
//!
//! What a client can hold: the whole head must arrive within the head deadline
//! (`--head-timeout-secs`, one deadline for all of it, so trickling a byte at a time does
//! not extend it), in at most `wire::http::MAX_HEAD` bytes.

use crate::error::ApiError;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, Response, Version};
use axum::response::IntoResponse;
use futures_util::StreamExt;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use wire::http::{parse_head, HeadError, MAX_HEAD};

const SSE_REQUEST_LINE: &[u8] = b"GET /api/sse";

/// Whether the first bytes on the connection are `GET /api/sse` followed by `?` or a space,
/// looked at without consuming them (`peek`), so hyper can still have the connection.
pub async fn starts_with_sse(tcp: &TcpStream, deadline: Instant) -> bool {
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
    // A client that says nothing by the deadline is hyper's to close (its header timeout
    // gets what is left of the same deadline).
    timeout_at(deadline, look).await.unwrap_or(false)
}

/// Serves one event-stream connection with `service` (the router, with the client's
/// address attached), then closes it.
pub async fn serve_connection<S>(
    mut tcp: TcpStream,
    service: S,
    head_deadline: Instant,
    write_timeout: Duration,
    stopping: CancellationToken,
) where
    S: tower::Service<
        Request,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
    >,
{
    let head = tokio::select! {
        head = read_head(&mut tcp, head_deadline) => head,
        // Shutting down: a request not yet read in full is dropped, as hyper does.
        _ = stopping.cancelled() => return,
    };
    let result = match head {
        Ok(Some((request, http10))) => {
            let response = service
                .oneshot(request)
                .await
                .unwrap_or_else(|e| match e {});
            write_response(&mut tcp, response, http10, write_timeout).await
        }
        Ok(None) => Ok(()),
        Err(e) => {
            let (status, message) = match e {
                HeadError::TooLarge => (
                    axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    e.to_string(),
                ),
                HeadError::Malformed(m) => (axum::http::StatusCode::BAD_REQUEST, m),
            };
            let mut response = ApiError::BadRequest(message).into_response();
            *response.status_mut() = status;
            let written = write_response(&mut tcp, response, false, write_timeout).await;
            drain_before_close(&mut tcp).await;
            written
        }
    };
    if let Err(e) = result {
        tracing::trace!(error = %e, "event stream connection ended with an error");
    }
}

/// Reads and parses the request head by `deadline`. `Ok(None)`: the client left or ran
/// out of time; `Err`: a bad request.
async fn read_head(
    tcp: &mut TcpStream,
    deadline: Instant,
) -> Result<Option<(Request, bool)>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.reserve(1024);
        match timeout_at(deadline, tcp.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
            Err(_) => {
                tracing::debug!("event stream request head not complete in time");
                return Ok(None);
            }
            Ok(Ok(_)) => {}
        }
        if let Some((request, _)) = parse_head(&buf)? {
            let http10 = request.version() == Version::HTTP_10;
            return Ok(Some((request.map(|()| Body::empty()), http10)));
        }
        if buf.len() >= MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Reads (bounded) what the client still sends before closing: closing a socket with
/// unread bytes makes the kernel send a reset, which can destroy the answer just written.
pub async fn drain_before_close(tcp: &mut TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut sink = [0u8; 512];
        while tcp.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    })
    .await;
}

/// Writes `response`, then closes. A streaming body (the event stream) is written as it
/// comes, chunked (HTTP/1.1) or until close (HTTP/1.0); the connection is watched for the
/// client leaving meanwhile, so a gone client ends its stream at once.
async fn write_response(
    tcp: &mut TcpStream,
    response: Response<Body>,
    http10: bool,
    write_timeout: Duration,
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
    // The head is written: its buffer and the response's header map would otherwise live
    // as long as the stream (hours), on every connection.
    drop(out);
    drop(parts);
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
                    crate::transport::write_or_drop(tcp, &out, write_timeout, "sse").await?;
                }
                // The stream ended (server shutting down): finish the response properly.
                _ => {
                    if chunked {
                        crate::transport::write_or_drop(tcp, b"0\r\n\r\n", write_timeout, "sse").await?;
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
