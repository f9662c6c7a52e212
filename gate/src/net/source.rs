//! Bounds per source: how many connections one address, and one network,
//! may hold open, and how fast one address may open new ones. A bot, a
//! flood of idle sockets or a reconnect storm from one place cannot take
//! every slot of a listener, and an attacker with many addresses in one
//! network (127.0.0.0/8 has millions) counts as that network.
//!
//! Addresses are grouped by prefix ([`Prefixes`]): by default a host is an
//! IPv4 /32 or an IPv6 /64 (what one machine usually gets), a network an
//! IPv4 /24 or an IPv6 /48. IPv6 addresses that map IPv4 ones count as the
//! IPv4 address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::shard::ShardedMap;

/// How addresses are grouped (`[sources]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Prefixes {
    /// Prefix length of one IPv4 source (default 32).
    pub host_v4: u8,
    /// Prefix length of one IPv6 source (default 64).
    pub host_v6: u8,
    /// Prefix length of one IPv4 network (default 24).
    pub network_v4: u8,
    /// Prefix length of one IPv6 network (default 48).
    pub network_v6: u8,
}

impl Default for Prefixes {
    fn default() -> Prefixes {
        Prefixes {
            host_v4: 32,
            host_v6: 64,
            network_v4: 24,
            network_v6: 48,
        }
    }
}

/// `ip` with all but its first `v4` (IPv4) or `v6` (IPv6) bits cleared.
fn masked(ip: IpAddr, v4: u8, v6: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(ip) => {
            let bits = u32::from(ip);
            let keep = u32::MAX
                .checked_shl(32 - u32::from(v4.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & keep))
        }
        IpAddr::V6(ip) => {
            let bits = u128::from(ip);
            let keep = u128::MAX
                .checked_shl(128 - u32::from(v6.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & keep))
        }
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its source holds its bound of open connections.
    PerSource,
    /// Its network holds its bound of open connections.
    PerNetwork,
    /// Its source opens connections faster than its rate.
    Rate,
}

impl Refused {
    /// The label in logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Refused::PerSource => "per_source",
            Refused::PerNetwork => "per_network",
            Refused::Rate => "rate",
        }
    }
}

/// Open connections per source and per network, and new connections per
/// source per second, each bounded (0: no bound).
///
/// The bounds may change while connections are open
/// ([`PerSource::set_bounds`], a configuration reload): every connection
/// is counted whatever the bounds, so a new bound holds against the
/// connections already open, and none of them is closed for it (a source
/// over a lowered bound opens no new one until it is under it again).
#[derive(Debug)]
pub struct PerSource {
    prefixes: Prefixes,
    open: ShardedMap<IpAddr, u32>,
    max_host: AtomicU32,
    max_network: AtomicU32,
    /// New connections per second per source (the bits of an `f64`; 0:
    /// no bound); the burst allowed is twice that.
    per_second: AtomicU64,
    buckets: ShardedMap<IpAddr, Bucket>,
}

/// A token bucket of one source.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets kept per shard before the full ones are dropped (a full bucket
/// is the same as none): bounds the table whatever the number of sources.
const BUCKETS_PER_SHARD: usize = 4096;

impl PerSource {
    /// At most `max` connections per source address at once (0: no bound),
    /// sources as single addresses.
    pub fn new(max: usize) -> Arc<PerSource> {
        PerSource::with(
            max,
            0,
            0.0,
            Prefixes {
                host_v4: 32,
                host_v6: 128,
                ..Prefixes::default()
            },
        )
    }

    /// At most `max_host` open per source and `max_network` per network
    /// (0: no bound), at most `per_second` new connections per source
    /// (bursts of twice that; 0: no bound), grouped by `prefixes`.
    pub fn with(
        max_host: usize,
        max_network: usize,
        per_second: f64,
        prefixes: Prefixes,
    ) -> Arc<PerSource> {
        let table = Arc::new(PerSource {
            prefixes,
            open: ShardedMap::new(),
            max_host: AtomicU32::new(0),
            max_network: AtomicU32::new(0),
            per_second: AtomicU64::new(0),
            buckets: ShardedMap::new(),
        });
        table.set_bounds(max_host, max_network, per_second);
        table
    }

    /// Changes the bounds (as [`PerSource::with`] takes them); they hold
    /// for the next connection. Connections open stay open and counted.
    pub fn set_bounds(&self, max_host: usize, max_network: usize, per_second: f64) {
        let bound = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.max_host.store(bound(max_host), Ordering::Relaxed);
        self.max_network
            .store(bound(max_network), Ordering::Relaxed);
        let per_second = if per_second > 0.0 { per_second } else { 0.0 };
        self.per_second
            .store(per_second.to_bits(), Ordering::Relaxed);
    }

    /// The new connections per second per source and the burst, if
    /// bounded.
    fn rate(&self) -> Option<(f64, f64)> {
        let per_second = f64::from_bits(self.per_second.load(Ordering::Relaxed));
        (per_second > 0.0).then_some((per_second, (2.0 * per_second).max(1.0)))
    }

    fn host(&self, ip: IpAddr) -> IpAddr {
        masked(ip, self.prefixes.host_v4, self.prefixes.host_v6)
    }

    fn network(&self, ip: IpAddr) -> IpAddr {
        // A network key never equals a host key of the same table: the
        // host keys live in the same map, so mark networks by keeping them
        // in the IPv6 space (an IPv4 network as its mapped address).
        match masked(ip, self.prefixes.network_v4, self.prefixes.network_v6) {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) | 1)),
        }
    }

    /// Counts a connection from `ip`, or says why it is refused.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Result<SourceSlot, Refused> {
        let host = self.host(ip);
        if let Some((rate, burst)) = self.rate()
            && !self.take_token(host, rate, burst)
        {
            return Err(Refused::Rate);
        }
        let network = self.network(ip);
        let max_network = self.max_network.load(Ordering::Relaxed);
        if !Self::add(&self.open, network, max_network) {
            return Err(Refused::PerNetwork);
        }
        if !Self::add(&self.open, host, self.max_host.load(Ordering::Relaxed)) {
            Self::sub(&self.open, network);
            return Err(Refused::PerSource);
        }
        Ok(SourceSlot {
            table: Arc::clone(self),
            ip,
        })
    }

    /// One more open for `key` unless it holds `max` (0: no bound).
    fn add(open: &ShardedMap<IpAddr, u32>, key: IpAddr, max: u32) -> bool {
        let mut shard = open.shard(&key);
        let count = shard.entry(key).or_insert(0);
        if max > 0 && *count >= max {
            return false;
        }
        *count += 1;
        true
    }

    fn sub(open: &ShardedMap<IpAddr, u32>, key: IpAddr) {
        let mut shard = open.shard(&key);
        if let Some(count) = shard.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                shard.remove(&key);
            }
        }
    }

    fn take_token(&self, host: IpAddr, rate: f64, burst: f64) -> bool {
        let now = Instant::now();
        let mut shard = self.buckets.shard(&host);
        if shard.len() >= BUCKETS_PER_SHARD {
            shard.retain(|_, b| refill(*b, now, rate, burst) < burst);
        }
        let bucket = shard.entry(host).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let tokens = refill(*bucket, now, rate, burst);
        if tokens < 1.0 {
            return false;
        }
        *bucket = Bucket {
            tokens: tokens - 1.0,
            at: now,
        };
        true
    }

    /// Connections open from `ip`'s source now.
    pub fn open(&self, ip: IpAddr) -> u32 {
        self.open.get(&self.host(ip)).unwrap_or(0)
    }
}

/// The tokens of `b` at `now`.
fn refill(b: Bucket, now: Instant, rate: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    (b.tokens + elapsed * rate).min(burst)
}

/// One counted connection (see [`PerSource`]); uncounted on drop.
#[derive(Debug)]
pub struct SourceSlot {
    table: Arc<PerSource>,
    ip: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        // Counted whatever the bounds were (see [`PerSource`]).
        let table = &self.table;
        PerSource::sub(&table.open, table.host(self.ip));
        PerSource::sub(&table.open, table.network(self.ip));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn per_source_bounds_each_address() {
        let table = PerSource::new(2);
        let a = ip("10.0.0.1");
        let one = table.enter(a).unwrap();
        let _two = table.enter(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(
            table.enter(a).unwrap_err(),
            Refused::PerSource,
            "the mapped address is the same"
        );
        let _other = table.enter(ip("10.0.0.2")).unwrap();
        drop(one);
        assert_eq!(table.open(a), 1);
        assert!(table.enter(a).is_ok());
        let unbounded = PerSource::new(0);
        let slots: Vec<_> = (0..100).map(|_| unbounded.enter(a).unwrap()).collect();
        assert_eq!(slots.len(), 100);
    }

    #[test]
    fn a_network_of_many_addresses_counts_as_one() {
        let table = PerSource::with(4, 10, 0.0, Prefixes::default());
        let mut held = Vec::new();
        for host in 1..=10 {
            held.push(table.enter(ip(&format!("127.0.0.{host}"))).unwrap());
        }
        assert_eq!(
            table.enter(ip("127.0.0.77")).unwrap_err(),
            Refused::PerNetwork
        );
        // Another network is not affected; IPv6 hosts share their /64.
        assert!(table.enter(ip("127.0.1.1")).is_ok());
        let v6: Vec<_> = (1..=4)
            .map(|i| table.enter(ip(&format!("2001:db8::{i}"))).unwrap())
            .collect();
        assert_eq!(
            table.enter(ip("2001:db8::ff")).unwrap_err(),
            Refused::PerSource
        );
        drop(v6);
        drop(held);
        assert!(table.enter(ip("127.0.0.77")).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn new_connections_per_second_per_source() {
        let table = PerSource::with(0, 0, 5.0, Prefixes::default());
        let a = ip("192.0.2.1");
        // A burst of twice the rate, then the rate.
        let allowed = (0..20).filter(|_| table.enter(a).is_ok()).count();
        assert_eq!(allowed, 10);
        assert_eq!(table.enter(a).unwrap_err(), Refused::Rate);
        assert!(table.enter(ip("192.0.2.2")).is_ok(), "another source");
        tokio::time::advance(Duration::from_millis(1000)).await;
        let allowed = (0..20).filter(|_| table.enter(a).is_ok()).count();
        assert_eq!(allowed, 5);
    }

    #[test]
    fn changed_bounds_count_the_connections_already_open() {
        let table = PerSource::with(0, 0, 0.0, Prefixes::default());
        let a = ip("10.0.0.1");
        let held: Vec<_> = (0..3).map(|_| table.enter(a).unwrap()).collect();
        table.set_bounds(2, 0, 0.0);
        assert_eq!(table.enter(a).unwrap_err(), Refused::PerSource);
        drop(held);
        let _one = table.enter(a).unwrap();
        let _two = table.enter(a).unwrap();
        assert_eq!(table.enter(a).unwrap_err(), Refused::PerSource);
        table.set_bounds(0, 2, 0.0);
        assert_eq!(
            table.enter(ip("10.0.0.2")).unwrap_err(),
            Refused::PerNetwork
        );
        table.set_bounds(0, 0, 0.0);
        assert!(table.enter(a).is_ok());
    }

    #[test]
    fn prefixes_mask_addresses() {
        assert_eq!(masked(ip("10.1.2.3"), 24, 64), ip("10.1.2.0"));
        assert_eq!(masked(ip("10.1.2.3"), 0, 64), ip("0.0.0.0"));
        assert_eq!(masked(ip("2001:db8:1:2:3::4"), 32, 48), ip("2001:db8:1::"));
        assert_eq!(masked(ip("::ffff:10.1.2.3"), 32, 128), ip("10.1.2.3"));
    }
}
