//! The Fx hash (as in rustc) for the compiler's hash maps.

use std::collections::{HashMap, HashSet};

/// The Fx hash (as in rustc) for the compiler's hash maps: its keys are small and come from
/// validated objects, and SipHash showed in profiles. Eight bytes per step.
#[derive(Default)]
pub(crate) struct Fx(u64);

impl std::hash::Hasher for Fx {
    /// Fx's multiply only carries bits upwards, and hash tables index by the low bits: keys
    /// that differ only in their high bytes (big-endian counters in UUIDs) would all collide.
    /// MurmurHash3's finaliser spreads every bit over the whole word.
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        for b in chunks.remainder() {
            self.add(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

impl Fx {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

pub(crate) type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fx>>;
pub(crate) type FastSet<T> = HashSet<T, std::hash::BuildHasherDefault<Fx>>;

/// The Fx hash of one value: the compiler's key for lookups by content.
pub(crate) fn hash_of<T: std::hash::Hash + ?Sized>(value: &T) -> u64 {
    use std::hash::Hasher;
    let mut h = Fx::default();
    value.hash(&mut h);
    h.finish()
}

/// A map kept as a vector while it is small. Most of the compiler's per-class maps hold one
/// entry (a class per pod where every pod's labels differ, as a StatefulSet's do), and a hash
/// map's smallest table is four slots and a control block: 220 bytes for a class's one port,
/// against 48 here. Past `FEW` entries it is a hash map, so a class of 10,000 ports costs
/// what it did.
#[derive(Debug)]
pub(crate) enum SmallMap<K, V> {
    Few(Vec<(K, V)>),
    Many(FastMap<K, V>),
}

/// Entries a `SmallMap` holds in its vector: a linear search over eight keys of 16 bytes costs
/// no more than a hash lookup.
const FEW: usize = 8;

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap::Few(Vec::new())
    }
}

impl<K: Eq + std::hash::Hash + Copy, V> SmallMap<K, V> {
    pub(crate) fn len(&self) -> usize {
        match self {
            SmallMap::Few(v) => v.len(),
            SmallMap::Many(m) => m.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `key`, inserted by `make` when there is none.
    pub(crate) fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        if let SmallMap::Few(v) = self
            && v.len() >= FEW
            && !v.iter().any(|(k, _)| *k == key)
        {
            *self = SmallMap::Many(std::mem::take(v).into_iter().collect());
        }
        match self {
            SmallMap::Few(v) => {
                let at = match v.iter().position(|(k, _)| *k == key) {
                    Some(at) => at,
                    None => {
                        // Grown one at a time: the vector's own doubling starts at four.
                        v.reserve_exact(1);
                        v.push((key, make()));
                        v.len() - 1
                    }
                };
                &mut v[at].1
            }
            SmallMap::Many(m) => m.entry(key).or_insert_with(make),
        }
    }

    /// Inserts `value` at `key`, returning the value it replaced.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let mut value = Some(value);
        let slot = self.get_or_insert_with(key, || value.take().expect("taken once"));
        value.map(|v| std::mem::replace(slot, v))
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        match self {
            SmallMap::Few(v) => {
                let at = v.iter().position(|(k, _)| k == key)?;
                let (_, value) = v.swap_remove(at);
                v.shrink_to_fit();
                Some(value)
            }
            SmallMap::Many(m) => {
                let value = m.remove(key);
                if m.len() < FEW / 2 {
                    let mut few: Vec<(K, V)> = Vec::with_capacity(m.len());
                    few.extend(m.drain());
                    *self = SmallMap::Few(few);
                }
                value
            }
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        let (few, many) = match self {
            SmallMap::Few(v) => (Some(v.iter().map(|(k, v)| (k, v))), None),
            SmallMap::Many(m) => (None, Some(m.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever is inserted and removed, the map holds what a hash map given the same would,
    /// across its change from vector to table and back.
    #[test]
    fn a_small_map_holds_what_a_hash_map_holds() {
        let mut small: SmallMap<u32, u32> = SmallMap::default();
        let mut reference: FastMap<u32, u32> = FastMap::default();
        let (mut state, mut was_many, mut few_again) = (7u32, false, false);
        for step in 0..5_000u32 {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let key = (state >> 16) % 24;
            // Mostly inserts in the first half (it grows into a table), mostly removals after.
            let removing = if step < 2_500 { (state >> 8) % 3 == 0 } else { (state >> 8) % 8 != 0 };
            if removing {
                assert_eq!(small.remove(&key), reference.remove(&key), "step {step}");
            } else {
                assert_eq!(small.insert(key, step), reference.insert(key, step), "step {step}");
                *small.get_or_insert_with(key + 1, || 0) += 1;
                *reference.entry(key + 1).or_insert(0) += 1;
            }
            assert_eq!(small.len(), reference.len());
            let mut held: Vec<(u32, u32)> = small.iter().map(|(k, v)| (*k, *v)).collect();
            held.sort_unstable();
            let mut expected: Vec<(u32, u32)> = reference.iter().map(|(k, v)| (*k, *v)).collect();
            expected.sort_unstable();
            assert_eq!(held, expected, "step {step}");
            assert_eq!(small.iter().find(|(k, _)| **k == key).map(|(_, v)| v), reference.get(&key));
            was_many |= matches!(small, SmallMap::Many(_));
            few_again |= was_many && matches!(small, SmallMap::Few(_));
        }
        assert!(was_many && few_again, "the map was a vector, a table and a vector again");
    }
}
