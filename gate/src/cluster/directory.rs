//! The cluster's state in Redis: the gate registry and the session
//! directory, changed only by the Lua scripts of `scripts` (each
//! runs atomically on the Redis server, so every change is a
//! compare-and-set).
//!
//! Round trips of one login with no previous session: [`Directory::begin`]
//! on the login node (lock, target gate, old record: one script),
//! [`Directory::commit`] on the gate (record and unlock: one script), and
//! later [`Directory::end`] when the session ends: three in all.
//!
//! Redis is never on a client's request path: only logins, session ends and
//! the registry heartbeat touch it. Every call has a deadline
//! ([`DirectoryOptions::timeout`]); a failed call is a [`DirError`] the
//! caller turns into a refusal (`503` for a login), never a hang.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use redis::aio::MultiplexedConnection;

use super::record::{Keys, Record};
use super::redis_link::{RedisLink, millis};
use super::scripts::Scripts;

/// Why a directory call failed.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within the deadline.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// An answer of an unexpected shape (another program wrote the keys).
    #[error("unexpected answer from redis: {0}")]
    Shape(String),
}

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct DirectoryOptions {
    /// `redis://[user:password@]host:port[/db]`, or
    /// `redis+sentinel://[user:password@]host:port[,host:port…]/master[/db]`
    /// (see [`super::redis_link`]).
    pub url: String,
    /// Key prefix.
    pub prefix: String,
    /// Deadline of every call.
    pub timeout: Duration,
    /// How long logins wait after the directory may have lost data: the gates' lease (`cluster.lease`), within which
    /// every live gate registers again and restores its records.
    pub fence: Duration,
}

/// The registry entry of a gate node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateEntry {
    /// The gate's node id.
    pub node: String,
    /// Its boot epoch.
    pub epoch: u64,
    /// The address TCP clients connect to.
    pub client: String,
    /// The URL WebSocket clients connect to (`ws://…` or `wss://…`;
    /// empty: none).
    pub web: String,
    /// The address backend services dial (empty: no backend listener).
    pub backend: String,
    /// The address login nodes dial for the control link.
    pub control: String,
    /// The address of its operations listener (empty: none).
    pub ops: String,
    /// Sessions on it at the last heartbeat.
    pub online: u64,
    /// Whether it refuses new sessions (shutting down, draining).
    pub draining: bool,
}

/// A registered gate, as [`Directory::gates`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateSummary {
    /// Its server name.
    pub server: String,
    /// The address TCP clients connect to.
    pub client: String,
    /// The WebSocket URL (empty: none).
    pub web: String,
    /// The address services dial (empty: none).
    pub backend: String,
    /// Whether it refuses new sessions.
    pub draining: bool,
}

/// What [`Directory::register`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// The entry was there with our epoch; its lease is renewed.
    Renewed,
    /// There was no entry (first registration, a lapsed lease, or a Redis
    /// that lost its data): it is written now.
    Created,
    /// Another boot of the server name holds a live lease.
    Taken {
        /// That gate's node id.
        node: String,
        /// Its epoch.
        epoch: u64,
    },
}

/// A gate as a login node needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Boot epoch.
    pub epoch: u64,
    /// Control address.
    pub control: String,
    /// Draining.
    pub draining: bool,
}

/// The session a uid had when a login began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldSession {
    /// The record, as stored (passed back to [`Directory::commit`]).
    pub raw: Bytes,
    /// The record, parsed (`None` if it was malformed: then it is replaced).
    pub record: Option<Record>,
    /// The gate it is on, if that gate's lease is live **and** its epoch is
    /// the record's: only then can the session still exist.
    pub live_on: Option<String>,
}

/// What [`Directory::begin`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// Another login of the uid holds the lock (`406`).
    Busy,
    /// The directory may have lost data (Redis restarted, or failed over):
    /// no login is placed until the gates have restored their sessions; no
    /// lock taken; `503`, try again after about this long.
    Fenced(Duration),
    /// The lock is ours (or multilogin is on).
    Ready {
        /// The gate serving the requested server name, if registered.
        target: Option<Target>,
        /// The uid's current session, if it has a record.
        old: Option<OldSession>,
    },
}

/// What [`Directory::commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The new record is written and the lock released.
    Done,
    /// Another session's record is there: a concurrent login won.
    Taken,
    /// The login's lock expired and another login took it.
    LockLost,
}

/// How Redis calls went, for the metrics.
#[derive(Debug, Clone)]
pub struct RedisMetrics {
    /// Seconds per call (failed ones included).
    pub latency: prometheus_client::metrics::histogram::Histogram,
    /// Calls that failed or missed their deadline.
    pub errors: prometheus_client::metrics::counter::Counter,
}

impl Default for RedisMetrics {
    fn default() -> Self {
        RedisMetrics {
            // 50 µs .. ~1.6 s.
            latency: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 16),
            ),
            errors: prometheus_client::metrics::counter::Counter::default(),
        }
    }
}

/// The registry and the session directory. Cheap to clone.
#[derive(Clone)]
pub struct Directory {
    link: Arc<RedisLink>,
    keys: Keys,
    fence: Duration,
    timeout: Duration,
    pub(super) scripts: Arc<Scripts>,
    metrics: RedisMetrics,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("prefix", &self.keys.prefix())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

pub(super) fn text(v: &Value) -> Option<Bytes> {
    match v {
        Value::BulkString(b) => Some(Bytes::copy_from_slice(b)),
        Value::SimpleString(s) => Some(Bytes::copy_from_slice(s.as_bytes())),
        Value::Int(i) => Some(Bytes::from(i.to_string())),
        Value::Nil => Some(Bytes::new()),
        _ => None,
    }
}

pub(super) fn parse_u64(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

pub(super) fn shape(what: &str, v: &Value) -> DirError {
    DirError::Shape(format!("{what}: {v:?}"))
}

impl Directory {
    /// A directory on the Redis at `opts.url`. Connects lazily: a node
    /// starts while Redis is down and every call fails fast until it is
    /// back; after a failed call the next one connects again (through the
    /// Sentinels, if the address names them), checking the directory for
    /// lost data first.
    pub fn new(opts: &DirectoryOptions) -> Result<Directory, DirError> {
        let keys = Keys::new(opts.prefix.clone());
        let link = RedisLink::new(&opts.url, opts.timeout, keys.clone(), opts.fence)?;
        Ok(Directory {
            link: Arc::new(link),
            fence: opts.fence,
            keys,
            timeout: opts.timeout,
            metrics: RedisMetrics::default(),
            scripts: Arc::new(Scripts::new()),
        })
    }

    /// The key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The Redis call metrics of this directory (and its clones).
    pub fn metrics(&self) -> &RedisMetrics {
        &self.metrics
    }

    /// Every Redis call goes through here: one deadline, and the latency
    /// and error metrics.
    async fn call<T, F>(&self, send: impl FnOnce(MultiplexedConnection) -> F) -> Result<T, DirError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let started = std::time::Instant::now();
        let attempt = async {
            let (n, conn) = self.link.connection(&self.scripts).await?;
            let result = send(conn).await;
            if result.is_err() {
                // Whatever went wrong (a dropped connection, a master
                // demoted to a read-only replica), the next call starts
                // on a new connection.
                self.link.failed(n).await;
            }
            result
        };
        let result = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result.map_err(DirError::from),
            Err(_) => Err(DirError::Timeout(self.timeout)),
        };
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.metrics.errors.inc();
        }
        result
    }

    pub(super) async fn run(&self, inv: redis::ScriptInvocation<'_>) -> Result<Value, DirError> {
        self.call(|mut conn| async move { inv.invoke_async::<Value>(&mut conn).await })
            .await
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, DirError> {
        self.call(|mut conn| async move { cmd.query_async::<T>(&mut conn).await })
            .await
    }

    /// Whether Redis answers a `PING` within the deadline.
    pub async fn ping(&self) -> Result<(), DirError> {
        self.query::<Value>(redis::cmd("PING")).await.map(drop)
    }

    /// Writes or renews the registry entry of `server` under a lease. With
    /// `takeover`, an entry of another boot of the same node id is
    /// replaced (the node restarted); an entry of another node id is never
    /// replaced while its lease lives.
    pub async fn register(
        &self,
        server: &[u8],
        entry: &GateEntry,
        lease: Duration,
        takeover: bool,
    ) -> Result<Registered, DirError> {
        let mut inv = self.scripts.register.key(self.keys.gate(server));
        inv.key(self.keys.intact())
            .key(self.keys.fence())
            .key(self.keys.gates())
            .arg(&entry.node)
            .arg(entry.epoch.to_string())
            .arg(&entry.client)
            .arg(&entry.control)
            .arg(entry.online.to_string())
            .arg(if entry.draining { "1" } else { "0" })
            .arg(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1))
            .arg(if takeover { "1" } else { "0" })
            .arg(&entry.ops)
            .arg(millis(self.fence))
            .arg(&entry.web)
            .arg(server)
            .arg(&entry.backend);
        let v = self.run(inv).await?;
        let Value::Array(items) = &v else {
            return Err(shape("register", &v));
        };
        match items.first() {
            Some(Value::Int(1)) => Ok(Registered::Renewed),
            Some(Value::Int(2)) => Ok(Registered::Created),
            Some(Value::Int(0)) => {
                let node = items.get(1).and_then(text).unwrap_or_default();
                let epoch = items.get(2).and_then(text).unwrap_or_default();
                Ok(Registered::Taken {
                    node: String::from_utf8_lossy(&node).into_owned(),
                    epoch: parse_u64(&epoch).unwrap_or(0),
                })
            }
            _ => Err(shape("register", &v)),
        }
    }

    /// Deletes the registry entry of `server` if it is still `epoch`'s.
    pub async fn unregister(&self, server: &[u8], epoch: u64) -> Result<(), DirError> {
        let mut inv = self.scripts.unregister.key(self.keys.gate(server));
        inv.key(self.keys.gates())
            .arg(epoch.to_string())
            .arg(server);
        self.run(inv).await.map(drop)
    }

    /// Every registered gate (one round trip), in no particular order.
    pub async fn gates(&self) -> Result<Vec<GateSummary>, DirError> {
        let mut inv = self.scripts.gates.key(self.keys.gates());
        inv.arg(self.keys.prefix());
        let v = self.run(inv).await?;
        let Value::Array(items) = &v else {
            return Err(shape("gates", &v));
        };
        let s = |v: &Value| text(v).map(|b| String::from_utf8_lossy(&b).into_owned());
        items
            .chunks(5)
            .map(|g| match g {
                [name, client, web, backend, draining] => Ok(GateSummary {
                    server: s(name).unwrap_or_default(),
                    client: s(client).unwrap_or_default(),
                    web: s(web).unwrap_or_default(),
                    backend: s(backend).unwrap_or_default(),
                    draining: s(draining).as_deref() == Some("1"),
                }),
                _ => Err(shape("gates", &v)),
            })
            .collect()
    }

    /// The registry entry of `server`, if its lease is live.
    pub async fn gate(&self, server: &[u8]) -> Result<Option<GateEntry>, DirError> {
        let cmd = redis::cmd("HGETALL").arg(self.keys.gate(server)).clone();
        let v: Value = self.query(cmd).await?;
        let pairs: Vec<(Bytes, Bytes)> = match &v {
            Value::Array(items) => items
                .chunks(2)
                .filter_map(|kv| Some((text(kv.first()?)?, text(kv.get(1)?)?)))
                .collect(),
            Value::Map(items) => items
                .iter()
                .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
                .collect(),
            _ => return Err(shape("gate", &v)),
        };
        if pairs.is_empty() {
            return Ok(None);
        }
        let field = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name.as_bytes())
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        Ok(Some(GateEntry {
            node: field("node"),
            epoch: field("epoch").parse().unwrap_or(0),
            client: field("client"),
            web: field("web"),
            backend: field("backend"),
            control: field("control"),
            ops: field("ops"),
            online: field("online").parse().unwrap_or(0),
            draining: field("draining") == "1",
        }))
    }

    /// The first step of a login of `uid` on `server`: takes the uid's lock
    /// (unless `token` is empty: multilogin), reads the target gate, the
    /// uid's current record and whether that record's gate still lives.
    pub async fn begin(
        &self,
        uid: &[u8],
        server: &[u8],
        token: &str,
        lock_ttl: Duration,
    ) -> Result<Begin, DirError> {
        let mut inv = self.scripts.begin.prepare_invoke();
        inv.key(self.keys.lock(uid))
            .key(self.keys.user(uid))
            .key(self.keys.gate(server))
            .key(self.keys.intact())
            .key(self.keys.fence())
            .arg(token)
            .arg(millis(lock_ttl))
            .arg(self.keys.prefix())
            .arg(millis(self.fence));
        let v = self.run(inv).await?;
        let Value::Array(items) = &v else {
            return Err(shape("begin", &v));
        };
        let field = |i: usize| items.get(i).and_then(text);
        match field(0).as_deref() {
            Some(b"busy") => return Ok(Begin::Busy),
            Some(b"fenced") => {
                let left = field(1).and_then(|b| parse_u64(&b)).unwrap_or(0);
                return Ok(Begin::Fenced(Duration::from_millis(left)));
            }
            Some(b"ok") if items.len() == 7 => {}
            _ => return Err(shape("begin", &v)),
        }
        let (t_epoch, t_control, t_draining) = (
            field(1).unwrap_or_default(),
            field(2).unwrap_or_default(),
            field(3).unwrap_or_default(),
        );
        let target = parse_u64(&t_epoch).map(|epoch| Target {
            epoch,
            control: String::from_utf8_lossy(&t_control).into_owned(),
            draining: &t_draining[..] == b"1",
        });
        let raw = field(4).unwrap_or_default();
        let old = if raw.is_empty() {
            None
        } else {
            let record = Record::decode(&raw);
            let o_epoch = field(5).and_then(|e| parse_u64(&e));
            let live_on = match (&record, o_epoch) {
                (Some(r), Some(e)) if r.epoch == e => {
                    Some(String::from_utf8_lossy(&field(6).unwrap_or_default()).into_owned())
                }
                _ => None,
            };
            Some(OldSession {
                raw,
                record,
                live_on,
            })
        };
        Ok(Begin::Ready { target, old })
    }

    /// Releases the lock of `uid` if `token` still holds it (a login that
    /// did not reach [`Directory::commit`]).
    pub async fn release(&self, uid: &[u8], token: &str) -> Result<(), DirError> {
        if token.is_empty() {
            return Ok(());
        }
        let mut inv = self.scripts.release.key(self.keys.lock(uid));
        inv.arg(token);
        self.run(inv).await.map(drop)
    }

    /// Records `record` as the session of `uid` if the current record is
    /// `expected` (empty: none) and `token` (if any) still holds the lock,
    /// and releases the lock.
    pub async fn commit(
        &self,
        uid: &[u8],
        record: &Record,
        expected: &[u8],
        token: &[u8],
    ) -> Result<Commit, DirError> {
        let mut inv = self.scripts.commit.key(self.keys.user(uid));
        inv.key(self.keys.lock(uid))
            .arg(record.encode())
            .arg(expected)
            .arg(token);
        let v = self.run(inv).await?;
        match text(&v).as_deref() {
            Some(b"ok") => Ok(Commit::Done),
            Some(b"taken") => Ok(Commit::Taken),
            Some(b"lock") => Ok(Commit::LockLost),
            _ => Err(shape("commit", &v)),
        }
    }

    /// Removes the record of `uid` if it is `record`. Returns whether it
    /// was.
    pub async fn end(&self, uid: &[u8], record: &Record) -> Result<bool, DirError> {
        let mut inv = self.scripts.end.key(self.keys.user(uid));
        inv.arg(record.encode());
        let v = self.run(inv).await?;
        Ok(matches!(v, Value::Int(1)))
    }

    /// Keeps the fence up for at least another `fence` (a gate restoring
    /// its records after the directory lost them).
    pub async fn extend_fence(&self) -> Result<(), DirError> {
        let mut inv = self.scripts.fence.key(self.keys.intact());
        inv.key(self.keys.fence())
            .arg("")
            .arg(millis(self.fence))
            .arg("extend");
        self.run(inv).await.map(drop)
    }

    /// How often this process found Redis to be another server than the
    /// one before (a restart or a failover): see [`super::redis_link`].
    pub fn server_changes(&self) -> u64 {
        self.link.server_changes()
    }

    /// Whether the fence is up, and for how much longer (tools and tests).
    pub async fn fenced(&self) -> Result<Option<Duration>, DirError> {
        let cmd = redis::cmd("PTTL").arg(self.keys.fence()).clone();
        let left: i64 = self.query(cmd).await?;
        Ok(u64::try_from(left).ok().map(Duration::from_millis))
    }

    /// Writes `record` back for `uid` if it has none, or, while the fence is
    /// up, if it has another (stale) one. `Ok(false)`: another session's
    /// record is there (a login placed while this gate's lease had lapsed).
    pub async fn restore(&self, uid: &[u8], record: &Record) -> Result<bool, DirError> {
        let mut inv = self.scripts.restore.key(self.keys.user(uid));
        inv.key(self.keys.fence()).arg(record.encode());
        let v = self.run(inv).await?;
        Ok(matches!(v, Value::Int(1) | Value::Int(2)))
    }

    /// Deletes the records of server `server` left by boots other than
    /// `epoch` (a gate that crashed and came back): walks the directory
    /// with `SCAN` in batches of `batch` keys, deleting each stale record
    /// only if it is still the same (compare-and-delete). Returns how many
    /// it deleted.
    pub async fn sweep_stale(
        &self,
        server: &[u8],
        epoch: u64,
        batch: usize,
    ) -> Result<usize, DirError> {
        let mut pattern = self.keys.user(b"");
        pattern.push(b'*');
        let prefix_len = pattern.len() - 1;
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let cmd = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(batch)
                .clone();
            let (next, keys): (u64, Vec<Vec<u8>>) = self.query(cmd).await?;
            for key in keys {
                let uid = &key[prefix_len..];
                let Some(record) = self.record(uid).await? else {
                    continue;
                };
                if record.server == server
                    && record.epoch != epoch
                    && self.end(uid, &record).await?
                {
                    deleted += 1;
                }
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// The record of `uid`, if any (for tools and tests).
    pub async fn record(&self, uid: &[u8]) -> Result<Option<Record>, DirError> {
        let cmd = redis::cmd("GET").arg(self.keys.user(uid)).clone();
        let v: Value = self.query(cmd).await?;
        Ok(text(&v).and_then(|b| Record::decode(&b)))
    }
}
