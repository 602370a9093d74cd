//! Fleet-wide rate-limit counters without Redis (API.md §4, §13 k): one
//! table of atomic counters in memory shared by every worker of a
//! supervisor.
//!
//! The supervisor creates an anonymous shared-memory file (memfd, sealed
//! against resizing: `shared::shm`) once, at start, and passes it to every
//! worker it launches (`HEARTALK_LIMITS_FD`); it outlives reloads and
//! restarts, so neither resets a window. Each worker maps it and counts
//! with lock-free compare-and-swap: a hit costs a few atomic operations
//! and no system call, no IPC and no lock — a worker killed at any instant
//! cannot wedge the others.
//!
//! Layout: `SLOTS` pairs of `u64` words, `[state, window_end]`. `state` packs
//! a 39-bit identity (a hash of key, window length and window start), a
//! "being claimed" flag, and a 24-bit count, so one CAS both checks whose
//! slot it is and counts. A key's slot is found by linear probing from its
//! hash; a slot whose window has ended is reclaimed by the next key that
//! probes it. The flag covers the two stores of a claim (`state`, then
//! `window_end`): others never mistake a fresh claim for an expired one.
//! If no slot is free within [`PROBES`], or a worker died between the two
//! stores of a claim, the hit is counted by the caller's fallback (per
//! process) and logged: limits degrade, requests never fail.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::runtime::fnv::{self, fnv1a};

/// Bytes of the table (what the supervisor allocates).
pub const TABLE_BYTES: usize = shared::activation::LIMITS_TABLE_BYTES as usize;
/// Slots probed before giving up.
pub const PROBES: usize = 32;

const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const CLAIMING: u64 = 1 << 63;
const ID_MASK: u64 = !(COUNT_MASK | CLAIMING);

/// FNV-1a over the parts, then a splitmix64 finaliser: stable across builds
/// (old and new generations share windows during a reload).
fn hash(key: &str, window: u64, window_start: u64) -> u64 {
    let mut h = fnv1a(key.as_bytes(), fnv::OFFSET);
    h = fnv1a(&[0xff], h);
    h = fnv1a(&window.to_le_bytes(), h);
    h = fnv1a(&window_start.to_le_bytes(), h);
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Counts one hit of `key` in the window `[window_start, +window)` in
/// `table` (pairs of words) and returns the count so far, this hit
/// included; `None` when no slot could be had.
///
/// Two passes over the key's probe sequence: first for its slot, then, if
/// it has none, to claim the first free one. A slot is free when empty or
/// when its window ended by *this window's start* — not by "now" — so
/// every worker counting the same key and window judges every slot the
/// same way, whatever its clock second, and they race for the same slot:
/// one claims it, the others find it claimed and count in it.
pub fn hit(table: &[AtomicU64], key: &str, window_start: u64, window: u64) -> Option<u64> {
    let slots = table.len() / 2;
    if slots == 0 {
        return None;
    }
    let h = hash(key, window, window_start);
    // Identity: the high bits of the hash, never zero (zero = empty slot).
    let id = ((h << 1) & ID_MASK).max(1 << COUNT_BITS);
    let first = (h as usize) % slots;
    let probes = PROBES.min(slots);
    let slot = |p: usize| {
        let i = (first + p) % slots;
        (&table[2 * i], &table[2 * i + 1])
    };
    for claim in [false, true] {
        for p in 0..probes {
            let (state, window_end) = slot(p);
            if let Some(n) = try_slot(
                state,
                window_end,
                id,
                window_start + window,
                window_start,
                claim,
            ) {
                return Some(n);
            }
        }
    }
    None
}

/// One slot: count in it if it is the key's; with `claim`, take it if free.
fn try_slot(
    state: &AtomicU64,
    window_end: &AtomicU64,
    id: u64,
    end: u64,
    window_start: u64,
    claim: bool,
) -> Option<u64> {
    let mut spins = 0u32;
    loop {
        let cur = state.load(Ordering::Acquire);
        if cur & ID_MASK == id {
            if cur & CLAIMING != 0 {
                // Being claimed by another worker: two stores from ready,
                // unless its claimer was preempted (wait a little) or died
                // mid-claim (give up on the slot: the caller counts this
                // hit per process, so a dead claimer costs accuracy for one
                // key's window, never a stuck request).
                if spins >= 10_000 {
                    return None;
                }
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let count = cur & COUNT_MASK;
            let next = (cur & !COUNT_MASK) | (count + 1).min(COUNT_MASK);
            if state
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Some(count + 1);
            }
            continue;
        }
        if !claim || cur & CLAIMING != 0 {
            return None;
        }
        let free = cur == 0 || window_end.load(Ordering::Acquire) <= window_start;
        if !free {
            return None;
        }
        if state
            .compare_exchange(cur, id | CLAIMING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            continue; // changed under us: look again
        }
        window_end.store(end, Ordering::Release);
        state.store(id | 1, Ordering::Release);
        return Some(1);
    }
}

/// The table mapped from the supervisor's memfd.
pub struct SharedTable {
    words: shared::shm::SharedWords,
}

impl SharedTable {
    /// Maps the table named by `HEARTALK_LIMITS_FD`, if the supervisor
    /// passed one. The descriptor is taken only once it is known to be the
    /// table (a stale number is left alone, never closed). Errors are
    /// logged and mean per-process counting.
    pub fn from_env() -> Option<SharedTable> {
        let fd = shared::shm::inherited(
            shared::activation::env::HEARTALK_LIMITS_FD,
            shared::activation::LIMITS_TABLE_BYTES,
        )?;
        match fd.and_then(|fd| SharedTable::map(fd.as_fd())) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "HEARTALK_LIMITS_FD unusable; rate limits count per process");
                None
            }
        }
    }

    /// Maps a table file of [`TABLE_BYTES`] read-write. The descriptor may
    /// be closed afterwards: the mapping keeps the memory alive on its own.
    pub fn map(fd: BorrowedFd<'_>) -> std::io::Result<SharedTable> {
        let words = shared::shm::SharedWords::map(fd, shared::activation::LIMITS_TABLE_BYTES)?;
        Ok(SharedTable { words })
    }

    pub fn words(&self) -> &[AtomicU64] {
        self.words.words()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(slots: usize) -> Vec<AtomicU64> {
        (0..2 * slots).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn counts_per_key_and_window() {
        let t = table(64);
        assert_eq!(hit(&t, "a", 60, 60), Some(1));
        assert_eq!(hit(&t, "a", 60, 60), Some(2));
        assert_eq!(hit(&t, "b", 60, 60), Some(1));
        assert_eq!(hit(&t, "a", 120, 60), Some(1), "a new window");
        assert_eq!(hit(&t, "a", 60, 900), Some(1), "another bucket length");
    }

    #[test]
    fn ended_windows_are_reclaimed() {
        let t = table(4);
        for k in ["a", "b", "c", "d"] {
            assert_eq!(hit(&t, k, 0, 60), Some(1));
        }
        assert_eq!(hit(&t, "e", 0, 60), None, "full while every window is live");
        assert_eq!(hit(&t, "e", 60, 60), Some(1), "after the windows ended");
    }

    #[test]
    fn many_threads_count_exactly() {
        // Threads stand in for worker processes: the same atomics.
        let t = std::sync::Arc::new(table(1024));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        hit(&t, &format!("k{}", i % 10), 0, 60).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        for k in 0..10 {
            assert_eq!(hit(&t, &format!("k{k}"), 0, 60), Some(1601));
        }
    }

    #[test]
    fn a_memfd_is_shared_between_two_mappings() {
        let fd = shared::shm::create(c"heartalk-limits", shared::activation::LIMITS_TABLE_BYTES)
            .unwrap();
        let a = SharedTable::map(fd.as_fd()).unwrap();
        let b = SharedTable::map(fd.as_fd()).unwrap();
        drop(fd);
        assert_eq!(a.words().len(), TABLE_BYTES / 8);
        assert_eq!(hit(a.words(), "k", 0, 60), Some(1));
        assert_eq!(hit(b.words(), "k", 0, 60), Some(2));
    }
}
