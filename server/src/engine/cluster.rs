//! Cluster mode: Redis as the shared, ordered event log, so any number of Tidings servers
//! can sit behind a plain round-robin load balancer.
//!
//! Keys (all share the `{prefix}` hash tag, so they live on one Redis Cluster slot):
//! - `{p}:seq`: the id sequence (INCR).
//! - `{p}:log`: a stream of every event, entry id `<event id>-0`, trimmed to about
//!   2 x retention. Every server tails it (XREAD BLOCK) into its own window.
//! - `{p}:history:<stream>`: one stream per stream name, trimmed to `--history-max`, for
//!   `/api/history`.
//! - `{p}:demo-leader`: a lease; only its holder runs the simulators.
//! - `{p}:idem:<key>`: the event a publish with that idempotency key stored, expiring after
//!   [`IDEMPOTENCY_TTL`](crate::engine::IDEMPOTENCY_TTL).
//!
//! - `{p}:epoch`: with Sentinel, the failover epoch of the primary the log is on.
//!
//! Publishing is one Lua script (INCR + XADD + XADD), atomic in Redis: ids are assigned and
//! appended in the same order, so the log is ordered by id and has no holes, but one: after
//! a failover, the ids a lost primary may have handed out are skipped (see [`FAILOVER`]).

use super::primary::{Primary, Source, REDIS_TIMEOUT};
use super::{now_ms, EngineError};
use crate::log::{EventLog, StoredEvent};
use app::protocol::{AlertRule, Event, NewAlert, Notice, Payload, Stream};
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Script};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The Lua that appends one event: next id, the event's JSON (built exactly as serde
/// writes an [`Event`]), the log entry and the stream's history entry. Shared by the publish
/// script and the presence scripts, which publish join/leave events in the same atomic step
/// as the change they announce. A macro, so `concat!` can put it in front of each script.
macro_rules! append_lua {
    () => {
        r#"
local function append(seq, log, history, ts, stream, data, log_max, history_max)
  -- As digits: Lua's own conversion writes numbers past 10^14 as 1e+14.
  local id = string.format('%d', redis.call('INCR', seq))
  local json = '{"id":' .. id .. ',"ts":' .. ts .. ',"stream":"' .. stream .. '","data":' .. data .. '}'
  redis.call('XADD', log, 'MAXLEN', '~', log_max, id .. '-0', 's', stream, 'e', json)
  redis.call('XADD', history, 'MAXLEN', '~', history_max, id .. '-0', 'e', json)
  return id, json
end
"#
    };
}

/// KEYS: seq, log, history of the stream, idempotency key (a name under the same hash
/// tag; unused when ARGV[6] is empty). Returns `{id, ""}` for a new event, or `{0, "<id>
/// <stream> <json>"}` when the idempotency key was already used (nothing is stored).
const PUBLISH: &str = concat!(
    append_lua!(),
    r#"
if ARGV[6] ~= '' then
  local prev = redis.call('GET', KEYS[4])
  if prev then return {0, prev} end
end
local id, json = append(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[4], id .. ' ' .. ARGV[2] .. ' ' .. json, 'EX', ARGV[6])
end
return {id, ''}
"#
);

// Presence in Redis. `{p}:presence` is a sorted set of the accounts online, scored by the
// latest expiry among their connections' servers; `{p}:presence-of:<user>` is a hash of
// server id -> expiry (ms, Redis' clock). A server renews its users' entries every third of
// the expiry; entries of a server that died (kill -9: no leave) run out, and any server's
// sweep removes them. Each change that turns an account online or offline publishes its
// event inside the script that makes it, so exactly one server announces it, in order.
// Times come from Redis' `TIME` (one clock for every server).
//
// The per-user hash keys are named in KEYS where they are known (touch, leave); the sweep
// finds them from the set, under the same `{p}` hash tag (one Redis Cluster slot).
macro_rules! presence_lua {
    () => {
        r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function announce(ts, user, online, log_max, history_max)
  append(KEYS[1], KEYS[2], KEYS[3], ts, 'presence',
    '{"user":' .. cjson.encode(user) .. ',"online":' .. online .. '}', log_max, history_max)
end
-- The latest expiry left in a user's hash (nil when none is left after dropping the ones
-- at or before `now`).
local function renew_score(hash, now)
  local best = nil
  local fields = redis.call('HGETALL', hash)
  for i = 1, #fields, 2 do
    local exp = tonumber(fields[i + 1])
    if exp == nil or exp <= now then
      redis.call('HDEL', hash, fields[i])
    elseif best == nil or exp > best then
      best = exp
    end
  end
  return best
end
"#
    };
}

/// KEYS: seq, log, presence history, presence set, this server's marker, then one hash per
/// user. ARGV: ts, log max, history max, server id, expiry (ms from now), then the users (as
/// KEYS[6..]). Marks each user online on this server until now + expiry; a user not online
/// anywhere before gets a join event. The marker (same expiry) says Redis still holds what
/// this server announced: see `PRESENCE_LEAVE`.
const PRESENCE_TOUCH: &str = concat!(
    append_lua!(),
    presence_lua!(),
    r#"
local until_ms = now_ms() + tonumber(ARGV[5])
redis.call('SET', KEYS[5], '1', 'PX', ARGV[5])
for i = 6, #ARGV do
  local user, hash = ARGV[i], KEYS[i]
  redis.call('HSET', hash, ARGV[4], until_ms)
  if not redis.call('ZSCORE', KEYS[4], user) then
    announce(ARGV[1], user, 'true', ARGV[2], ARGV[3])
  end
  redis.call('ZADD', KEYS[4], 'GT', until_ms, user)
end
return 1
"#
);

/// KEYS: seq, log, presence history, presence set, this server's marker, then one hash per
/// user. ARGV: ts, log max, history max, server id, then the users (as KEYS[6..]). This
/// server's last connection of each user closed: its entry goes; for a user no other
/// server holds, the leave event.
///
/// Returns 0, changing nothing, when the marker is gone: Redis lost what this server
/// announced (restarted without its data, flushed) or its entries ran out (it could not
/// renew them). A leave now could be silent (the set no longer holds the user) while
/// clients still show the join; the server announces its accounts again first, then leaves.
const PRESENCE_LEAVE: &str = concat!(
    append_lua!(),
    presence_lua!(),
    r#"
if redis.call('EXISTS', KEYS[5]) == 0 then return 0 end
local now = now_ms()
for i = 5, #ARGV do
  local user, hash = ARGV[i], KEYS[i + 1]
  redis.call('HDEL', hash, ARGV[4])
  local best = renew_score(hash, now)
  if best then
    redis.call('ZADD', KEYS[4], 'XX', best, user)
  elseif redis.call('ZREM', KEYS[4], user) == 1 then
    announce(ARGV[1], user, 'false', ARGV[2], ARGV[3])
  end
end
return 1
"#
);

/// KEYS: seq, log, presence history, presence set. ARGV: ts, log max, history max, the
/// prefix of the per-user hashes, the most users to look at. Drops the entries that ran out
/// (a server that died) and announces the users left with none. Returns how many users it
/// looked at (as many as asked: call again, more may be due).
const PRESENCE_SWEEP: &str = concat!(
    append_lua!(),
    presence_lua!(),
    r#"
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
for _, user in ipairs(due) do
  local best = renew_score(ARGV[4] .. user, now)
  if best then
    redis.call('ZADD', KEYS[4], 'XX', best, user)
  else
    redis.call('ZREM', KEYS[4], user)
    announce(ARGV[1], user, 'false', ARGV[2], ARGV[3])
  end
end
return #due
"#
);

/// If Redis lost data (restarted without persistence), its sequence would start again and
/// hand out ids clients already hold. Every server raises it back to the highest id it has
/// seen whenever it (re)connects, so ids are never reused while any server remembers them.
const RAISE_SEQ: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"#;

/// How many ids a failover skips. Events the dead primary had stored but its replica had
/// not yet copied are gone, yet servers tailing it may have delivered them (and clients
/// hold their ids as cursors). Were the new primary to hand those ids out again, a server
/// that delivered the lost event would skip the new one as already read: an acknowledged
/// event lost. So the first server to find a new primary moves the sequence this far on.
/// A replica's backlog of unreplicated events is bounded by its output buffer (256 MB by
/// default, about a million events), far below this; at one gap per failover, JavaScript's
/// exact integers (2^53) last nine hundred million failovers.
pub const FAILOVER_GAP: u64 = 10_000_000;

/// And at least to `epoch x EPOCH_IDS`: each failover epoch starts in an id range of its own,
/// so a primary promoted after another failed before passing on its jump (two failovers
/// in a row) still starts above every id that one handed out (unless an epoch handed out
/// more than this many: days at the measured publish rates). 2^53 / 10^10: 900,000 epochs.
pub const EPOCH_IDS: u64 = 10_000_000_000;
/// KEYS: seq, log, epoch. ARGV: Sentinel's epoch for the primary this runs on, the gap,
/// log max, [`EPOCH_IDS`]. Run by each server on each primary it finds, before anything else: the first
/// to arrive after a failover (a newer epoch than the one recorded) moves the sequence on
/// by the gap (to the epoch's own range at least) and writes a gap entry in the log (field
/// `gap`: the sequence it skipped from), so servers tailing the log move their cursor past it instead of seeing a hole.
/// The epoch only ever rises, so servers arriving later (or with an older view) do nothing.
const FAILOVER: &str = r#"
local known = redis.call('GET', KEYS[3])
local epoch = tonumber(ARGV[1])
if not known then
  redis.call('SET', KEYS[3], epoch)
  return 0
end
if epoch <= tonumber(known) then return 0 end
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
if newest then seq = math.max(seq, tonumber(string.match(newest[1], '^(%d+)'))) end
local to = math.max(seq + tonumber(ARGV[2]), epoch * tonumber(ARGV[4]))
local id = string.format('%d', to)
-- The entry first: if it fails, nothing has changed and the next server tries again.
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], id .. '-0', 'gap', string.format('%d', seq))
redis.call('SET', KEYS[1], id)
redis.call('SET', KEYS[3], epoch)
return to
"#;

const LEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"#;

/// Cluster mode's settings (from `Config`).
pub struct Options {
    pub prefix: String,
    pub retention: usize,
    pub history_max: usize,
    /// Replicas a publish or a new account waits for (`WAIT`); 0: none.
    pub wait_replicas: u32,
    pub wait: Duration,
}

pub struct Cluster {
    conn: Primary,
    keys: Keys,
    publish: Script,
    /// Writes that must reach replicas before they are answered (`--redis-wait-replicas`
    /// above 0): see [`committer`]. `None`: answered when the primary has them.
    replicated: Option<tokio::sync::mpsc::Sender<Pending>>,
    presence_scripts: [Script; 3],
    /// This process's name in the presence hashes: random per start, so a restarted
    /// server never renews what its killed predecessor held (that runs out and is swept).
    server_id: String,
    log_maxlen: usize,
    history_max: usize,
    /// Whether the tail is connected and current; false while Redis is unreachable.
    /// (Relaxed: a readiness hint, nothing is read through it.)
    tailing: Arc<AtomicBool>,
}

#[derive(Clone)]
struct Keys {
    seq: String,
    log: String,
    epoch: String,
    prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        let p = format!("{{{prefix}}}");
        Keys {
            seq: format!("{p}:seq"),
            log: format!("{p}:log"),
            epoch: format!("{p}:epoch"),
            prefix: p,
        }
    }
    fn history(&self, s: Stream) -> String {
        format!("{}:history:{s}", self.prefix)
    }
    /// A private stream's history is kept per account (`*`: for everyone).
    fn private_history(&self, s: Stream, to: &str) -> String {
        format!("{}:history:{s}:{}", self.prefix, to.to_ascii_lowercase())
    }
    fn alerts(&self, symbol: &str) -> String {
        format!("{}:alerts:{symbol}", self.prefix)
    }
    fn alerts_armed(&self, symbol: &str) -> String {
        format!("{}:alerts-armed:{symbol}", self.prefix)
    }
    fn alerts_of(&self, user: &str) -> String {
        format!("{}:alerts-of:{}", self.prefix, user.to_ascii_lowercase())
    }
    fn alert_seq(&self) -> String {
        format!("{}:alert-seq", self.prefix)
    }
    fn account(&self, name: &str) -> String {
        format!("{}:account:{}", self.prefix, name.to_ascii_lowercase())
    }
    fn presence(&self) -> String {
        format!("{}:presence", self.prefix)
    }
    /// Prefix of the per-account presence hashes (the sweep script appends the name).
    fn presence_of_prefix(&self) -> String {
        format!("{}:presence-of:", self.prefix)
    }
    fn leader(&self) -> String {
        format!("{}:demo-leader", self.prefix)
    }
    fn idempotency(&self, key: &str) -> String {
        format!("{}:idem:{key}", self.prefix)
    }
}

type Entry = (String, Vec<String>);

/// A price alert as Redis keeps it (its id is the hash field; `armed` is a hash of its own).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAlert {
    user: String,
    symbol: String,
    op: String,
    price: f64,
}

/// What a `{p}:log` entry holds.
enum LogEntry {
    Event(StoredEvent),
    /// Ids after `from` up to `to` are skipped (a failover: see [`FAILOVER`]).
    Gap {
        from: u64,
        to: u64,
    },
}

/// Parses a `{p}:log` entry (`<id>-0`, fields `s` stream, `e` event JSON; or `gap`).
fn parse_entry((id, fields): Entry) -> Option<LogEntry> {
    let id: u64 = id.split('-').next()?.parse().ok()?;
    let mut stream = None;
    let mut json = None;
    for pair in fields.chunks(2) {
        match pair {
            [k, v] if k == "s" => stream = Stream::parse(v),
            [k, v] if k == "e" => json = Some(v.clone()),
            [k, v] if k == "gap" => {
                return Some(LogEntry::Gap {
                    from: v.parse().ok()?,
                    to: id,
                })
            }
            _ => {}
        }
    }
    StoredEvent::from_json(id, stream?, json?)
        .ok()
        .map(LogEntry::Event)
}

impl Cluster {
    /// Connects, loads the resume window from Redis and starts the tail (and the demo
    /// lease when `demo_leader` is given). Fails if Redis cannot be reached at start.
    pub async fn start(
        source: Source,
        options: Options,
        shutdown: CancellationToken,
        demo_leader: Option<Arc<AtomicBool>>,
    ) -> Result<(Arc<EventLog>, Cluster), redis::RedisError> {
        let Options {
            prefix,
            retention,
            history_max,
            wait_replicas,
            wait,
        } = options;
        let keys = Keys::new(&prefix);
        let log_maxlen = retention.saturating_mul(2).max(1000);
        let failover = {
            let keys = keys.clone();
            let script = Script::new(FAILOVER);
            move |mut conn: ConnectionManager, epoch: u64| {
                let (keys, script) = (keys.clone(), script.clone());
                Box::pin(async move {
                    let skipped_to: u64 = script
                        .key(&keys.seq)
                        .key(&keys.log)
                        .key(&keys.epoch)
                        .arg(epoch)
                        .arg(FAILOVER_GAP)
                        .arg(log_maxlen)
                        .arg(EPOCH_IDS)
                        .invoke_async(&mut conn)
                        .await?;
                    if skipped_to > 0 {
                        tracing::warn!(
                            epoch,
                            skipped_to,
                            "Redis failed over: ids skipped past what the lost primary may have handed out"
                        );
                    }
                    Ok(())
                }) as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>
            }
        };
        let on_found: super::primary::OnFound = if matches!(source, Source::Sentinel { .. }) {
            Box::new(failover)
        } else {
            Box::new(|_, _| Box::pin(async { Ok(()) }))
        };
        let mut conn = Primary::connect(source, on_found).await?;

        // One entry more than the window holds: a failover's gap entry right before the
        // window still counts (the window trims the extra event, if it is one).
        let entries: Vec<Entry> = redis::cmd("XREVRANGE")
            .arg(&keys.log)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(retention.saturating_add(1))
            .query_async(&mut conn)
            .await?;
        let mut gap = None;
        let recent: Vec<Arc<StoredEvent>> = entries
            .into_iter()
            .rev()
            .filter_map(|e| match parse_entry(e)? {
                LogEntry::Event(e) => Some(Arc::new(e)),
                LogEntry::Gap { from, to } => {
                    gap = Some((from, to));
                    None
                }
            })
            .collect();
        let seq: Option<u64> = redis::cmd("GET")
            .arg(&keys.seq)
            .query_async(&mut conn)
            .await?;
        let latest = seq.unwrap_or(0).max(recent.last().map_or(0, |e| e.id));
        tracing::info!(
            latest,
            loaded = recent.len(),
            "cluster log loaded from Redis"
        );
        let log = Arc::new(EventLog::new(retention, recent, latest));
        // A server started after a failover knows its gap too (found by the second
        // adversarial review: such a server reset readers the others carried across it).
        if let Some((from, to)) = gap {
            log.note_gap(from, to);
        }

        let tailing = Arc::new(AtomicBool::new(false));
        tokio::spawn(tail(
            conn.clone(),
            keys.clone(),
            log.clone(),
            tailing.clone(),
            shutdown.clone(),
        ));
        if let Some(flag) = demo_leader {
            tokio::spawn(lease(conn.clone(), keys.leader(), flag, shutdown));
        }
        let replicated = (wait_replicas > 0).then(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(COMMIT_QUEUE);
            tokio::spawn(committer(conn.clone(), rx, wait_replicas, wait));
            tx
        });
        let cluster = Cluster {
            conn,
            keys,
            publish: Script::new(PUBLISH),
            presence_scripts: [
                Script::new(PRESENCE_TOUCH),
                Script::new(PRESENCE_LEAVE),
                Script::new(PRESENCE_SWEEP),
            ],
            server_id: format!("{:016x}", rand::random::<u64>()),
            log_maxlen,
            history_max,
            tailing,
            replicated,
        };
        Ok((log, cluster))
    }

    pub async fn publish(
        &self,
        payload: Payload,
        key: Option<String>,
    ) -> Result<(Arc<StoredEvent>, bool), EngineError> {
        let stream = payload.stream();
        let ts = now_ms();
        let data = payload.data_json();
        let ttl = match key {
            Some(_) => crate::engine::IDEMPOTENCY_TTL.as_secs().to_string(),
            None => String::new(),
        };
        let mut script = redis::cmd("EVALSHA");
        script
            .arg(self.publish.get_hash())
            .arg(4)
            .arg(&self.keys.seq)
            .arg(&self.keys.log)
            .arg(match &payload {
                Payload::Notifications(n) => self.keys.private_history(stream, &n.to),
                _ => self.keys.history(stream),
            })
            .arg(self.keys.idempotency(key.as_deref().unwrap_or("")))
            .arg(ts)
            .arg(stream.as_str())
            .arg(&data)
            .arg(self.log_maxlen)
            .arg(self.history_max)
            .arg(ttl);
        let (id, replayed): (u64, String) = self.write(script, Some(PUBLISH), "publish").await?;
        if id == 0 {
            // "<id> <stream> <json>", as the script stored it.
            let mut parts = replayed.splitn(3, ' ');
            let parsed = (|| {
                let id = parts.next()?.parse().ok()?;
                let stream = Stream::parse(parts.next()?)?;
                StoredEvent::from_json(id, stream, parts.next()?.to_owned()).ok()
            })();
            return match parsed {
                Some(event) => Ok((Arc::new(event), true)),
                None => {
                    tracing::error!("unreadable idempotency record in Redis");
                    Err(EngineError::Unavailable)
                }
            };
        }
        // serde's bytes; the script built the same ones for the log (a test against a real
        // Redis, `the_publish_script_builds_the_json_serde_would`, holds the two together).
        Ok((
            Arc::new(StoredEvent::new(&Event { id, ts, payload })),
            false,
        ))
    }

    pub async fn history(
        &self,
        stream: Stream,
        user: Option<&str>,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Event>, EngineError> {
        let keys = match (stream, user) {
            // The account's own and everyone's, merged by id.
            (Stream::Notifications, Some(user)) => vec![
                self.keys.private_history(stream, user),
                self.keys.private_history(stream, Notice::EVERYONE),
            ],
            (Stream::Notifications, None) => return Ok(vec![]),
            _ => vec![self.keys.history(stream)],
        };
        let end = if before == u64::MAX {
            "+".to_string()
        } else {
            format!("({before}-0")
        };
        let mut events: Vec<Event> = Vec::new();
        for key in keys {
            let mut conn = self.conn.clone();
            let entries: Vec<Entry> = redis::cmd("XREVRANGE")
                .arg(key)
                .arg(&end)
                .arg("-")
                .arg("COUNT")
                .arg(limit)
                .query_async(&mut conn)
                .await
                .map_err(|err| {
                    tracing::warn!(%err, "history from Redis failed");
                    EngineError::Unavailable
                })?;
            events.extend(entries.into_iter().filter_map(|(_, f)| {
                f.chunks(2)
                    .find(|p| p[0] == "e")
                    .and_then(|p| serde_json::from_str(p.get(1)?).ok())
            }));
        }
        events.sort_by_key(|e| e.id);
        events.dedup_by_key(|e| e.id);
        let skip = events.len().saturating_sub(limit);
        Ok(events.split_off(skip))
    }

    /// Marks `users` online on this server for `ttl` more (joins for the new ones).
    pub async fn presence_touch(
        &self,
        users: &[Arc<str>],
        ttl: Duration,
    ) -> Result<(), EngineError> {
        let mut call = self.presence_call(0);
        call.key(self.presence_marker())
            .arg(&self.server_id)
            .arg(ttl.as_millis() as u64);
        for user in users {
            call.key(format!("{}{user}", self.keys.presence_of_prefix()))
                .arg(&**user);
        }
        self.presence_invoke::<i64>(call).await.map(|_| ())
    }

    /// This server's last connection of each of `users` closed. `false`: Redis no longer holds what
    /// this server announced (see `PRESENCE_LEAVE`); nothing was done.
    pub async fn presence_leave(&self, users: &[Arc<str>]) -> Result<bool, EngineError> {
        let mut call = self.presence_call(1);
        call.key(self.presence_marker()).arg(&self.server_id);
        for user in users {
            call.key(format!("{}{user}", self.keys.presence_of_prefix()))
                .arg(&**user);
        }
        self.presence_invoke::<i64>(call)
            .await
            .map(|done| done == 1)
    }

    /// Announces offline the users whose every server stopped renewing them, a page of them
    /// per script (Redis runs one script at a time), until none is due.
    pub async fn presence_sweep(&self) -> Result<(), EngineError> {
        const PAGE: u64 = 500;
        // A bound, so a sweep never runs for ever: 100,000 accounts per second.
        for _ in 0..200 {
            let mut call = self.presence_call(2);
            call.arg(self.keys.presence_of_prefix()).arg(PAGE);
            if self.presence_invoke::<u64>(call).await? < PAGE {
                break;
            }
        }
        Ok(())
    }

    /// Whether the tail is connected and current (the sequence restored after a restart).
    pub fn is_tailing(&self) -> bool {
        self.tailing.load(Ordering::Relaxed)
    }

    fn presence_marker(&self) -> String {
        format!("{}:presence-server:{}", self.keys.prefix, self.server_id)
    }

    /// Runs `write` and answers once the primary holds it or, with `--redis-wait-replicas`,
    /// once replicas hold it too (through the [`committer`]). A `script`'s source is loaded
    /// and the write sent again if Redis does not know it (a new primary after a failover,
    /// a restart): an `EVALSHA` refused ran nothing.
    async fn write<T: redis::FromRedisValue>(
        &self,
        write: redis::Cmd,
        script: Option<&'static str>,
        what: &'static str,
    ) -> Result<T, EngineError> {
        let failed = |err: redis::RedisError| {
            tracing::warn!(%err, "{what} in Redis failed");
            EngineError::Unavailable
        };
        let value = match &self.replicated {
            Some(committer) => {
                let (answer, answered) = tokio::sync::oneshot::channel();
                let pending = Pending {
                    cmd: write,
                    script,
                    retried: false,
                    what,
                    answer,
                };
                committer
                    .send(pending)
                    .await
                    .map_err(|_| EngineError::Closed)?;
                answered.await.map_err(|_| EngineError::Closed)??
            }
            None => {
                let mut conn = self.conn.clone();
                match write.query_async::<redis::Value>(&mut conn).await {
                    Err(err) if is_noscript(&err) && script.is_some() => {
                        load_script(&mut conn, script.unwrap_or_default())
                            .await
                            .map_err(failed)?;
                        write.query_async(&mut conn).await.map_err(failed)?
                    }
                    answer => answer.map_err(failed)?,
                }
            }
        };
        redis::from_redis_value(value).map_err(|err| {
            tracing::warn!(%err, "{what}: unexpected answer from Redis");
            EngineError::Unavailable
        })
    }

    /// Who is online, and a cursor the list is exact at: read in one transaction with the
    /// id sequence, and every presence change publishes its event in the same script.
    pub async fn presence(&self) -> Result<(u64, Vec<String>), EngineError> {
        let mut conn = self.conn.clone();
        let (seq, online): (Option<u64>, Vec<String>) = redis::pipe()
            .atomic()
            .get(&self.keys.seq)
            .zrange(self.keys.presence(), 0, -1)
            .query_async(&mut conn)
            .await
            .map_err(|err| {
                tracing::warn!(%err, "presence from Redis failed");
                EngineError::Unavailable
            })?;
        let mut online = online;
        online.sort();
        Ok((seq.unwrap_or(0), online))
    }

    /// A presence script with the keys and arguments all three begin with.
    fn presence_call(&self, which: usize) -> redis::ScriptInvocation<'_> {
        let mut call = self.presence_scripts[which].prepare_invoke();
        call.key(&self.keys.seq)
            .key(&self.keys.log)
            .key(self.keys.history(Stream::Presence))
            .key(self.keys.presence())
            .arg(now_ms())
            .arg(self.log_maxlen)
            .arg(self.history_max);
        call
    }

    async fn presence_invoke<T: redis::FromRedisValue>(
        &self,
        call: redis::ScriptInvocation<'_>,
    ) -> Result<T, EngineError> {
        let mut conn = self.conn.clone();
        call.invoke_async(&mut conn).await.map_err(|err| {
            tracing::warn!(%err, "presence in Redis failed");
            EngineError::Unavailable
        })
    }

    /// Accounts live in Redis in cluster mode (`SET NX`: two servers cannot both create one
    /// name). Durability is Redis': see the cluster notes in docs/scaling and the README.
    pub async fn create_account(&self, name: &str, hash: &str) -> Result<bool, EngineError> {
        let record = serde_json::json!({ "name": name, "hash": hash, "created": super::now_ms() });
        let mut set = redis::cmd("SET");
        set.arg(self.keys.account(name))
            .arg(record.to_string())
            .arg("NX");
        let created: Option<String> = self.write(set, None, "creating an account").await?;
        Ok(created.is_some())
    }

    pub async fn account(&self, name: &str) -> Result<Option<(String, String)>, EngineError> {
        let mut conn = self.conn.clone();
        let record: Option<String> = redis::cmd("GET")
            .arg(self.keys.account(name))
            .query_async(&mut conn)
            .await
            .map_err(|err| {
                tracing::warn!(%err, "reading an account from Redis failed");
                EngineError::Unavailable
            })?;
        Ok(record.and_then(|r| {
            let v: serde_json::Value = serde_json::from_str(&r).ok()?;
            Some((
                v["name"].as_str()?.to_owned(),
                v["hash"].as_str()?.to_owned(),
            ))
        }))
    }

    // Price alerts in Redis: per symbol, a hash of rules (id -> JSON with the account) and
    // a hash of the armed ones (HDEL is the atomic "fire once"); per account, its rule ids
    // and their symbols.
    async fn redis<T: redis::FromRedisValue>(
        &self,
        cmd: &mut redis::Cmd,
    ) -> Result<T, EngineError> {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn).await.map_err(|err| {
            tracing::warn!(%err, "price alerts in Redis failed");
            EngineError::Unavailable
        })
    }

    async fn alert_pipe(&self, pipe: &redis::Pipeline) -> Result<(), EngineError> {
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(|err| {
            tracing::warn!(%err, "price alerts in Redis failed");
            EngineError::Unavailable
        })
    }

    pub async fn alerts_on(&self, symbol: &str) -> Result<Vec<(String, AlertRule)>, EngineError> {
        let rules: Vec<(u64, String)> = self
            .redis(redis::cmd("HGETALL").arg(self.keys.alerts(symbol)))
            .await?;
        let armed: Vec<u64> = self
            .redis(redis::cmd("HKEYS").arg(self.keys.alerts_armed(symbol)))
            .await?;
        let mut out: Vec<(String, AlertRule)> = rules
            .into_iter()
            .filter_map(|(id, json)| {
                let r: StoredAlert = serde_json::from_str(&json).ok()?;
                Some((
                    r.user,
                    AlertRule {
                        id,
                        symbol: r.symbol,
                        op: r.op,
                        price: r.price,
                        armed: armed.contains(&id),
                    },
                ))
            })
            .collect();
        out.sort_by_key(|(_, r)| r.id);
        Ok(out)
    }

    pub async fn alerts_of(&self, user: &str) -> Result<Vec<AlertRule>, EngineError> {
        let mine: Vec<(u64, String)> = self
            .redis(redis::cmd("HGETALL").arg(self.keys.alerts_of(user)))
            .await?;
        let mut symbols: Vec<String> = mine.iter().map(|(_, s)| s.clone()).collect();
        symbols.sort();
        symbols.dedup();
        let mut out = Vec::new();
        for symbol in symbols {
            for (owner, rule) in self.alerts_on(&symbol).await? {
                if owner.eq_ignore_ascii_case(user) && mine.iter().any(|(id, _)| *id == rule.id) {
                    out.push(rule);
                }
            }
        }
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    pub async fn create_alert(&self, user: &str, a: &NewAlert) -> Result<AlertRule, EngineError> {
        let id: u64 = self
            .redis(redis::cmd("INCR").arg(self.keys.alert_seq()))
            .await?;
        self.put_alert(user, id, a).await?;
        Ok(a.rule(id))
    }

    async fn put_alert(&self, user: &str, id: u64, a: &NewAlert) -> Result<(), EngineError> {
        let json = serde_json::to_string(&StoredAlert {
            user: user.to_owned(),
            symbol: a.symbol.clone(),
            op: a.op.clone(),
            price: a.price,
        })
        .expect("alerts serialise");
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(self.keys.alerts(&a.symbol), id, json)
            .hset(self.keys.alerts_armed(&a.symbol), id, 1)
            .hset(self.keys.alerts_of(user), id, &a.symbol);
        self.alert_pipe(&pipe).await
    }

    async fn remove_alert(&self, user: &str, id: u64) -> Result<bool, EngineError> {
        let symbol: Option<String> = self
            .redis(redis::cmd("HGET").arg(self.keys.alerts_of(user)).arg(id))
            .await?;
        let Some(symbol) = symbol else {
            return Ok(false);
        };
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hdel(self.keys.alerts(&symbol), id)
            .hdel(self.keys.alerts_armed(&symbol), id)
            .hdel(self.keys.alerts_of(user), id);
        self.alert_pipe(&pipe).await?;
        Ok(true)
    }

    pub async fn update_alert(
        &self,
        user: &str,
        id: u64,
        a: &NewAlert,
    ) -> Result<Option<AlertRule>, EngineError> {
        if !self.remove_alert(user, id).await? {
            return Ok(None);
        }
        self.put_alert(user, id, a).await?;
        Ok(Some(a.rule(id)))
    }

    pub async fn delete_alert(&self, user: &str, id: u64) -> Result<bool, EngineError> {
        self.remove_alert(user, id).await
    }

    pub async fn set_armed(&self, symbol: &str, id: u64, armed: bool) -> Result<bool, EngineError> {
        let changed: u64 = if armed {
            // Only a rule that still exists is armed again.
            let exists: bool = self
                .redis(redis::cmd("HEXISTS").arg(self.keys.alerts(symbol)).arg(id))
                .await?;
            if !exists {
                return Ok(false);
            }
            self.redis(
                redis::cmd("HSET")
                    .arg(self.keys.alerts_armed(symbol))
                    .arg(id)
                    .arg(1),
            )
            .await?
        } else {
            self.redis(
                redis::cmd("HDEL")
                    .arg(self.keys.alerts_armed(symbol))
                    .arg(id),
            )
            .await?
        };
        Ok(changed == 1)
    }

    pub async fn ready(&self) -> Result<(), EngineError> {
        let mut conn = self.conn.clone();
        let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
        match pong {
            Ok(p) if p == "PONG" => {}
            Ok(other) => {
                tracing::warn!(answer = other, "unexpected PING answer from Redis");
                return Err(EngineError::Unavailable);
            }
            Err(err) => {
                tracing::warn!(%err, "Redis does not answer");
                return Err(EngineError::Unavailable);
            }
        }
        if !self.tailing.load(Ordering::Relaxed) {
            tracing::warn!("not yet caught up with the Redis log");
            return Err(EngineError::Unavailable);
        }
        Ok(())
    }

    pub async fn head(&self) -> Option<u64> {
        let mut conn = self.conn.clone();
        let seq: Option<u64> = redis::cmd("GET")
            .arg(&self.keys.seq)
            .query_async(&mut conn)
            .await
            .ok()?;
        seq
    }
}

/// Writes queued for the committer at most (more wait for room: publishers slow down
/// rather than the queue growing without bound).
const COMMIT_QUEUE: usize = 4096;

/// Writes sent ahead of one `WAIT` at most.
const COMMIT_BATCH: usize = 256;

/// A write waiting for replicas, and where its answer goes.
struct Pending {
    cmd: redis::Cmd,
    script: Option<&'static str>,
    /// Sent again once already (after loading its script).
    retried: bool,
    what: &'static str,
    answer: tokio::sync::oneshot::Sender<Result<redis::Value, EngineError>>,
}

fn is_noscript(err: &redis::RedisError) -> bool {
    err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

async fn load_script(conn: &mut Primary, source: &str) -> Result<(), redis::RedisError> {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(source)
        .query_async::<String>(conn)
        .await
        .map(|_| ())
}

/// Group commit for `--redis-wait-replicas`: sends every write waiting, then one `WAIT`,
/// in one pipeline, and answers them all when it returns; the writes arriving meanwhile
/// make the next batch. `WAIT` blocks its connection until the replicas have everything
/// that connection wrote before it, so one `WAIT` per write on a shared connection would
/// allow one publish per replica round trip (measured: 1,454 publishes/s against 16,496
/// without `WAIT`); one per batch covers them all. The writes and their `WAIT` go in one
/// pipeline because they must share one connection: a `WAIT` on another (say, after a
/// reconnect) would answer for nothing.
async fn committer(
    mut conn: Primary,
    mut queue: tokio::sync::mpsc::Receiver<Pending>,
    replicas: u32,
    wait: Duration,
) {
    let mut batch: Vec<Pending> = Vec::new();
    loop {
        if batch.is_empty() {
            match queue.recv().await {
                Some(p) => batch.push(p),
                None => return,
            }
        }
        while batch.len() < COMMIT_BATCH {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for p in &batch {
            pipe.add_command(p.cmd.clone());
        }
        pipe.cmd("WAIT").arg(replicas).arg(wait.as_millis() as u64);
        // The primary these writes go to, to check it is still the one afterwards.
        let generation = conn.generation().await;
        let answers: Vec<redis::RedisResult<redis::Value>> = match pipe.query_async(&mut conn).await
        {
            Ok(answers) => answers,
            Err(err) => {
                tracing::warn!(%err, writes = batch.len(), "writes to Redis failed");
                for p in batch.drain(..) {
                    let _ = p.answer.send(Err(EngineError::Unavailable));
                }
                continue;
            }
        };
        let mut answers = answers.into_iter();
        let mut confirmed = answers
            .next_back()
            .and_then(|r| r.ok())
            .and_then(|v| redis::from_redis_value::<u32>(v).ok())
            .unwrap_or(0);
        // A write refused with READONLY or MASTERDOWN comes back inside the pipeline's
        // answer (kept per write): the primary moved.
        if let Ok(generation) = generation {
            if let Some(Err(err)) = answers.clone().find(|a| a.is_err()) {
                conn.failed(generation, &err);
            }
        }
        // Replicas confirming is not enough while a failover is under way: see
        // `Primary::unchanged`.
        // Asked also when replicas fell short: a primary being replaced (its replicas
        // re-pointed) is dropped at once rather than after its connections break.
        let current = match generation {
            Ok(generation) => conn.unchanged(generation).await,
            Err(_) => false,
        };
        if confirmed >= replicas && !current {
            tracing::warn!(
                writes = batch.len(),
                "a Redis failover is under way: the writes are not acknowledged"
            );
            confirmed = 0;
        } else if confirmed < replicas {
            tracing::warn!(
                confirmed,
                wanted = replicas,
                writes = batch.len(),
                "too few Redis replicas confirmed the writes in time"
            );
        }
        let mut again = Vec::new();
        for (mut p, answer) in batch.drain(..).zip(answers) {
            let answer = match answer {
                Err(err) if is_noscript(&err) && !p.retried => {
                    if let Some(source) = p.script {
                        if load_script(&mut conn, source).await.is_ok() {
                            p.retried = true;
                            again.push(p);
                            continue;
                        }
                    }
                    tracing::warn!(%err, "{} in Redis failed", p.what);
                    Err(EngineError::Unavailable)
                }
                Err(err) => {
                    tracing::warn!(%err, "{} in Redis failed", p.what);
                    Err(EngineError::Unavailable)
                }
                Ok(_) if confirmed < replicas => {
                    metrics::counter!("tidings_redis_unconfirmed_writes_total").increment(1);
                    Err(EngineError::NotReplicated)
                }
                Ok(value) => Ok(value),
            };
            let _ = p.answer.send(answer);
        }
        batch = again;
    }
}

/// Follows `{p}:log` from the last id this server holds and appends to its window. On any
/// error it reconnects with backoff and continues from the same id, so an outage delays
/// delivery but leaves no gap (provided Redis kept the entries: see the AOF note in the
/// README). If Redis trimmed entries this server never saw, the window notices the hole and
/// clients resuming across it are reset.
async fn tail(
    primary: Primary,
    keys: Keys,
    log: Arc<EventLog>,
    tailing: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let raise = Script::new(RAISE_SEQ);
    let mut failures: u32 = 0;
    // The newest log entry read, readable or not (see below).
    let mut skipped: u64 = 0;
    'connect: loop {
        if failures > 0 {
            let delay = Duration::from_millis((100u64 << failures.min(4)).min(1000));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        // A dedicated connection: XREAD BLOCK would stall every other command sharing it.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(Duration::from_secs(10)));
        let connected = async {
            let (client, generation) = primary.client().await?;
            let conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .inspect_err(|err| primary.failed(generation, err))?;
            Ok::<_, redis::RedisError>((conn, generation))
        };
        let (mut conn, generation): (MultiplexedConnection, u64) = match connected.await {
            Ok(c) => c,
            Err(err) => {
                tailing.store(false, Ordering::Relaxed);
                failures += 1;
                tracing::warn!(%err, "cannot reach Redis; retrying");
                continue;
            }
        };
        if let Err(err) = raise
            .key(&keys.seq)
            .arg(log.latest())
            .invoke_async::<i64>(&mut conn)
            .await
        {
            tracing::warn!(%err, "cannot restore the id sequence; retrying");
            primary.failed(generation, &err);
            failures += 1;
            continue;
        }
        // Connected, and XREAD below continues from our last id: nothing can be skipped.
        tailing.store(true, Ordering::Relaxed);
        loop {
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(crate::log::BATCH)
                .arg("BLOCK")
                .arg(2000)
                .arg("STREAMS")
                .arg(&keys.log)
                .arg(format!("{}-0", log.latest().max(skipped)));
            let read = cmd.query_async::<Option<Vec<(String, Vec<Entry>)>>>(&mut conn);
            let reply = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = read => r,
            };
            match reply {
                Ok(reply) => {
                    if failures > 0 {
                        tracing::info!("Redis tail resumed");
                    }
                    failures = 0;
                    tailing.store(true, Ordering::Relaxed);
                    let entries: Vec<Entry> = reply
                        .into_iter()
                        .flatten()
                        .flat_map(|(_, entries)| entries)
                        .collect();
                    // An entry this server cannot read (another version's stream, a damaged
                    // record) is read past, not read again and again: the next XREAD starts
                    // after the newest entry returned. The log sees the hole and resets
                    // its readers, who reload from history.
                    if let Some(newest) = entries
                        .last()
                        .and_then(|(id, _)| id.split('-').next()?.parse::<u64>().ok())
                    {
                        skipped = skipped.max(newest);
                    }
                    let n = entries.len();
                    let mut read = 0;
                    let mut events: Vec<Arc<StoredEvent>> = Vec::with_capacity(n);
                    for entry in entries.into_iter().filter_map(parse_entry) {
                        read += 1;
                        match entry {
                            LogEntry::Event(e) => events.push(Arc::new(e)),
                            LogEntry::Gap { to, .. } => {
                                log.append(&events);
                                events.clear();
                                log.skip_to(to);
                            }
                        }
                    }
                    if read < n {
                        tracing::error!(
                            unreadable = n - read,
                            "skipping log entries this server cannot read"
                        );
                    }
                    log.append(&events);
                }
                Err(err) => {
                    tracing::warn!(%err, "Redis tail interrupted; reconnecting");
                    primary.failed(generation, &err);
                    tailing.store(false, Ordering::Relaxed);
                    failures += 1;
                    continue 'connect;
                }
            }
        }
    }
}

/// Keeps (or tries to take) the demo lease every few seconds. The lease outlives a renewal
/// period three times over, so one slow renewal does not hand the simulators over, and a
/// dead leader is replaced within its expiry.
async fn lease(
    mut conn: Primary,
    key: String,
    leader: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let me = format!("{:016x}", rand::random::<u64>());
    let script = Script::new(LEASE);
    loop {
        let won: Result<i64, _> = script
            .key(&key)
            .arg(&me)
            .arg(9000)
            .invoke_async(&mut conn)
            .await;
        let now = matches!(won, Ok(1));
        if now != leader.swap(now, Ordering::Relaxed) {
            tracing::info!(leader = now, "demo lease changed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse() {
        let e = parse_entry((
            "12-0".into(),
            vec!["s".into(), "chat".into(), "e".into(), "{}".into()],
        ));
        let Some(LogEntry::Event(e)) = e else {
            panic!("an event")
        };
        assert_eq!((e.id, e.stream), (12, Stream::Chat));
        assert!(matches!(
            parse_entry(("40-0".into(), vec!["gap".into(), "30".into()])),
            Some(LogEntry::Gap { from: 30, to: 40 })
        ));
        assert!(parse_entry(("x".into(), vec![])).is_none());
    }
}
