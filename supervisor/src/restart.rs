//! The crash-restart policy: exponential backoff, stability reset and the
//! `errored` verdict, as pure functions of a slot's history.
//!
//! A run shorter than `min_uptime` is *unstable*. Consecutive unstable runs
//! double the delay (from `restart_delay` up to `restart_delay_max`); a
//! stable run resets both the delay and the unstable count, as PM2 does.
//! Once a slot has already been restarted `max_restarts` times in a row
//! without a stable run, the next unstable exit leaves it `errored`.

use std::time::Duration;

/// The knobs from `[[apps]]`.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub base: Duration,
    pub cap: Duration,
    pub min_uptime: Duration,
    pub max_restarts: u32,
}

/// What to do with a slot whose worker just ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start a new worker after this delay.
    RestartAfter(Duration),
    /// Give up on the slot.
    Errored,
}

impl Policy {
    /// `unstable` is the count of consecutive unstable restarts so far; it
    /// is updated in place.
    pub fn on_exit(&self, uptime: Duration, unstable: &mut u32) -> Decision {
        if uptime >= self.min_uptime {
            *unstable = 0;
            return Decision::RestartAfter(self.base);
        }
        if *unstable >= self.max_restarts {
            return Decision::Errored;
        }
        let delay = self.delay(*unstable);
        *unstable += 1;
        Decision::RestartAfter(delay)
    }

    /// base × 2^attempt, capped.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            min_uptime: Duration::from_secs(1),
            max_restarts: 3,
        }
    }

    #[test]
    fn unstable_exits_back_off_then_error() {
        let p = policy();
        let mut n = 0;
        let fast = Duration::from_millis(10);
        assert_eq!(
            p.on_exit(fast, &mut n),
            Decision::RestartAfter(Duration::from_millis(100))
        );
        assert_eq!(
            p.on_exit(fast, &mut n),
            Decision::RestartAfter(Duration::from_millis(200))
        );
        assert_eq!(
            p.on_exit(fast, &mut n),
            Decision::RestartAfter(Duration::from_millis(400))
        );
        assert_eq!(n, 3);
        assert_eq!(p.on_exit(fast, &mut n), Decision::Errored);
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let p = policy();
        let mut n = 2;
        assert_eq!(
            p.on_exit(Duration::from_secs(5), &mut n),
            Decision::RestartAfter(Duration::from_millis(100))
        );
        assert_eq!(n, 0);
    }

    #[test]
    fn delay_is_capped_and_never_overflows() {
        let p = policy();
        assert_eq!(p.delay(4), Duration::from_millis(1600));
        assert_eq!(p.delay(5), Duration::from_secs(2));
        assert_eq!(p.delay(1000), Duration::from_secs(2));
    }

    #[test]
    fn zero_max_restarts_errors_on_the_first_unstable_exit() {
        let p = Policy {
            max_restarts: 0,
            ..policy()
        };
        assert_eq!(p.on_exit(Duration::ZERO, &mut 0), Decision::Errored);
    }
}
