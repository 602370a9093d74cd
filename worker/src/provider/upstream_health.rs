//! Recent upstream outcomes, for the `providers` component of
//! `/api/v1/health` (API.md §5.1): `degraded` when at least half of the
//! calls in the last 5 minutes failed (at least 4 calls), `unhealthy` when
//! the last 5 calls all failed with 401/403 (broken credentials: the
//! orchestrator should see a 503 and page someone).
//!
//! The verdict is a pure function of the recorded window; recording is one
//! short lock per upstream call.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The look-back of the failure-rate rule.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Outcomes kept at most (the oldest go first), so memory stays bounded
/// however busy the worker is.
const MAX_KEPT: usize = 10_000;

/// One upstream call's result, as health cares about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    /// 401 or 403 from the upstream.
    AuthFailed,
}

/// What the recent outcomes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    Degraded,
    Unhealthy,
}

#[derive(Default)]
pub struct UpstreamHealth {
    recent: Mutex<VecDeque<(Instant, Outcome)>>,
}

impl UpstreamHealth {
    pub fn record(&self, outcome: Outcome, now: Instant) {
        let mut r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        r.push_back((now, outcome));
        while r.len() > MAX_KEPT
            || r.front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > WINDOW)
        {
            r.pop_front();
        }
    }

    pub fn verdict(&self, now: Instant) -> Verdict {
        let r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        judge(r.iter().copied(), now)
    }
}

/// §5.1's two rules over `(when, outcome)` pairs, oldest first.
pub fn judge(
    outcomes: impl DoubleEndedIterator<Item = (Instant, Outcome)> + Clone,
    now: Instant,
) -> Verdict {
    let last5: Vec<Outcome> = outcomes.clone().rev().take(5).map(|(_, o)| o).collect();
    if last5.len() == 5 && last5.iter().all(|o| *o == Outcome::AuthFailed) {
        return Verdict::Unhealthy;
    }
    let (calls, failed) = outcomes
        .filter(|(t, _)| now.saturating_duration_since(*t) <= WINDOW)
        .fold((0u32, 0u32), |(c, f), (_, o)| {
            (c + 1, f + u32::from(o != Outcome::Ok))
        });
    if calls >= 4 && failed * 2 >= calls {
        Verdict::Degraded
    } else {
        Verdict::Healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(list: &[Outcome]) -> Verdict {
        let h = UpstreamHealth::default();
        let now = Instant::now();
        for o in list {
            h.record(*o, now);
        }
        h.verdict(now)
    }

    #[test]
    fn rules_of_section_5_1() {
        use Outcome::*;
        assert_eq!(run(&[]), Verdict::Healthy);
        assert_eq!(
            run(&[Failed, Failed, Failed]),
            Verdict::Healthy,
            "fewer than 4 calls"
        );
        assert_eq!(
            run(&[Ok, Ok, Failed, Failed]),
            Verdict::Degraded,
            "half failed"
        );
        assert_eq!(run(&[Ok, Ok, Ok, Failed]), Verdict::Healthy);
        assert_eq!(run(&[AuthFailed; 5]), Verdict::Unhealthy);
        assert_eq!(
            run(&[AuthFailed, AuthFailed, AuthFailed, AuthFailed, Failed]),
            Verdict::Degraded
        );
        assert_eq!(
            run(&[
                AuthFailed, AuthFailed, AuthFailed, AuthFailed, AuthFailed, Ok
            ]),
            Verdict::Degraded
        );
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let h = UpstreamHealth::default();
        let then = Instant::now();
        for _ in 0..10 {
            h.record(Outcome::Failed, then);
        }
        let later = then + WINDOW + Duration::from_secs(1);
        h.record(Outcome::Ok, later);
        assert_eq!(h.verdict(later), Verdict::Healthy);
    }
}
