//! Throttling of password guesses, per user name and per source address.
//!
//! Every login that reaches the authenticator first takes a token from its
//! user name's bucket; a refused password keeps it, a success, or a login
//! that was not decided (the authenticator timed out or failed), gives
//! back only its own, so a success never wipes out failures that other
//! addresses caused. Taking the token *before* the authenticator runs is
//! what bounds guesses at one name whatever their number of addresses and
//! however many run at once: at most `burst` are checked at a time, and
//! after that one per `interval`.
//!
//! Each source address (IPv4 /32, IPv6 /64: one host's addresses are one
//! source) has a bucket too, over every name tried from it, which only
//! refused passwords drain: many players behind one address log in at
//! once without holding its tokens, and the login server's per-address
//! connection bound caps how many guesses from one address can be in
//! flight before their refusals count.
//!
//! An empty bucket answers the login at once, without asking the
//! authenticator: the guess never costs an argon2 verification, and the
//! client is told it is throttled (not that its password is wrong).
//!
//! A user name's bucket alone would let anyone lock its owner out by
//! guessing. So an address a user logged in from recently is *trusted* for
//! that user: its logins use a bucket of their own (same size and rate),
//! which only failures from that address drain. The owner keeps logging in
//! from home while the name is guessed at from everywhere else.
//!
//! Successful logins of one user name have a bucket of their own too: a
//! valid account logging in again and again (each login kicks the
//! previous session) would otherwise cost a session's worth of work and
//! memory per login at whatever rate its client manages. Past the bucket,
//! a login is answered as throttled before the authenticator runs.
//!
//! The buckets are GCRA (one instant per key: when the bucket is full
//! again); a key whose bucket is full and that trusts no address is
//! removed. Both tables are bounded: when a shard is full, the key with
//! the fewest failures among a sample goes (an attacker who floods the
//! table with new names does not push out the name it is guessing at,
//! whose bucket is the emptiest).
//!
//! `now` is passed in: the tables are plain data, tested on their own.

use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use tokio::time::Instant;

use crate::shard::{SHARDS, ShardedMap};

/// A time on a throttle's own clock: microseconds since the throttle was
/// made. Eight bytes where an `Instant` takes sixteen: every user name
/// that logged in keeps a record of these (its trusted addresses), and
/// every address that guessed wrong one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Stamp(u64);

/// `d` in whole microseconds, rounded up (a non-zero interval stays
/// non-zero); saturating.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1000)).unwrap_or(u64::MAX)
}

impl Stamp {
    fn saturating_duration_since(self, earlier: Stamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    fn checked_sub(self, d: Duration) -> Option<Stamp> {
        self.0.checked_sub(micros(d)).map(Stamp)
    }
}

impl std::ops::Add<Duration> for Stamp {
    type Output = Stamp;

    fn add(self, d: Duration) -> Stamp {
        Stamp(self.0.saturating_add(micros(d)))
    }
}

/// One bucket's size and refill rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Checks allowed at once from a full bucket; 0 turns the bucket off
    /// (never throttles).
    pub burst: u32,
    /// One more check is allowed per `interval` once the burst is used.
    pub interval: Duration,
}

impl Policy {
    /// Takes one token from the bucket that is full again at `*full_at`.
    fn take(&self, full_at: &mut Stamp, now: Stamp) -> bool {
        if self.burst == 0 {
            return true;
        }
        let interval = micros(self.interval);
        let next = full_at.0.max(now.0).saturating_add(interval);
        // A bucket whose time ran into the end of the clock (intervals of
        // hundreds of thousands of years) stays empty: it fails closed.
        if next == u64::MAX || next - now.0 > interval.saturating_mul(u64::from(self.burst)) {
            return false;
        }
        *full_at = Stamp(next);
        true
    }

    /// Gives back one token taken by [`Policy::take`].
    fn give_back(&self, full_at: &mut Stamp, now: Stamp) {
        if self.burst == 0 {
            return;
        }
        *full_at = full_at
            .checked_sub(self.interval)
            .map_or(now, |t| t.max(now));
    }
}

/// The throttle's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// A user name's bucket (and each of its trusted addresses').
    pub user: Policy,
    /// A source address's bucket, over every user name tried from it.
    pub source: Policy,
    /// A user name's successful logins, from any address.
    pub logins: Policy,
    /// How long a successful login makes its address trusted for that user.
    pub trusted_for: Duration,
    /// Most user names kept (failed recently, or trusting an address).
    pub max_users: usize,
    /// Most source addresses kept (failed recently).
    pub max_sources: usize,
}

/// The longest refill interval a bucket may be configured with: beyond a
/// year the setting is a typo, and the throttle's clock (microseconds in
/// 64 bits) could not count a few of them.
pub const MAX_INTERVAL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Refuses throttle settings that would not do what they say: a bucket
/// with a size but a zero interval never empties (every guess would reach
/// the authenticator: a size of 0 is how a check is turned off), and an
/// interval over [`MAX_INTERVAL`] is refused rather than read as "never".
pub fn check_config(login: &crate::config::LoginConfig) -> Result<(), String> {
    let buckets = [
        (
            "login.throttle_user_interval",
            login.throttle_user_failures,
            login.throttle_user_interval,
        ),
        (
            "login.throttle_source_interval",
            login.throttle_source_failures,
            login.throttle_source_interval,
        ),
        (
            "login.throttle_user_login_interval",
            login.throttle_user_logins,
            login.throttle_user_login_interval,
        ),
    ];
    for (name, size, interval) in buckets {
        if size > 0 && interval.is_zero() {
            return Err(format!(
                "{name} must be above 0 while its bucket is on (0 would let every login \
                 through; set the bucket's size to 0 to turn the check off)"
            ));
        }
        if interval > MAX_INTERVAL {
            return Err(format!("{name} must be at most 365days"));
        }
    }
    Ok(())
}

/// Most addresses one user name trusts; a new one replaces the oldest.
const TRUSTED_PER_USER: usize = 4;

/// An address a user logged in from.
#[derive(Debug, Clone, Copy)]
struct Trusted {
    source: IpAddr,
    last_success: Stamp,
    /// This address's own bucket for this user.
    full_at: Stamp,
}

#[derive(Debug, Clone)]
struct UserRecord {
    /// The user name's bucket, for every address it does not trust.
    full_at: Stamp,
    /// The bucket of the user name's successful logins.
    logins_full_at: Stamp,
    trusted: Vec<Trusted>,
}

impl UserRecord {
    fn idle(&self, now: Stamp) -> bool {
        self.full_at <= now && self.logins_full_at <= now && self.trusted.is_empty()
    }
}

/// Why a login was throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// Too many refused passwords for this user name.
    User,
    /// Too many refused passwords from this address.
    Source,
    /// Too many successful logins of this user name.
    Logins,
}

impl Throttled {
    /// What the log line says.
    pub fn reason(self) -> &'static str {
        match self {
            Throttled::User => "throttled: too many refused passwords for this user name",
            Throttled::Source => "throttled: too many refused passwords from this address",
            Throttled::Logins => "throttled: too many logins of this user name",
        }
    }
}

/// The login server's throttle (see the module docs).
#[derive(Debug)]
pub struct Throttle {
    /// Keyed by a hash of the name under a key of this process's, not by
    /// the name: a name can be kilobytes long, and the table's bound must
    /// hold in bytes too. Nobody can aim a collision at a name without the
    /// key, and one would only share a bucket.
    users: ShardedMap<u64, UserRecord>,
    names: RandomState,
    sources: ShardedMap<IpAddr, Stamp>,
    config: ThrottleConfig,
    /// Where the throttle's clock starts ([`Stamp`]).
    epoch: Instant,
}

/// Which user bucket a login took its token from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UserBucket {
    /// The user name's own.
    Name,
    /// The bucket of an address the user trusts.
    Trusted,
}

/// One login's tokens, from [`Throttle::attempt`] until the authenticator
/// decided. Dropped undecided (a timeout, a dropped dialogue), it gives
/// the tokens back: nobody learnt whether the password was right.
#[derive(Debug)]
#[must_use = "an attempt is decided with `failed` or `succeeded`"]
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    user: u64,
    source: IpAddr,
    bucket: UserBucket,
    decided: bool,
}

/// The key of `ip` for the per-source bucket: IPv4 (also IPv4-mapped
/// IPv6) as is, IPv6 by its /64, which one host usually has whole.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

impl Throttle {
    /// A throttle with these settings.
    pub fn new(config: ThrottleConfig) -> Throttle {
        Throttle {
            users: ShardedMap::new(),
            names: RandomState::new(),
            sources: ShardedMap::new(),
            config,
            epoch: Instant::now(),
        }
    }

    /// `t` on the throttle's clock (times before it was made count as
    /// its start).
    fn stamp(&self, t: Instant) -> Stamp {
        let since = t.saturating_duration_since(self.epoch).as_micros();
        Stamp(u64::try_from(since).unwrap_or(u64::MAX))
    }

    /// Takes the tokens a login of `user` from `source` needs to reach the
    /// authenticator, or says why it may not.
    pub fn attempt(
        &self,
        user: &[u8],
        source: IpAddr,
        now: Instant,
    ) -> Result<Attempt<'_>, Throttled> {
        let source = source_key(source);
        let now = self.stamp(now);
        if self.source_empty(source, now) {
            return Err(Throttled::Source);
        }
        let user = self.names.hash_one(user);
        let bucket = self.take_user(user, source, now)?;
        Ok(Attempt {
            throttle: self,
            user,
            source,
            bucket,
            decided: false,
        })
    }

    /// Number of user names and of source addresses kept (for tests and
    /// metrics).
    pub fn sizes(&self) -> (usize, usize) {
        (self.users.len(), self.sources.len())
    }

    /// Whether `source` has refused passwords enough to be throttled.
    fn source_empty(&self, source: IpAddr, now: Stamp) -> bool {
        let policy = self.config.source;
        self.sources
            .shard(&source)
            .get(&source)
            .is_some_and(|full_at| {
                let mut probe = *full_at;
                !policy.take(&mut probe, now)
            })
    }

    /// A refused password from `source`.
    fn charge_source(&self, source: IpAddr, now: Stamp) {
        let policy = self.config.source;
        if policy.burst == 0 {
            return;
        }
        let mut shard = self.sources.shard(&source);
        if !shard.contains_key(&source) {
            make_room(&mut shard, self.config.max_sources, |full_at: &Stamp| {
                (full_at.saturating_duration_since(now), *full_at)
            });
        }
        let full_at = shard.entry(source).or_insert(now);
        // Past a full bucket, refusals that raced the check still count,
        // up to one more burst: the address stays throttled that much longer.
        let limit = now
            + policy
                .interval
                .saturating_mul(policy.burst.saturating_mul(2));
        *full_at = ((*full_at).max(now) + policy.interval).min(limit);
    }

    fn take_user(&self, user: u64, source: IpAddr, now: Stamp) -> Result<UserBucket, Throttled> {
        let policy = self.config.user;
        let trusted_for = self.config.trusted_for;
        let mut shard = self.users.shard(&user);
        if !shard.contains_key(&user) {
            make_room(&mut shard, self.config.max_users, |r: &UserRecord| {
                (r.full_at.saturating_duration_since(now), r.full_at)
            });
        }
        let record = shard.entry(user).or_insert_with(|| UserRecord {
            full_at: now,
            logins_full_at: now,
            trusted: Vec::new(),
        });
        let mut probe = record.logins_full_at;
        if !self.config.logins.take(&mut probe, now) {
            return Err(Throttled::Logins);
        }
        record
            .trusted
            .retain(|t| now.saturating_duration_since(t.last_success) < trusted_for);
        if let Some(trusted) = record.trusted.iter_mut().find(|t| t.source == source)
            && policy.take(&mut trusted.full_at, now)
        {
            return Ok(UserBucket::Trusted);
        }
        // Not trusted, or its own failures are used up: one more address.
        if policy.take(&mut record.full_at, now) {
            Ok(UserBucket::Name)
        } else {
            if record.idle(now) {
                shard.remove(&user);
            }
            Err(Throttled::User)
        }
    }
}

/// Which user a login that passed the password check was for; given to
/// [`Throttle::logged_in`] once the login was placed.
#[derive(Debug, Clone, Copy)]
pub struct LoginKey(u64);

impl Throttle {
    /// A login of the user `key` names was placed (its client got `200`):
    /// it takes one from the user's logins. Logins that failed later (a
    /// gate unavailable, a directory being restored) are not counted, so
    /// clients retrying through an outage are not throttled for it.
    pub fn logged_in(&self, key: LoginKey, now: Instant) {
        let logins = self.config.logins;
        if logins.burst == 0 {
            return;
        }
        let now = self.stamp(now);
        let mut shard = self.users.shard(&key.0);
        if !shard.contains_key(&key.0) {
            make_room(&mut shard, self.config.max_users, |r: &UserRecord| {
                (r.full_at.saturating_duration_since(now), r.full_at)
            });
        }
        let record = shard.entry(key.0).or_insert_with(|| UserRecord {
            full_at: now,
            logins_full_at: now,
            trusted: Vec::new(),
        });
        // Logins that raced the check in `attempt` still count, up to one
        // more burst (as refusals do for an address).
        let limit = now
            + logins
                .interval
                .saturating_mul(logins.burst.saturating_mul(2));
        record.logins_full_at = (record.logins_full_at.max(now) + logins.interval).min(limit);
    }
}

/// Keys looked at to choose one to push out of a full shard.
const EVICTION_SAMPLE: usize = 16;

/// Makes room for one more key in a shard of a table of at most `max`
/// keys: of a sample of its keys (hash order, so in effect at random),
/// the one `score` ranks lowest goes (fewest failures, then oldest). A
/// sample, not the whole shard, so that a login at a full table costs the
/// same as any other; the name under attack has the most failures, so it
/// only goes if every key sampled was guessed at as hard.
fn make_room<K: Clone + Eq + std::hash::Hash, V, S: Ord>(
    shard: &mut std::collections::HashMap<K, V>,
    max: usize,
    score: impl Fn(&V) -> S,
) {
    let per_shard = max.div_ceil(SHARDS).max(1);
    if shard.len() < per_shard {
        return;
    }
    let lowest = shard
        .iter()
        .take(EVICTION_SAMPLE)
        .min_by_key(|(_, v)| score(v))
        .map(|(k, _)| k.clone());
    if let Some(key) = lowest {
        shard.remove(&key);
    }
}

impl Attempt<'_> {
    /// Which bucket of the user's the login used (tests).
    #[cfg(test)]
    fn trusted(&self) -> bool {
        self.bucket == UserBucket::Trusted
    }

    /// The authenticator refused the password: the user's token stays
    /// taken, and the refusal counts against the address.
    pub fn failed(mut self, now: Instant) {
        self.decided = true;
        self.throttle
            .charge_source(self.source, self.throttle.stamp(now));
    }

    /// The password was right: its own tokens go back, and its address is
    /// trusted for this user from now on. Returns the key to count the
    /// login by ([`Throttle::logged_in`]) once it is placed.
    pub fn succeeded(mut self, now: Instant) -> LoginKey {
        self.decided = true;
        let throttle = self.throttle;
        let now = throttle.stamp(now);
        let policy = throttle.config.user;
        let key = LoginKey(self.user);
        let mut shard = throttle.users.shard(&self.user);
        let Some(record) = shard.get_mut(&self.user) else {
            // Pushed out of a full table meanwhile: nothing to give back.
            return key;
        };
        match self.bucket {
            UserBucket::Name => policy.give_back(&mut record.full_at, now),
            UserBucket::Trusted => {}
        }
        // Its own address: a success forgets the failures it had there.
        match record.trusted.iter_mut().find(|t| t.source == self.source) {
            Some(t) => {
                t.last_success = now;
                t.full_at = now;
            }
            None => {
                if record.trusted.len() >= TRUSTED_PER_USER
                    && let Some(oldest) = record
                        .trusted
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, t)| t.last_success)
                        .map(|(i, _)| i)
                {
                    record.trusted.swap_remove(oldest);
                }
                // One at a time: most users log in from one address, and
                // every logged-in user keeps its record.
                record.trusted.reserve_exact(1);
                record.trusted.push(Trusted {
                    source: self.source,
                    last_success: now,
                    full_at: now,
                });
            }
        }
        key
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.decided {
            return;
        }
        let throttle = self.throttle;
        let now = throttle.stamp(Instant::now());
        let policy = throttle.config.user;
        let mut shard = throttle.users.shard(&self.user);
        if let Some(record) = shard.get_mut(&self.user) {
            match self.bucket {
                UserBucket::Name => policy.give_back(&mut record.full_at, now),
                UserBucket::Trusted => {
                    if let Some(t) = record.trusted.iter_mut().find(|t| t.source == self.source) {
                        policy.give_back(&mut t.full_at, now);
                    }
                }
            }
            if record.idle(now) {
                shard.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests;
