//! A map keyed by transaction keys (branches, sent-by, Call-IDs: data a peer chooses) whose
//! keyed hash is computed once per key and stored with it.
//!
//! A std `HashMap` with its default keyed SipHash rehashes every key each time the table
//! grows. The server table of a worker holds every transaction for its 32 s (Timer J), so
//! under a load of new clients it doubles every few seconds, and one growth of ~60 000 keys
//! spent several milliseconds in SipHash alone, during which no datagram was served (the
//! p99.9 of the REGISTER → 401 leg). Here the hash is computed once with a per-map random
//! SipHash key (so peers still cannot aim at buckets) and a growth only moves entries.
use std::hash::{BuildHasher, Hash, Hasher, RandomState};

use hashbrown::{Equivalent, HashMap};

use super::IdHash;

/// A key and its keyed hash.
#[derive(Debug)]
struct Hashed<K> {
    hash: u64,
    key: K,
}

impl<K> Hash for Hashed<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl<K: Eq> PartialEq for Hashed<K> {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.key == other.key
    }
}

impl<K: Eq> Eq for Hashed<K> {}

/// A borrowed key looked up by its hash, without a copy of the key.
struct Probe<'a, K> {
    hash: u64,
    key: &'a K,
}

impl<K> Hash for Probe<'_, K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl<K: Eq> Equivalent<Hashed<K>> for Probe<'_, K> {
    fn equivalent(&self, stored: &Hashed<K>) -> bool {
        self.hash == stored.hash && *self.key == stored.key
    }
}

/// The map (the subset of `HashMap` the layer uses).
#[derive(Debug)]
pub(crate) struct KeyMap<K, V> {
    map: HashMap<Hashed<K>, V, IdHash>,
    keyed: RandomState,
}

impl<K, V> Default for KeyMap<K, V> {
    fn default() -> Self {
        KeyMap {
            map: HashMap::default(),
            keyed: RandomState::new(),
        }
    }
}

impl<K: Hash + Eq, V> KeyMap<K, V> {
    fn probe<'a>(&self, key: &'a K) -> Probe<'a, K> {
        Probe {
            hash: self.keyed.hash_one(key),
            key,
        }
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.map.get(&self.probe(key))
    }

    pub(crate) fn contains_key(&self, key: &K) -> bool {
        self.map.contains_key(&self.probe(key))
    }

    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let hash = self.keyed.hash_one(&key);
        self.map.insert(Hashed { hash, key }, value)
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let probe = self.probe(key);
        self.map.remove(&probe)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_map_across_growth() {
        let mut m: KeyMap<Vec<u8>, u32> = KeyMap::default();
        for i in 0..10_000u32 {
            assert_eq!(m.insert(format!("z9hG4bK{i}").into_bytes(), i), None);
        }
        assert_eq!(m.len(), 10_000);
        // Replacing returns the old value; lookups find every key after many growths.
        assert_eq!(m.insert(b"z9hG4bK7".to_vec(), 70), Some(7));
        for i in (0..10_000u32).filter(|i| *i != 7) {
            assert_eq!(m.get(&format!("z9hG4bK{i}").into_bytes()), Some(&i));
        }
        assert_eq!(m.get(&b"z9hG4bK7".to_vec()), Some(&70));
        assert!(!m.contains_key(&b"z9hG4bK10000".to_vec()));
        assert_eq!(m.remove(&b"z9hG4bK5".to_vec()), Some(5));
        assert_eq!(m.remove(&b"z9hG4bK5".to_vec()), None);
        assert!(!m.contains_key(&b"z9hG4bK5".to_vec()));
        assert_eq!(m.len(), 9_999);
    }

    #[test]
    fn equal_hashes_of_different_keys_stay_apart() {
        // Two entries forced onto one hash value: the key comparison keeps them distinct.
        let mut m: HashMap<Hashed<&str>, u8, IdHash> = HashMap::default();
        m.insert(Hashed { hash: 1, key: "a" }, 1);
        m.insert(Hashed { hash: 1, key: "b" }, 2);
        assert_eq!(m.get(&Probe { hash: 1, key: &"a" }), Some(&1));
        assert_eq!(m.get(&Probe { hash: 1, key: &"b" }), Some(&2));
        assert_eq!(m.get(&Probe { hash: 1, key: &"c" }), None);
        assert_eq!(m.get(&Probe { hash: 2, key: &"a" }), None);
    }
}
