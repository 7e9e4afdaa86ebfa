//! A map that is cheap to copy and change one entry at a time: the keys are spread over a
//! fixed number of shards, each behind an `Arc`. A copy shares every shard with the map it
//! came from; a change copies only the shard it touches. So a new config snapshot built from
//! the last one costs what the change costs (a few shards), not the size of the config, and
//! requests still reading the old snapshot see it unchanged.
//!
//! A lookup hashes the key once to pick the shard, then looks it up in that shard's map.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use foldhash::fast::{FixedState, RandomState};

/// Shards per map: about 100 entries each at 100,000 entries.
const SHARDS: usize = 1024;

/// A persistent map from `K` to `V` in [`SHARDS`] copy-on-write shards.
#[derive(Clone)]
pub struct ShardedMap<K, V> {
    shards: Arc<[Arc<HashMap<K, V, RandomState>>]>,
    len: usize,
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for ShardedMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.shards.iter().flat_map(|s| s.iter()))
            .finish()
    }
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        let empty = Arc::new(HashMap::with_hasher(RandomState::default()));
        ShardedMap {
            shards: (0..SHARDS).map(|_| empty.clone()).collect(),
            len: 0,
        }
    }
}

/// The shard of a key: a hash that is the same in every process (the shards' own maps
/// are seeded per process).
#[inline]
fn shard_of<Q: Hash + ?Sized>(key: &Q) -> usize {
    (FixedState::with_seed(0x5eed).hash_one(key) as usize) % SHARDS
}

impl<K: Hash + Eq + Clone, V: Clone> ShardedMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[shard_of(key)].get(key)
    }

    /// The entry of `key`, with the key as the map holds it.
    pub fn get_key_value<Q>(&self, key: &Q) -> Option<(&K, &V)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[shard_of(key)].get_key_value(key)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// The shard that holds `key`, copied first if another map shares it.
    fn shard_mut<Q: Hash + ?Sized>(&mut self, key: &Q) -> &mut HashMap<K, V, RandomState> {
        let i = shard_of(key);
        // The shard array is shared by every copy: copy it (pointers only) before changing
        // one slot, unless this map is its only owner.
        if Arc::get_mut(&mut self.shards).is_none() {
            self.shards = self.shards.iter().cloned().collect();
        }
        let shards = Arc::get_mut(&mut self.shards).expect("unshared");
        Arc::make_mut(&mut shards[i])
    }

    /// Inserts or replaces; the value it had.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let old = self.shard_mut(&key).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // Look first, so removing a missing key copies nothing.
        self.get(key)?;
        let old = self.shard_mut(key).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// How many shards this map shares with `other` (the same `Arc`).
    pub fn shared_shards(&self, other: &Self) -> usize {
        self.shards
            .iter()
            .zip(other.shards.iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count()
    }
}

impl<K: Hash + Eq + Clone, V: Clone> FromIterator<(K, V)> for ShardedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut shards: Vec<HashMap<K, V, RandomState>> = (0..SHARDS)
            .map(|_| HashMap::with_hasher(RandomState::default()))
            .collect();
        let mut len = 0;
        for (k, v) in iter {
            if shards[shard_of(&k)].insert(k, v).is_none() {
                len += 1;
            }
        }
        ShardedMap {
            shards: shards.into_iter().map(Arc::new).collect(),
            len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_shares_what_it_did_not_change() {
        let a: ShardedMap<String, u32> = (0..10_000).map(|i| (format!("k{i}"), i)).collect();
        let mut b = a.clone();
        assert_eq!(b.shared_shards(&a), SHARDS);
        b.insert("k5".into(), 50);
        b.remove("k6");
        b.remove("missing");
        assert!(b.shared_shards(&a) >= SHARDS - 2);
        assert_eq!(a.get("k5"), Some(&5), "the original is unchanged");
        assert_eq!(b.get("k5"), Some(&50));
        assert_eq!((a.len(), b.len()), (10_000, 9_999));
        assert!(a.contains_key("k6") && !b.contains_key("k6"));
        assert_eq!(b.iter().count(), 9_999);
    }
}
