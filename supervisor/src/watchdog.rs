//! The watchdog policy: when a worker that pings `WATCHDOG=1` has been
//! silent too long. Pure functions over instants; the fleet acts on them.
//!
//! Unlike systemd's watchdog (armed once start-up has completed), ours is
//! armed by the first ping: a program that never pings (any plain
//! sd_notify worker) is never judged hung. A worker pings at half the interval from
//! its serving event loop, so one that is stopped, deadlocked or spinning
//! on that loop falls silent, while one that is merely busy keeps pinging.

use std::time::{Duration, Instant};

/// When a worker whose latest ping was `last_ping` becomes hung under
/// `interval`; `None` when nothing watches it (never pinged, or off).
pub fn deadline(last_ping: Option<Instant>, interval: Option<Duration>) -> Option<Instant> {
    Some(last_ping? + interval?)
}

/// Whether that deadline has passed at `now`.
pub fn expired(last_ping: Option<Instant>, interval: Option<Duration>, now: Instant) -> bool {
    deadline(last_ping, interval).is_some_and(|d| now >= d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_never_pinged_is_not_watched() {
        let now = Instant::now();
        let ten = Some(Duration::from_secs(10));
        assert_eq!(deadline(None, ten), None);
        assert!(!expired(None, ten, now + Duration::from_secs(3600)));
    }

    #[test]
    fn the_watchdog_turned_off_never_expires() {
        let t = Instant::now();
        assert!(!expired(Some(t), None, t + Duration::from_secs(3600)));
    }

    #[test]
    fn silence_longer_than_the_interval_expires() {
        let t = Instant::now();
        let ten = Some(Duration::from_secs(10));
        assert_eq!(deadline(Some(t), ten), Some(t + Duration::from_secs(10)));
        assert!(!expired(Some(t), ten, t + Duration::from_millis(9_999)));
        assert!(expired(Some(t), ten, t + Duration::from_secs(10)));
        // a later ping moves the deadline
        let later = t + Duration::from_secs(8);
        assert!(!expired(Some(later), ten, t + Duration::from_secs(12)));
    }
}
