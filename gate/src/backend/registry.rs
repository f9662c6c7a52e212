//! The registered service instances, by service name, and how one is chosen
//! for a user: rendezvous (highest random weight) hashing.
//!
//! Rendezvous hashing scores every (user, instance) pair with a hash and
//! picks the instance with the highest score. It needs no ring or table,
//! spreads users evenly, and when an instance goes away only that
//! instance's users move (each to its second-best instance). The gate still
//! stores each agent-mode binding (see `backend::agent`), so a user keeps its
//! instance even when a new instance joins and would now score higher: it
//! stays sticky for as long as the instance lives.
//!
//! The hash is FNV-1a finished with the splitmix64 mixer: fixed, not seeded
//! per process, so a user maps to the same instance id on every gate and
//! across gate restarts.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::watch;

use super::link::Link;

/// FNV-1a, 64 bit.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// splitmix64's finaliser: every input bit affects every output bit, which
/// FNV alone does not give for short keys.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash of a routing key (a uid, or a user name for auth).
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    mix(fnv1a(key))
}

/// The hash of an instance, computed once per link. The service name is
/// part of it so that two services with equally named instances do not get
/// the same users.
pub(crate) fn instance_hash(service: &str, instance: &str) -> u64 {
    let mut hash = fnv1a(service.as_bytes());
    hash ^= 0x2f; // '/' as a separator, so ("ab","c") != ("a","bc")
    hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    for &b in instance.as_bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(hash)
}

/// The rendezvous score of an instance for a key.
pub(crate) fn score(key: u64, instance: u64) -> u64 {
    mix(key ^ instance)
}

#[derive(Debug, Default)]
struct Inner {
    by_service: HashMap<String, Vec<Arc<Link>>>,
    /// Links registered with `all_session_events`.
    listeners: Vec<Arc<Link>>,
}

/// The live links, by service. Read on every route-mode request and on
/// every (re)binding; written only when a link registers or goes away.
#[derive(Debug)]
pub(crate) struct Registry {
    inner: RwLock<Inner>,
    /// Bumped on every change, so callers can wait for registrations.
    changed: watch::Sender<u64>,
}

impl Registry {
    pub(crate) fn new() -> Registry {
        Registry {
            inner: RwLock::new(Inner::default()),
            changed: watch::Sender::new(0),
        }
    }

    // A panic while holding the lock cannot leave the maps half updated
    // (each update is one push or remove), so a poisoned lock is usable.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Adds a link; returns the link it replaces (same service and
    /// instance id), which the caller closes.
    pub(crate) fn insert(&self, link: Arc<Link>) -> Option<Arc<Link>> {
        let replaced = {
            let mut inner = self.write();
            let instances = inner.by_service.entry(link.service.clone()).or_default();
            let replaced = match instances.iter().position(|l| l.instance == link.instance) {
                Some(at) => Some(std::mem::replace(&mut instances[at], Arc::clone(&link))),
                None => {
                    instances.push(Arc::clone(&link));
                    None
                }
            };
            if let Some(old) = &replaced {
                inner.listeners.retain(|l| !Arc::ptr_eq(l, old));
            }
            if link.all_events {
                inner.listeners.push(link);
            }
            replaced
        };
        self.bump();
        replaced
    }

    /// Removes `link` if it is still registered (a replaced link is not).
    pub(crate) fn remove(&self, link: &Arc<Link>) {
        let removed = {
            let mut inner = self.write();
            let mut removed = false;
            if let Some(instances) = inner.by_service.get_mut(&link.service) {
                let before = instances.len();
                instances.retain(|l| !Arc::ptr_eq(l, link));
                removed = instances.len() != before;
                if instances.is_empty() {
                    inner.by_service.remove(&link.service);
                }
            }
            inner.listeners.retain(|l| !Arc::ptr_eq(l, link));
            removed
        };
        if removed {
            self.bump();
        }
    }

    /// Tells waiters that something about the links changed (a goodbye).
    pub(crate) fn touch(&self) {
        self.bump();
    }

    /// The instance of `service` for `key`: the routable one with the
    /// highest rendezvous score, among those serving `route` if given.
    pub(crate) fn pick(&self, service: &str, key: &[u8], route: Option<&str>) -> Option<Arc<Link>> {
        let key = key_hash(key);
        let inner = self.read();
        inner
            .by_service
            .get(service)?
            .iter()
            .filter(|l| l.is_routable() && route.is_none_or(|r| l.serves(r)))
            .max_by_key(|l| score(key, l.hash))
            .cloned()
    }

    /// Calls `f` on every routable link registered with
    /// `all_session_events`. `f` must not register or remove links.
    pub(crate) fn for_each_listener(&self, mut f: impl FnMut(&Arc<Link>)) {
        for link in &self.read().listeners {
            if link.is_routable() {
                f(link);
            }
        }
    }

    /// Every registered link.
    pub(crate) fn all(&self) -> Vec<Arc<Link>> {
        self.read().by_service.values().flatten().cloned().collect()
    }

    /// Number of routable instances of `service`.
    pub(crate) fn count(&self, service: &str) -> usize {
        self.read()
            .by_service
            .get(service)
            .map_or(0, |v| v.iter().filter(|l| l.is_routable()).count())
    }

    /// A receiver that sees every change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_fixed() {
        // Fixed across processes and releases: changing these moves users.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(instance_hash("ab", "c"), instance_hash("a", "bc"));
        assert_eq!(key_hash(b"user1"), key_hash(b"user1"));
    }

    #[test]
    fn rendezvous_spreads_and_only_moves_the_lost_instances_users() {
        let instances: Vec<u64> = (0..4)
            .map(|i| instance_hash("agent", &format!("agent-{i}")))
            .collect();
        let best = |set: &[u64], key: u64| -> u64 {
            *set.iter()
                .max_by_key(|&&i| score(key, i))
                .expect("non-empty")
        };
        let keys: Vec<u64> = (0..4000)
            .map(|u| key_hash(format!("user{u}").as_bytes()))
            .collect();
        let mut counts = HashMap::new();
        for &k in &keys {
            *counts.entry(best(&instances, k)).or_insert(0) += 1;
        }
        for (_, n) in counts {
            assert!((800..1200).contains(&n), "uneven spread: {n} of 4000");
        }
        // Drop instance 0: only its users move.
        let rest = &instances[1..];
        for &k in &keys {
            let before = best(&instances, k);
            if before != instances[0] {
                assert_eq!(best(rest, k), before);
            }
        }
    }
}
