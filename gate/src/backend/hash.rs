//! Rendezvous (highest random weight) hashing: how a user is matched to a
//! service instance.
//!
//! Rendezvous hashing scores every (user, instance) pair with a hash and
//! picks the instance with the highest score. It needs no ring or table,
//! spreads users evenly, and when an instance goes away only that
//! instance's users move (each to its second-best instance). The gate still
//! stores each agent-mode binding (see `backend::sessions`), so a user
//! keeps its instance even when a new instance joins and would now score
//! higher: it stays sticky for as long as the instance lives.
//!
//! The hash is FNV-1a finished with the splitmix64 mixer: fixed, not seeded
//! per process, so a user maps to the same instance id on every gate and
//! across gate restarts.

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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

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
