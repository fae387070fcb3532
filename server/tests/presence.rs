//! Presence (issue #10) on one server: who is online in chat, as events of the `presence`
//! stream and as `GET /api/presence`, over real connections of every transport. The
//! cluster side (several servers, kill -9) is in cluster.rs.

mod common;

use app::protocol::PresenceList;
use common::*;
use futures_util::SinkExt;
use serde_json::json;
use std::time::{Duration, Instant};

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
const GRACE: Duration = Duration::from_millis(400);

async fn start() -> TestServer {
    TestServer::start_with(|c| {
        c.secret = Some(SECRET.into());
        c.presence_grace_ms = GRACE.as_millis() as u64;
    })
    .await
}

#[tokio::test]
async fn an_account_is_online_once_whatever_its_connections_and_leaves_after_the_grace() {
    let s = start().await;
    let ann = signup(&s.base, "ann").await;
    let bob = signup(&s.base, "bob").await;
    let mut watcher = sse(&s.base, "presence", None).await;

    // Three connections of Ann on three transports: one join.
    let a1 = sse(&s.base, "chat", Some(&ann)).await;
    let joined = within(watcher.events(1)).await;
    assert_eq!(presence_of(&joined[0]), ("ann".into(), true));
    let a2 = sse(&s.base, "feed,chat,ticker", Some(&ann)).await;
    let (mut a3, _) =
        tokio_tungstenite::connect_async(s.ws_url(&format!("/api/ws?streams=chat&token={ann}")))
            .await
            .unwrap();
    no_presence_change(&mut watcher, Duration::from_millis(300)).await;

    let list: PresenceList = get_json(&s.url("/api/presence"), None).await;
    assert_eq!(list.online, vec!["ann"]);
    assert!(list.cursor >= joined[0].id);

    // Bob by long poll: online while his poll waits (and for the poll lease after).
    let poll = {
        let url = s.url("/api/poll?streams=chat&since=0&wait=2");
        let bob = bob.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(bob)
                .send()
                .await
                .unwrap()
        })
    };
    let joined = within(watcher.events(1)).await;
    assert_eq!(presence_of(&joined[0]), ("bob".into(), true));
    assert_eq!(poll.await.unwrap().status(), 200);

    // Closing two of Ann's three: nothing.
    drop(a2);
    a3.close(None).await.unwrap();
    drop(a3);
    no_presence_change(&mut watcher, GRACE * 2).await;
    // Her last one closes and she reconnects inside the grace (a reload): nothing.
    drop(a1);
    tokio::time::sleep(GRACE / 4).await;
    let a1 = sse(&s.base, "chat", Some(&ann)).await;
    no_presence_change(&mut watcher, GRACE * 2).await;

    // Her last one closes for good: one leave, after the grace.
    drop(a1);
    let closed = Instant::now();
    let left = within(watcher.events(1)).await;
    let after = closed.elapsed();
    assert_eq!(presence_of(&left[0]), ("ann".into(), false));
    assert!(
        after >= GRACE && after < GRACE + Duration::from_secs(1),
        "leave after {after:?}"
    );
    no_presence_change(&mut watcher, Duration::from_millis(300)).await;
    let list: PresenceList = get_json(&s.url("/api/presence"), None).await;
    assert_eq!(list.online, vec!["bob"]);
    assert!(list.cursor >= left[0].id);
}

#[tokio::test]
async fn only_signed_in_readers_of_chat_count_and_nobody_can_publish_presence() {
    let s = start().await;
    let ann = signup(&s.base, "ann").await;
    let mut watcher = sse(&s.base, "presence", None).await;
    // Anonymous readers of chat, an account that reads only its notifications, and a
    // token that is not valid (ignored on public streams): nobody is online.
    let _anon = sse(&s.base, "chat", None).await;
    let _bot = sse(&s.base, "notifications", Some(&ann)).await;
    let _bad = sse(&s.base, "chat", Some("not.a.token")).await;
    // A poll the server refuses (400) does not count either.
    let r = reqwest::Client::new()
        .get(s.url("/api/poll?streams=chat&since=0&wait=99"))
        .bearer_auth(&ann)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    no_presence_change(&mut watcher, Duration::from_millis(500)).await;
    let list: PresenceList = get_json(&s.url("/api/presence"), None).await;
    assert!(list.online.is_empty());

    for token in [None, Some(ann.as_str())] {
        assert_eq!(publish_presence(&s, token).await["code"], "forbidden");
    }
    // Not on a WebSocket either: an error frame, and the socket serves on.
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url("/api/ws?streams=feed"))
        .await
        .unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"type":"publish","ref":"p","stream":"presence","data":{"user":"ann","online":true}}"#,
    ))
    .await
    .unwrap();
    loop {
        match ws_frame(&mut ws).await {
            app::protocol::ServerFrame::Error { code, .. } => {
                assert_eq!(code, "forbidden");
                break;
            }
            app::protocol::ServerFrame::Cursor { .. } => {}
            f => panic!("unexpected {f:?}"),
        }
    }
    no_presence_change(&mut watcher, Duration::from_millis(200)).await;
}

/// A client that was away resumes presence like any stream: the joins and leaves it
/// missed come first, in order, and applied after its list they give today's list.
#[tokio::test]
async fn presence_resumes_after_a_reconnect() {
    let s = start().await;
    let ann = signup(&s.base, "ann").await;
    let bob = signup(&s.base, "bob").await;
    let before: PresenceList = get_json(&s.url("/api/presence"), None).await;
    assert!(before.online.is_empty());

    // While the client is away: Ann comes and goes, Bob comes.
    let a = sse(&s.base, "chat", Some(&ann)).await;
    let _b = sse(&s.base, "chat", Some(&bob)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(a);
    tokio::time::sleep(GRACE + Duration::from_millis(600)).await;

    // Resuming from the old cursor, on each transport, gives the three changes in order.
    let poll: app::protocol::PollResponse = get_json(
        &s.url(&format!(
            "/api/poll?streams=presence&since={}",
            before.cursor
        )),
        None,
    )
    .await;
    let changes: Vec<(String, bool)> = poll.events.iter().map(presence_of).collect();
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert!(changes.contains(&("ann".into(), true)) && changes.contains(&("bob".into(), true)));
    assert_eq!(changes[2], ("ann".into(), false));
    let mut resumed = SseClient::connect(
        &s.url("/api/sse?streams=presence"),
        Some(&before.cursor.to_string()),
    )
    .await;
    assert_eq!(
        within(resumed.events(3))
            .await
            .iter()
            .map(presence_of)
            .collect::<Vec<_>>(),
        changes
    );
    let mut ws =
        ws_connect(&s.ws_url(&format!("/api/ws?streams=presence&since={}", before.cursor))).await;
    assert_eq!(
        ws_events(&mut ws, 3)
            .await
            .iter()
            .map(presence_of)
            .collect::<Vec<_>>(),
        changes
    );
    let mut online = before.online.clone();
    for (user, on) in changes {
        online.retain(|u| *u != user);
        if on {
            online.push(user);
        }
    }
    let now: PresenceList = get_json(&s.url("/api/presence"), None).await;
    assert_eq!(online, now.online);
}

/// A short poll keeps its account online for the poll lease (the server cannot see a
/// poller leave; it sees it stop asking).
#[tokio::test]
async fn a_short_poll_makes_its_account_online() {
    let s = start().await;
    let bob = signup(&s.base, "bob").await;
    let mut watcher = sse(&s.base, "presence", None).await;
    let _: app::protocol::PollResponse =
        get_json(&s.url("/api/poll?streams=feed,chat&since=0"), Some(&bob)).await;
    let joined = within(watcher.events(1)).await;
    assert_eq!(presence_of(&joined[0]), ("bob".into(), true));
    no_presence_change(&mut watcher, GRACE * 2).await;
    let list: PresenceList = get_json(&s.url("/api/presence"), None).await;
    assert_eq!(list.online, vec!["bob"]);
}

/// With an admin token configured, publishing to `presence` is still a 403 that says why
/// (not a 401 asking for the admin token, which would not help either).
#[tokio::test]
async fn presence_cannot_be_published_even_by_the_admin() {
    let s = TestServer::start_with(|c| {
        c.secret = Some(SECRET.into());
        c.admin_token = Some("sekrit".into());
    })
    .await;
    for token in [None, Some("sekrit")] {
        let body = publish_presence(&s, token).await;
        assert!(
            body["error"].as_str().unwrap().contains("presence"),
            "{body}"
        );
    }
}

/// Tries to publish a presence change (with `token` as bearer); expects a 403 and returns
/// its JSON body.
async fn publish_presence(s: &TestServer, token: Option<&str>) -> serde_json::Value {
    let mut req = reqwest::Client::new()
        .post(s.url("/api/publish"))
        .json(&json!({"stream": "presence", "data": {"user": "ann", "online": true}}));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 403);
    r.json().await.unwrap()
}

/// A malformed `GET /api/presence` query is a 400 with a JSON error, not a list.
#[tokio::test]
async fn a_malformed_presence_query_is_a_clear_400() {
    let s = start().await;
    for query in [
        "?after=x",
        "?after=-1",
        "?after=99999999999999999999999",
        "?who=ann",
    ] {
        let r = reqwest::get(s.url(&format!("/api/presence{query}")))
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], "bad_request", "{query}: {body}");
    }
    let ok: PresenceList = get_json(&s.url("/api/presence?after=0"), None).await;
    assert!(ok.online.is_empty());
}
