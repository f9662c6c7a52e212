//! Throttling of failed logins, per user name and per source address.
//!
//! Every refused password (an authenticator's `Denied`) counts a failure
//! against the user name and the client's address. Past a number of free
//! failures, the key is blocked for a delay that doubles with each further
//! failure, up to a maximum; while a key is blocked its logins are answered
//! `401` at once, without asking the authenticator (so a guessing client
//! costs no argon2 verification). A successful login forgets its user
//! name's failures. A key that has not failed for `forget` is forgotten, so
//! the table stays small; it is also bounded in entries, the oldest going
//! first when it is full.
//!
//! `now` is passed in: the table is plain data, tested on its own.

use std::hash::Hash;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::shard::ShardedMap;

/// How a kind of key is throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Failures before the first block.
    pub free: u32,
    /// The first block; each further failure doubles it.
    pub delay: Duration,
    /// The longest block.
    pub max: Duration,
}

impl Policy {
    /// The block after `failures` failures, if any.
    fn block(&self, failures: u32) -> Option<Duration> {
        // 1 for the first failure past the free ones.
        let over = failures.checked_sub(self.free).filter(|n| *n > 0)?;
        let factor = 1u32.checked_shl(over - 1).unwrap_or(u32::MAX);
        Some(self.delay.saturating_mul(factor).min(self.max))
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

/// Most entries kept per kind of key.
const MAX_ENTRIES: usize = 100_000;

/// Failures of one kind of key.
#[derive(Debug)]
struct Table<K> {
    records: ShardedMap<K, Record>,
    policy: Policy,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(policy: Policy) -> Table<K> {
        Table {
            records: ShardedMap::new(),
            policy,
        }
    }

    fn blocked(&self, key: &K, now: Instant) -> Option<Instant> {
        self.records
            .get(key)
            .and_then(|r| r.blocked_until)
            .filter(|until| now < *until)
    }

    fn fail(&self, key: &K, now: Instant, forget: Duration) {
        let mut shard = self.records.shard(key);
        if shard.len() >= MAX_ENTRIES / 64 {
            // Full: drop what is forgotten, then the oldest if need be.
            shard.retain(|_, r| now.saturating_duration_since(r.last) < forget);
            if shard.len() >= MAX_ENTRIES / 64
                && let Some(oldest) = shard
                    .iter()
                    .min_by_key(|(_, r)| r.last)
                    .map(|(k, _)| k.clone())
            {
                shard.remove(&oldest);
            }
        }
        let record = shard.entry(key.clone()).or_insert(Record {
            failures: 0,
            last: now,
            blocked_until: None,
        });
        if now.saturating_duration_since(record.last) >= forget {
            record.failures = 0;
        }
        record.failures = record.failures.saturating_add(1);
        record.last = now;
        record.blocked_until = self.policy.block(record.failures).map(|d| now + d);
    }

    fn forget(&self, key: &K) {
        self.records.shard(key).remove(key);
    }
}

/// The login server's throttle (see the module docs).
#[derive(Debug)]
pub struct Throttle {
    users: Table<Bytes>,
    sources: Table<IpAddr>,
    forget: Duration,
}

/// Why a login is throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// Too many failures for this user name, until then.
    User(Instant),
    /// Too many failures from this address, until then.
    Source(Instant),
}

impl Throttle {
    /// A throttle with these policies; a key idle for `forget` starts over.
    pub fn new(user: Policy, source: Policy, forget: Duration) -> Throttle {
        Throttle {
            users: Table::new(user),
            sources: Table::new(source),
            forget,
        }
    }

    /// Whether a login of `user` from `source` must be refused at once.
    pub fn check(&self, user: &[u8], source: IpAddr, now: Instant) -> Result<(), Throttled> {
        let source = source.to_canonical();
        if let Some(until) = self.sources.blocked(&source, now) {
            return Err(Throttled::Source(until));
        }
        if let Some(until) = self.users.blocked(&Bytes::copy_from_slice(user), now) {
            return Err(Throttled::User(until));
        }
        Ok(())
    }

    /// The authenticator refused `user`'s password, from `source`.
    pub fn failed(&self, user: &[u8], source: IpAddr, now: Instant) {
        self.users
            .fail(&Bytes::copy_from_slice(user), now, self.forget);
        self.sources.fail(&source.to_canonical(), now, self.forget);
    }

    /// `user` logged in: its failures are forgotten.
    pub fn succeeded(&self, user: &[u8]) {
        self.users.forget(&Bytes::copy_from_slice(user));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn throttle() -> Throttle {
        Throttle::new(
            Policy {
                free: 3,
                delay: S,
                max: 8 * S,
            },
            Policy {
                free: 10,
                delay: S,
                max: 60 * S,
            },
            600 * S,
        )
    }

    #[test]
    fn blocks_grow_from_the_first_failure_past_the_free_ones() {
        let p = Policy {
            free: 3,
            delay: S,
            max: 8 * S,
        };
        let blocks: Vec<_> = (1..=8).map(|n| p.block(n)).collect();
        assert_eq!(
            blocks,
            [
                None,
                None,
                None,
                Some(S),
                Some(2 * S),
                Some(4 * S),
                Some(8 * S),
                Some(8 * S)
            ]
        );
    }

    #[test]
    fn a_user_is_throttled_after_its_free_failures_and_forgiven_on_success() {
        let t = throttle();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.check(b"alice", ip, t0), Ok(()));
            t.failed(b"alice", ip, t0);
        }
        assert_eq!(t.check(b"alice", ip, t0), Ok(()), "three are free");
        t.failed(b"alice", ip, t0);
        assert_eq!(t.check(b"alice", ip, t0), Err(Throttled::User(t0 + S)));
        // Another user from the same address is not (yet) throttled.
        assert_eq!(t.check(b"bob", ip, t0), Ok(()));
        // The block passes; the next failure doubles it.
        let t1 = t0 + S;
        assert_eq!(t.check(b"alice", ip, t1), Ok(()));
        t.failed(b"alice", ip, t1);
        assert_eq!(t.check(b"alice", ip, t1), Err(Throttled::User(t1 + 2 * S)));
        // A success forgets.
        t.succeeded(b"alice");
        assert_eq!(t.check(b"alice", ip, t1), Ok(()));
    }

    #[test]
    fn an_address_guessing_many_names_is_throttled() {
        let t = throttle();
        let ip: IpAddr = "::ffff:10.0.0.9".parse().unwrap();
        let t0 = Instant::now();
        for n in 0..11 {
            t.failed(format!("user{n}").as_bytes(), ip, t0);
        }
        let v4: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(t.check(b"someone", v4, t0), Err(Throttled::Source(t0 + S)));
        assert_eq!(t.check(b"someone", "10.0.0.8".parse().unwrap(), t0), Ok(()));
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_while() {
        let t = throttle();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..4 {
            t.failed(b"carol", ip, t0);
        }
        let later = t0 + 600 * S;
        t.failed(b"carol", ip, later);
        assert_eq!(t.check(b"carol", ip, later), Ok(()), "counting starts over");
    }
}
