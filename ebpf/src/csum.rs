//! Incremental Internet checksum updates (RFC 1624, equation 3: `HC' = ~(~HC + ~m + m')`).
//!
//! All values are the raw wire bytes read as native integers: the one's complement sum does not
//! depend on byte order as long as every word is read the same way, so no byte swaps are needed.
//! A 32-bit word counts as its two 16-bit halves because 2^16 ≡ 1 (mod 2^16 - 1).

/// Accumulates the change of one 16-bit word.
#[inline(always)]
pub const fn diff16(old: u16, new: u16) -> u64 {
    (!old) as u64 + new as u64
}

/// Accumulates the change of one 32-bit word (two 16-bit words).
#[inline(always)]
pub const fn diff32(old: u32, new: u32) -> u64 {
    (!old) as u64 + new as u64
}

/// Folds a 64-bit sum of 16-bit words into 16 bits with end-around carry.
#[inline(always)]
pub const fn fold(sum: u64) -> u16 {
    let s = (sum & 0xffff_ffff) + (sum >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The checksum after the words summed in `diff` changed.
#[inline(always)]
pub const fn update(old_csum: u16, diff: u64) -> u16 {
    !fold((!old_csum) as u64 + diff)
}

/// The same for a UDP checksum: 0 (no checksum) stays 0, and a result of 0 is sent as 0xffff
/// (RFC 768).
#[inline(always)]
pub const fn update_udp(old_csum: u16, diff: u64) -> u16 {
    if old_csum == 0 {
        return 0;
    }
    match update(old_csum, diff) {
        0 => 0xffff,
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(words: &[u16]) -> u16 {
        !fold(words.iter().map(|w| *w as u64).sum())
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let mut words = [
            0x4500u16, 0x0073, 0x0000, 0x4000, 0x4011, 0, 0xc0a8, 0x0001, 0xc0a8, 0x00c7,
        ];
        let c = full(&words);
        words[5] = c;
        assert_eq!(full(&words), 0);
        let old = [words[6], words[7]];
        words[6] = 0xc612;
        words[7] = 0x0101;
        let old32 = (old[0] as u32) << 16 | old[1] as u32;
        let new32 = (words[6] as u32) << 16 | words[7] as u32;
        let updated = update(c, diff32(old32, new32));
        words[5] = 0;
        assert_eq!(updated, full(&words));
    }

    #[test]
    fn udp_zero_stays_zero() {
        assert_eq!(update_udp(0, diff16(1, 2)), 0);
    }
}
