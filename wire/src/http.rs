//! HTTP/1.1 request heads (RFC 9112) for the connections the server frames itself: event
//! streams, which are served without hyper to save its per-connection buffers
//! (`server/src/transport/sse/http.rs` says why). Parsing is httparse's, the same parser
//! hyper uses; this module only turns its result into an `http::Request` and bounds what a
//! peer can make the server hold.

use http::{HeaderName, HeaderValue, Method, Request, Uri, Version};

/// Largest request head accepted (hyper's default buffer limit is larger, but an event
/// stream request is a request line, a few headers and maybe a cookie).
pub const MAX_HEAD: usize = 16 * 1024;

/// Most header lines accepted in one head.
pub const MAX_HEADERS: usize = 64;

/// Why a head was refused (answered with 400, or 431 for [`HeadError::TooLarge`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    TooLarge,
    Malformed(String),
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::TooLarge => write!(f, "request head larger than {MAX_HEAD} bytes"),
            HeadError::Malformed(m) => f.write_str(m),
        }
    }
}

/// Parses the request head at the start of `buf`: the request (empty body) and the head's
/// length, `Ok(None)` if the head is not complete yet, or why it is refused.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request<()>, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let used = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Malformed(format!(
                "more than {MAX_HEADERS} header lines"
            )))
        }
        Err(e) => return Err(HeadError::Malformed(format!("malformed request: {e}"))),
    };
    if used > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let bad = |m: String| HeadError::Malformed(m);
    let method = Method::from_bytes(parsed.method.unwrap_or("GET").as_bytes())
        .map_err(|_| bad("malformed method".into()))?;
    let uri: Uri = parsed
        .path
        .unwrap_or("/")
        .parse()
        .map_err(|e| bad(format!("malformed request target: {e}")))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut request = Request::builder().method(method).uri(uri).version(version);
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| bad(format!("malformed header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| bad(format!("malformed value of header {:?}", h.name)))?;
        request = request.header(name, value);
    }
    let request = request
        .body(())
        .map_err(|e| bad(format!("malformed request: {e}")))?;
    Ok(Some((request, used)))
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one `Host` header (HTTP/1.0 at most
/// one). `Err` says what is wrong, for the 400.
pub fn check_host(version: Version, headers: &http::HeaderMap) -> Result<(), &'static str> {
    match headers.get_all(http::header::HOST).iter().count() {
        1 => Ok(()),
        0 if version == Version::HTTP_10 => Ok(()),
        0 => Err("an HTTP/1.1 request needs a Host header"),
        _ => Err("a request may carry only one Host header"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_head_in_pieces() {
        let head = b"GET /api/sse?streams=chat HTTP/1.1\r\nHost: a\r\nLast-Event-ID: 7\r\n\r\nrest";
        for cut in 0..head.len() - 4 {
            assert!(matches!(parse_head(&head[..cut]), Ok(None)), "{cut}");
        }
        let (req, used) = parse_head(head).unwrap().unwrap();
        assert_eq!(used, head.len() - 4);
        assert_eq!(req.uri(), "/api/sse?streams=chat");
        assert_eq!(req.headers()["last-event-id"], "7");
        assert_eq!(req.version(), Version::HTTP_11);
    }

    #[test]
    fn refuses_what_it_cannot_hold_or_read() {
        let mut big = b"GET / HTTP/1.1\r\nx: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        assert!(matches!(parse_head(&big), Err(HeadError::TooLarge)));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse_head(&many), Err(HeadError::Malformed(_))));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nbad header\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            parse_head(b"\x00\x01 / HTTP/1.1\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn host_rules_of_rfc_9112_section_3_2() {
        let head = |h: &str| {
            parse_head(format!("GET / HTTP/1.1\r\n{h}\r\n").as_bytes())
                .unwrap()
                .unwrap()
                .0
        };
        let ok = head("Host: a\r\n");
        assert!(check_host(ok.version(), ok.headers()).is_ok());
        let none = head("");
        assert!(check_host(none.version(), none.headers()).is_err());
        let two = head("Host: a\r\nHost: b\r\n");
        assert!(check_host(two.version(), two.headers()).is_err());
        let old = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().0;
        assert!(check_host(old.version(), old.headers()).is_ok());
    }
}
