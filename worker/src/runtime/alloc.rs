//! Giving memory back after a burst: the worker's allocator (mimalloc)
//! keeps freed pages for reuse, so after thousands of streams end a worker
//! would stay at its peak resident size. When the number of open
//! connections has fallen well below the peak seen since the last
//! collection, the serving runtime asks mimalloc to return what it can to
//! the system (`mi_collect(true)`). After a fall it collects at every
//! check (every 5 s) until `UPSTREAM_POOL_IDLE_SECS` + 15 s have passed, so
//! the idle upstream connections the burst left in the pool, closed by the
//! pool's own sweep meanwhile, are given back too.

use std::time::Duration;

/// How often the fall is looked for.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Whether a collection is due: `peak` connections were open since the
/// last one and `now` are. Only a fall of at least a quarter of the peak
/// and of at least 64 connections counts (smaller swings are normal
/// traffic, whose pages are about to be reused anyway).
pub fn due(peak: usize, now: usize) -> bool {
    let fell = peak.saturating_sub(now);
    fell >= 64 && fell * 4 >= peak
}

#[cfg(not(feature = "dhat-heap"))]
unsafe extern "C" {
    /// mimalloc's own (linked through the `mimalloc` crate's C library):
    /// `force` frees and returns every page it can.
    fn mi_collect(force: bool);
}

/// Returns the allocator's free pages to the system.
fn collect() {
    #[cfg(not(feature = "dhat-heap"))]
    // SAFETY: mi_collect only walks mimalloc's own heap structures of the
    // calling thread (and abandoned ones); it takes no pointers from us.
    unsafe {
        mi_collect(true)
    };
}

/// Watches the open-connection count (`open_connections` reads it) for as
/// long as the runtime runs and collects as the module doc says;
/// `pool_idle` is `UPSTREAM_POOL_IDLE_SECS`.
pub async fn give_back(pool_idle: Duration, open_connections: impl Fn() -> usize) {
    let follow_up = pool_idle + Duration::from_secs(15);
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut peak = 0usize;
    let mut until: Option<tokio::time::Instant> = None;
    loop {
        let at = ticks.tick().await;
        let now = open_connections();
        peak = peak.max(now);
        if due(peak, now) {
            until = Some(at + follow_up);
            peak = now;
        }
        if until.is_some_and(|u| at <= u) {
            let started = std::time::Instant::now();
            collect();
            tracing::debug!(
                open = now,
                took_us = started.elapsed().as_micros() as u64,
                "returned free memory to the system"
            );
        } else {
            until = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_real_fall_is_worth_a_collection() {
        assert!(!due(0, 0));
        assert!(!due(100, 90), "a normal swing");
        assert!(!due(60, 0), "too few connections to matter");
        assert!(due(1000, 10));
        assert!(due(1000, 750));
        assert!(!due(1000, 800));
        assert!(due(10_000, 0));
    }
}
