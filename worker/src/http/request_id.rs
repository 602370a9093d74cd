//! Request ids (API.md §1): every response names its request in
//! `X-Request-ID` (and error/info bodies in `requestId`). A caller's id is
//! reused when it is safe to echo (`[A-Za-z0-9_-]{1,64}`), so a trace can be
//! followed across services; otherwise one is minted as
//! `req_<epoch-ms>_<9 base-36 chars>`, the Node.js service's format.
//!
//! The random suffix only has to make ids distinct between requests in the
//! same millisecond, not be unpredictable, so it comes from a per-thread
//! xorshift64* generator seeded from the clock and the pid rather than from
//! a random-number crate.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::runtime::clock;

/// The longest incoming id that is reused.
pub const MAX_LEN: usize = 64;

/// Length of the random base-36 suffix (the contract allows 1–9).
const SUFFIX_LEN: usize = 9;

/// Whether an incoming `X-Request-ID` may be echoed back unchanged:
/// 1–64 characters from `[A-Za-z0-9_-]`. Anything else (empty, too long,
/// spaces, control or non-ASCII bytes) could corrupt logs or headers.
pub fn is_valid(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
}

/// The id for a request: the incoming header value when [`is_valid`],
/// else a fresh one from [`generate`].
pub fn resolve(incoming: Option<&[u8]>) -> String {
    match incoming {
        Some(v) if is_valid(v) => String::from_utf8_lossy(v).into_owned(),
        _ => generate(),
    }
}

/// A fresh `req_<epoch-ms>_<suffix>` id.
pub fn generate() -> String {
    let ms = clock::epoch_millis(SystemTime::now());
    format!("req_{ms}_{}", base36_suffix(next_random()))
}

/// Encodes `r mod 36^9` as exactly nine base-36 digits (`0-9a-z`).
fn base36_suffix(mut r: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; SUFFIX_LEN];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(r % 36) as usize];
        r /= 36;
    }
    // Every byte comes from DIGITS, so this is ASCII.
    out.iter().map(|&b| char::from(b)).collect()
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

/// Seeds from the clock's nanoseconds and the pid, so two workers started
/// in the same instant still diverge. Never zero (xorshift's fixed point).
fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mixed = nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15;
    if mixed == 0 {
        0x2545_F491_4F6C_DD1D
    } else {
        mixed
    }
}

/// xorshift64* (Vigna): fast, full-period over non-zero states.
fn next_random() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(is_valid(b"abc-DEF_123"));
        assert!(is_valid(b"x"));
        assert!(is_valid("a".repeat(64).as_bytes()));
        assert!(!is_valid(b""));
        assert!(!is_valid("a".repeat(65).as_bytes()));
        assert!(!is_valid(b"has space"));
        assert!(!is_valid(b"semi;colon"));
        assert!(!is_valid(b"new\nline"));
        assert!(!is_valid("é".as_bytes()));
    }

    #[test]
    fn generated_ids_have_the_contract_format() {
        for _ in 0..100 {
            let id = generate();
            let rest = id.strip_prefix("req_").expect(&id);
            let (ms, suffix) = rest.split_once('_').expect(&id);
            assert!(
                ms.parse::<u64>().is_ok_and(|v| v > 1_600_000_000_000),
                "{id}"
            );
            assert!((1..=9).contains(&suffix.len()), "{id}");
            assert!(
                suffix
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
                "{id}"
            );
            assert!(
                is_valid(id.as_bytes()),
                "a minted id is itself reusable: {id}"
            );
        }
    }

    #[test]
    fn generated_ids_differ() {
        let a: std::collections::HashSet<String> = (0..1000).map(|_| generate()).collect();
        assert_eq!(a.len(), 1000);
    }

    #[test]
    fn base36_is_fixed_width() {
        assert_eq!(base36_suffix(0), "000000000");
        assert_eq!(base36_suffix(35), "00000000z");
        assert_eq!(base36_suffix(36), "000000010");
        assert_eq!(base36_suffix(36u64.pow(9)), "000000000", "wraps mod 36^9");
    }

    #[test]
    fn resolve_reuses_only_valid_ids() {
        assert_eq!(resolve(Some(b"trace-1")), "trace-1");
        assert!(resolve(Some(b"bad id")).starts_with("req_"));
        assert!(resolve(None).starts_with("req_"));
    }
}
