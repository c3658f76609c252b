//! Identifiers the edge mints for a leg: Call-IDs, tags, branches, CSeq
//! starts and SDP session ids. Randomness is a parameter ([`IdSource`]) so
//! the core stays deterministic under test.
//!
//! Every identifier is derived only from the source, never from anything the
//! other leg sent: a Call-ID or tag built from a hash of the peer's values
//! could be linked back to them by anyone who guesses the input.

/// Where the edge's random identifiers come from. The daemon backs it with a
/// CSPRNG-seeded generator (e.g. [`SeededIds`] seeded from `getrandom`);
/// tests use a fixed seed.
pub trait IdSource {
    /// The next 64 unpredictable bits.
    fn next_u64(&mut self) -> u64;

    /// An RFC 3261 branch (`z9hG4bK` + hex) for a Via the edge adds.
    fn branch(&mut self) -> String {
        let a = self.next_u64();
        format!("z9hG4bK{a:016x}")
    }

    /// A Call-ID: 128 bits in hex, no host part (RFC 3261 §8.1.1.4 allows
    /// the bare form, and a host part would only describe the edge).
    fn call_id(&mut self) -> String {
        let (a, b) = (self.next_u64(), self.next_u64());
        format!("{a:016x}{b:016x}")
    }

    /// A From/To tag: 64 bits in hex (§19.3 asks for at least 32).
    fn tag(&mut self) -> String {
        format!("{:016x}", self.next_u64())
    }

    /// A first CSeq number for a new leg, in `1..2^31` (§8.1.1.5), random
    /// so that it says nothing about the other leg's count.
    fn cseq_start(&mut self) -> u32 {
        // 2^31 - 1 values: 1..=0x7fff_ffff.
        (self.next_u64() % 0x7fff_ffff) as u32 + 1
    }

    /// An SDP `o=` session id: a decimal below 2^62 (RFC 4566 §5.2
    /// suggests an NTP-style number; any unique 63-bit value works).
    fn sdp_session_id(&mut self) -> u64 {
        self.next_u64() >> 2
    }
}

/// A deterministic [`IdSource`]: SplitMix64 over a seed (the permutation the SIP crate's
/// `BranchGenerator` uses). Unpredictable to a peer exactly as
/// far as the seed is, so seed it from the OS RNG in production.
#[derive(Clone, Debug)]
pub struct SeededIds {
    state: u64,
}

impl SeededIds {
    /// A source whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        SeededIds { state: seed }
    }
}

impl IdSource for SeededIds {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_are_deterministic_and_distinct() {
        let mut a = SeededIds::new(7);
        let mut b = SeededIds::new(7);
        let xs: Vec<String> = (0..50).map(|_| a.call_id()).collect();
        let ys: Vec<String> = (0..50).map(|_| b.call_id()).collect();
        assert_eq!(xs, ys);
        let mut sorted = xs.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), xs.len());
    }

    #[test]
    fn shapes() {
        let mut ids = SeededIds::new(1);
        assert!(ids.branch().starts_with("z9hG4bK"));
        assert_eq!(ids.call_id().len(), 32);
        assert_eq!(ids.tag().len(), 16);
        for _ in 0..1000 {
            let c = ids.cseq_start();
            assert!((1..=0x7fff_ffff).contains(&c));
            assert!(ids.sdp_session_id() < (1 << 62));
        }
    }
}
