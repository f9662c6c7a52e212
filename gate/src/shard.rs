//! [`ShardedMap`]: the one map type of the gate's identity tables (sessions
//! by username and by uid, the backend's sessions with their agent
//! binding). Sharded so that lookups for different users do not contend on
//! one lock; each shard is a plain `HashMap` behind a `Mutex`.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Number of shards: enough that two worker threads rarely meet on one.
pub(crate) const SHARDS: usize = 64;

/// A hash map split into 64 locked shards.
#[derive(Debug)]
pub struct ShardedMap<K, V> {
    shards: Box<[Mutex<HashMap<K, V>>]>,
    hasher: RandomState,
}

impl<K: Hash + Eq, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap::new()
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    /// An empty map.
    pub fn new() -> ShardedMap<K, V> {
        ShardedMap {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// The locked shard that holds `key`. Every critical section of the
    /// callers is one map operation, so a poisoned lock is still consistent.
    pub fn shard<Q>(&self, key: &Q) -> MutexGuard<'_, HashMap<K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + ?Sized,
    {
        // `as usize` keeps the low bits, which is all a modulo needs.
        let at = (self.hasher.hash_one(key) as usize) % self.shards.len();
        self.shards[at]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A clone of the value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        self.shard(key).get(key).cloned()
    }

    /// Inserts, returning the value it replaced.
    pub fn insert(&self, key: K, value: V) -> Option<V> {
        self.shard(&key).insert(key, value)
    }

    /// Removes `key` if `pred` holds for its value; returns the value.
    pub fn remove_if<Q>(&self, key: &Q, pred: impl FnOnce(&V) -> bool) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut shard = self.shard(key);
        if shard.get(key).is_some_and(pred) {
            shard.remove(key)
        } else {
            None
        }
    }

    /// Clones of every value (a snapshot; shards are locked one at a time).
    pub fn values(&self) -> Vec<V>
    where
        V: Clone,
    {
        self.shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Number of entries (shards are counted one at a time).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove_if() {
        let map: ShardedMap<String, u32> = ShardedMap::new();
        assert!(map.insert("a".into(), 1).is_none());
        assert_eq!(map.insert("a".into(), 2), Some(1));
        assert_eq!(map.get("a"), Some(2));
        assert_eq!(map.remove_if("a", |v| *v == 1), None);
        assert_eq!(map.remove_if("a", |v| *v == 2), Some(2));
        for i in 0..1000 {
            map.insert(i.to_string(), i);
        }
        assert_eq!(map.len(), 1000);
        assert_eq!(map.values().len(), 1000);
    }
}
