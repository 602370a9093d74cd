//! 64-bit FNV-1a, written out: the hashes that must be the same in every
//! build and every process (std's hasher is randomly seeded) — simulated
//! answers, and the fleet-wide rate-limit table that old and new worker
//! generations share during a reload.

/// FNV-1a's offset basis: the `h` to start from.
pub const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Feeds `bytes` into the running hash `h`.
pub fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b"", OFFSET), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a", OFFSET), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a(b"foobar", OFFSET), 0x85944171f73967e8);
    }
}
