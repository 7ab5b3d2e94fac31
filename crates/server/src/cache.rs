//! Redis, optional (`--redis-url`): the cluster's second channel and its shared cache.
//!
//! - **Pub/sub**: every [`Event`] is published on `<prefix>events`; each node's subscriber hands
//!   it to `cluster`, as the database's `NOTIFY` does (on a database without notifications it is
//!   the only channel that pushes).
//! - **Sessions**: what the guard would otherwise read from the database when it first sees a
//!   token or re-checks one (the session, its user's state and roles) is kept under
//!   `<prefix>s:<sessionId>`, read in one `MGET` with two guards written by revocations: a
//!   tombstone `<prefix>x:<sessionId>` (logout) and a per-user version `<prefix>u:<org>:<user>`
//!   (disable, password, roles). An entry written from a database read that a revocation
//!   overtook carries the old user version, or finds the tombstone, so it is never served.
//! - **Login lockouts**: a refusal decided by the database is kept until it ends, so every
//!   node refuses at once without counting again (the count stays in the database).
//!
//! Redis is never needed for correctness. Every call has a short timeout; after a failure
//! Redis is left alone for [`RETRY_AFTER`] (requests go to the database), and `/v1/status` says
//! `"cache": "ERROR"`. A revocation that could not reach Redis leaves entries that may be stale:
//! the node remembers it and, before it trusts Redis again, bumps the generation every entry
//! carries (`<prefix>generation`), dropping them all. Entries also expire after [`ENTRY_TTL`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::cluster::{Event, Inbound};

/// How long one Redis call may take before the database is asked instead.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// How long Redis is left alone after a failure.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// The longest a cached session lives in Redis.
const ENTRY_TTL_SECS: u64 = 60;
pub const ENTRY_TTL: Duration = Duration::from_secs(ENTRY_TTL_SECS);
/// A user version outlives every entry written before it changed (which then all carry an
/// older version); once it expires, reading 0 again only makes newer entries misses.
const USER_VERSION_TTL_SECS: u64 = 10 * ENTRY_TTL_SECS;

/// A session as the guard needs it, cached for every node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedSession {
    pub csrf: String,
    pub org_uid: String,
    pub user_name: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub user_may_log_in: bool,
    pub display_name: Option<String>,
    pub email_address: Option<String>,
    pub roles: Vec<(String, String)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    /// The generation and user version read before the database was.
    generation: i64,
    uv: i64,
    s: CachedSession,
}

/// What a lookup found.
pub enum Lookup {
    /// A current entry, and the stamp to write it back with.
    Hit(CachedSession, Stamp),
    /// Not cached (or stale): read the database, then [`Redis::put_session`] with this stamp.
    Miss(Stamp),
    /// The session was ended (a logout on some node).
    Ended,
    /// Redis did not answer: the database alone decides, and nothing is written back.
    Down,
}

/// The generation and user version a miss saw; an entry is written with them.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    generation: i64,
    uv: i64,
}

pub struct Redis {
    client: redis::Client,
    prefix: String,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    /// Until when Redis is left alone after a failure.
    down_until: Mutex<Option<Instant>>,
    /// A revocation failed to reach Redis: its entries may be stale.
    dirty: AtomicBool,
}

fn int(v: Option<String>) -> i64 {
    v.and_then(|s| s.parse().ok()).unwrap_or(0)
}

impl Redis {
    /// Checks the URL; connects lazily (a node starts, and serves, while Redis is down).
    pub fn new(url: &str, prefix: &str) -> Result<Redis, String> {
        let client = redis::Client::open(url).map_err(|e| format!("bad Redis URL: {e}"))?;
        Ok(Redis {
            client,
            prefix: prefix.to_string(),
            conn: tokio::sync::Mutex::new(None),
            down_until: Mutex::new(None),
            dirty: AtomicBool::new(false),
        })
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn channel(&self) -> String {
        self.key("events")
    }

    fn resting(&self) -> bool {
        self.down_until
            .lock()
            .ok()
            .and_then(|d| *d)
            .is_some_and(|until| Instant::now() < until)
    }

    fn failed(&self, what: &str, e: &str) {
        let mut first = false;
        if let Ok(mut d) = self.down_until.lock() {
            first = d.is_none_or(|until| Instant::now() >= until);
            *d = Some(Instant::now() + RETRY_AFTER);
        }
        if first {
            tracing::warn!(error = %e, "Redis {what} failed; using the database alone for a while");
        }
    }

    /// The shared connection, made on first use.
    async fn connection(&self) -> Result<ConnectionManager, String> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1);
        let c = tokio::time::timeout(
            CALL_TIMEOUT * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs one command (or pipeline) with the timeout, unless Redis is resting; a node with
    /// stale entries first drops them all.
    async fn run<T: redis::FromRedisValue>(
        &self,
        what: &str,
        cmd: impl FnOnce(&mut redis::Pipeline),
    ) -> Option<T> {
        if self.resting() {
            return None;
        }
        let mut conn = match self.connection().await {
            Ok(c) => c,
            Err(e) => {
                self.failed(what, &e);
                return None;
            }
        };
        if self.dirty.load(Ordering::Acquire) {
            if !self.bump_generation().await {
                self.failed(what, "generation bump failed");
                return None;
            }
            self.dirty.store(false, Ordering::Release);
        }
        let mut pipe = redis::pipe();
        cmd(&mut pipe);
        match tokio::time::timeout(CALL_TIMEOUT, pipe.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.failed(what, &e.to_string());
                None
            }
            Err(_) => {
                self.failed(what, "timed out");
                None
            }
        }
    }

    /// Drops every cached session (`INCR <prefix>gen`); false if Redis did not answer.
    async fn bump_generation(&self) -> bool {
        let Ok(mut conn) = self.connection().await else {
            return false;
        };
        matches!(
            tokio::time::timeout(
                CALL_TIMEOUT,
                redis::cmd("INCR")
                    .arg(self.key("gen"))
                    .query_async::<i64>(&mut conn)
            )
            .await,
            Ok(Ok(_))
        )
    }

    /// For `/v1/status`: does Redis answer now?
    pub async fn ping(&self) -> bool {
        let Ok(mut conn) = self.connection().await else {
            return false;
        };
        matches!(
            tokio::time::timeout(
                CALL_TIMEOUT,
                redis::cmd("PING").query_async::<String>(&mut conn)
            )
            .await,
            Ok(Ok(_))
        )
    }

    /// The cached session, if it is current.
    pub async fn session(&self, session_id: &str, org: &str, user: &str) -> Lookup {
        let keys = [
            self.key("gen"),
            self.key(&format!("u:{org}:{user}")),
            self.key(&format!("x:{session_id}")),
            self.key(&format!("s:{session_id}")),
        ];
        let got: Option<(Vec<Option<String>>,)> = self
            .run("session read", |p| {
                p.cmd("MGET").arg(&keys[..]);
            })
            .await;
        let Some((mut v,)) = got else {
            return Lookup::Down;
        };
        v.resize(4, None);
        let entry = v.pop().flatten();
        let ended = v.pop().flatten().is_some();
        let uv = int(v.pop().flatten());
        let generation = int(v.pop().flatten());
        if ended {
            return Lookup::Ended;
        }
        match entry.and_then(|e| serde_json::from_str::<Stored>(&e).ok()) {
            Some(e) if e.generation == generation && e.uv == uv => {
                Lookup::Hit(e.s, Stamp { generation, uv })
            }
            _ => Lookup::Miss(Stamp { generation, uv }),
        }
    }

    /// Caches a session read from the database after a miss with `stamp`.
    pub async fn put_session(&self, session_id: &str, stamp: Stamp, s: CachedSession) {
        let Ok(text) = serde_json::to_string(&Stored {
            generation: stamp.generation,
            uv: stamp.uv,
            s,
        }) else {
            return;
        };
        let key = self.key(&format!("s:{session_id}"));
        let _: Option<()> = self
            .run("session write", |p| {
                p.cmd("SET")
                    .arg(&key)
                    .arg(text)
                    .arg("EX")
                    .arg(ENTRY_TTL_SECS)
                    .ignore();
            })
            .await;
    }

    /// Drops what `event` makes stale and tells the other nodes. A failure marks this node's
    /// view of Redis as dirty (see the module's notes).
    pub async fn invalidate_and_publish(&self, event: &Event, payload: &str) {
        let channel = self.channel();
        let done: Option<()> = self
            .run("invalidation", |p| {
                match event {
                    Event::Session { id } => {
                        // Longer than any entry lives: an entry written after this by a read
                        // that began before it still finds the tombstone.
                        p.cmd("SET")
                            .arg(self.key(&format!("x:{id}")))
                            .arg(1)
                            .arg("EX")
                            .arg(ENTRY_TTL_SECS * 2)
                            .ignore();
                        p.cmd("DEL").arg(self.key(&format!("s:{id}"))).ignore();
                    }
                    Event::User { org, user } => {
                        let key = self.key(&format!("u:{org}:{user}"));
                        p.cmd("INCR").arg(&key).ignore();
                        p.cmd("EXPIRE")
                            .arg(&key)
                            .arg(USER_VERSION_TTL_SECS)
                            .ignore();
                    }
                    Event::Metadata | Event::Workflow => {}
                }
                p.cmd("PUBLISH").arg(&channel).arg(payload).ignore();
            })
            .await;
        if done.is_none() && !matches!(event, Event::Metadata | Event::Workflow) {
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// Applies an event another process sent without Redis (the CLI through `NOTIFY`) to the
    /// shared cache, without publishing it again.
    pub async fn invalidate(&self, event: &Event) {
        let done: Option<()> = self
            .run("invalidation", |p| match event {
                Event::Session { id } => {
                    p.cmd("SET")
                        .arg(self.key(&format!("x:{id}")))
                        .arg(1)
                        .arg("EX")
                        .arg(ENTRY_TTL_SECS * 2)
                        .ignore();
                }
                Event::User { org, user } => {
                    let key = self.key(&format!("u:{org}:{user}"));
                    p.cmd("INCR").arg(&key).ignore();
                    p.cmd("EXPIRE")
                        .arg(&key)
                        .arg(USER_VERSION_TTL_SECS)
                        .ignore();
                }
                Event::Metadata | Event::Workflow => {
                    p.cmd("EXISTS").arg(self.key("gen")).ignore();
                }
            })
            .await;
        if done.is_none() && !matches!(event, Event::Metadata | Event::Workflow) {
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// A login lockout under any of `keys`: seconds until it ends.
    pub async fn lockout(&self, keys: &[String], now_secs: i64) -> Option<i64> {
        let keys: Vec<String> = keys.iter().map(|k| self.key(&format!("l:{k}"))).collect();
        let got: Option<(Vec<Option<String>>,)> = self
            .run("lockout read", |p| {
                p.cmd("MGET").arg(&keys[..]);
            })
            .await;
        got?.0
            .into_iter()
            .flatten()
            .filter_map(|until| until.parse::<i64>().ok())
            .map(|until| until - now_secs)
            .filter(|left| *left > 0)
            .max()
    }

    /// Notes a lockout the database decided, until `until_secs`.
    pub async fn lock_out(&self, keys: &[String], now_secs: i64, until_secs: i64) {
        let ttl = (until_secs - now_secs).max(1);
        let _: Option<()> = self
            .run("lockout write", |p| {
                for k in keys {
                    p.cmd("SET")
                        .arg(self.key(&format!("l:{k}")))
                        .arg(until_secs)
                        .arg("EX")
                        .arg(ttl)
                        .ignore();
                }
            })
            .await;
    }

    /// The subscriber: hands each message to `inbox`, and a resync after each (re)subscription.
    /// Runs until aborted.
    pub fn spawn(
        self: &std::sync::Arc<Self>,
        inbox: mpsc::UnboundedSender<Inbound>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let me = self.clone();
        let sub = tokio::spawn(async move {
            let mut logged = false;
            loop {
                match me.subscribe(&inbox).await {
                    Ok(()) => logged = false,
                    Err(e) if !logged => {
                        tracing::warn!(error = %e, "Redis subscription failed; retrying");
                        logged = true;
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        // A node whose invalidation failed drops every entry as soon as Redis answers again
        // (within 200 ms, not resting after failures as requests do), even if it has no request
        // that would make it ask.
        let me = self.clone();
        let heal = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                if me.dirty.load(Ordering::Acquire) && me.bump_generation().await {
                    me.dirty.store(false, Ordering::Release);
                    if let Ok(mut d) = me.down_until.lock() {
                        *d = None;
                    }
                    tracing::info!("Redis answers again: its cached sessions were dropped");
                }
            }
        });
        vec![sub, heal]
    }

    async fn subscribe(&self, inbox: &mpsc::UnboundedSender<Inbound>) -> Result<(), String> {
        let mut pubsub = tokio::time::timeout(CALL_TIMEOUT * 2, self.client.get_async_pubsub())
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        pubsub
            .subscribe(self.channel())
            .await
            .map_err(|e| e.to_string())?;
        let _ = inbox.send(Inbound::Resync);
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            if let Ok(payload) = msg.get_payload::<String>() {
                let _ = inbox.send(Inbound::Payload {
                    text: payload,
                    via_database: false,
                });
            }
        }
        Err("the subscription connection closed".into())
    }
}
