//! Where the Redis primary is: one fixed address (`--redis`), or whatever Redis Sentinel
//! says (`--redis-sentinel`), followed across failovers.
//!
//! [`Primary`] is a connection like any other to the code above it (it implements the
//! redis crate's `ConnectionLike`, so scripts and commands run on it unchanged). With a
//! fixed address it is one auto-reconnecting `ConnectionManager`. With Sentinel it holds a
//! `ConnectionManager` to the primary it last found and, after an error that says the
//! primary may have moved (refused or dropped connection, timeout, `READONLY`,
//! `MASTERDOWN`), asks the sentinels again before the next command.
//!
//! Finding the primary follows the Sentinel client guidelines (redis.io, "Sentinel client
//! spec"): ask the sentinels for the service, then check with `ROLE` that the address given
//! really is a primary. It is done here rather than with the redis crate's `SentinelClient`
//! because the failover *epoch* must come with the address, from the same answer: every
//! server skips the ids a lost primary may have handed out exactly once per failover (see
//! `Cluster`'s `FAILOVER` script), and the epoch says which failover that is.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, Pipeline, RedisError, RedisFuture, Value};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long a command may wait for Redis (and a connection attempt may take).
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a sentinel may take to answer: it is asked during a failover, when some of
/// them may be down; one slow sentinel must not hold the search up for long.
const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);

/// After a search that found no primary, callers get the error at once for this long
/// rather than each asking the sentinels again (a failover takes seconds; hundreds of
/// publishes a second would otherwise each ask).
const SEARCH_BACKOFF: Duration = Duration::from_millis(100);

/// Where to find the primary.
#[derive(Clone, Debug)]
pub enum Source {
    /// `--redis URL`.
    Fixed(String),
    /// `--redis-sentinel host:port,...` and the service name the sentinels monitor.
    Sentinel {
        sentinels: Vec<String>,
        service: String,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Fixed(url) => write!(f, "at {url}"),
            Source::Sentinel { sentinels, service } => {
                write!(
                    f,
                    "{service:?} through the sentinels {}",
                    sentinels.join(",")
                )
            }
        }
    }
}

/// The primary now in use.
#[derive(Clone)]
struct Current {
    conn: ConnectionManager,
    client: Client,
    /// Sentinel's configuration epoch and address for it (0 and "" with a fixed address).
    epoch: u64,
    address: String,
    /// Counts the primaries found, so an error seen on an old one does not drop a newer one.
    generation: u64,
}

/// Run on each newly found primary before anything else uses it: `epoch` is Sentinel's
/// configuration epoch for it (0 with a fixed address).
pub type OnFound = Box<
    dyn Fn(ConnectionManager, u64) -> Pin<Box<dyn Future<Output = Result<(), RedisError>> + Send>>
        + Send
        + Sync,
>;

struct Inner {
    source: Source,
    current: RwLock<Option<Current>>,
    /// One search at a time; the others wait for its result.
    search: tokio::sync::Mutex<Search>,
    on_found: OnFound,
    /// Per sentinel: a connection kept between questions (see [`Primary::unchanged`]), and
    /// until when it is passed over after failing to answer.
    sentinels: tokio::sync::Mutex<Vec<SentinelLink>>,
}

#[derive(Clone, Default)]
struct SentinelLink {
    conn: Option<redis::aio::MultiplexedConnection>,
    quiet_until: Option<Instant>,
}

/// How long the check before an ack waits for a sentinel, and how long one that did not
/// answer is then passed over: a sentinel down (or a host gone, where a connection attempt
/// hangs) holds up at most one batch a second, by this much.
const FENCE_TIMEOUT: Duration = Duration::from_millis(100);
const FENCE_QUIET: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Search {
    /// When the last search failed, and why.
    failed: Option<(Instant, String)>,
    /// Primaries found so far.
    generation: u64,
}

/// A cheap handle (clone it per task) to the Redis primary.
#[derive(Clone)]
pub struct Primary(Arc<Inner>);

impl Primary {
    /// Finds the primary and connects. Fails if it cannot be found now (at start-up a
    /// misconfiguration should stop the server, not leave it answering 503).
    pub async fn connect(source: Source, on_found: OnFound) -> Result<Primary, RedisError> {
        let primary = Primary(Arc::new(Inner {
            source,
            current: RwLock::new(None),
            search: tokio::sync::Mutex::new(Search::default()),
            on_found,
            sentinels: tokio::sync::Mutex::new(Vec::new()),
        }));
        primary.current().await?;
        Ok(primary)
    }

    /// Whether the primary is found through Sentinel (and can move).
    pub fn follows_failovers(&self) -> bool {
        matches!(self.0.source, Source::Sentinel { .. })
    }

    /// A client for the primary now in use (for a dedicated connection, as the tail needs),
    /// and its generation for [`Primary::failed`].
    pub async fn client(&self) -> Result<(Client, u64), RedisError> {
        let c = self.current().await?;
        Ok((c.client, c.generation))
    }

    /// Reports an error seen on a connection to the primary of `generation`: if it says
    /// the primary may have moved, the sentinels are asked again before the next command.
    pub fn failed(&self, generation: u64, err: &RedisError) {
        if !self.follows_failovers() || !may_have_moved(err) {
            return;
        }
        let mut current = self.0.current.write().expect("primary lock poisoned");
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            tracing::warn!(%err, "the Redis primary may have moved; asking the sentinels");
            *current = None;
        }
    }

    /// The generation of the primary in use (see [`Primary::failed`]), found first if
    /// there is none.
    pub async fn generation(&self) -> Result<u64, RedisError> {
        Ok(self.current().await?.generation)
    }

    /// Whether the primary of `generation` is still the one the sentinels name, with no
    /// failover under way. Asked after `WAIT` and before acknowledging: a primary being
    /// replaced keeps taking writes, and its replicas keep confirming them, until the
    /// sentinels reconfigure it (seconds, in a manual `SENTINEL FAILOVER`), and every such
    /// write is lost when its replicas follow the new primary (found by the adversarial
    /// review: 510 acknowledged events lost in one run). Every sentinel is asked (those
    /// that answered lately, within [`FENCE_TIMEOUT`]); one that sees a failover, or names
    /// another primary or a newer epoch, is enough to refuse, and a majority of them must
    /// name this one. What it cannot see: a manual `SENTINEL FAILOVER` run by a sentinel the
    /// servers cannot reach (only that one knows until it is over); there, only
    /// `--redis-wait-replicas` equal to the number of replicas keeps acks safe (the promoted
    /// replica stops confirming the old primary's writes). Always true with a fixed address.
    pub async fn unchanged(&self, generation: u64) -> bool {
        let Source::Sentinel { sentinels, service } = &self.0.source else {
            return true;
        };
        let Some((epoch, address)) = self
            .0
            .current
            .read()
            .expect("primary lock poisoned")
            .as_ref()
            .filter(|c| c.generation == generation)
            .map(|c| (c.epoch, c.address.clone()))
        else {
            return false;
        };
        let answers = futures_util::future::join_all(
            (0..sentinels.len()).map(|i| self.ask_sentinel(i, service, Some(FENCE_TIMEOUT))),
        )
        .await;
        let mut agree = 0;
        for answer in answers.into_iter().flatten() {
            match answer {
                View::Up {
                    epoch: e,
                    address: a,
                } if e == epoch && a == address => agree += 1,
                // No opinion: this sentinel alone cannot reach the primary, or its view of a
                // failover is older than the primary in use (a stale sentinel).
                View::Suspect => {}
                View::Failing { epoch: e } if e < epoch => {}
                // Being replaced, or already replaced.
                View::Failing { .. } | View::Up { .. } => {
                    self.failed_now(generation);
                    return false;
                }
            }
        }
        // A majority of the sentinels must vouch for it: a server cut off with the old
        // primary and a sentinel or two (the minority side of a partition, where the
        // majority may be electing another) acknowledges nothing.
        agree * 2 > sentinels.len()
    }

    /// Drops the primary of `generation` (the sentinels are asked again before the next
    /// command), whatever the error.
    fn failed_now(&self, generation: u64) {
        let mut current = self.0.current.write().expect("primary lock poisoned");
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            tracing::warn!("the sentinels see a failover; asking them again");
            *current = None;
        }
    }

    /// What sentinel `i` says of `service`. The connection is kept for the next question.
    /// A `fence` (the check before an ack, with its timeout) passes over a sentinel that
    /// recently failed to answer.
    async fn ask_sentinel(
        &self,
        i: usize,
        service: &str,
        fence: Option<Duration>,
    ) -> Result<View, RedisError> {
        let Source::Sentinel { sentinels, .. } = &self.0.source else {
            return Ok(View::Suspect);
        };
        let sentinel = &sentinels[i];
        let cached = {
            let mut links = self.0.sentinels.lock().await;
            links.resize(sentinels.len(), SentinelLink::default());
            let quiet = links[i].quiet_until.is_some_and(|t| t > Instant::now());
            if fence.is_some() && quiet {
                return Err(unavailable(format!(
                    "sentinel {sentinel} did not answer lately"
                )));
            }
            links[i].conn.clone()
        };
        let ask = async {
            let mut conn = match cached {
                Some(c) => c,
                None => {
                    Client::open(format!("redis://{sentinel}/"))?
                        .get_multiplexed_async_connection()
                        .await?
                }
            };
            let info = redis::cmd("SENTINEL")
                .arg("MASTER")
                .arg(service)
                .query_async::<HashMap<String, String>>(&mut conn)
                .await?;
            Ok::<_, RedisError>((conn, info))
        };
        let answer = tokio::time::timeout(fence.unwrap_or(SENTINEL_TIMEOUT), ask).await;
        let info = {
            let mut links = self.0.sentinels.lock().await;
            let link = &mut links[i];
            match answer {
                Ok(Ok((conn, info))) => {
                    *link = SentinelLink {
                        conn: Some(conn),
                        quiet_until: None,
                    };
                    info
                }
                failed => {
                    *link = SentinelLink {
                        conn: None,
                        quiet_until: Some(Instant::now() + FENCE_QUIET),
                    };
                    return Err(match failed {
                        Ok(Err(err)) => err,
                        _ => unavailable(format!("sentinel {sentinel} does not answer")),
                    });
                }
            }
        };
        Ok(view_of(&info))
    }

    fn cached(&self) -> Option<Current> {
        self.0
            .current
            .read()
            .expect("primary lock poisoned")
            .clone()
    }

    async fn current(&self) -> Result<Current, RedisError> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let mut search = self.0.search.lock().await;
        // Someone else may have found it while this one waited.
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        if let Some((at, why)) = &search.failed {
            if at.elapsed() < SEARCH_BACKOFF {
                return Err(unavailable(why.clone()));
            }
        }
        let found = async {
            let (client, epoch, address) = self.find().await?;
            let conn = manager(&client).await?;
            (self.0.on_found)(conn.clone(), epoch).await?;
            Ok::<_, RedisError>((client, conn, epoch, address))
        };
        match found.await {
            Ok((client, conn, epoch, address)) => {
                search.generation += 1;
                search.failed = None;
                if search.generation > 1 {
                    metrics::counter!("tidings_redis_primary_changes_total").increment(1);
                }
                let c = Current {
                    conn,
                    client,
                    epoch,
                    address,
                    generation: search.generation,
                };
                *self.0.current.write().expect("primary lock poisoned") = Some(c.clone());
                Ok(c)
            }
            Err(err) => {
                let why = err.detail().map_or_else(|| err.to_string(), str::to_owned);
                search.failed = Some((Instant::now(), why));
                Err(err)
            }
        }
    }

    /// The primary's client, and Sentinel's epoch and address for it.
    async fn find(&self) -> Result<(Client, u64, String), RedisError> {
        match &self.0.source {
            Source::Fixed(url) => Ok((Client::open(url.as_str())?, 0, String::new())),
            Source::Sentinel { sentinels, service } => {
                let answers = futures_util::future::join_all(
                    (0..sentinels.len()).map(|i| self.ask_sentinel(i, service, None)),
                )
                .await;
                // The primary of the newest epoch any sentinel reports as up: a sentinel cut
                // off from the others may still name the old one.
                // Never during a failover (see `View::Failing`): its end is awaited. A
                // sentinel's failing view older than another's up view is stale.
                let mut best: Option<(u64, String)> = None;
                let mut failing: Option<(u64, &String)> = None;
                let mut why = String::from("(all of them answered)");
                for (sentinel, answer) in sentinels.iter().zip(answers) {
                    match answer {
                        Ok(View::Up { epoch, address })
                            if best.as_ref().is_none_or(|b| epoch > b.0) =>
                        {
                            best = Some((epoch, address))
                        }
                        Ok(View::Failing { epoch }) if failing.is_none_or(|(e, _)| epoch > e) => {
                            failing = Some((epoch, sentinel))
                        }
                        Ok(_) => {}
                        Err(err) => why = format!("(sentinel {sentinel}: {err})"),
                    }
                }
                if let Some((epoch, sentinel)) = failing {
                    if best.as_ref().is_none_or(|b| epoch >= b.0) {
                        return Err(unavailable(format!(
                            "sentinel {sentinel} sees a failover of {service:?} under way"
                        )));
                    }
                }
                let Some((epoch, address)) = best else {
                    return Err(unavailable(format!(
                        "no sentinel names an available primary for {service:?} {why}"
                    )));
                };
                let client = Client::open(format!("redis://{address}/"))?;
                // The guidelines' check: a sentinel's view may lag a failover.
                let mut conn = tokio::time::timeout(
                    SENTINEL_TIMEOUT,
                    client.get_multiplexed_async_connection(),
                )
                .await
                .map_err(|_| unavailable(format!("the primary at {address} does not answer")))??;
                let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
                if !matches!(role.first(), Some(Value::BulkString(r)) if r == b"master") {
                    return Err(unavailable(format!(
                        "{address}, named primary by the sentinels, is not one (yet)"
                    )));
                }
                tracing::info!(%address, epoch, "Redis primary found through Sentinel");
                Ok((client, epoch, address))
            }
        }
    }
}

/// What one sentinel says of the primary it watches (`SENTINEL MASTER`).
#[derive(Debug, PartialEq)]
enum View {
    /// Up, at this epoch and address.
    Up { epoch: u64, address: String },
    /// This sentinel alone cannot reach it (`s_down`, `disconnected`): no opinion yet.
    Suspect,
    /// Being replaced: the sentinels agree it is down (`o_down`), or a failover is under
    /// way (`failover_in_progress`, set on the sentinel that runs it). While it lasts, the
    /// address a sentinel gives may be the old primary's with the new epoch (found by the
    /// second adversarial review: writing a gap there handed ids out twice). With the epoch
    /// the sentinel gives: one older than another sentinel's view is a stale sentinel's.
    Failing { epoch: u64 },
}

fn view_of(info: &HashMap<String, String>) -> View {
    let flags = info.get("flags").map_or("", String::as_str);
    let flags: Vec<&str> = flags.split(',').collect();
    let epoch = info.get("config-epoch").and_then(|e| e.parse().ok());
    if flags
        .iter()
        .any(|f| matches!(*f, "o_down" | "failover_in_progress"))
    {
        return View::Failing {
            epoch: epoch.unwrap_or(u64::MAX),
        };
    }
    if flags
        .iter()
        .any(|f| matches!(*f, "s_down" | "disconnected"))
    {
        return View::Suspect;
    }
    let (Some(ip), Some(port), Some(epoch)) = (info.get("ip"), info.get("port"), epoch) else {
        return View::Suspect;
    };
    View::Up {
        epoch,
        address: format!("{ip}:{port}"),
    }
}

async fn manager(client: &Client) -> Result<ConnectionManager, RedisError> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(REDIS_TIMEOUT))
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    client.get_connection_manager_with_config(config).await
}

/// Whether an error may mean that the primary is no longer where it was.
fn may_have_moved(err: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    err.is_io_error()
        || err.is_connection_refusal()
        || err.is_connection_dropped()
        || err.is_timeout()
        || matches!(
            err.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

fn unavailable(why: String) -> RedisError {
    RedisError::from((redis::ErrorKind::Io, "Redis primary unavailable", why))
}

impl ConnectionLike for Primary {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut c = self.current().await?;
            let answer = c.conn.req_packed_command(cmd).await;
            if let Err(err) = &answer {
                self.failed(c.generation, err);
            }
            answer
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut c = self.current().await?;
            let answer = c.conn.req_packed_commands(pipeline, offset, count).await;
            if let Err(err) = &answer {
                self.failed(c.generation, err);
            }
            answer
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(flags: &str, epoch: &str) -> HashMap<String, String> {
        [
            ("flags", flags),
            ("ip", "10.0.0.1"),
            ("port", "6379"),
            ("config-epoch", epoch),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn a_sentinel_answer_reads_as_up_suspect_or_failing() {
        let up = View::Up {
            epoch: 3,
            address: "10.0.0.1:6379".into(),
        };
        assert_eq!(view_of(&info("master", "3")), up);
        assert_eq!(view_of(&info("master,s_down", "3")), View::Suspect);
        assert_eq!(view_of(&info("master,disconnected", "3")), View::Suspect);
        // During a manual failover the sentinel running it may give the old address with
        // the new epoch: never a primary to use.
        assert_eq!(
            view_of(&info("master,failover_in_progress", "4")),
            View::Failing { epoch: 4 }
        );
        assert_eq!(
            view_of(&info("master,s_down,o_down", "3")),
            View::Failing { epoch: 3 }
        );
        assert_eq!(view_of(&info("master", "x")), View::Suspect);
    }
}
