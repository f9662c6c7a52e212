//! The connection to Redis: one multiplexed connection, made again after
//! any failure, found directly or through Redis Sentinel, and checked for
//! lost data before its first use.
//!
//! # Where Redis is
//!
//! `redis://[user:password@]host:port[/db]` names the server itself.
//! `redis+sentinel://[user:password@]host:port[,host:port…]/master[/db]`
//! names Sentinels and the master they watch: every new connection asks
//! the Sentinels for the current master (and checks its role), so after a
//! failover the next connection reaches the promoted replica by itself.
//! The credentials and database are the master's; the Sentinels are asked
//! without them.
//!
//! # Lost data
//!
//! Redis replication is asynchronous and a restarted Redis may come back
//! empty: in both cases the directory can miss the records of sessions
//! that still live, and a login placed then would make a second session
//! for the uid. Every new connection therefore compares the server's run
//! id (it changes with every start of a Redis process, so with every
//! restart and every failover) with the one the directory was last
//! checked on (`{prefix}intact`, see [`super::record`]). A different one,
//! or none, raises the fence (`{prefix}fence`, for one lease): until it
//! lapses every login is answered `503` and retried (a record may be
//! missing, and one that is there may be stale), while every live gate
//! registers again and writes its sessions back, replacing stale records
//! (a gate restoring keeps the fence up until it is done).
//!
//! An empty Redis cannot tell a new deployment from one that lost its
//! data, so a new cluster's first lease is fenced too: logins wait
//! (`503`) that long once, at the very start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, RedisResult, Value};
use tokio::sync::Mutex;
use tracing::warn;

use super::record::Keys;
use super::scripts::Scripts;

/// How connections are made.
enum Endpoint {
    /// The server itself.
    Direct(Client),
    /// Through Sentinels (the client asks them at every connection).
    Sentinel(Mutex<SentinelClient>),
}

/// The current connection and its number (a failure only drops the
/// connection it happened on, not a newer one).
#[derive(Default)]
struct Current {
    conn: Option<(u64, MultiplexedConnection)>,
}

/// One process's connection to Redis (see the module docs).
pub(super) struct RedisLink {
    endpoint: Endpoint,
    config: AsyncConnectionConfig,
    current: Mutex<Current>,
    made: AtomicU64,
    /// The run id of the server the last connection reached.
    last_run_id: std::sync::Mutex<String>,
    /// How often a new connection reached another server than the one
    /// before (a restart or a failover).
    server_changes: AtomicU64,
    keys: Keys,
    fence: Duration,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.endpoint {
            Endpoint::Direct(_) => "direct",
            Endpoint::Sentinel(_) => "sentinel",
        };
        f.debug_struct("RedisLink")
            .field("endpoint", &kind)
            .finish_non_exhaustive()
    }
}

/// A `redis+sentinel://` address, parsed.
#[derive(Debug, PartialEq, Eq)]
struct SentinelUrl {
    sentinels: Vec<String>,
    master: String,
    /// `redis://[user:password@]placeholder[/db]`: the master's
    /// credentials and database.
    master_info: String,
}

fn parse_sentinel(url: &str) -> Result<SentinelUrl, String> {
    let rest = url
        .strip_prefix("redis+sentinel://")
        .ok_or_else(|| format!("not a redis+sentinel:// address: {url}"))?;
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((auth, rest)) => (Some(auth), rest),
        None => (None, rest),
    };
    let (hosts, path) = rest
        .split_once('/')
        .ok_or("redis+sentinel:// needs the master's name: redis+sentinel://host:port/master")?;
    let sentinels: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{h}"))
        .collect();
    if sentinels.is_empty() {
        return Err("redis+sentinel:// names no Sentinel".into());
    }
    let (master, db) = match path.split_once('/') {
        Some((m, db)) => (m, Some(db)),
        None => (path, None),
    };
    if master.is_empty() {
        return Err("redis+sentinel:// needs the master's name after the hosts".into());
    }
    let mut master_info = String::from("redis://");
    if let Some(auth) = auth {
        master_info.push_str(auth);
        master_info.push('@');
    }
    master_info.push_str("localhost");
    if let Some(db) = db.filter(|d| !d.is_empty()) {
        master_info.push('/');
        master_info.push_str(db);
    }
    Ok(SentinelUrl {
        sentinels,
        master: master.to_owned(),
        master_info,
    })
}

/// The `run_id` line of `INFO server`.
fn run_id(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(str::trim)
}

impl RedisLink {
    /// A link to the Redis at `url` (see the module docs); nothing is
    /// dialled until the first call. `fence`: how long the fence stays up
    /// when this link finds the directory may have lost data.
    pub(super) fn new(
        url: &str,
        timeout: Duration,
        keys: Keys,
        fence: Duration,
    ) -> RedisResult<RedisLink> {
        let endpoint = if url.starts_with("redis+sentinel://") {
            let parsed = parse_sentinel(url).map_err(|e| {
                redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "address", e))
            })?;
            let info = parsed.master_info.as_str().into_connection_info()?;
            let node = SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(info.redis_settings().clone());
            Endpoint::Sentinel(Mutex::new(SentinelClient::build(
                parsed.sentinels,
                parsed.master,
                Some(node),
                SentinelServerType::Master,
            )?))
        } else {
            Endpoint::Direct(Client::open(url)?)
        };
        Ok(RedisLink {
            endpoint,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout)),
            current: Mutex::default(),
            made: AtomicU64::new(0),
            last_run_id: std::sync::Mutex::default(),
            server_changes: AtomicU64::new(0),
            keys,
            fence,
        })
    }

    /// The connection, made (and checked) if there is none. The number
    /// goes back to [`RedisLink::failed`] when a call on it fails.
    pub(super) async fn connection(
        &self,
        scripts: &Scripts,
    ) -> RedisResult<(u64, MultiplexedConnection)> {
        let mut current = self.current.lock().await;
        if let Some((n, conn)) = &current.conn {
            return Ok((*n, conn.clone()));
        }
        let mut conn = match &self.endpoint {
            Endpoint::Direct(client) => {
                client
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await?
            }
            Endpoint::Sentinel(client) => {
                client
                    .lock()
                    .await
                    .get_async_connection_with_config(&self.config)
                    .await?
            }
        };
        self.check(&mut conn, scripts).await?;
        let n = self.made.fetch_add(1, Ordering::Relaxed) + 1;
        current.conn = Some((n, conn.clone()));
        Ok((n, conn))
    }

    /// How often a new connection reached another Redis server than the
    /// one before it (a restart or a failover): a gate writes its records
    /// back when this changes, as some may be missing.
    pub(super) fn server_changes(&self) -> u64 {
        self.server_changes.load(Ordering::Acquire)
    }

    /// A call on connection `n` failed: the next call makes a new one
    /// (Redis restarted, or a Sentinel failover moved the master).
    pub(super) async fn failed(&self, n: u64) {
        let mut current = self.current.lock().await;
        if current.conn.as_ref().is_some_and(|(m, _)| *m == n) {
            current.conn = None;
        }
    }

    /// Compares the server's run id with the directory's marker and raises
    /// the fence if the directory may have lost data (module docs).
    async fn check(&self, conn: &mut MultiplexedConnection, scripts: &Scripts) -> RedisResult<()> {
        let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
        let id = run_id(&info).unwrap_or_default().to_owned();
        {
            let mut last = self
                .last_run_id
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !last.is_empty() && *last != id {
                self.server_changes.fetch_add(1, Ordering::AcqRel);
            }
            last.clone_from(&id);
        }
        let mut inv = scripts.fence.key(self.keys.intact());
        inv.key(self.keys.fence())
            .arg(&id)
            .arg(millis(self.fence))
            .arg("check");
        let raised: Value = inv.invoke_async(conn).await?;
        match raised {
            Value::Int(1) => warn!(
                run_id = %id,
                fence = ?self.fence,
                "Redis is another server than the directory was last seen on (restart or failover): \
                 logins wait one lease while every gate restores its sessions"
            ),
            Value::Int(2) => warn!(
                run_id = %id,
                fence = ?self.fence,
                "the session directory is empty (a new deployment, or Redis lost its data): \
                 logins wait one lease while gates restore their sessions"
            ),
            _ => {}
        }
        Ok(())
    }
}

/// `d` in whole milliseconds, at least 1.
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_addresses_parse() {
        let p = parse_sentinel("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/main/2")
            .expect("parses");
        assert_eq!(
            p,
            SentinelUrl {
                sentinels: vec![
                    "redis://10.0.0.1:26379".into(),
                    "redis://10.0.0.2:26379".into()
                ],
                master: "main".into(),
                master_info: "redis://:pw@localhost/2".into(),
            }
        );
        let p = parse_sentinel("redis+sentinel://h:1/m").expect("parses");
        assert_eq!(p.master_info, "redis://localhost");
        for bad in [
            "redis+sentinel://h:1",
            "redis+sentinel:///m",
            "redis+sentinel://h:1/",
            "redis://h:1/m",
        ] {
            assert!(parse_sentinel(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_run_id_is_read_from_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\ntcp_port:6379\r\n";
        assert_eq!(run_id(info), Some("abc123"));
        assert_eq!(run_id("# Server\r\n"), None);
    }
}
