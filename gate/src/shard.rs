//! [`ShardedMap`]: the one map type of the gate's identity tables (the
//! backend's sessions with their agent binding, the login server's online
//! table), and [`ShardedSet`] for tables whose items carry their own key
//! (the users by uid and by username). Sharded so that lookups for
//! different users do not contend on one lock; each shard is a plain
//! `HashMap` or `HashSet` behind a `Mutex`.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Number of shards: enough that two worker threads rarely meet on one.
pub(crate) const SHARDS: usize = 64;

/// 64 locked tables (maps or sets) and the hasher that picks one for a
/// key: what [`ShardedMap`] and [`ShardedSet`] share.
#[derive(Debug)]
struct Shards<T> {
    shards: Box<[Mutex<T>]>,
    hasher: RandomState,
}

impl<T: Default> Shards<T> {
    fn new() -> Shards<T> {
        Shards {
            shards: (0..SHARDS).map(|_| Mutex::new(T::default())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// The locked table that holds `key`. Every critical section of the
    /// callers is one table operation, so a poisoned lock is still
    /// consistent.
    fn of<Q: Hash + ?Sized>(&self, key: &Q) -> MutexGuard<'_, T> {
        // `as usize` keeps the low bits, which is all a modulo needs.
        let at = (self.hasher.hash_one(key) as usize) % self.shards.len();
        self.lock(&self.shards[at])
    }

    fn lock<'a>(&self, shard: &'a Mutex<T>) -> MutexGuard<'a, T> {
        shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `f` of each table in turn (a snapshot; one lock at a time).
    fn each<R>(&self, mut f: impl FnMut(&T) -> R) -> impl Iterator<Item = R> {
        self.shards.iter().map(move |s| f(&self.lock(s)))
    }
}

/// A hash map split into 64 locked shards.
#[derive(Debug)]
pub struct ShardedMap<K, V>(Shards<HashMap<K, V>>);

impl<K: Hash + Eq, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap::new()
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    /// An empty map.
    pub fn new() -> ShardedMap<K, V> {
        ShardedMap(Shards::new())
    }

    /// The locked shard that holds `key`. Every critical section of the
    /// callers is one map operation, so a poisoned lock is still consistent.
    pub fn shard<Q>(&self, key: &Q) -> MutexGuard<'_, HashMap<K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + ?Sized,
    {
        self.0.of(key)
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
        self.0
            .each(|m| m.values().cloned().collect::<Vec<_>>())
            .flatten()
            .collect()
    }

    /// Number of entries (shards are counted one at a time).
    pub fn len(&self) -> usize {
        self.0.each(HashMap::len).sum()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A hash set split into 64 locked shards, for items that carry their own
/// key: a user filed by its uid is found by the uid (`T: Borrow<Q>`)
/// without the table keeping a copy of it. `T`'s `Hash` must be its key's.
#[derive(Debug)]
pub struct ShardedSet<T>(Shards<HashSet<T>>);

impl<T: Hash + Eq> Default for ShardedSet<T> {
    fn default() -> Self {
        ShardedSet::new()
    }
}

impl<T: Hash + Eq> ShardedSet<T> {
    /// An empty set.
    pub fn new() -> ShardedSet<T> {
        ShardedSet(Shards::new())
    }

    /// The locked shard that holds the item keyed `key`. Every critical
    /// section of the callers is one set operation, so a poisoned lock is
    /// still consistent.
    pub fn shard<Q>(&self, key: &Q) -> MutexGuard<'_, HashSet<T>>
    where
        T: Borrow<Q>,
        Q: Hash + ?Sized,
    {
        self.0.of(key)
    }

    /// A clone of the item keyed `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<T>
    where
        T: Borrow<Q> + Clone,
        Q: Hash + Eq + ?Sized,
    {
        self.shard(key).get(key).cloned()
    }

    /// Inserts `item`, returning the item of the same key it replaced.
    pub fn replace(&self, item: T) -> Option<T> {
        self.shard(&item).replace(item)
    }

    /// Removes the item keyed `key` if `pred` holds for it; returns it.
    pub fn remove_if<Q>(&self, key: &Q, pred: impl FnOnce(&T) -> bool) -> Option<T>
    where
        T: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut shard = self.shard(key);
        if shard.get(key).is_some_and(pred) {
            shard.take(key)
        } else {
            None
        }
    }

    /// Clones of every item (a snapshot; shards are locked one at a time).
    pub fn items(&self) -> Vec<T>
    where
        T: Clone,
    {
        self.0
            .each(|s| s.iter().cloned().collect::<Vec<_>>())
            .flatten()
            .collect()
    }

    /// Number of items (shards are counted one at a time).
    pub fn len(&self) -> usize {
        self.0.each(HashSet::len).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An item keyed by the first half of a pair.
    #[derive(Debug, Clone)]
    struct Keyed(String, u32);

    impl PartialEq for Keyed {
        fn eq(&self, other: &Keyed) -> bool {
            self.0 == other.0
        }
    }

    impl Eq for Keyed {}

    impl Hash for Keyed {
        fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
            self.0.as_str().hash(h);
        }
    }

    impl Borrow<str> for Keyed {
        fn borrow(&self) -> &str {
            &self.0
        }
    }

    #[test]
    fn a_set_finds_items_by_their_own_key() {
        let set: ShardedSet<Keyed> = ShardedSet::new();
        assert!(set.replace(Keyed("a".into(), 1)).is_none());
        assert_eq!(set.get("a").map(|k| k.1), Some(1));
        // An item of the same key takes the old one's place.
        assert_eq!(set.replace(Keyed("a".into(), 2)).map(|k| k.1), Some(1));
        assert_eq!(set.get("a").map(|k| k.1), Some(2));
        assert_eq!(set.remove_if("a", |k| k.1 == 1), None);
        assert_eq!(set.remove_if("a", |k| k.1 == 2).map(|k| k.1), Some(2));
        assert!(set.is_empty());
        for i in 0..1000 {
            set.replace(Keyed(i.to_string(), i));
        }
        assert_eq!(set.len(), 1000);
        assert_eq!(set.items().len(), 1000);
        assert_eq!(set.get("777").map(|k| k.1), Some(777));
    }

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
