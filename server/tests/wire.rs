//! The wire as an outside tester sees it: raw bytes on real sockets against a real server
//! (issue #8). Frame-level conformance of the reader itself is table-tested in
//! `wire/src/ws/tests.rs` and over an in-memory stream in `server/src/transport/ws/tests.rs`;
//! here the same families go through the whole server: accept, handshake, socket loop.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PUBLISH: &str =
    r#"{"type":"publish","ref":"p","stream":"chat","data":{"author":"raw","body":"socket"}}"#;

/// A masked client frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    wire::ws::encode_masked(first, payload, [0x5a, 0x11, 0xe0, 0x07])
}

/// Raw HTTP: sends `request`, returns everything the server sends until it closes (or
/// `DEADLINE`).
async fn raw(s: &TestServer, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// Opens a WebSocket by hand; returns the socket after the 101.
async fn ws_raw(s: &TestServer, path: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        s.addr
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        within(tcp.read_exact(&mut b)).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    tcp
}

/// Server frames until the server closes the connection: (opcode, payload).
async fn frames_until_closed(tcp: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    let mut got = Vec::new();
    within(tcp.read_to_end(&mut got)).await.unwrap();
    let (frames, _) = wire::ws::decode_unmasked(&got);
    frames
        .into_iter()
        .map(|(op, payload)| (op.byte(), payload.to_vec()))
        .collect()
}

fn close_code(frames: &[(u8, Vec<u8>)]) -> Option<u16> {
    let (_, p) = frames.iter().rev().find(|(op, _)| *op == 8)?;
    (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]))
}

fn texts(frames: &[(u8, Vec<u8>)]) -> Vec<serde_json::Value> {
    frames
        .iter()
        .filter(|(op, _)| *op == 1)
        .map(|(_, p)| serde_json::from_slice(p).unwrap())
        .collect()
}

async fn history_len(s: &TestServer) -> usize {
    let h: app::protocol::HistoryResponse =
        reqwest::get(s.url("/api/history?stream=chat&limit=200"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    h.events.len()
}

/// Issue #8 defect 1, the raw reproduction: a publish then `88 82 00000000 03e8` in one
/// write. The event is stored and acked, then the close is answered.
#[tokio::test]
async fn publish_then_close_in_one_write_is_stored_and_acked() {
    let s = TestServer::start().await;
    let mut tcp = ws_raw(&s, "/api/ws?streams=chat").await;
    let mut bytes = frame(0x81, PUBLISH.as_bytes());
    bytes.extend_from_slice(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);
    tcp.write_all(&bytes).await.unwrap();
    let frames = frames_until_closed(&mut tcp).await;
    let acks: Vec<_> = texts(&frames)
        .into_iter()
        .filter(|f| f["type"] == "ack")
        .collect();
    assert_eq!(acks.len(), 1, "{frames:?}");
    assert_eq!(close_code(&frames), Some(1000));
    assert_eq!(history_len(&s).await, 1);
    s.stop().await;
}

/// Families of RFC 6455 / Autobahn cases through the real server: what the client sends
/// in one write, how many publishes must be acked, the close code the server must send.
#[tokio::test]
async fn frame_families_over_a_real_socket() {
    let s = TestServer::start().await;
    let p = || frame(0x81, PUBLISH.as_bytes());
    let (a, b) = PUBLISH.as_bytes().split_at(30);
    let mut msb = vec![0x81, 0xff];
    msb.extend_from_slice(&(1u64 << 63).to_be_bytes());
    msb.extend_from_slice(&[0; 4]);
    let cases: Vec<(&str, Vec<Vec<u8>>, usize, u16)> = vec![
        (
            "2 ping then close",
            vec![p(), frame(0x89, b"x"), frame(0x88, &[3, 232])],
            1,
            1000,
        ),
        (
            "2 ping too long",
            vec![p(), frame(0x89, &[0; 126])],
            1,
            1002,
        ),
        ("3 reserved bit", vec![p(), frame(0xC1, b"x")], 1, 1002),
        ("4 reserved opcode", vec![p(), frame(0x8B, b"")], 1, 1002),
        (
            "5 fragments with ping",
            vec![
                frame(0x01, a),
                frame(0x89, b""),
                frame(0x80, b),
                frame(0x88, &[3, 232]),
            ],
            1,
            1000,
        ),
        (
            "5 continuation first",
            vec![p(), frame(0x80, b"x")],
            1,
            1002,
        ),
        (
            "5 text inside fragments",
            vec![p(), frame(0x01, b"x"), frame(0x81, b"y")],
            1,
            1002,
        ),
        (
            "6 invalid UTF-8",
            vec![p(), frame(0x81, &[0xed, 0xa0, 0x80])],
            1,
            1007,
        ),
        (
            "6 invalid UTF-8, first fragment",
            vec![p(), frame(0x01, &[0xff])],
            1,
            1007,
        ),
        ("7 close 1-byte", vec![p(), frame(0x88, &[3])], 1, 1002),
        (
            "7 close code 1005",
            vec![p(), frame(0x88, &[0x03, 0xed])],
            1,
            1002,
        ),
        (
            "7 close code 3000",
            vec![p(), frame(0x88, &[0x0b, 0xb8])],
            1,
            3000,
        ),
        (
            "7 close reason not UTF-8",
            vec![p(), frame(0x88, &[3, 232, 0xff])],
            1,
            1007,
        ),
        (
            "7 data after close",
            vec![p(), frame(0x88, &[3, 232]), p()],
            1,
            1000,
        ),
        (
            "9 over the limit",
            vec![p(), frame(0x81, &vec![b'a'; 16 * 1024 + 1])],
            1,
            1009,
        ),
        ("mask missing", vec![p(), vec![0x81, 0x01, b'a']], 1, 1002),
        ("64-bit length, top bit", vec![p(), msb], 1, 1002),
    ];
    for (name, frames_out, want_acks, want_close) in cases {
        let before = history_len(&s).await;
        let mut tcp = ws_raw(&s, "/api/ws?streams=feed").await;
        tcp.write_all(&frames_out.concat()).await.unwrap();
        let frames = frames_until_closed(&mut tcp).await;
        let acks = texts(&frames).iter().filter(|f| f["type"] == "ack").count();
        assert_eq!(acks, want_acks, "{name}: {frames:?}");
        assert_eq!(close_code(&frames), Some(want_close), "{name}: {frames:?}");
        assert_eq!(history_len(&s).await, before + want_acks, "{name}");
    }
    s.stop().await;
}

/// Issue #8 defect 4: RFC 6455 §4.2.2: an unsupported version gets 426 with the version
/// this server speaks; a key that is not base64 of 16 bytes gets 400.
#[tokio::test]
async fn handshake_version_and_key_are_checked() {
    let s = TestServer::start().await;
    let req = |version: &str, key: &str| {
        format!(
            "GET /api/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: {version}\r\nSec-WebSocket-Key: {key}\r\nConnection: close\r\n\r\n"
        )
    };
    let answer = raw(&s, req("8", "dGhlIHNhbXBsZSBub25jZQ==").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 426"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{answer}"
    );
    assert!(
        answer.contains(r#""code":"unsupported_version""#),
        "{answer}"
    );
    // RFC 9110 §15.5.22: a 426 says what to upgrade to.
    assert!(
        answer.to_ascii_lowercase().contains("upgrade: websocket"),
        "{answer}"
    );
    for key in ["not-base64!", "c2hvcnQ=", "dGhlIHNhbXBsZSBub25jZSEhIQ=="] {
        let answer = raw(&s, req("13", key).as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{key}: {answer}");
        assert!(answer.contains("Sec-WebSocket-Key"), "{answer}");
    }
    // An upgrade with a body: hyper would take the first frames as the body.
    for body_header in ["Content-Length: 8", "Transfer-Encoding: chunked"] {
        let r = req("13", "dGhlIHNhbXBsZSBub25jZQ==")
            .replace("\r\n\r\n", &format!("\r\n{body_header}\r\n\r\n"));
        let answer = raw(&s, r.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{body_header}: {answer}"
        );
        assert!(answer.contains("no body"), "{answer}");
    }
    s.stop().await;
}

/// Issue #8 defect 5: RFC 9112 §3.2, on hyper's paths and on the event-stream path.
#[tokio::test]
async fn requests_need_exactly_one_host() {
    let s = TestServer::start().await;
    for path in [
        "/api/poll?streams=chat",
        "/api/sse?streams=chat",
        "/healthz",
    ] {
        for hosts in ["", "Host: a\r\nHost: b\r\n"] {
            let answer = raw(
                &s,
                format!("GET {path} HTTP/1.1\r\n{hosts}Connection: close\r\n\r\n").as_bytes(),
            )
            .await;
            assert!(
                answer.starts_with("HTTP/1.1 400"),
                "{path} {hosts:?}: {answer}"
            );
            assert!(answer.contains("Host"), "{answer}");
        }
        // HTTP/1.0 may leave it out.
        let answer = raw(&s, format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
            "{path}: {answer}"
        );
    }
    s.stop().await;
}

/// Issue #8 defect 5: a head trickled a byte at a time is cut at the head deadline, on the
/// event-stream path (own framing) and on hyper's.
#[tokio::test]
async fn a_trickled_request_head_is_cut_at_the_deadline() {
    let s = TestServer::start_with(|c| c.head_timeout_secs = 2).await;
    let mut tasks = Vec::new();
    // (sent at once, then trickled one byte every 300 ms, forever). The deadline counts
    // from accept, also while the server looks at the request line to pick its framing:
    // trickling the request line itself must not extend it.
    let slow_header = "X-Slow: ".to_string() + &"x".repeat(100);
    let cases = [
        (
            String::new(),
            format!("GET /api/sse?streams=chat HTTP/1.1\r\n{slow_header}"),
        ),
        (
            "GET /api/sse?streams=chat HTTP/1.1\r\n".into(),
            slow_header.clone(),
        ),
        (
            "GET /api/poll?streams=chat HTTP/1.1\r\n".into(),
            slow_header.clone(),
        ),
        (
            "POST /api/publish HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
             content-length: 500\r\n\r\n"
                .into(),
            "{".to_string() + &" ".repeat(100),
        ),
    ];
    for (at_once, trickle) in cases {
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            let began = Instant::now();
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(at_once.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            for b in trickle.bytes() {
                if tcp.write_all(&[b]).await.is_err() {
                    break;
                }
                let mut buf = [0u8; 512];
                match tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                    Err(_) => {}
                }
                assert!(
                    began.elapsed() < Duration::from_secs(8),
                    "{at_once}{trickle}: still open"
                );
            }
            (
                began.elapsed(),
                String::from_utf8_lossy(&answer).into_owned(),
            )
        }));
    }
    for t in tasks {
        let (took, answer) = t.await.unwrap();
        // 2 s, give or take a trickle interval and scheduling.
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_millis(3500),
            "{took:?}"
        );
        // A body that does not arrive in time is answered 408 (heads are just closed, as
        // hyper does).
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );
    }
    s.stop().await;
}

/// Connections beyond `--max-conns-per-ip` get a 429 with a JSON body; closing one makes
/// room again.
#[tokio::test]
async fn connections_per_address_are_limited() {
    let s = TestServer::start_with(|c| c.max_conns_per_ip = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(ws_raw(&s, "/api/ws?streams=chat").await);
    }
    let answer = raw(&s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.contains(r#""code":"too_many_connections""#),
        "{answer}"
    );
    // Event streams count for as long as they are open, like WebSockets (found by an
    // adversarial run: they were released once their request had been answered).
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut sse = TcpStream::connect(s.addr).await.unwrap();
    sse.write_all(b"GET /api/sse?streams=chat HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    within(sse.read_exact(&mut head)).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = raw(&s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 429"),
        "an open stream counts: {answer}"
    );
    drop(sse);
    drop(held.pop());
    within(async {
        loop {
            let answer = raw(
                &s,
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await;
            if answer.starts_with("HTTP/1.1 200") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    s.stop().await;
}

/// `--publish-rate`: 429 + Retry-After over HTTP, a `rate_limited` error frame over
/// WebSocket (the socket stays open), and both count against the same bucket.
#[tokio::test]
async fn publishes_are_rate_limited_per_address() {
    let s = TestServer::start_with(|c| {
        c.publish_rate = 1;
        c.publish_burst = 2;
    })
    .await;
    let client = reqwest::Client::new();
    let body = serde_json::json!({"stream":"chat","data":{"author":"a","body":"b"}});
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = client
            .post(s.url("/api/publish"))
            .json(&body)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(r.headers().get("retry-after").is_some());
            let e: app::protocol::ErrorBody = r.json().await.unwrap();
            assert_eq!(e.code, "rate_limited");
        }
    }
    assert_eq!(statuses, vec![201, 201, 429]);
    let mut tcp = ws_raw(&s, "/api/ws?streams=feed").await;
    let mut bytes = frame(0x81, PUBLISH.as_bytes());
    bytes.extend(frame(0x88, &[3, 232]));
    tcp.write_all(&bytes).await.unwrap();
    let frames = frames_until_closed(&mut tcp).await;
    let t = texts(&frames);
    assert!(
        t.iter()
            .any(|f| f["type"] == "error" && f["code"] == "rate_limited" && f["ref"] == "p"),
        "{t:?}"
    );
    assert_eq!(history_len(&s).await, 2);
    s.stop().await;
}

/// A publish retried with the same idempotency key is stored once and answered with the
/// same event, over HTTP and WebSocket alike.
#[tokio::test]
async fn retried_publishes_with_an_idempotency_key_are_stored_once() {
    let s = TestServer::start().await;
    let client = reqwest::Client::new();
    let body = serde_json::json!({"stream":"chat","data":{"author":"a","body":"once"}});
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = client
            .post(s.url("/api/publish"))
            .header("Idempotency-Key", "3f1e-http")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        ids.push(r.json::<app::protocol::Event>().await.unwrap().id);
    }
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    let keyed = PUBLISH.replace(r#""ref":"p""#, r#""ref":"p","key":"3f1e-ws""#);
    let mut ws_ids = Vec::new();
    for _ in 0..2 {
        let mut tcp = ws_raw(&s, "/api/ws?streams=feed").await;
        let mut bytes = frame(0x81, keyed.as_bytes());
        bytes.extend(frame(0x81, keyed.as_bytes()));
        bytes.extend(frame(0x88, &[3, 232]));
        tcp.write_all(&bytes).await.unwrap();
        for f in texts(&frames_until_closed(&mut tcp).await) {
            if f["type"] == "ack" {
                ws_ids.push(f["id"].as_u64().unwrap());
            }
        }
    }
    assert_eq!(ws_ids.len(), 4);
    assert!(ws_ids.iter().all(|i| *i == ws_ids[0]), "{ws_ids:?}");
    assert_eq!(history_len(&s).await, 2);
    // A replay says so; the same key with another payload is refused, not answered with
    // the other publish's event (found by an adversarial run).
    let replay = client
        .post(s.url("/api/publish"))
        .header("Idempotency-Key", "3f1e-http")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let other = serde_json::json!({"stream":"chat","data":{"author":"b","body":"squatted"}});
    let conflict = client
        .post(s.url("/api/publish"))
        .header("Idempotency-Key", "3f1e-http")
        .json(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(conflict.status(), 422);
    let e: app::protocol::ErrorBody = conflict.json().await.unwrap();
    assert_eq!(e.code, "idempotency_key_reused");
    assert_eq!(history_len(&s).await, 2);
    // A price whose decimal form does not parse back to the same f64 is still a replay,
    // not a conflict (the comparison is on the stored bytes; found in review).
    let tick = serde_json::json!({"stream":"ticker","data":{"symbol":"FP","price":0.30000000000000004,"change":-1e-7}});
    for expect_replayed in [false, true] {
        let r = client
            .post(s.url("/api/publish"))
            .header("Idempotency-Key", "3f1e-float")
            .json(&tick)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(
            r.headers().contains_key("idempotent-replayed"),
            expect_replayed
        );
    }
    let bad = client
        .post(s.url("/api/publish"))
        .header("Idempotency-Key", "")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    s.stop().await;
}

/// `/metrics` speaks Prometheus text and counts what happened; with a token it is private.
#[tokio::test]
async fn metrics_are_exposed_in_prometheus_format() {
    let s = TestServer::start_with(|c| c.metrics_token = Some("m-token".into())).await;
    s.chat("counted").await;
    let client = reqwest::Client::new();
    let denied = client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(denied.status(), 403);
    let text = client
        .get(s.url("/metrics"))
        .bearer_auth("m-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "# TYPE tidings_events_published_total counter",
        "tidings_events_published_total{stream=\"chat\"}",
        "# TYPE tidings_publish_seconds histogram",
        "tidings_publish_seconds_bucket",
        "tidings_errors_total{code=\"forbidden\"}",
    ] {
        assert!(text.contains(needle), "{needle} missing in:\n{text}");
    }
    s.stop().await;
}

/// Behind a trusted proxy the client is the right-most untrusted `X-Forwarded-For`
/// address, read across every line of the header (a proxy may add a line of its own rather
/// than append): a client cannot pick its rate-limit bucket by sending the header itself.
#[tokio::test]
async fn rate_limits_follow_x_forwarded_for_only_as_a_trusted_proxy_writes_it() {
    let s = TestServer::start_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        c.publish_rate = 1;
        c.publish_burst = 1;
    })
    .await;
    let client = reqwest::Client::new();
    let body = serde_json::json!({"stream":"chat","data":{"author":"a","body":"b"}});
    let publish = |lines: &'static [&'static str]| {
        let mut r = client.post(s.url("/api/publish")).json(&body);
        for l in lines {
            r = r.header("x-forwarded-for", *l);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(publish(&["9.9.9.1"]).await, 201);
    assert_eq!(
        publish(&["9.9.9.1"]).await,
        429,
        "same client, bucket empty"
    );
    assert_eq!(publish(&["9.9.9.2"]).await, 201, "another client");
    // A forged first line, then the proxy's own line naming 9.9.9.1: that one counts.
    assert_eq!(publish(&["9.9.9.3", "9.9.9.1"]).await, 429);
    // Appended in one line, the right-most untrusted address counts.
    assert_eq!(publish(&["9.9.9.4, 9.9.9.2"]).await, 429);
    s.stop().await;
}
