//! Command-line flags, each with a `TIDINGS_*` environment equivalent.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "tidings",
    version,
    about = "Live feed, chat and ticker over polling, SSE and WebSocket"
)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "TIDINGS_BIND", default_value = "127.0.0.1:3000")]
    pub bind: SocketAddr,

    /// Where the SQLite database lives.
    #[arg(long, env = "TIDINGS_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// The built browser app (trunk's output), served at `/`.
    #[arg(long, env = "TIDINGS_STATIC_DIR", default_value = "app/dist")]
    pub static_dir: PathBuf,

    /// An origin allowed to use the API cross-origin (CORS and WebSocket upgrades),
    /// e.g. `https://app.example.com`. Repeatable; comma-separated in the env variable.
    #[arg(
        long = "allow-origin",
        env = "TIDINGS_ALLOW_ORIGIN",
        value_delimiter = ','
    )]
    pub allow_origins: Vec<String>,

    /// When set, publishing to `feed` and `ticker` needs `Authorization: Bearer <token>`.
    #[arg(long, env = "TIDINGS_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Redacted>,

    /// Do not run the simulated newsroom and ticker.
    #[arg(long, env = "TIDINGS_NO_DEMO")]
    pub no_demo: bool,

    /// Events kept in memory for resume (`since`, `Last-Event-ID`). All events stay in
    /// the store for history either way.
    #[arg(long, env = "TIDINGS_RETENTION", default_value_t = 10_000)]
    pub retention: usize,

    /// Cluster mode: Redis URL (`redis://host:6379`, `redis+unix:///path/redis.sock`).
    /// Redis then holds the ids, the log and history, so many servers can run behind a
    /// round-robin load balancer. Without it, the embedded SQLite store is used.
    #[arg(long = "redis", env = "TIDINGS_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Cluster mode through Redis Sentinel, instead of `--redis`: the sentinels' addresses
    /// (`host:port`, comma-separated). Servers find the primary through them and follow
    /// a failover; publishes are acknowledged only once a replica holds them (see
    /// `--redis-wait-replicas`).
    #[arg(
        long = "redis-sentinel",
        env = "TIDINGS_REDIS_SENTINEL",
        value_delimiter = ',',
        conflicts_with = "redis_url"
    )]
    pub redis_sentinels: Vec<String>,

    /// With `--redis-sentinel`: the name the sentinels monitor the primary under (`sentinel
    /// monitor <name> ...` in their configuration).
    #[arg(long, env = "TIDINGS_REDIS_SERVICE", default_value = "mymaster")]
    pub redis_service: String,

    /// Cluster mode: replicas that must hold a publish (or a new account) before it is
    /// acknowledged (Redis `WAIT`), so a failover cannot lose it. Default: 1 with
    /// `--redis-sentinel`, 0 (off) with `--redis`. 0 turns it off: faster, but an
    /// acknowledged event can be lost when the primary dies before its replica copied it.
    #[arg(long, env = "TIDINGS_REDIS_WAIT_REPLICAS")]
    pub redis_wait_replicas: Option<u32>,

    /// Cluster mode: how long a publish waits for those replicas, in milliseconds (1 to
    /// 1,500); past it, the answer is 503 (retry with the same `Idempotency-Key`).
    #[arg(
        long,
        env = "TIDINGS_REDIS_WAIT_MS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(1..=1500)
    )]
    pub redis_wait_ms: u64,

    /// Cluster mode: the prefix of every Redis key (several deployments can share a Redis).
    #[arg(long, env = "TIDINGS_REDIS_PREFIX", default_value = "tidings")]
    pub redis_prefix: String,

    /// Cluster mode: events kept per stream for `/api/history` (Redis memory is the limit).
    #[arg(long, env = "TIDINGS_HISTORY_MAX", default_value_t = 100_000)]
    pub history_max: usize,

    /// Most open streams (SSE, WebSocket, waiting long polls) this server holds; past it,
    /// new ones get 503 with a JSON error. Keep it under the process's open-file limit.
    #[arg(long, env = "TIDINGS_MAX_STREAMS", default_value_t = 16_000)]
    pub max_streams: usize,

    /// Publishes per second one client address may make (HTTP and WebSocket together;
    /// token bucket). Over it: 429 with `Retry-After`, or a `rate_limited` error frame.
    /// 0: unlimited.
    #[arg(long, env = "TIDINGS_PUBLISH_RATE", default_value_t = 20)]
    pub publish_rate: u32,

    /// Publishes one client address may make in a burst before `--publish-rate` applies.
    #[arg(long, env = "TIDINGS_PUBLISH_BURST", default_value_t = 50)]
    pub publish_burst: u32,

    /// Open connections one client address may hold (0: unlimited). Connections from a
    /// `--trusted-proxy` are not counted (limit those at the proxy).
    #[arg(long, env = "TIDINGS_MAX_CONNS_PER_IP", default_value_t = 1000)]
    pub max_conns_per_ip: u32,

    /// A reverse proxy whose `X-Forwarded-For` is believed (its right-most untrusted
    /// address is the client). Repeatable; comma-separated in the env variable.
    #[arg(
        long = "trusted-proxy",
        env = "TIDINGS_TRUSTED_PROXY",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<std::net::IpAddr>,

    /// The key that signs and checks session tokens (JWT, HS256; at least 32 characters).
    /// Other backends may mint tokens for their users with it (docs/protocol.md). Absent:
    /// generated once and kept in `<data-dir>/secret` (mode 0600); cluster mode needs it
    /// given, the same on every server.
    #[arg(long, env = "TIDINGS_SECRET", hide_env_values = true)]
    pub secret: Option<Redacted>,

    /// How long a session (a signed-in token) lasts, in seconds.
    #[arg(long, env = "TIDINGS_SESSION_SECS", default_value_t = 7 * 24 * 3600)]
    pub session_secs: u64,

    /// Presence: milliseconds an account stays online after its last connection to this
    /// server closes (a page reload or a transport switch reconnects within it, so others
    /// see no leave and join). At most 600,000 (ten minutes).
    #[arg(long, env = "TIDINGS_PRESENCE_GRACE_MS", default_value_t = 2_000)]
    pub presence_grace_ms: u64,

    /// Cluster mode: seconds a server's presence entries last in Redis unless renewed
    /// (every third of it). A server that dies without a word (kill -9) has its accounts
    /// announced offline within about this long. 1 to 3,600.
    #[arg(long, env = "TIDINGS_PRESENCE_TTL_SECS", default_value_t = 10)]
    pub presence_ttl_secs: u64,

    /// The longest a session may be renewed (`POST /api/auth/refresh`) after its password
    /// was checked, in seconds; then the account signs in again.
    #[arg(long, env = "TIDINGS_SESSION_MAX_SECS", default_value_t = 30 * 24 * 3600)]
    pub session_max_secs: u64,

    /// Behind TLS (a proxy that terminates HTTPS): the session cookie is named
    /// `__Host-tidings_session` and both cookies are `Secure`, so a browser never sends them
    /// over plain HTTP and no subdomain can plant one.
    #[arg(long, env = "TIDINGS_SECURE_COOKIES")]
    pub secure_cookies: bool,

    /// When set, `GET /metrics` needs `Authorization: Bearer <token>`.
    #[arg(long, env = "TIDINGS_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<Redacted>,

    /// Seconds a client has to send a whole request head on an event-stream connection
    /// (and hyper's header timeout on the others): a client trickling bytes cannot hold a
    /// connection open longer than this.
    #[arg(
        long,
        env = "TIDINGS_HEAD_TIMEOUT_SECS",
        default_value_t = 10,
        hide = true
    )]
    pub head_timeout_secs: u64,

    /// Seconds a write to a streaming client may take before the client is dropped as
    /// stuck (it stopped reading; it resumes from its cursor when it reconnects).
    #[arg(
        long,
        env = "TIDINGS_WRITE_TIMEOUT_SECS",
        default_value_t = 30,
        hide = true
    )]
    pub write_timeout_secs: u64,

    /// Seconds between SSE heartbeats and WebSocket pings.
    #[arg(
        long,
        env = "TIDINGS_HEARTBEAT_SECS",
        default_value_t = 15,
        hide = true
    )]
    pub heartbeat_secs: u64,

    /// A WebSocket peer silent for this long (no frame, no pong) is dropped.
    #[arg(
        long,
        env = "TIDINGS_WS_IDLE_TIMEOUT_SECS",
        default_value_t = 45,
        hide = true
    )]
    pub ws_idle_timeout_secs: u64,
}

/// A secret flag's value: used as a `str`, never printed (`{:?}` of the config says
/// `<redacted>`), so a log of the configuration cannot leak it.
#[derive(Clone, PartialEq)]
pub struct Redacted(pub String);

impl std::ops::Deref for Redacted {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Redacted {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Redacted, Self::Err> {
        Ok(Redacted(s.to_owned()))
    }
}

impl From<&str> for Redacted {
    fn from(s: &str) -> Redacted {
        Redacted(s.to_owned())
    }
}

impl Config {
    /// Where cluster mode finds Redis; `None` in the embedded mode.
    pub fn redis(&self) -> Option<crate::engine::primary::Source> {
        use crate::engine::primary::Source;
        match &self.redis_url {
            Some(url) => Some(Source::Fixed(url.clone())),
            None if !self.redis_sentinels.is_empty() => Some(Source::Sentinel {
                sentinels: self.redis_sentinels.clone(),
                service: self.redis_service.clone(),
            }),
            None => None,
        }
    }

    /// Replicas a write waits for in cluster mode (`--redis-wait-replicas`).
    pub fn wait_replicas(&self) -> u32 {
        self.redis_wait_replicas
            .unwrap_or(if self.redis_sentinels.is_empty() {
                0
            } else {
                1
            })
    }

    /// Defaults for tests and embedding: a free port, the given data dir, no demo.
    pub fn for_tests(data_dir: PathBuf) -> Config {
        let mut c = Config::parse_from(["tidings", "--no-demo"]);
        c.bind = "127.0.0.1:0".parse().expect("valid address");
        c.data_dir = data_dir;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_not_printed() {
        let c = Config::parse_from([
            "tidings",
            "--secret",
            "s3cret-s3cret-s3cret-s3cret-s3cret",
            "--admin-token",
            "adm1n",
            "--metrics-token",
            "m3trics",
        ]);
        let printed = format!("{c:?}");
        for s in ["s3cret", "adm1n", "m3trics"] {
            assert!(!printed.contains(s), "{printed}");
        }
        assert_eq!(c.admin_token.as_deref(), Some("adm1n"));
    }
}
