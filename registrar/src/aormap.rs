//! Hash tables of the registrar whose growth never re-hashes a key.
//!
//! A std `HashMap` with its keyed SipHash hashes every key again each time the table grows. The
//! registrar's tables grow with the load (one AOR per new nickname or user; one nonce count per
//! authenticated client) and every growth happens under the registrar's lock, so a growth of
//! ~100 000 AORs stalls every worker for milliseconds. [`AorMap`] computes each key's keyed hash
//! (a per-map random SipHash key, so peers still cannot aim at buckets) once and stores it with
//! the entry; a growth only moves entries. [`MacHash`] hashes keys that already are MACs under
//! the registrar's secret (uniform, and unknown to peers): their first eight bytes are the hash.
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use hashbrown::HashTable;

/// One entry: the key's keyed hash, the key, the value.
#[derive(Debug)]
struct Slot<V> {
    hash: u64,
    key: String,
    value: V,
}

/// A `String`-keyed map storing each key's keyed hash with it (see the module docs).
#[derive(Debug)]
pub(crate) struct AorMap<V> {
    table: HashTable<Slot<V>>,
    state: RandomState,
}

impl<V> Default for AorMap<V> {
    fn default() -> Self {
        AorMap {
            table: HashTable::new(),
            state: RandomState::new(),
        }
    }
}

impl<V> AorMap<V> {
    fn hash(&self, key: &str) -> u64 {
        self.state.hash_one(key)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&V> {
        let h = self.hash(key);
        self.table
            .find(h, |s| s.hash == h && s.key == key)
            .map(|s| &s.value)
    }

    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let h = self.hash(key);
        self.table
            .find_mut(h, |s| s.hash == h && s.key == key)
            .map(|s| &mut s.value)
    }

    pub(crate) fn remove(&mut self, key: &str) -> Option<V> {
        let h = self.hash(key);
        self.table
            .find_entry(h, |s| s.hash == h && s.key == key)
            .ok()
            .map(|e| e.remove().0.value)
    }

    /// Inserts or replaces; returns the value replaced.
    pub(crate) fn insert(&mut self, key: String, value: V) -> Option<V> {
        let h = self.hash(&key);
        match self
            .table
            .entry(h, |s| s.hash == h && s.key == key, |s| s.hash)
        {
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                Some(std::mem::replace(&mut e.get_mut().value, value))
            }
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(Slot {
                    hash: h,
                    key,
                    value,
                });
                None
            }
        }
    }

    /// The value of `key`, inserted as `V::default()` if absent.
    pub(crate) fn get_or_default(&mut self, key: &str) -> &mut V
    where
        V: Default,
    {
        let h = self.hash(key);
        let entry = self
            .table
            .entry(h, |s| s.hash == h && s.key == key, |s| s.hash);
        &mut entry
            .or_insert_with(|| Slot {
                hash: h,
                key: key.to_owned(),
                value: V::default(),
            })
            .into_mut()
            .value
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.table.iter().map(|s| (s.key.as_str(), &s.value))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.table.iter().map(|s| &s.value)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

/// Hasher of keys that are MACs under the registrar's secret: the first eight bytes written are
/// the hash (see the module docs). Only for such keys: anything a peer chooses freely would let
/// it aim at buckets.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MacHasher(u64);

impl Hasher for MacHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as a length prefix (`write_usize`) then its bytes: the bytes decide.
        if let Some(first) = bytes.first_chunk::<8>() {
            self.0 = u64::from_le_bytes(*first);
        }
    }

    fn write_usize(&mut self, _: usize) {}
}

/// [`BuildHasher`] of [`MacHasher`].
pub(crate) type MacHash = BuildHasherDefault<MacHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aor_map_finds_replaces_and_removes_across_growth() {
        let mut m: AorMap<u32> = AorMap::default();
        for i in 0..10_000u32 {
            assert_eq!(m.insert(format!("u{i}@open.lab"), i), None);
        }
        assert_eq!(m.len(), 10_000);
        for i in 0..10_000u32 {
            assert_eq!(m.get(&format!("u{i}@open.lab")), Some(&i));
        }
        assert_eq!(m.insert("u7@open.lab".into(), 70_000), Some(7));
        *m.get_or_default("u8@open.lab") += 1;
        *m.get_or_default("new@open.lab") += 5;
        assert_eq!(m.get("u8@open.lab"), Some(&9));
        assert_eq!(m.get("new@open.lab"), Some(&5));
        if let Some(v) = m.get_mut("u9@open.lab") {
            *v = 90;
        }
        assert_eq!(m.remove("u9@open.lab"), Some(90));
        assert_eq!(m.get("u9@open.lab"), None);
        assert_eq!(m.remove("u9@open.lab"), None);
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.iter().count(), 10_000);
        assert_eq!(m.values().filter(|&&v| v == 70_000).count(), 1);
    }

    #[test]
    fn mac_hasher_takes_the_first_eight_bytes_of_a_mac() {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        key[8..].fill(0xee);
        assert_eq!(MacHash::default().hash_one(key), 0x1122_3344_5566_7788);
    }
}
