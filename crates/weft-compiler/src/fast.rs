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
