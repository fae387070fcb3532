//! Accounts and sessions (issue #10): sign-up and sign-in with a name and a password
//! (Argon2id), sessions as signed tokens (JWT, HS256, with an expiry), and who a request
//! is: `Authorization: Bearer` for API clients, the `tidings_session` cookie (HttpOnly,
//! SameSite=Lax) for same-origin browsers, `?token=` for EventSource and WebSocket across
//! origins (browsers cannot set headers on those). docs/protocol.md documents the claims,
//! so other backends can mint tokens for their own users with the same secret.

use crate::error::ApiError;
use crate::Config;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::http::{header, HeaderMap};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The session cookie's name.
pub const COOKIE: &str = "tidings_session";
/// Its name with `--secure-cookies` (behind TLS): the `__Host-` prefix makes the browser
/// accept it only with `Secure`, `Path=/` and no `Domain`, so neither a plain-HTTP page nor
/// a sibling subdomain can set or replace it (RFC 6265bis, cookie prefixes).
pub const SECURE_COOKIE: &str = "__Host-tidings_session";
/// A secret shorter than this is refused: HS256 wants at least 256 bits of key.
pub const MIN_SECRET_LEN: usize = 32;

/// How long an address that signed in as a name stays exempt from that name's lock, and
/// how many such pairs are remembered (about 100 bytes each).
const KNOWN_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
const MAX_KNOWN: usize = 100_000;
const KNOWN_PER_NAME: usize = 8;

/// Sign-ins that may wait for a hashing slot, and for how long.
const MAX_HASH_QUEUE: usize = 64;
const HASH_WAIT: Duration = Duration::from_secs(5);

/// A session token's claims (RFC 7519): `sub` the account name, `iat`/`exp` seconds since
/// the Unix epoch; `auth_time` (OpenID Connect's name) when the password was last checked,
/// carried over by refreshes, so a session cannot be renewed for ever.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub iat: u64,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<u64>,
}

/// A signed-in account, as a valid token says.
#[derive(Debug, Clone, PartialEq)]
pub struct Viewer {
    pub name: Arc<str>,
    /// When the session ends (seconds since the Unix epoch): streams end then.
    pub exp: u64,
    /// When its password was checked (`auth_time`, else `iat`): refreshes stop
    /// `--session-max-secs` after it.
    pub auth_time: u64,
}

impl Viewer {
    /// When a stream opened with this session must end (its token stops being valid).
    /// Tokens are checked to the second: one is accepted through second `exp` and refused
    /// from the next, so that is when its streams end (not up to a second before).
    pub fn deadline(&self) -> tokio::time::Instant {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let end_ms = self.exp.saturating_add(1).saturating_mul(1000);
        tokio::time::Instant::now() + Duration::from_millis(end_ms.saturating_sub(now_ms))
    }
}

/// The WebSocket close code of a session that expired mid-connection (a private-use code,
/// RFC 6455 section 7.4.2): refresh the token or sign in, then reconnect from the cursor.
pub const WS_SESSION_EXPIRED: u16 = 4001;

/// Waits until `deadline`, or for ever without one (a connection with no session).
pub async fn session_end(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How a request's credentials were carried: a cookie needs a cross-site check on state
/// changes (a browser sends it by itself), a header or query token does not.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Via {
    Bearer,
    Cookie,
    Query,
}

/// Who a request is.
#[derive(Debug, Clone, PartialEq)]
pub enum Identity {
    Anonymous,
    User(Viewer, Via),
    /// It showed a token that is not valid: expired, or not one this server signed.
    Refused(TokenError),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TokenError {
    Expired,
    Invalid,
}

impl TokenError {
    /// What the client is told (401), without saying which check failed beyond expiry.
    pub fn into_api(self) -> ApiError {
        match self {
            TokenError::Expired => {
                ApiError::Unauthenticated("your session has expired; sign in again".into())
            }
            TokenError::Invalid => {
                ApiError::Unauthenticated("the session token is not valid; sign in again".into())
            }
        }
    }
}

impl Identity {
    /// The signed-in account, or the 401 that says why there is none.
    pub fn require(&self, what: &str) -> Result<&Viewer, ApiError> {
        match self {
            Identity::User(v, _) => Ok(v),
            Identity::Anonymous => Err(ApiError::Unauthenticated(format!("sign in to {what}"))),
            Identity::Refused(e) => Err(e.into_api()),
        }
    }

    pub fn user(&self) -> Option<&Viewer> {
        match self {
            Identity::User(v, _) => Some(v),
            _ => None,
        }
    }
}

pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    session: Duration,
    /// The longest a session lasts through refreshes (`--session-max-secs`).
    max_session: Duration,
    /// The session cookie's name ([`COOKIE`], or [`SECURE_COOKIE`] behind TLS).
    session_cookie: &'static str,
    /// `"; Secure"` with `--secure-cookies`, else nothing.
    secure: &'static str,
    /// Sign-in attempts per account name and per client address (a password guesser is
    /// slowed down whether it tries many passwords for one name or many names).
    by_name: DefaultKeyedRateLimiter<String>,
    by_addr: DefaultKeyedRateLimiter<IpAddr>,
    /// Names that failed too often, until when.
    blocked: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// (name, address) pairs that signed in successfully lately: a name locked by someone
    /// else's failures still signs in from where its owner signed in before (OWASP's
    /// advice against lockout as denial of service). Bounded: see [`MAX_KNOWN`].
    known: std::sync::Mutex<std::collections::HashMap<(String, IpAddr), std::time::Instant>>,
    /// Sign-ins waiting for a hashing slot (bounded: see [`MAX_HASH_QUEUE`]).
    queued: std::sync::atomic::AtomicUsize,
    /// Password hashes computed at once: each takes ~19 MiB and tens of ms of a core, so a
    /// flood of sign-ins waits here instead of taking the box.
    hashing: tokio::sync::Semaphore,
}

impl Auth {
    pub fn new(config: &Config) -> Result<Auth, String> {
        let secret = load_secret(config)?;
        let mut validation = Validation::new(Algorithm::HS256);
        // Only HS256 is accepted (an `alg: none` or any other algorithm is refused), `exp` is
        // required and checked with no leeway, `sub` must be there.
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let per_minute = |n: u32| Quota::per_minute(NonZeroU32::new(n).expect("n > 0"));
        Ok(Auth {
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
            validation,
            session: Duration::from_secs(config.session_secs.max(1)),
            max_session: Duration::from_secs(
                config.session_max_secs.max(config.session_secs).max(1),
            ),
            session_cookie: if config.secure_cookies {
                SECURE_COOKIE
            } else {
                COOKIE
            },
            secure: if config.secure_cookies {
                "; Secure"
            } else {
                ""
            },
            by_name: RateLimiter::keyed(
                per_minute(10).allow_burst(NonZeroU32::new(5).expect("5 > 0")),
            ),
            by_addr: RateLimiter::keyed(
                per_minute(30).allow_burst(NonZeroU32::new(10).expect("10 > 0")),
            ),
            hashing: tokio::sync::Semaphore::new(2),
            blocked: Default::default(),
            known: Default::default(),
            queued: Default::default(),
        })
    }

    /// A new session for `name`, whose password was checked at `auth_time` (now, for a
    /// sign-in): the token and when it expires (never past the session's absolute limit).
    pub fn issue(&self, name: &str, auth_time: Option<u64>) -> (String, u64) {
        let iat = now_secs();
        let auth_time = auth_time.unwrap_or(iat);
        let exp = iat
            .saturating_add(self.session.as_secs())
            .min(auth_time.saturating_add(self.max_session.as_secs()));
        let claims = Claims {
            sub: name.to_owned(),
            iat,
            exp,
            auth_time: Some(auth_time),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing does not fail");
        (token, exp)
    }

    pub fn verify(&self, token: &str) -> Result<Viewer, TokenError> {
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation) {
            // `sub` is held to the account-name rules: it becomes a cookie value, a header
            // and a Redis key, and `*` is the broadcast audience.
            Ok(data) if app::protocol::validate_account_name(&data.claims.sub).is_ok() => {
                Ok(Viewer {
                    auth_time: data.claims.auth_time.unwrap_or(data.claims.iat),
                    name: Arc::from(data.claims.sub),
                    exp: data.claims.exp,
                })
            }
            Ok(_) => Err(TokenError::Invalid),
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Err(TokenError::Expired),
                _ => Err(TokenError::Invalid),
            },
        }
    }

    /// Who the request is: the first credential it carries (a `Bearer` header, then the
    /// cookie, then `?token=`), checked. The admin token is not a session (it is checked
    /// where it is needed) and is skipped here.
    pub fn identify(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
        admin_token: Option<&str>,
    ) -> Identity {
        let is_admin = |t: &str| admin_token.is_some_and(|a| crate::state::same_secret(a, Some(t)));
        let presented = crate::api::bearer(headers)
            .filter(|t| !is_admin(t))
            .map(|t| (t, Via::Bearer))
            .or_else(|| cookie(headers, self.session_cookie).map(|t| (t, Via::Cookie)))
            .or_else(|| {
                query_token
                    .filter(|t| !is_admin(t))
                    .map(|t| (t, Via::Query))
            });
        match presented {
            None => Identity::Anonymous,
            Some((token, via)) => match self.verify(token) {
                Ok(v) => Identity::User(v, via),
                Err(e) => Identity::Refused(e),
            },
        }
    }

    /// Takes one sign-in attempt from `addr`, and refuses a name that failed too often
    /// lately (say how long until it may try again).
    pub fn attempt_allowed(&self, name: &str, addr: IpAddr) -> Result<(), Duration> {
        let wait = |n: governor::NotUntil<_>| n.wait_time_from(DefaultClock::default().now());
        self.by_addr.check_key(&addr).map_err(wait)?;
        let key = name.to_ascii_lowercase();
        let known = self
            .known
            .lock()
            .expect("lock")
            .get(&(key.clone(), addr))
            .copied();
        if known.is_some_and(|at| at.elapsed() < KNOWN_FOR) {
            return Ok(());
        }
        let blocked = self.blocked.lock().expect("lock").get(&key).copied();
        match blocked {
            Some(until) if until > std::time::Instant::now() => {
                Err(until - std::time::Instant::now())
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed sign-in against `name`: only failures do, so someone else guessing
    /// cannot use up the account's own sign-ins with right passwords... beyond the pause
    /// their failures cause.
    pub fn failed(&self, name: &str) {
        let key = name.to_ascii_lowercase();
        if let Err(n) = self.by_name.check_key(&key) {
            let until = std::time::Instant::now() + n.wait_time_from(DefaultClock::default().now());
            let mut blocked = self.blocked.lock().expect("lock");
            blocked.retain(|_, t| *t > std::time::Instant::now());
            blocked.insert(key, until);
        }
    }

    /// Remembers that `name` signed in from `addr` (see `known`).
    pub fn succeeded(&self, name: &str, addr: IpAddr) {
        let key = (name.to_ascii_lowercase(), addr);
        let mut known = self.known.lock().expect("lock");
        if known.contains_key(&key) {
            known.insert(key, std::time::Instant::now());
            return;
        }
        // At most a few addresses per name: the name's oldest goes, never another name's
        // (someone signing in to many accounts of their own cannot push an owner out).
        let of_name: Vec<_> = known.keys().filter(|(n, _)| *n == key.0).cloned().collect();
        if of_name.len() >= KNOWN_PER_NAME {
            if let Some(oldest) = of_name.iter().min_by_key(|k| known[*k]) {
                known.remove(oldest);
            }
        }
        if known.len() >= MAX_KNOWN {
            known.retain(|_, at| at.elapsed() < KNOWN_FOR);
        }
        // Still full of recent pairs: this one is not remembered (its owner keeps the
        // ordinary per-name limit).
        if known.len() < MAX_KNOWN {
            known.insert(key, std::time::Instant::now());
        }
    }

    /// Forgets full buckets (called periodically with the other limits).
    pub fn forget_idle(&self) {
        self.by_name.retain_recent();
        self.by_addr.retain_recent();
    }

    /// A hashing slot, waited for at most [`HASH_WAIT`] behind at most [`MAX_HASH_QUEUE`]
    /// others: a flood of sign-ins is answered 503 instead of queueing for minutes.
    async fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        use std::sync::atomic::Ordering::Relaxed;
        let busy =
            || ApiError::Unavailable("too many sign-ins at once; try again in a moment".into());
        if self.queued.fetch_add(1, Relaxed) >= MAX_HASH_QUEUE {
            self.queued.fetch_sub(1, Relaxed);
            return Err(busy());
        }
        let permit = tokio::time::timeout(HASH_WAIT, self.hashing.acquire()).await;
        self.queued.fetch_sub(1, Relaxed);
        match permit {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(closing()),
            Err(_) => Err(busy()),
        }
    }

    /// The Argon2id PHC string of `password` (default parameters: 19 MiB, 2 passes).
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let _permit = self.slot().await?;
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
                .expect("16 bytes make a valid salt");
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
        })
        .await
        .map_err(|_| closing())?
        .map_err(|_| ApiError::BadRequest("this password cannot be used".into()))
    }

    /// Whether `password` matches the stored `hash`. A missing account is checked against a
    /// dummy hash, so the answer takes as long either way (no account discovery by timing).
    pub async fn check(&self, hash: Option<String>, password: String) -> Result<bool, ApiError> {
        let _permit = self.slot().await?;
        Ok(self.verify_blocking(hash, password).await)
    }

    async fn verify_blocking(&self, hash: Option<String>, password: String) -> bool {
        tokio::task::spawn_blocking(move || {
            let known = hash.is_some();
            let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_owned());
            let ok = PasswordHash::new(&hash).is_ok_and(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            });
            ok && known
        })
        .await
        .unwrap_or(false)
    }

    /// The `Set-Cookie` values that start a session in a browser: the HttpOnly session
    /// and its hint, both for as long as the token (`expires`, seconds since the epoch).
    pub fn cookies_for(&self, token: &str, name: &str, expires: u64) -> [String; 2] {
        let age = expires.saturating_sub(now_secs());
        let (session, secure) = (self.session_cookie, self.secure);
        [
            format!("{session}={token}; Max-Age={age}; Path=/; HttpOnly; SameSite=Lax{secure}"),
            format!("{HINT_COOKIE}={name}; Max-Age={age}; Path=/; SameSite=Lax{secure}"),
        ]
    }

    /// The `Set-Cookie` values that end a session (the session and its hint).
    pub fn clear_cookies(&self) -> [String; 2] {
        let (session, secure) = (self.session_cookie, self.secure);
        [
            format!("{session}=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax{secure}"),
            format!("{HINT_COOKIE}=; Max-Age=0; Path=/; SameSite=Lax{secure}"),
        ]
    }
}

/// Beside the HttpOnly session cookie, one scripts can read that says only that a session
/// exists (the account's name): the app asks `GET /api/auth/me` only when it is there, so an
/// anonymous visit makes no request that answers 401. It grants nothing.
pub const HINT_COOKIE: &str = "tidings_account";

fn closing() -> ApiError {
    ApiError::Unavailable("the server is stopping; try again".into())
}

/// A valid Argon2id hash of a random password nobody knows (see [`Auth::check`]).
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Hz5Q2mH0mS3ZUQkjkG9YUXzKXR1i7dZ1Cq6G4UfhWjA";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A cookie's value from the `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// `--secret`, or the one kept in the data dir (made on first start, mode 0600). Cluster
/// mode needs it given: every server must check the tokens every other one signs.
fn load_secret(config: &Config) -> Result<Vec<u8>, String> {
    if let Some(s) = &config.secret {
        if s.len() < MIN_SECRET_LEN {
            return Err(format!(
                "--secret (TIDINGS_SECRET) must be at least {MIN_SECRET_LEN} characters"
            ));
        }
        return Ok(s.as_bytes().to_vec());
    }
    if config.redis().is_some() {
        return Err(
            "cluster mode needs --secret (TIDINGS_SECRET), the same on every server: each \
             one checks the session tokens the others sign"
                .into(),
        );
    }
    secret_file(&config.data_dir.join("secret"))
}

fn secret_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().len() >= MIN_SECRET_LEN => return Ok(s.trim().as_bytes().to_vec()),
        Ok(_) => {
            return Err(format!(
                "{} is shorter than {MIN_SECRET_LEN} characters; remove it to have a new one made",
                path.display()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let secret: String = rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(secret.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    tracing::info!(path = %path.display(), "made a new session secret");
    Ok(secret.into_bytes())
}

// ---------------------------------------------------------------- the endpoints

use crate::limits::ClientAddr;
use crate::AppState;
use app::protocol::{validate_account_name, validate_password, Credentials, Session};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Reads and checks a sign-up or sign-in body, and takes one attempt from the limits.
async fn credentials(
    state: &AppState,
    client: IpAddr,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<Credentials, ApiError> {
    // A form on another site must not sign a browser in (login CSRF).
    if !state.origin_allowed(headers) {
        return Err(ApiError::Forbidden(
            "this origin may not sign in here".into(),
        ));
    }
    let body = crate::api::read_body(state, body, 4096).await?;
    let c: Credentials = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "expected {{\"name\": \"...\", \"password\": \"...\"}}: {e}"
        ))
    })?;
    state
        .auth
        .attempt_allowed(&c.name, client)
        .map_err(ApiError::TooManyAttempts)?;
    Ok(c)
}

fn session_response(
    state: &AppState,
    status: StatusCode,
    name: String,
    auth_time: Option<u64>,
) -> Response {
    let (token, expires) = state.auth.issue(&name, auth_time);
    let cookies = state.auth.cookies_for(&token, &name, expires);
    let mut response = (
        status,
        axum::Json(Session {
            name,
            expires,
            token: Some(token),
        }),
    )
        .into_response();
    for c in cookies {
        // Tokens are base64 and names are checked (`verify`): always valid header values.
        if let Ok(v) = HeaderValue::from_str(&c) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

/// `POST /api/auth/signup` `{"name", "password"}`: 201 with a session (and its cookie), 409
/// if the name is taken.
pub async fn signup(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let c = credentials(&state, client, &headers, body).await?;
    validate_account_name(&c.name).map_err(ApiError::Unprocessable)?;
    validate_password(&c.password).map_err(ApiError::Unprocessable)?;
    let hash = state.auth.hash(c.password).await?;
    let created = match state.engine.create_account(&c.name, &hash).await {
        Err(crate::engine::EngineError::NotReplicated) => {
            return Err(ApiError::Unavailable(
                "the account may have been created, but no Redis replica confirmed it in \
                 time: sign in with this name and password to check (if that fails, sign up \
                 again)"
                    .into(),
            ))
        }
        created => created?,
    };
    if !created {
        return Err(ApiError::NameTaken(format!(
            "the name '{}' is taken; choose another",
            c.name
        )));
    }
    tracing::info!(name = %c.name, "account created");
    state.auth.succeeded(&c.name, client);
    Ok(session_response(&state, StatusCode::CREATED, c.name, None))
}

/// `POST /api/auth/signin` `{"name", "password"}`: 200 with a session (and its cookie); 401
/// for a wrong name or password (one answer for both).
pub async fn signin(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let c = credentials(&state, client, &headers, body).await?;
    if c.password.len() > app::protocol::MAX_PASSWORD_BYTES {
        return Err(ApiError::Unauthenticated("wrong name or password".into()));
    }
    let account = state.engine.account(&c.name).await?;
    let (name, hash) = match account {
        Some((name, hash)) => (Some(name), Some(hash)),
        None => (None, None),
    };
    if !state.auth.check(hash, c.password).await? {
        state.auth.failed(&c.name);
        return Err(ApiError::Unauthenticated("wrong name or password".into()));
    }
    let name = name.expect("a password only matches an account's hash");
    state.auth.succeeded(&name, client);
    Ok(session_response(&state, StatusCode::OK, name, None))
}

/// `POST /api/auth/signout`: 204, and the browser's cookie cleared. A token stays valid
/// until it expires (they are not stored): API clients drop theirs.
pub async fn signout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !state.origin_allowed(&headers) {
        return ApiError::Forbidden("this origin may not sign out here".into()).into_response();
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    for c in state.auth.clear_cookies() {
        response.headers_mut().append(
            header::SET_COOKIE,
            HeaderValue::from_str(&c).expect("a valid header value"),
        );
    }
    response
}

/// `POST /api/auth/refresh`: a new session (token and cookie) for a session that is still
/// valid, so a client renews before it expires instead of signing in again.
pub async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !state.origin_allowed(&headers) {
        return Err(ApiError::Forbidden(
            "this origin may not renew sessions here".into(),
        ));
    }
    let who = state.identify(&headers, None);
    let viewer = who.require("renew your session")?;
    // Renewals end `--session-max-secs` after the password was checked: a stolen token
    // cannot be kept alive for ever by refreshing it.
    if viewer.auth_time == 0 {
        return Err(ApiError::Unauthenticated(
            "this session says neither when it signed in (`auth_time`) nor when it was issued \
             (`iat`), so it cannot be renewed; sign in again"
                .into(),
        ));
    }
    if now_secs().saturating_sub(viewer.auth_time) >= state.auth.max_session.as_secs() {
        return Err(ApiError::Unauthenticated(
            "this session was signed in too long ago to renew; sign in again".into(),
        ));
    }
    let name = viewer.name.to_string();
    // Never later than now: a sign-in time in the future (a minting backend's clock or
    // bug) must not stretch the maximum.
    let auth_time = viewer.auth_time.min(now_secs());
    Ok(session_response(
        &state,
        StatusCode::OK,
        name,
        Some(auth_time),
    ))
}

/// `POST /api/admin/broadcast` `{"text": "..."}` with the admin token: a notification for
/// every signed-in account (`to: "*"`). 404 on a server without `--admin-token`.
pub async fn broadcast(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    if state.config.admin_token.is_none() {
        return Err(ApiError::NotFound(
            "broadcasts are off on this server; start it with --admin-token".into(),
        ));
    }
    if !state.is_admin(crate::api::bearer(&headers)) {
        return Err(ApiError::Unauthorized);
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Broadcast {
        text: String,
    }
    let body = crate::api::read_body(&state, body, app::protocol::MAX_PUBLISH_BYTES).await?;
    let b: Broadcast = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("expected {{\"text\": \"...\"}}: {e}")))?;
    let notice = app::protocol::validate(app::protocol::Payload::Notifications(
        app::protocol::Notice {
            to: app::protocol::Notice::EVERYONE.into(),
            kind: "broadcast".into(),
            text: b.text,
            about: None,
        },
    ))
    .map_err(ApiError::Unprocessable)?;
    let (event, _) = state
        .publish(notice, None, &crate::state::Caller::SERVER)
        .await?;
    Ok(crate::api::created(&event))
}

/// `POST /api/notifications/read` `{"id": N}` (one) or `{"all": true}` (everything so far):
/// marks the account's notifications read. The mark is itself an event on the account's
/// private stream (kind `read` or `read-all`, `about` the id), so every tab and device of
/// the account learns it live, and a client that reconnects or reloads gets it with the
/// rest of its history.
pub async fn mark_read(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    // Each mark is an event: held to the publish rate like a message.
    state
        .limits
        .publish_allowed(client)
        .map_err(ApiError::RateLimited)?;
    let who = state.identify(&headers, None);
    let user = who.require("mark notifications read")?.name.clone();
    if matches!(who, Identity::User(_, Via::Cookie)) && !state.origin_allowed(&headers) {
        return Err(ApiError::Forbidden(
            "this origin may not change this account's notifications".into(),
        ));
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Read {
        id: Option<u64>,
        #[serde(default)]
        all: bool,
        /// With `all`: up to the newest notification the client has shown (default: the
        /// latest event now), so one that arrives as the person clicks stays unread.
        upto: Option<u64>,
    }
    let body = crate::api::read_body(&state, body, 1024).await?;
    let r: Read = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!("expected {{\"id\": N}} or {{\"all\": true}}: {e}"))
    })?;
    let (kind, about) = match (r.id, r.all) {
        (Some(id), false) => ("read", id),
        (None, true) => (
            "read-all",
            r.upto.unwrap_or(u64::MAX).min(state.log.latest()),
        ),
        _ => {
            return Err(ApiError::BadRequest(
                "give either {\"id\": N} or {\"all\": true}".into(),
            ))
        }
    };
    let notice = app::protocol::Payload::Notifications(app::protocol::Notice {
        to: user.to_string(),
        kind: kind.into(),
        text: kind.into(),
        about: Some(about),
    });
    let (event, _) = state
        .publish(notice, None, &crate::state::Caller::SERVER)
        .await?;
    Ok(crate::api::created(&event))
}

/// `GET /api/auth/me`: the session the request carries (no token in the answer), or 401.
pub async fn me(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<axum::Json<Session>, ApiError> {
    let who = state.identify(&headers, None);
    let v = who.require("see your session")?;
    Ok(axum::Json(Session {
        name: v.name.to_string(),
        expires: v.exp,
        token: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn auth(session_secs: u64) -> (Auth, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::for_tests(dir.path().to_path_buf());
        c.session_secs = session_secs;
        (Auth::new(&c).unwrap(), dir)
    }

    #[test]
    fn tokens_verify_and_tampered_ones_do_not() {
        let (a, _d) = auth(60);
        let (t, _) = a.issue("bob", None);
        assert_eq!(&*a.verify(&t).unwrap().name, "bob");
        // Another account's name in the payload, the signature kept: refused.
        let parts: Vec<&str> = t.split('.').collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = String::from_utf8(b64.decode(parts[1]).unwrap()).unwrap();
        let forged = b64.encode(payload.replace("\"bob\"", "\"eve\""));
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(a.verify(&tampered), Err(TokenError::Invalid));
        // alg none, no signature.
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert_eq!(a.verify(&none), Err(TokenError::Invalid));
        // Signed with another secret.
        let (other, _d2) = auth(60);
        assert_eq!(other.verify(&t), Err(TokenError::Invalid));
        assert_eq!(a.verify("garbage"), Err(TokenError::Invalid));
    }

    #[test]
    fn expired_tokens_say_so() {
        let (a, _d) = auth(60);
        let claims = Claims {
            sub: "bob".into(),
            iat: 1,
            exp: now_secs() - 1,
            auth_time: None,
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &a.encoding).unwrap();
        assert_eq!(a.verify(&t), Err(TokenError::Expired));
    }

    #[test]
    fn renewals_never_outlast_the_sign_in_by_more_than_the_maximum() {
        let (a, _d) = auth(3600);
        let now = now_secs();
        // Signed in now: a full session; the sign-in time is carried in the token.
        let (t, exp) = a.issue("bob", None);
        assert_eq!(exp, now + 3600);
        assert_eq!(a.verify(&t).unwrap().auth_time, now);
        // Renewed near the end of the maximum: the session ends with it, not an hour later.
        let signed_in = now - a.max_session.as_secs() + 60;
        let (t, exp) = a.issue("bob", Some(signed_in));
        assert_eq!(exp, signed_in + a.max_session.as_secs());
        assert_eq!(a.verify(&t).unwrap().auth_time, signed_in);
    }

    #[test]
    fn secure_cookies_are_host_prefixed_and_secure() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::for_tests(dir.path().to_path_buf());
        c.secure_cookies = true;
        let a = Auth::new(&c).unwrap();
        let (t, exp) = a.issue("bob", None);
        let [session, hint] = a.cookies_for(&t, "bob", exp);
        assert!(session.starts_with("__Host-tidings_session="), "{session}");
        for c in [&session, &hint] {
            assert!(c.ends_with("; Secure") && c.contains("Path=/") && !c.contains("Domain"));
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("tidings_session={t}").parse().unwrap(),
        );
        assert!(matches!(
            a.identify(&headers, None, None),
            Identity::Anonymous
        ));
        headers.insert(
            header::COOKIE,
            format!("__Host-tidings_session={t}").parse().unwrap(),
        );
        assert!(matches!(
            a.identify(&headers, None, None),
            Identity::User(..)
        ));
        let (plain, _d) = auth(60);
        let [session, _] = plain.cookies_for(&t, "bob", exp);
        assert!(session.starts_with("tidings_session=") && !session.contains("Secure"));
    }

    #[test]
    fn the_secret_is_made_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let first = secret_file(&path).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(secret_file(&path).unwrap(), first);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn passwords_hash_and_check() {
        let (a, _d) = auth(60);
        let h = a.hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(a
            .check(Some(h.clone()), "correct horse".into())
            .await
            .unwrap());
        assert!(!a.check(Some(h), "wrong".into()).await.unwrap());
        assert!(!a.check(None, "correct horse".into()).await.unwrap());
    }
}
