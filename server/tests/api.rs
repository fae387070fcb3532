//! Integration tests: a real server on an ephemeral port, driven by real clients
//! (reqwest, tokio-tungstenite, an SSE parser). No mocks.

mod common;

use app::protocol::{
    Event, HistoryResponse, Payload, PollResponse, ServerFrame, ServerInfo, Snapshot, Tick,
};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::{self, Message};

async fn poll(s: &TestServer, query: &str) -> PollResponse {
    let r = reqwest::get(s.url(&format!("/api/poll?{query}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

// ---------------------------------------------------------------- publish and poll

#[tokio::test]
async fn publish_then_poll_from_a_cursor() {
    let s = TestServer::start().await;
    // No `since`: start from now, no backlog.
    let head = poll(&s, "").await;
    assert_eq!((head.events.len(), head.cursor), (0, 0));

    let a = s.chat("one").await;
    let b = s
        .publish(json!({"stream": "feed", "data": {"title": "T", "body": "B", "author": "ed"}}))
        .await;
    let c = s.chat("two").await;
    assert!(
        a.id > 0 && a.id < b.id && b.id < c.id,
        "ids strictly increasing"
    );
    assert!(a.ts > 1_700_000_000_000, "ts is ms since the epoch");

    let all = poll(&s, "since=0").await;
    assert_eq!(ids(&all.events), vec![a.id, b.id, c.id]);
    assert_eq!(all.cursor, c.id);
    let chat = poll(&s, &format!("since={}&streams=chat", a.id)).await;
    assert_eq!(ids(&chat.events), vec![c.id]);
    let limited = poll(&s, "since=0&limit=2").await;
    assert_eq!(
        (ids(&limited.events), limited.more),
        (vec![a.id, b.id], true)
    );
    let rest = poll(&s, &format!("since={}", limited.cursor)).await;
    assert_eq!((ids(&rest.events), rest.more), (vec![c.id], false));
    let head = poll(&s, "").await;
    assert_eq!((head.events.len(), head.cursor), (0, c.id));
    s.stop().await;
}

#[tokio::test]
async fn long_poll_wakes_up_on_publish() {
    let s = TestServer::start().await;
    let since = s.chat("before").await.id;
    let url = s.url(&format!("/api/poll?since={since}&wait=20"));
    let waiting = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let r: PollResponse = reqwest::get(url).await.unwrap().json().await.unwrap();
        (r, started.elapsed())
    });
    // Publish only once the long poll is parked: it must not have answered yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a long poll with nothing new must wait"
    );
    let e = s.chat("wake up").await;
    let (r, took) = within(waiting).await.unwrap();
    assert_eq!(ids(&r.events), vec![e.id]);
    assert!(
        took < Duration::from_secs(10),
        "answered on publish, not at the 20 s timeout"
    );
    s.stop().await;
}

#[tokio::test]
async fn history_pages_backwards_from_the_store() {
    let s = TestServer::start().await;
    let mut chat = Vec::new();
    for i in 0..5 {
        chat.push(s.chat(&format!("m{i}")).await.id);
        s.publish(
            json!({"stream": "ticker", "data": {"symbol": "AB", "price": 1.5, "change": 0.1}}),
        )
        .await;
    }
    let h: HistoryResponse = reqwest::get(s.url("/api/history?stream=chat&limit=3"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&h.events), chat[2..].to_vec());
    let h: HistoryResponse =
        reqwest::get(s.url(&format!("/api/history?stream=chat&before={}", chat[2])))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(ids(&h.events), chat[..2].to_vec());
    s.stop().await;
}

#[tokio::test]
async fn a_snapshot_is_history_and_the_cursor_to_resume_from() {
    let s = TestServer::start().await;
    let mut chat = Vec::new();
    let mut ticks = Vec::new();
    for i in 0..4 {
        chat.push(s.chat(&format!("m{i}")).await.id);
        ticks.push(
            s.publish(
                json!({"stream": "ticker", "data": {"symbol": "AB", "price": 1.5, "change": 0.1}}),
            )
            .await
            .id,
        );
    }
    let snap: Snapshot = reqwest::get(s.url("/api/snapshot?chat=3&ticker=2&feed=0"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(snap.cursor, *ticks.last().unwrap());
    // Grouped by stream, each group oldest first, only what was asked for.
    let mut expected = chat[1..].to_vec();
    expected.extend(&ticks[2..]);
    assert_eq!(ids(&snap.events), expected);
    // What follows the snapshot is exactly what was published after it.
    let later = s.chat("after").await.id;
    assert_eq!(
        ids(&poll(&s, &format!("since={}", snap.cursor)).await.events),
        vec![later]
    );
    // After a reset to a cursor this server has not reached (cluster: its window lags),
    // the answer still reaches it.
    let ahead: Snapshot = reqwest::get(s.url(&format!("/api/snapshot?chat=1&upto={}", later + 5)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((ahead.cursor, ids(&ahead.events)), (later + 5, vec![later]));
    for (path, needle) in [
        (
            "/api/snapshot?chat=200&feed=200&ticker=1",
            "at most 400 events in all",
        ),
        ("/api/snapshot?chat=201", "chat must be between 0 and 200"),
        ("/api/snapshot?news=5", "unknown field"),
        ("/api/snapshot?chat=-1", "invalid query"),
    ] {
        expect_error(reqwest::get(s.url(path)).await.unwrap(), 400, needle).await;
    }
    s.stop().await;
}

// ---------------------------------------------------------------- bad input

async fn expect_error(resp: reqwest::Response, status: u16, needle: &str) {
    assert_eq!(resp.status(), status);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: serde_json::Value = resp.json().await.unwrap();
    let msg = body["error"].as_str().expect("an error message");
    assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
}

#[tokio::test]
async fn every_bad_publish_gets_a_clear_json_error() {
    let s = TestServer::start_with(|c| c.admin_token = Some("sekrit".into())).await;
    let client = reqwest::Client::new();
    let post = |body: String| {
        client
            .post(s.url("/api/publish"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let cases = [
        ("{not json".to_string(), 400, "malformed JSON"),
        (
            r#"{"stream":"weather","data":{}}"#.into(),
            400,
            "unknown stream 'weather'",
        ),
        (
            r#"{"stream":"chat","data":{"author":"a"}}"#.into(),
            400,
            "body",
        ),
        (
            r#"{"stream":"chat","data":{"author":"  ","body":"x"}}"#.into(),
            422,
            "Name is empty",
        ),
        (
            json!({"stream":"chat","data":{"author": "a".repeat(41),"body":"x"}}).to_string(),
            422,
            "limit is 40",
        ),
        (
            json!({"stream":"chat","data":{"author":"a","body": "b".repeat(2001)}}).to_string(),
            422,
            "limit is 2,000",
        ),
        (
            r#"{"stream":"chat","data":{"author":"a","body":"bell\u0007"}}"#.into(),
            422,
            "control character",
        ),
        (
            json!({"stream":"chat","data":{"author":"a","body": "x".repeat(17 * 1024)}})
                .to_string(),
            413,
            "larger than 16384",
        ),
    ];
    for (body, status, needle) in cases {
        expect_error(post(body).await.unwrap(), status, needle).await;
    }
    let long_title = "t".repeat(141);
    expect_error(
        client
            .post(s.url("/api/publish"))
            .bearer_auth("sekrit")
            .json(&json!({"stream":"feed","data":{"title": long_title,"body":"b","author":"a"}}))
            .send()
            .await
            .unwrap(),
        422,
        "limit is 140",
    )
    .await;

    // Feed and ticker need the admin token; chat does not.
    let feed = json!({"stream":"feed","data":{"title":"t","body":"b","author":"a"}});
    expect_error(
        client
            .post(s.url("/api/publish"))
            .json(&feed)
            .send()
            .await
            .unwrap(),
        401,
        "admin token",
    )
    .await;
    expect_error(
        client
            .post(s.url("/api/publish"))
            .bearer_auth("wrong")
            .json(&feed)
            .send()
            .await
            .unwrap(),
        401,
        "admin token",
    )
    .await;
    let ok = client
        .post(s.url("/api/publish"))
        .bearer_auth("sekrit")
        .json(&feed)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 201);
    assert_eq!(s.chat("chat needs no token").await.id, 2);

    // Nothing rejected was stored.
    assert_eq!(ids(&poll(&s, "since=0").await.events), vec![1, 2]);
    s.stop().await;
}

#[tokio::test]
async fn bad_queries_get_400() {
    let s = TestServer::start().await;
    for (path, needle) in [
        ("/api/poll?since=abc", "invalid query"),
        ("/api/poll?since=0&wait=31", "wait"),
        ("/api/poll?since=0&limit=0", "limit"),
        ("/api/poll?streams=chat,nope", "unknown stream 'nope'"),
        ("/api/sse?streams=nope", "unknown stream"),
        ("/api/history", "stream"),
        ("/api/history?stream=nope", "unknown stream"),
        ("/api/history?stream=chat&limit=201", "limit"),
        ("/api/ws?since=x", "invalid query"),
    ] {
        expect_error(reqwest::get(s.url(path)).await.unwrap(), 400, needle).await;
    }
    let bad_header = reqwest::Client::new()
        .get(s.url("/api/sse"))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    expect_error(bad_header, 400, "Last-Event-ID").await;
    // A plain GET on the WebSocket endpoint explains itself.
    expect_error(
        reqwest::get(s.url("/api/ws")).await.unwrap(),
        400,
        "WebSocket upgrade",
    )
    .await;
    expect_error(
        reqwest::get(s.url("/api/nope")).await.unwrap(),
        404,
        "no such endpoint",
    )
    .await;
    s.stop().await;
}

// ---------------------------------------------------------------- SSE

/// Raw HTTP over a socket: the tests below check the bytes of event-stream responses,
/// which are written by the server's own code when a connection opens with `GET /api/sse`.
struct Raw {
    tcp: tokio::net::TcpStream,
    got: Vec<u8>,
}

impl Raw {
    async fn connect(s: &TestServer) -> Raw {
        Raw {
            tcp: tokio::net::TcpStream::connect(s.addr).await.unwrap(),
            got: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &str) {
        use tokio::io::AsyncWriteExt;
        self.tcp.write_all(bytes.as_bytes()).await.unwrap();
    }

    /// Reads until `needle` has been received (or the connection ends); returns all so far.
    async fn until(&mut self, needle: &str) -> String {
        use tokio::io::AsyncReadExt;
        within(async {
            while !String::from_utf8_lossy(&self.got).contains(needle) {
                let mut buf = [0u8; 4096];
                match self.tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => self.got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        String::from_utf8_lossy(&self.got).into_owned()
    }
}

#[tokio::test]
async fn sse_connections_speak_http_1_1_chunked_and_http_1_0() {
    let s = TestServer::start().await;
    let mut a = Raw::connect(&s).await;
    // The request line arrives in pieces.
    a.send("GE").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    a.send("T /api/sse?streams=chat HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let head = a.until("retry: 1000").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    for h in [
        "content-type: text/event-stream",
        "cache-control: no-cache",
        "transfer-encoding: chunked",
        "connection: close",
        "date: ",
    ] {
        assert!(head.contains(h), "{h} missing from {head}");
    }
    let mut old = Raw::connect(&s).await;
    old.send("GET /api/sse?streams=chat HTTP/1.0\r\n\r\n").await;
    let head = old.until("retry: 1000").await;
    assert!(!head.contains("transfer-encoding"), "{head}");

    let e = s.chat("over raw http").await;
    for raw in [&mut a, &mut old] {
        let text = raw.until("over raw http").await;
        assert!(text.contains(&format!("id: {}\n", e.id)), "{text}");
    }
    // A chunk is its size in hex, the bytes, CRLF.
    let text = a.until("over raw http").await;
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let size_line = body.lines().next().unwrap();
    let size = usize::from_str_radix(size_line.trim(), 16).unwrap();
    assert_eq!(
        &body[size_line.len() + 2 + size..size_line.len() + 4 + size],
        "\r\n"
    );

    // Ends properly when the server stops: the last chunk, then the connection closes.
    s.stop().await;
    assert!(a.until("never sent").await.ends_with("0\r\n\r\n"));
}

#[tokio::test]
async fn sse_connection_errors_are_json_and_the_stream_is_freed_when_the_client_leaves() {
    let s = TestServer::start_with(|c| c.max_streams = 1).await;
    let mut bad = Raw::connect(&s).await;
    bad.send("GET /api/sse?streams=nope HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let text = bad.until("}").await;
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert!(
        text.contains("content-length: ") && text.contains("unknown stream"),
        "{text}"
    );

    let mut garbled = Raw::connect(&s).await;
    garbled
        .send("GET /api/sse HTTP/1.1\r\nno colon here\r\n\r\n")
        .await;
    let text = garbled.until("}").await;
    assert!(
        text.starts_with("HTTP/1.1 400") && text.contains("malformed"),
        "{text}"
    );

    // One stream allowed: a second is refused while the first is open...
    let mut first = Raw::connect(&s).await;
    first.send("GET /api/sse HTTP/1.1\r\nHost: t\r\n\r\n").await;
    first.until("retry:").await;
    let mut second = Raw::connect(&s).await;
    second
        .send("GET /api/sse HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    assert!(second.until("}").await.starts_with("HTTP/1.1 503"));
    // ...and accepted once the first client has gone (no write needed to notice).
    drop(first);
    within(async {
        loop {
            let mut again = Raw::connect(&s).await;
            again.send("GET /api/sse HTTP/1.1\r\nHost: t\r\n\r\n").await;
            if again.until("\r\n\r\n").await.starts_with("HTTP/1.1 200") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn sse_after_another_request_on_the_same_connection_works_too() {
    // Only a connection's first request is looked at; later ones are hyper's.
    let s = TestServer::start().await;
    let mut c = Raw::connect(&s).await;
    c.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(c.until("ok").await.starts_with("HTTP/1.1 200"));
    c.send("GET /api/sse?streams=chat HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    c.until("retry: 1000").await;
    s.chat("second request").await;
    assert!(c
        .until("second request")
        .await
        .contains("text/event-stream"));
    s.stop().await;
}

#[tokio::test]
async fn sse_delivers_live_and_resumes_with_no_gap_or_duplicate() {
    let s = TestServer::start().await;
    let first = [s.chat("a").await, s.chat("b").await, s.chat("c").await];

    // Live from now: nothing of the past.
    let mut live = SseClient::connect(&s.url("/api/sse?streams=chat"), None).await;
    assert_eq!(live.response_headers["content-type"], "text/event-stream");
    assert_eq!(live.response_headers["cache-control"], "no-cache");
    assert_eq!(live.response_headers["x-accel-buffering"], "no");
    let hello = within(live.next()).await.unwrap();
    assert!(hello.comment, "starts with the retry hint and a comment");
    let d = s.chat("d").await;
    assert_eq!(ids(&live.events(1).await), vec![d.id]);

    // `since` replays exactly what came after it, then goes live.
    let mut resumed = SseClient::connect(
        &s.url(&format!("/api/sse?streams=chat&since={}", first[0].id)),
        None,
    )
    .await;
    assert_eq!(
        ids(&resumed.events(3).await),
        vec![first[1].id, first[2].id, d.id]
    );
    let e = s.chat("e").await;
    assert_eq!(ids(&resumed.events(1).await), vec![e.id]);

    // Last-Event-ID (what a browser sends on reconnect) wins over `since` in the URL.
    let mut reconnect = SseClient::connect(
        &s.url("/api/sse?streams=chat&since=0"),
        Some(&d.id.to_string()),
    )
    .await;
    assert_eq!(ids(&reconnect.events(1).await), vec![e.id]);
    s.stop().await;
}

/// `hello=true` opens the stream with a message scripts can see (the app's Auto transport
/// tells a flowing stream from a buffered one by it); without it, only a comment.
#[tokio::test]
async fn sse_hello_is_a_visible_first_message_on_request() {
    let s = TestServer::start().await;
    let e = s.chat("before").await;
    let mut sse =
        SseClient::connect(&s.url(&format!("/api/sse?hello=true&since={}", e.id)), None).await;
    let m = within(sse.next_data()).await.unwrap();
    assert_eq!(m.event.as_deref(), Some("hello"));
    assert_eq!(m.id, None, "a hello does not move Last-Event-ID");
    assert_eq!(m.data, format!("{{\"cursor\":{}}}", e.id));
    let next = s.chat("after").await;
    assert_eq!(ids(&sse.events(1).await), vec![next.id]);
    let mut plain = SseClient::connect(&s.url("/api/sse"), None).await;
    let first = within(plain.next()).await.unwrap();
    assert!(first.comment && first.event.is_none(), "{first:?}");
    s.stop().await;
}

/// The same for WebSockets: `hello=true` makes the first frame a `hello` with the start
/// cursor (and a `cursor` frame on every heartbeat, the client's watchdog); without it the
/// first frame is the first event, as before.
#[tokio::test]
async fn ws_hello_is_the_first_frame_on_request() {
    let s = TestServer::start_with(|c| c.heartbeat_secs = 1).await;
    let e = s.chat("before").await;
    let mut ws = ws_connect(&s.ws_url(&format!("/api/ws?hello=true&since={}", e.id))).await;
    assert_eq!(ws_frame(&mut ws).await, ServerFrame::Hello { cursor: e.id });
    let next = s.chat("after").await;
    assert_eq!(ids(&ws_events(&mut ws, 1).await), vec![next.id]);
    // A quiet second later: a cursor frame, although nothing new went by.
    assert_eq!(
        ws_frame(&mut ws).await,
        ServerFrame::Cursor { cursor: next.id }
    );
    let mut plain = ws_connect(&s.ws_url(&format!("/api/ws?since={}", e.id))).await;
    assert_eq!(ids(&ws_events(&mut plain, 1).await), vec![next.id]);
    s.stop().await;
}

#[tokio::test]
async fn sse_filters_streams_and_heartbeats_move_the_resume_cursor() {
    let s = TestServer::start_with(|c| c.heartbeat_secs = 1).await;
    let mut chat_only = SseClient::connect(&s.url("/api/sse?streams=chat&since=0"), None).await;
    let tick = s
        .publish(json!({"stream": "ticker", "data": {"symbol": "AB", "price": 2.0, "change": 0.5}}))
        .await;
    let c = s.chat("only this").await;
    assert_eq!(ids(&chat_only.events(1).await), vec![c.id]);
    let t2 = s
        .publish(json!({"stream": "ticker", "data": {"symbol": "AB", "price": 2.1, "change": 0.6}}))
        .await;
    assert!(tick.id < c.id && c.id < t2.id);
    // The next heartbeat carries the cursor past the ticker event, without data.
    let hb = within(async {
        loop {
            let m = chat_only.next().await.unwrap();
            if m.id.is_some() {
                return m;
            }
        }
    })
    .await;
    assert!(hb.data.is_empty() && hb.comment);
    assert_eq!(hb.id, Some(t2.id.to_string()));
    s.stop().await;
}

// ---------------------------------------------------------------- WebSocket

#[tokio::test]
async fn ws_delivers_resumes_and_acks_publishes() {
    let s = TestServer::start().await;
    let a = s.chat("a").await;
    let b = s.chat("b").await;
    let mut ws = ws_connect(&s.ws_url(&format!("/api/ws?streams=chat,feed&since={}", a.id))).await;
    assert_eq!(ids(&ws_events(&mut ws, 1).await), vec![b.id]);

    ws.send(Message::text(
        r#"{"type":"publish","ref":"r1","stream":"chat","data":{"author":"ws","body":"hello"}}"#,
    ))
    .await
    .unwrap();
    // The ack and the event itself may come in either order.
    let (mut acked, mut seen) = (None, None);
    while acked.is_none() || seen.is_none() {
        match ws_frame(&mut ws).await {
            ServerFrame::Ack { reference, id } => {
                assert_eq!(reference, "r1");
                acked = Some(id);
            }
            ServerFrame::Event { event } => seen = Some(event),
            f => panic!("{f:?}"),
        }
    }
    let event = seen.unwrap();
    assert_eq!(acked, Some(event.id));
    assert_eq!(event.id, b.id + 1);

    // Another client on another transport sees the WS-published event.
    let over_http = poll(&s, &format!("since={}", b.id)).await;
    assert_eq!(ids(&over_http.events), vec![event.id]);
    s.stop().await;
}

#[tokio::test]
async fn ws_bad_frames_get_error_frames_and_the_socket_stays_usable() {
    let s = TestServer::start_with(|c| c.admin_token = Some("sekrit".into())).await;
    let mut ws = ws_connect(&s.ws_url("/api/ws?streams=chat")).await;
    let cases = [
        ("not json", None, "malformed JSON", "bad_request"),
        (
            r#"{"type":"publish","ref":"r2","stream":"nope","data":{}}"#,
            Some("r2"),
            "unknown stream",
            "bad_request",
        ),
        (
            r#"{"type":"publish","ref":"r3","stream":"chat","data":{"author":"","body":"x"}}"#,
            Some("r3"),
            "Name is empty",
            "invalid",
        ),
        (
            r#"{"type":"dance","ref":"r4"}"#,
            Some("r4"),
            "unknown frame type",
            "bad_request",
        ),
        (
            r#"{"type":"publish","ref":"r5","stream":"feed","data":{"title":"t","body":"b","author":"a"}}"#,
            Some("r5"),
            "admin token",
            "unauthorized",
        ),
    ];
    for (text, reference, needle, want_code) in cases {
        ws.send(Message::text(text)).await.unwrap();
        match ws_frame(&mut ws).await {
            ServerFrame::Error {
                reference: r,
                error,
                code,
            } => {
                assert_eq!(code, want_code, "{text}");
                assert_eq!(r.as_deref(), reference, "{text}");
                assert!(
                    error.contains(needle),
                    "{error:?} should mention {needle:?}"
                );
            }
            f => panic!("{f:?}"),
        }
    }
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert!(matches!(ws_frame(&mut ws).await, ServerFrame::Error { .. }));
    // Still usable after all that.
    ws.send(Message::text(
        r#"{"type":"publish","ref":"ok","stream":"chat","data":{"author":"a","body":"fine"}}"#,
    ))
    .await
    .unwrap();
    let mut got_ack = false;
    for _ in 0..2 {
        if let ServerFrame::Ack { reference, .. } = ws_frame(&mut ws).await {
            got_ack = reference == "ok";
        }
    }
    assert!(got_ack);

    // A frame over 16 KiB closes the socket with 1009.
    let big = format!(
        r#"{{"type":"publish","ref":"big","stream":"chat","data":{{"author":"a","body":"{}"}}}}"#,
        "x".repeat(17 * 1024)
    );
    ws.send(Message::text(big)).await.unwrap();
    let close = within(async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(c))) => return c,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("close frame with a code");
    assert_eq!(u16::from(close.code), 1009);

    // Only the valid publish was stored.
    assert_eq!(poll(&s, "since=0").await.events.len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn ws_origin_rules() {
    let s = TestServer::start_with(|c| c.allow_origins = vec!["http://app.example".into()]).await;
    let attempt = |origin: &'static str| {
        let mut req =
            tungstenite::client::IntoClientRequest::into_client_request(s.ws_url("/api/ws"))
                .unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    match attempt("http://evil.example").await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!(
            "a foreign origin must be refused, got {:?}",
            other.map(|_| ())
        ),
    }
    assert!(
        attempt("http://app.example").await.is_ok(),
        "an allowed origin"
    );
    let own: &'static str = Box::leak(s.base.clone().into_boxed_str());
    assert!(attempt(own).await.is_ok(), "the server's own origin");

    // CORS answers for the allowed origin only.
    let client = reqwest::Client::new();
    let r = client
        .get(s.url("/api/poll"))
        .header("origin", "http://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    let r = client
        .get(s.url("/api/poll"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    s.stop().await;
}

#[tokio::test]
async fn ws_drops_a_silent_peer() {
    let s = TestServer::start_with(|c| {
        c.heartbeat_secs = 1;
        c.ws_idle_timeout_secs = 2;
    })
    .await;
    let mut ws = ws_connect(&s.ws_url("/api/ws")).await;
    // Be a dead peer: read nothing (so no pongs are sent) for longer than the timeout.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let reason = within(async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(c))) => return c.map(|c| c.reason.to_string()),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await;
    assert_eq!(reason.as_deref(), Some("idle timeout"));
    s.stop().await;
}

// ---------------------------------------------------------------- retention and reset

#[tokio::test]
async fn cursors_out_of_retention_or_ahead_get_an_explicit_reset() {
    let s = TestServer::start_with(|c| c.retention = 5).await;
    for i in 0..10 {
        s.chat(&format!("{i}")).await;
    }
    // Window holds 6..=10: cursor 5 is fine, 4 has missed event 5.
    assert_eq!(ids(&poll(&s, "since=5").await.events), vec![6, 7, 8, 9, 10]);
    for since in [4, 99] {
        let r = poll(&s, &format!("since={since}")).await;
        assert!(
            r.reset && r.events.is_empty() && r.cursor == 10,
            "since={since}: {r:?}"
        );
    }
    let mut sse = SseClient::connect(&s.url("/api/sse?since=2"), None).await;
    let m = within(sse.next_data()).await.unwrap();
    assert_eq!(
        (m.event.as_deref(), m.id.as_deref()),
        (Some("reset"), Some("10"))
    );
    let mut ws = ws_connect(&s.ws_url("/api/ws?since=99")).await;
    assert_eq!(ws_frame(&mut ws).await, ServerFrame::Reset { cursor: 10 });
    // After the reset both continue live.
    let next = s.chat("after").await;
    assert_eq!(ids(&sse.events(1).await), vec![next.id]);
    assert_eq!(ids(&ws_events(&mut ws, 1).await), vec![next.id]);
    s.stop().await;
}

/// `/api/stats`: the lab's server side. The figures are per process (tests in this binary
/// share them), so the checks are relative.
#[tokio::test]
async fn stats_count_open_streams_and_requests() {
    let s = TestServer::start().await;
    let get = || async {
        reqwest::get(s.url("/api/stats"))
            .await
            .unwrap()
            .json::<app::protocol::ServerStats>()
            .await
            .unwrap()
    };
    let before = get().await;
    let _ws = ws_connect(&s.ws_url("/api/ws")).await;
    let mut sse = SseClient::connect(&s.url("/api/sse"), None).await;
    within(sse.next()).await.unwrap();
    poll(&s, "").await;
    s.chat("counted").await;
    let after = get().await;
    assert!(after.open_ws >= 1 && after.open_sse >= 1, "{after:?}");
    assert!(
        after.polls > before.polls && after.publishes > before.publishes,
        "{before:?} {after:?}"
    );
    let now = app_now_ms();
    assert!(
        after.now_ms.abs_diff(now) < 5_000,
        "server clock {} vs {now}",
        after.now_ms
    );
    s.stop().await;
}

fn app_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The lab's load generator: only with --admin-token and for that token, bounded, only on
/// the `lab` stream (which nobody else may write, and which "all streams" does not include).
#[tokio::test]
async fn lab_load_is_admin_only_bounded_and_on_its_own_stream() {
    let client = reqwest::Client::new();
    let off = TestServer::start().await;
    let r = client
        .post(off.url("/api/lab/load"))
        .body(r#"{"rate":5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r
        .json::<app::protocol::ErrorBody>()
        .await
        .unwrap()
        .error
        .contains("--admin-token"));
    off.stop().await;

    let s = TestServer::start_with(|c| c.admin_token = Some("T0ken".into())).await;
    let status = |body: &'static str, token: Option<&'static str>| {
        let mut req = client.post(s.url("/api/lab/load")).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let refused = [
        (r#"{"rate":5}"#, None, 401),
        (r#"{"rate":5}"#, Some("wrong"), 401),
        (r#"{"rate":51}"#, Some("T0ken"), 400),
        (r#"{"speed":5}"#, Some("T0ken"), 400),
    ];
    for (body, token, code) in refused {
        assert_eq!(status(body, token).await, code, "{body} with {token:?}");
    }
    // Nobody writes the lab stream but the generator, not even the admin.
    let direct = client
        .post(s.url("/api/publish"))
        .bearer_auth("T0ken")
        .body(r#"{"stream":"lab","data":{"n":1}}"#)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 403);
    let start = poll(&s, "streams=lab").await.cursor;
    assert_eq!(status(r#"{"rate":20}"#, Some("T0ken")).await, 200);
    let got = poll(&s, &format!("streams=lab&since={start}&wait=5")).await;
    assert!(!got.events.is_empty());
    assert!(got
        .events
        .iter()
        .all(|e| matches!(e.payload, Payload::Lab(_))));
    // "All streams" (no streams=) is the app's three: the lab's load is not among them.
    let all = poll(&s, &format!("since={start}")).await;
    assert!(all
        .events
        .iter()
        .all(|e| !matches!(e.payload, Payload::Lab(_))));
    // A burst of 100, at most one per 5 s.
    assert_eq!(
        status(r#"{"rate":0,"burst":true}"#, Some("T0ken")).await,
        200
    );
    assert_eq!(status(r#"{"burst":true}"#, Some("T0ken")).await, 429);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let h: HistoryResponse = reqwest::get(s.url("/api/history?stream=lab&limit=200"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let total = h.events.len();
    assert!(total >= 100, "{total} lab events after a burst");
    // Stopped (rate 0): no more.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let h2: HistoryResponse = reqwest::get(s.url("/api/history?stream=lab&limit=200"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h2.events.len(), total);
    s.stop().await;
}

// ---------------------------------------------------------------- lifecycle

#[tokio::test]
async fn restart_keeps_history_and_never_reuses_ids() {
    let s = TestServer::start().await;
    let before: Vec<Event> = vec![s.chat("1").await, s.chat("2").await, s.chat("3").await];
    let dir = s.dir.clone();
    let tmp = s.stop().await;

    let s = TestServer::start_in(dir, |_| {}).await;
    let h: HistoryResponse = reqwest::get(s.url("/api/history?stream=chat"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h.events, before, "history intact, byte for byte");
    // The resume window was reloaded: a cursor from before the restart still resumes.
    assert_eq!(
        ids(&poll(&s, &format!("since={}", before[0].id)).await.events),
        ids(&before[1..])
    );
    let after = s.chat("4").await;
    assert!(after.id > before[2].id);
    s.stop().await;
    drop(tmp);
}

/// A client whose answer was lost when the server went down retries after the restart
/// with the same idempotency key: it gets the event stored before, not a second copy.
#[tokio::test]
async fn idempotency_keys_survive_a_restart() {
    // A small resume window: the keyed event leaves it, so its replay is read from SQLite.
    let s = TestServer::start_with(|c| c.retention = 4).await;
    let client = reqwest::Client::new();
    let body = serde_json::json!({"stream":"chat","data":{"author":"a","body":"only once"}});
    let publish = |url: String| {
        client
            .post(url)
            .header("Idempotency-Key", "restart-key-1")
            .json(&body)
            .send()
    };
    let first: Event = publish(s.url("/api/publish"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Replayed from the window while it holds the event...
    let again = publish(s.url("/api/publish")).await.unwrap();
    assert_eq!(again.json::<Event>().await.unwrap(), first);
    for i in 0..6 {
        s.chat(&format!("filler {i}")).await;
    }
    let dir = s.dir.clone();
    let tmp = s.stop().await;

    // ...and from the store after a restart, when the window no longer does.
    let s = TestServer::start_in(dir, |c| c.retention = 4).await;
    let retry = publish(s.url("/api/publish")).await.unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.json::<Event>().await.unwrap(), first);
    let h: HistoryResponse = reqwest::get(s.url("/api/history?stream=chat"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let once: Vec<&Event> = h
        .events
        .iter()
        .filter(|e| e.id == first.id || e.payload == first.payload)
        .collect();
    assert_eq!(once, vec![&first], "stored once");
    s.stop().await;
    drop(tmp);
}

/// The demo ticker continues from the last stored prices after a restart (it used to jump
/// back to the listing prices), and every tick carries the day's open it is measured from.
#[tokio::test]
async fn the_demo_ticker_continues_from_stored_prices_after_a_restart() {
    async fn ticks(s: &TestServer, since: u64, n: usize) -> Vec<(u64, Tick)> {
        let mut out = Vec::new();
        let mut cursor = since;
        while out.len() < n {
            let r = poll(s, &format!("streams=ticker&since={cursor}&wait=5")).await;
            cursor = r.cursor;
            for e in r.events {
                if let Payload::Ticker(t) = e.payload {
                    out.push((e.id, t));
                }
            }
        }
        out
    }
    let s = TestServer::start_with(|c| c.no_demo = false).await;
    let before = ticks(&s, 0, 12).await;
    let dir = s.dir.clone();
    let tmp = s.stop().await;
    let last_id = before.last().unwrap().0;
    let s = TestServer::start_in(dir, |c| c.no_demo = false).await;
    let after = ticks(&s, last_id, 6).await;
    for (_, t) in &after {
        let open = t.open.expect("the demo gives the day's open");
        assert!((t.change - (t.price - open)).abs() < 0.006, "{t:?}");
        // The price before the restart: at most one 1 % move away.
        if let Some((_, prev)) = before.iter().rev().find(|(_, p)| p.symbol == t.symbol) {
            if after
                .iter()
                .find(|(_, a)| a.symbol == t.symbol)
                .map(|(_, a)| a)
                == Some(t)
            {
                let ratio = t.price / prev.price;
                assert!(
                    (0.985..=1.015).contains(&ratio),
                    "{} jumped {} -> {}",
                    t.symbol,
                    prev.price,
                    t.price
                );
            }
        }
    }
    s.stop().await;
    drop(tmp);
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001_and_ends_sse() {
    let s = TestServer::start().await;
    let mut ws = ws_connect(&s.ws_url("/api/ws")).await;
    let mut sse = SseClient::connect(&s.url("/api/sse"), None).await;
    within(sse.next()).await.unwrap();
    let stopping = tokio::spawn(s.stop());
    let code = within(async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(c))) => return c.map(|c| u16::from(c.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await;
    assert_eq!(code, Some(1001));
    // The event stream ends (the response finishes) instead of hanging: the loop ends
    // within the deadline or `within` fails the test.
    let mut trailing = 0;
    within(async {
        while let Some(m) = sse.next().await {
            assert!(
                m.comment || m.data.is_empty(),
                "no event after shutdown: {m:?}"
            );
            trailing += 1;
        }
    })
    .await;
    assert!(trailing <= 2, "{trailing} messages after shutdown");
    within(stopping).await.unwrap();
}

#[tokio::test]
async fn healthz_and_the_server_function() {
    let s = TestServer::start().await;
    assert_eq!(
        reqwest::get(s.url("/healthz"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    s.chat("x").await;
    let r = reqwest::Client::new()
        .post(s.url("/api/info"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let info: ServerInfo = r.json().await.unwrap();
    assert_eq!(
        (info.latest_id, info.oldest_id, info.retention, info.demo),
        (1, 1, 10_000, false)
    );
    s.stop().await;
}

#[tokio::test]
async fn demo_simulators_publish_feed_and_ticker() {
    let s = TestServer::start_with(|c| c.no_demo = false).await;
    let mut sse = SseClient::connect(&s.url("/api/sse?streams=feed,ticker&since=0"), None).await;
    let (mut feed, mut ticks) = (0, 0);
    while feed == 0 || ticks < 3 {
        let e = sse.events(1).await.remove(0);
        match e.payload {
            app::protocol::Payload::Feed(_) => feed += 1,
            app::protocol::Payload::Ticker(t) => {
                assert!(t.price > 0.0);
                ticks += 1
            }
            _ => panic!("chat is not simulated"),
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn open_streams_are_limited_with_a_clear_503() {
    let s = TestServer::start_with(|c| c.max_streams = 2).await;
    let mut ws = ws_connect(&s.ws_url("/api/ws")).await;
    let _sse = SseClient::connect(&s.url("/api/sse"), None).await;
    // A third stream of any kind is refused, with a reason.
    match tokio_tungstenite::connect_async(s.ws_url("/api/ws")).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    expect_error(
        reqwest::get(s.url("/api/sse")).await.unwrap(),
        503,
        "open streams",
    )
    .await;
    expect_error(
        reqwest::get(s.url("/api/poll?since=0&wait=5"))
            .await
            .unwrap(),
        503,
        "open streams",
    )
    .await;
    // Short polls hold nothing and keep working.
    assert_eq!(poll(&s, "since=0").await.cursor, 0);
    // Closing a stream frees its place.
    ws.close(None).await.unwrap();
    within(async {
        loop {
            if tokio_tungstenite::connect_async(s.ws_url("/api/ws"))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    s.stop().await;
}
