//! Accounts, sessions and the private `notifications` stream (issue #10), against a real
//! server: who can sign in, what each transport lets a token see, and what it refuses.

mod common;

use app::protocol::{Event, Payload, PollResponse, Session};
use common::*;
use futures_util::StreamExt;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite;

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

async fn start() -> TestServer {
    TestServer::start_with(|c| c.secret = Some(SECRET.into())).await
}

async fn error(r: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(r.status(), status);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    body["error"].as_str().unwrap().to_owned()
}

/// A token with our secret but claims of our choosing (what another backend would mint).
fn mint(sub: &str, exp: u64) -> String {
    let claims = json!({"sub": sub, "iat": 1, "exp": exp});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn accounts_sign_up_in_and_out() {
    let s = start().await;
    let client = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| client.post(s.url(path)).json(&body).send();

    let r = post(
        "/api/auth/signup",
        json!({"name": "Ann", "password": "correct horse"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("tidings_session=") && cookie.contains("HttpOnly"));
    assert!(cookie.contains("SameSite=Lax"));
    let session: Session = r.json().await.unwrap();
    assert_eq!(session.name, "Ann");
    assert!(session.expires > now());

    // One account per name, whatever its case.
    let taken = post(
        "/api/auth/signup",
        json!({"name": "ann", "password": "another one"}),
    );
    error(taken.await.unwrap(), 409, "name_taken").await;
    let bad = post(
        "/api/auth/signup",
        json!({"name": "a b", "password": "long enough"}),
    );
    assert!(error(bad.await.unwrap(), 422, "invalid")
        .await
        .contains("letters"));
    let short = post(
        "/api/auth/signup",
        json!({"name": "carl", "password": "short"}),
    );
    assert!(error(short.await.unwrap(), 422, "invalid")
        .await
        .contains("at least 8"));

    // Wrong password and unknown name: the same answer.
    let wrong = post(
        "/api/auth/signin",
        json!({"name": "ann", "password": "wrong password"}),
    );
    let a = error(wrong.await.unwrap(), 401, "unauthenticated").await;
    let nobody = post(
        "/api/auth/signin",
        json!({"name": "zed", "password": "wrong password"}),
    );
    assert_eq!(
        error(nobody.await.unwrap(), 401, "unauthenticated").await,
        a
    );
    let ok = post(
        "/api/auth/signin",
        json!({"name": "ANN", "password": "correct horse"}),
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);
    let token = ok.json::<Session>().await.unwrap().token.unwrap();

    // The session, by header and by cookie.
    let me = |h: (&str, String)| client.get(s.url("/api/auth/me")).header(h.0, h.1).send();
    let by_bearer: Session = me(("authorization", format!("Bearer {token}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((by_bearer.name.as_str(), by_bearer.token), ("Ann", None));
    let by_cookie = me(("cookie", format!("tidings_session={token}")))
        .await
        .unwrap();
    assert_eq!(by_cookie.status(), 200);
    error(
        client.get(s.url("/api/auth/me")).send().await.unwrap(),
        401,
        "unauthenticated",
    )
    .await;

    // Signing out clears the cookie; another site cannot sign a browser in.
    let out = client
        .post(s.url("/api/auth/signout"))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    assert!(out.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let csrf = client
        .post(s.url("/api/auth/signin"))
        .header("origin", "http://evil.example")
        .json(&json!({"name": "ann", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    error(csrf, 403, "forbidden").await;
    s.stop().await;
}

#[tokio::test]
async fn sign_in_attempts_are_limited_per_name() {
    let s = TestServer::start_with(|c| {
        c.secret = Some(SECRET.into());
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    signup(&s.base, "bob").await;
    let client = reqwest::Client::new();
    let mut limited = None;
    // From an address bob never signed in from (his own is exempt: see below).
    for _ in 0..8 {
        let r = client
            .post(s.url("/api/auth/signin"))
            .header("x-forwarded-for", "10.9.9.9")
            .json(&json!({"name": "bob", "password": "guess guess"}))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), 401);
    }
    let r = limited.expect("the sixth attempt or so is refused");
    assert!(r.headers().contains_key("retry-after"));
    error(r, 429, "too_many_attempts").await;
    s.stop().await;
}

/// Someone failing against a name from other addresses locks it for new addresses, not for
/// the address its owner signed in from before (lockout must not be a denial of service).
#[tokio::test]
async fn a_locked_name_still_signs_in_from_where_its_owner_did() {
    let s = TestServer::start_with(|c| {
        c.secret = Some(SECRET.into());
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let client = reqwest::Client::new();
    let sign = |path: &'static str, from: &'static str, password: &'static str| {
        client
            .post(s.url(path))
            .header("x-forwarded-for", from)
            .json(&json!({"name": "bob", "password": password}))
            .send()
    };
    assert_eq!(
        sign("/api/auth/signup", "10.0.0.1", "correct horse")
            .await
            .unwrap()
            .status(),
        201
    );
    // Guesses from other addresses until the name is locked.
    let mut locked = false;
    for i in 0..10 {
        let from: &'static str = Box::leak(format!("10.0.1.{i}").into_boxed_str());
        let r = sign("/api/auth/signin", from, "guess guess").await.unwrap();
        if r.status() == 429 {
            locked = true;
            break;
        }
        assert_eq!(r.status(), 401);
    }
    assert!(locked, "the name was never locked");
    // The right password from a new address waits like the guesses...
    let r = sign("/api/auth/signin", "10.0.2.1", "correct horse")
        .await
        .unwrap();
    error(r, 429, "too_many_attempts").await;
    // ...but from the owner's own address it signs in.
    assert_eq!(
        sign("/api/auth/signin", "10.0.0.1", "correct horse")
            .await
            .unwrap()
            .status(),
        200
    );
    s.stop().await;
}

#[tokio::test]
async fn chat_from_an_account_carries_its_verified_name() {
    let s = start().await;
    let ann = signup(&s.base, "ann").await;
    let client = reqwest::Client::new();
    let e: Event = client
        .post(s.url("/api/publish"))
        .bearer_auth(&ann)
        .json(&json!({"stream": "chat", "data": {"author": "mallory", "body": "hi"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let Payload::Chat(m) = e.payload else {
        panic!()
    };
    assert_eq!((m.author.as_str(), m.user.as_deref()), ("ann", Some("ann")));
    // Anonymous publishers cannot claim an account, or write notifications.
    let forged = client
        .post(s.url("/api/publish"))
        .json(&json!({"stream": "chat", "data": {"author": "ann", "body": "hi", "user": "ann"}}))
        .send()
        .await
        .unwrap();
    error(forged, 403, "forbidden").await;
    let notice =
        json!({"stream": "notifications", "data": {"to": "ann", "kind": "mention", "text": "x"}});
    let r = client
        .post(s.url("/api/publish"))
        .bearer_auth(&ann)
        .json(&notice)
        .send();
    error(r.await.unwrap(), 403, "forbidden").await;
    // A cookie session used from another site's page is refused.
    let csrf = client
        .post(s.url("/api/publish"))
        .header("cookie", format!("tidings_session={ann}"))
        .header("origin", "http://evil.example")
        .json(&json!({"stream": "chat", "data": {"author": "ann", "body": "csrf"}}))
        .send()
        .await
        .unwrap();
    error(csrf, 403, "forbidden").await;
    s.stop().await;
}

/// The acceptance path of the issue, on every transport: Ann mentions Bob; Bob's streams
/// get the notification, Eve's never do.
#[tokio::test]
async fn a_mention_reaches_only_its_account_on_every_transport() {
    let s = start().await;
    let (ann, bob, eve) = (
        signup(&s.base, "ann").await,
        signup(&s.base, "bob").await,
        signup(&s.base, "eve").await,
    );
    let cursor = reqwest::get(s.url("/api/poll"))
        .await
        .unwrap()
        .json::<PollResponse>()
        .await
        .unwrap()
        .cursor;
    let streams = "streams=chat,notifications";
    let sse = |token: &str| {
        let req = reqwest::Client::new()
            .get(s.url(&format!("/api/sse?{streams}&since={cursor}")))
            .bearer_auth(token)
            .send();
        async move { SseClient::from_response(req.await.unwrap()) }
    };
    let (mut bob_sse, mut eve_sse) = (sse(&bob).await, sse(&eve).await);
    let ws = |token: &str| {
        ws_connect_ok(s.ws_url(&format!("/api/ws?{streams}&since={cursor}&token={token}")))
    };
    let (mut bob_ws, mut eve_ws) = (ws(&bob).await, ws(&eve).await);
    let long_poll = |token: String| {
        let url = s.url(&format!("/api/poll?{streams}&since={cursor}&wait=10"));
        tokio::spawn(async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            r.json::<PollResponse>().await.unwrap()
        })
    };
    let bob_lp = long_poll(bob.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;

    let chat: Event = reqwest::Client::new()
        .post(s.url("/api/publish"))
        .bearer_auth(&ann)
        .json(
            &json!({"stream": "chat", "data": {"author": "ann", "body": "hello @bob and @nobody"}}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let is_mention = |e: &Event| {
        matches!(&e.payload, Payload::Notifications(n)
            if n.to == "bob" && n.kind == "mention" && n.about == Some(chat.id) && n.text.starts_with("ann mentioned you"))
    };
    // Bob: the chat message, then the notification, on SSE and WS.
    let got = within(bob_sse.events(2)).await;
    assert_eq!(got[0].id, chat.id);
    assert!(is_mention(&got[1]), "{got:?}");
    let got = within(ws_events(&mut bob_ws, 2)).await;
    assert!(is_mention(&got[1]), "{got:?}");
    // Long poll: answered with the chat message at once; the next poll has the notice.
    let first = within(bob_lp).await.unwrap();
    let mut seen: Vec<Event> = first.events;
    if seen.len() < 2 {
        let r: PollResponse = reqwest::Client::new()
            .get(s.url(&format!(
                "/api/poll?{streams}&since={}&wait=5",
                first.cursor
            )))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen.extend(r.events);
    }
    assert!(seen.iter().any(is_mention), "{seen:?}");
    // Short poll and history.
    let polled: PollResponse = get_json(
        &s.url(&format!("/api/poll?{streams}&since={cursor}")),
        Some(&bob),
    )
    .await;
    assert!(polled.events.iter().any(is_mention));
    let h: app::protocol::HistoryResponse =
        get_json(&s.url("/api/history?stream=notifications"), Some(&bob)).await;
    assert!(h.events.len() == 1 && is_mention(&h.events[0]));

    // Eve: the chat message, then the next public one; never Bob's notification.
    let after = s.chat("after").await;
    let got = within(eve_sse.events(2)).await;
    assert_eq!(ids(&got), vec![chat.id, after.id]);
    let got = within(ws_events(&mut eve_ws, 2)).await;
    assert_eq!(ids(&got), vec![chat.id, after.id]);
    let eve_poll: PollResponse = get_json(
        &s.url(&format!("/api/poll?{streams}&since={cursor}")),
        Some(&eve),
    )
    .await;
    assert_eq!(ids(&eve_poll.events), vec![chat.id, after.id]);
    let h: app::protocol::HistoryResponse =
        get_json(&s.url("/api/history?stream=notifications"), Some(&eve)).await;
    assert!(h.events.is_empty());
    s.stop().await;
}

async fn ws_connect_ok(url: String) -> Ws {
    ws_connect(&url).await
}

/// Every way of asking for the private stream without a valid session of one's own is a
/// 401 with a JSON error, on each transport and on history.
#[tokio::test]
async fn the_private_stream_refuses_missing_bad_and_expired_tokens() {
    let s = start().await;
    let bob = signup(&s.base, "bob").await;
    let b64 = |v: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    };
    let parts: Vec<&str> = bob.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&format!(r#"{{"sub":"eve","iat":1,"exp":{}}}"#, now() + 60)),
        parts[2]
    );
    let alg_none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&format!(r#"{{"sub":"bob","exp":{}}}"#, now() + 60))
    );
    let expired = mint("bob", now() - 5);
    let cases: [(&str, Option<&str>, &str); 4] = [
        ("none", None, "sign in"),
        ("tampered", Some(&tampered), "not valid"),
        ("alg none", Some(&alg_none), "not valid"),
        ("expired", Some(&expired), "expired"),
    ];
    for (what, token, needle) in cases {
        let q = token.map(|t| format!("&token={t}")).unwrap_or_default();
        for path in [
            format!("/api/poll?streams=notifications&since=0{q}"),
            format!("/api/poll?streams=notifications&since=0&wait=1{q}"),
            format!("/api/sse?streams=notifications{q}"),
            format!("/api/history?stream=notifications{q}"),
            format!("/api/snapshot?notifications=5{q}"),
        ] {
            let msg = error(
                reqwest::get(s.url(&path)).await.unwrap(),
                401,
                "unauthenticated",
            )
            .await;
            assert!(msg.contains(needle), "{what} {path}: {msg}");
            assert!(
                !msg.contains("bob") && token.is_none_or(|t| !msg.contains(t)),
                "{msg}"
            );
        }
        // WebSocket: refused at the handshake.
        let url = s.ws_url(&format!("/api/ws?streams=notifications{q}"));
        match tokio_tungstenite::connect_async(url).await {
            Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401, "{what}"),
            other => panic!("{what}: {:?}", other.map(|_| ())),
        }
    }
    // A token minted elsewhere with the same secret is accepted (documented claims).
    let minted = mint("bob", now() + 60);
    let r = reqwest::get(s.url(&format!("/api/history?stream=notifications&token={minted}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Public streams stay open to everyone, with or without a token.
    let r = reqwest::get(s.url(&format!("/api/poll?streams=chat&since=0&token={tampered}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = bob;
    s.stop().await;
}

#[tokio::test]
async fn cluster_mode_without_a_secret_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tidings::Config::for_tests(dir.path().to_path_buf());
    c.redis_url = Some("redis://127.0.0.1:1".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = tidings::run(listener, c, async {})
        .await
        .unwrap_err()
        .to_string();
    // Checked before Redis is even tried.
    assert!(err.contains("cluster mode needs --secret"), "{err}");
}

#[tokio::test]
async fn the_generated_secret_survives_a_restart() {
    let s = TestServer::start().await;
    let token = signup(&s.base, "bob").await;
    let dir = s.stop().await.unwrap();
    let s = TestServer::start_in(dir.path().to_path_buf(), |_| {}).await;
    let r = reqwest::Client::new()
        .get(s.url("/api/auth/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.stop().await;
    drop(dir);
}

/// A session that ends while its stream is open: SSE says so with an `expired` event and
/// ends; a WebSocket closes with 4001. A renewed token resumes from the cursor, nothing lost.
#[tokio::test]
async fn streams_end_when_their_session_does_and_resume_after_renewal() {
    let s = TestServer::start_with(|c| {
        c.secret = Some(SECRET.into());
        c.session_secs = 2;
    })
    .await;
    let bob = signup(&s.base, "bob").await;
    let first = s.chat("before expiry").await;
    let mut sse = SseClient::from_response(
        reqwest::Client::new()
            .get(s.url("/api/sse?streams=chat,notifications&since=0"))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap(),
    );
    let mut ws = ws_connect(&s.ws_url(&format!(
        "/api/ws?streams=chat,notifications&since=0&token={bob}"
    )))
    .await;
    assert_eq!(ids(&within(sse.events(1)).await), vec![first.id]);
    assert_eq!(ids(&within(ws_events(&mut ws, 1)).await), vec![first.id]);
    // The SSE stream: an `expired` event, then the end of the response.
    let expired = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match sse.next().await {
                Some(m) if m.event.as_deref() == Some("expired") => break Some(m),
                Some(_) => continue,
                None => break None,
            }
        }
    })
    .await
    .expect("the stream ends within the session's life plus a moment")
    .expect("an expired event before the end");
    assert!(expired.data.contains("session_expired"));
    assert!(within(sse.next()).await.is_none(), "the response ends");
    // The WebSocket: closed with 4001.
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(m) = ws.next().await {
            if let Ok(tungstenite::Message::Close(Some(f))) = m {
                return Some(u16::from(f.code));
            }
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(close, Some(4001));
    // The old token is refused now; a new one (signing in again) resumes from the cursor.
    let r = reqwest::get(s.url(&format!(
        "/api/poll?streams=notifications&since=0&token={bob}"
    )))
    .await
    .unwrap();
    error(r, 401, "unauthenticated").await;
    let missed = s.chat("while signed out").await;
    let again: Session = reqwest::Client::new()
        .post(s.url("/api/auth/signin"))
        .json(&json!({"name": "bob", "password": "correct horse"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let renewed: Session = reqwest::Client::new()
        .post(s.url("/api/auth/refresh"))
        .bearer_auth(again.token.as_deref().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ws = ws_connect(&s.ws_url(&format!(
        "/api/ws?streams=chat,notifications&since={}&token={}",
        first.id,
        renewed.token.unwrap()
    )))
    .await;
    assert_eq!(ids(&within(ws_events(&mut ws, 1)).await), vec![missed.id]);
    s.stop().await;
}

#[tokio::test]
async fn an_admin_broadcast_reaches_every_account_and_no_one_else() {
    let s = TestServer::start_with(|c| {
        c.secret = Some(SECRET.into());
        c.admin_token = Some("sekrit".into());
    })
    .await;
    let (bob, eve) = (signup(&s.base, "bob").await, signup(&s.base, "eve").await);
    let client = reqwest::Client::new();
    let send = |token: &str| {
        client
            .post(s.url("/api/admin/broadcast"))
            .bearer_auth(token)
            .json(&json!({"text": "maintenance at noon"}))
            .send()
    };
    error(send("wrong").await.unwrap(), 401, "unauthorized").await;
    let r = send("sekrit").await.unwrap();
    assert_eq!(r.status(), 201);
    let sent: Event = r.json().await.unwrap();
    for token in [&bob, &eve] {
        let h: app::protocol::HistoryResponse =
            get_json(&s.url("/api/history?stream=notifications"), Some(token)).await;
        assert_eq!(ids(&h.events), vec![sent.id]);
    }
    // Public readers never see it.
    let p: PollResponse = reqwest::get(s.url("/api/poll?since=0"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(p.events.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn read_marks_are_events_of_the_accounts_own_stream() {
    let s = start().await;
    let (ann, bob) = (signup(&s.base, "ann").await, signup(&s.base, "bob").await);
    let client = reqwest::Client::new();
    let mut bob_sse = SseClient::from_response(
        client
            .get(s.url("/api/sse?streams=notifications"))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap(),
    );
    for body in ["@bob one", "@bob two"] {
        client
            .post(s.url("/api/publish"))
            .bearer_auth(&ann)
            .json(&json!({"stream": "chat", "data": {"author": "ann", "body": body}}))
            .send()
            .await
            .unwrap();
    }
    let mentions = within(bob_sse.events(2)).await;
    let read = |token: &str, body: serde_json::Value| {
        client
            .post(s.url("/api/notifications/read"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    assert_eq!(
        read(&bob, json!({"id": mentions[0].id}))
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(
        read(&bob, json!({"all": true})).await.unwrap().status(),
        201
    );
    let marks = within(bob_sse.events(2)).await;
    let kinds: Vec<(String, Option<u64>)> = marks
        .iter()
        .map(|e| match &e.payload {
            Payload::Notifications(n) => (n.kind.clone(), n.about),
            p => panic!("{p:?}"),
        })
        .collect();
    assert_eq!(kinds[0], ("read".into(), Some(mentions[0].id)));
    assert_eq!(kinds[1].0, "read-all");
    assert!(kinds[1].1.unwrap() >= mentions[1].id);
    // Only for one's own account, and never without a session.
    error(
        read("", json!({"all": true})).await.unwrap(),
        401,
        "unauthenticated",
    )
    .await;
    error(
        read(&bob, json!({"id": 1, "all": true})).await.unwrap(),
        400,
        "bad_request",
    )
    .await;
    s.stop().await;
}

/// Price alerts: made, listed, edited and removed by their account only; a rule fires once
/// per crossing (a second price past the level does not fire again; one back across arms
/// it, the next crossing fires again), and the notification reaches its account only.
#[tokio::test]
async fn a_price_alert_fires_once_per_crossing() {
    let s = TestServer::start_with(|c| {
        c.secret = Some(SECRET.into());
        c.admin_token = Some("sekrit".into());
    })
    .await;
    let (bob, eve) = (signup(&s.base, "bob").await, signup(&s.base, "eve").await);
    let client = reqwest::Client::new();
    let alert = |token: &str, body: serde_json::Value| {
        client
            .post(s.url("/api/alerts"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    for (body, needle) in [
        (
            json!({"symbol": "ACME", "op": "over", "price": 1}),
            "'above' or 'below'",
        ),
        (
            json!({"symbol": "AC ME", "op": "above", "price": 1}),
            "Symbol",
        ),
        (
            json!({"symbol": "ACME", "op": "above", "price": -1}),
            "greater than 0",
        ),
    ] {
        let msg = error(alert(&bob, body).await.unwrap(), 422, "invalid").await;
        assert!(msg.contains(needle), "{msg}");
    }
    error(
        alert("", json!({"symbol": "ACME", "op": "above", "price": 120}))
            .await
            .unwrap(),
        401,
        "unauthenticated",
    )
    .await;
    let r = alert(&bob, json!({"symbol": "acme", "op": "above", "price": 120}))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let rule: app::protocol::AlertRule = r.json().await.unwrap();
    assert_eq!((rule.symbol.as_str(), rule.armed), ("ACME", true));
    // Eve can neither see nor change it.
    let eves: Vec<app::protocol::AlertRule> = get_json(&s.url("/api/alerts"), Some(&eve)).await;
    assert!(eves.is_empty());
    let r = client
        .delete(s.url(&format!("/api/alerts/{}", rule.id)))
        .bearer_auth(&eve)
        .send()
        .await
        .unwrap();
    error(r, 404, "not_found").await;

    let mut bob_sse = SseClient::from_response(
        client
            .get(s.url("/api/sse?streams=notifications"))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap(),
    );
    let tick = |price: f64| {
        client
            .post(s.url("/api/publish"))
            .bearer_auth("sekrit")
            .json(&json!({"stream": "ticker", "data": {"symbol": "ACME", "price": price, "change": 0.0}}))
            .send()
    };
    for price in [110.0, 121.0, 125.0, 119.0, 122.5] {
        // Back to back: the checks run in the prices' order whatever their timing.
        assert_eq!(tick(price).await.unwrap().status(), 201);
    }
    let fired = within(bob_sse.events(2)).await;
    let texts: Vec<String> = fired
        .iter()
        .map(|e| match &e.payload {
            Payload::Notifications(n) if n.kind == "alert" => n.text.clone(),
            p => panic!("{p:?}"),
        })
        .collect();
    assert_eq!(
        texts,
        vec![
            "ACME is above 120 (now 121.00)",
            "ACME is above 120 (now 122.50)"
        ]
    );
    // Nothing more (125 did not fire again while it stayed above).
    assert!(
        tokio::time::timeout(Duration::from_millis(500), bob_sse.next_data())
            .await
            .is_err()
    );
    let eve_h: app::protocol::HistoryResponse = client
        .get(s.url("/api/history?stream=notifications"))
        .bearer_auth(&eve)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(eve_h.events.is_empty());
    // Edit (armed again), then remove.
    let r = client
        .put(s.url(&format!("/api/alerts/{}", rule.id)))
        .bearer_auth(&bob)
        .json(&json!({"symbol": "ACME", "op": "below", "price": 100}))
        .send()
        .await
        .unwrap();
    let edited: app::protocol::AlertRule = r.json().await.unwrap();
    assert_eq!((edited.op.as_str(), edited.armed), ("below", true));
    let r = client
        .delete(s.url(&format!("/api/alerts/{}", rule.id)))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let left: Vec<app::protocol::AlertRule> = client
        .get(s.url("/api/alerts"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(left.is_empty());
    s.stop().await;
}

/// What the security review found, held: a token's subject must be an account name (not
/// the broadcast audience `*`, nothing that could break a cookie); a mention by an anonymous
/// visitor says "guest"; read marks are held to the publish rate.
#[tokio::test]
async fn subjects_guests_and_read_marks_are_held_to_the_rules() {
    let s = TestServer::start_with(|c| {
        c.secret = Some(SECRET.into());
        c.publish_rate = 1;
        c.publish_burst = 3;
    })
    .await;
    for sub in ["*", "bob; Domain=example.com", "bob\u{1}x", "\u{212A}elly"] {
        let t = mint(sub, now() + 60);
        let r = reqwest::get(s.url(&format!("/api/history?stream=notifications&token={t}")))
            .await
            .unwrap();
        error(r, 401, "unauthenticated").await;
    }
    let bob = signup(&s.base, "bob").await;
    let client = reqwest::Client::new();
    let mut sse = SseClient::from_response(
        client
            .get(s.url("/api/sse?streams=notifications"))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap(),
    );
    client
        .post(s.url("/api/publish"))
        .json(&json!({"stream": "chat", "data": {"author": "ann", "body": "hi @bob"}}))
        .send()
        .await
        .unwrap();
    let got = within(sse.events(1)).await;
    match &got[0].payload {
        Payload::Notifications(n) => assert!(
            n.text.starts_with("guest \"ann\" mentioned you"),
            "{}",
            n.text
        ),
        p => panic!("{p:?}"),
    }
    let mut limited = false;
    for _ in 0..6 {
        let r = client
            .post(s.url("/api/notifications/read"))
            .bearer_auth(&bob)
            .json(&json!({"all": true}))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "read marks are rate-limited");
    s.stop().await;
}

/// Refreshing renews a session, but never past `--session-max-secs` after the password was
/// checked (`auth_time`, else `iat`): a stolen token cannot be kept alive for ever.
#[tokio::test]
async fn refreshes_end_at_the_session_maximum() {
    let s = TestServer::start_with(|c| {
        c.secret = Some(SECRET.into());
        c.session_secs = 3600;
        c.session_max_secs = 7200;
    })
    .await;
    let refresh = |token: String| {
        reqwest::Client::new()
            .post(s.url("/api/auth/refresh"))
            .bearer_auth(token)
            .send()
    };
    let mint_signed_in = |auth_time: u64| {
        let claims =
            json!({"sub": "bob", "iat": now(), "exp": now() + 600, "auth_time": auth_time});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    // Signed in 100 minutes ago: renewed, but only up to the 2-hour maximum.
    let r = refresh(mint_signed_in(now() - 6000)).await.unwrap();
    assert_eq!(r.status(), 200);
    let renewed: Session = r.json().await.unwrap();
    assert!(
        renewed.expires <= now() - 6000 + 7200 + 1,
        "{}",
        renewed.expires
    );
    // Signed in longer ago than the maximum: refused (a renewal carries the sign-in time).
    let r = refresh(mint_signed_in(now() - 7300)).await.unwrap();
    assert!(error(r, 401, "unauthenticated")
        .await
        .contains("too long ago"));
    // A token minted without `auth_time` counts from `iat`; without either it cannot be
    // renewed, and says why.
    let minted = |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let recent = minted(json!({"sub": "bob", "iat": now() - 100, "exp": now() + 600}));
    assert_eq!(refresh(recent).await.unwrap().status(), 200);
    let old = minted(json!({"sub": "bob", "iat": now() - 7300, "exp": now() + 600}));
    let r = refresh(old).await.unwrap();
    assert!(error(r, 401, "unauthenticated")
        .await
        .contains("too long ago"));
    let r = refresh(minted(json!({"sub": "bob", "exp": now() + 600})))
        .await
        .unwrap();
    assert!(error(r, 401, "unauthenticated").await.contains("neither"));
    // A sign-in time in the future is renewed as now, never later (it would stretch the
    // maximum for every renewal after).
    let r = refresh(mint_signed_in(now() + 864_000)).await.unwrap();
    let renewed: Session = r.json().await.unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_required_spec_claims(&["exp"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        renewed.token.as_deref().unwrap(),
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &v,
    )
    .unwrap()
    .claims;
    assert!(claims["auth_time"].as_u64().unwrap() <= now(), "{claims}");
    let fresh = signup(&s.base, "carl").await;
    assert_eq!(refresh(fresh).await.unwrap().status(), 200);
    s.stop().await;
}
