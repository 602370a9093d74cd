//! Which reload answered which request: a monotonic sequence number per
//! reload request, so every `heartalk reload` gets the outcome of the
//! reload attempt that covered it — and gets it as soon as that attempt is
//! over.
//!
//! Outcomes are not compared by value: two refusals of the same file for
//! the same reason are equal, yet each is a new answer for its own caller.
//! Instead every accepted request takes the next number ([`Ledger::request`]);
//! an attempt (a rollout, or a refusal before one could start) covers every
//! request numbered up to when it began ([`Ledger::begin`]); when it is over
//! it is recorded with the highest number it covered ([`Ledger::finish`]).
//! A waiter is answered once a finished attempt covers its number, with that
//! attempt's outcome ([`Waiters::settle`]). Requests that arrive during a
//! rollout are not covered by it: they stay outstanding and the next attempt
//! (which reads the config again) covers them all.

use std::collections::VecDeque;

/// The outcome of a reload attempt, for logs, `status` and the callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    pub generation: u64,
    /// `committed`, `rolled_back` or `refused`.
    pub outcome: &'static str,
    pub reason: Option<String>,
}

impl From<&ReloadOutcome> for shared::control::ReloadResult {
    fn from(r: &ReloadOutcome) -> Self {
        shared::control::ReloadResult {
            generation: r.generation,
            outcome: r.outcome.to_string(),
            reason: r.reason.clone(),
        }
    }
}

/// A finished attempt: it answered every request numbered up to `covers`
/// that an earlier attempt had not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub covers: u64,
    pub outcome: ReloadOutcome,
}

/// The fleet's record of reload requests and finished attempts.
#[derive(Debug, Default)]
pub struct Ledger {
    /// The newest number handed out (0: none yet).
    requested: u64,
    /// The newest number an attempt has taken on (started or refused).
    begun: u64,
    /// Attempts finished since the event loop last collected them, in
    /// order. Kept as a list, not only the latest, because two attempts
    /// can end between two collections (a queued reload refused right
    /// after the rollout before it finished).
    finished: Vec<Finished>,
    /// The last finished attempt, for `status`.
    last: Option<Finished>,
}

impl Ledger {
    /// Accepts a reload request and returns its number (1, 2, ...).
    pub fn request(&mut self) -> u64 {
        self.requested += 1;
        self.requested
    }

    /// Whether some request is not yet covered by any attempt.
    pub fn outstanding(&self) -> bool {
        self.requested > self.begun
    }

    /// An attempt begins: it covers every request so far. Returns the
    /// highest number it covers (to hand to [`Ledger::finish`]).
    pub fn begin(&mut self) -> u64 {
        self.begun = self.requested;
        self.begun
    }

    /// Records an attempt that covered every request up to `covers`.
    /// Attempts finish in the order they began, so `covers` never goes
    /// backwards.
    pub fn finish(&mut self, covers: u64, outcome: ReloadOutcome) {
        debug_assert!(
            self.last.as_ref().is_none_or(|l| l.covers <= covers),
            "reload attempts finish in order"
        );
        let done = Finished { covers, outcome };
        self.finished.push(done.clone());
        self.last = Some(done);
    }

    /// The attempts finished since the last call, oldest first.
    pub fn take_finished(&mut self) -> Vec<Finished> {
        std::mem::take(&mut self.finished)
    }

    /// The last finished attempt's outcome.
    pub fn last(&self) -> Option<&ReloadOutcome> {
        self.last.as_ref().map(|f| &f.outcome)
    }
}

/// Callers waiting for their reload, each with its request number.
#[derive(Debug)]
pub struct Waiters<R> {
    waiting: VecDeque<(u64, R)>,
}

impl<R> Default for Waiters<R> {
    fn default() -> Self {
        Waiters {
            waiting: VecDeque::new(),
        }
    }
}

impl<R> Waiters<R> {
    /// Adds a caller whose request got number `seq`. Numbers grow, so the
    /// list stays sorted.
    pub fn add(&mut self, seq: u64, reply: R) {
        debug_assert!(self.waiting.back().is_none_or(|(s, _)| *s <= seq));
        self.waiting.push_back((seq, reply));
    }

    /// Pairs every caller a `finished` attempt (oldest first) covered with
    /// that attempt's outcome, and removes them; the rest keep waiting.
    pub fn settle(&mut self, finished: &[Finished]) -> Vec<(R, ReloadOutcome)> {
        let mut answers = Vec::new();
        for f in finished {
            while self
                .waiting
                .front()
                .is_some_and(|(seq, _)| *seq <= f.covers)
            {
                if let Some((_, reply)) = self.waiting.pop_front() {
                    answers.push((reply, f.outcome.clone()));
                }
            }
        }
        answers
    }

    /// Removes every caller (whose reload will not happen: a stop began).
    pub fn take_all(&mut self) -> Vec<R> {
        self.waiting.drain(..).map(|(_, r)| r).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(generation: u64) -> ReloadOutcome {
        ReloadOutcome {
            generation,
            outcome: "refused",
            reason: Some("`instances` must be at least 1".into()),
        }
    }

    fn committed(generation: u64) -> ReloadOutcome {
        ReloadOutcome {
            generation,
            outcome: "committed",
            reason: None,
        }
    }

    #[test]
    fn identical_refusals_each_answer_their_own_caller() {
        let mut ledger = Ledger::default();
        let mut waiters = Waiters::default();
        for caller in ["first", "second"] {
            let seq = ledger.request();
            waiters.add(seq, caller);
            let covers = ledger.begin();
            ledger.finish(covers, refused(2));
            let answers = waiters.settle(&ledger.take_finished());
            assert_eq!(answers, [(caller, refused(2))]);
            assert!(waiters.is_empty());
        }
        assert_eq!(ledger.last(), Some(&refused(2)));
    }

    #[test]
    fn a_request_during_a_rollout_waits_for_the_next_attempt() {
        let mut ledger = Ledger::default();
        let mut waiters = Waiters::default();
        let a = ledger.request();
        waiters.add(a, "a");
        let rollout = ledger.begin();
        assert!(!ledger.outstanding());
        let b = ledger.request();
        waiters.add(b, "b");
        assert!(ledger.outstanding(), "b is queued behind the rollout");
        // nothing finished yet: nobody is answered
        assert!(waiters.settle(&ledger.take_finished()).is_empty());

        ledger.finish(rollout, committed(2));
        assert!(ledger.outstanding());
        // the queued attempt is refused before the loop collects either
        let next = ledger.begin();
        ledger.finish(next, refused(3));
        assert!(!ledger.outstanding());
        let answers = waiters.settle(&ledger.take_finished());
        assert_eq!(answers, [("a", committed(2)), ("b", refused(3))]);
        assert_eq!(ledger.last(), Some(&refused(3)));
    }

    #[test]
    fn one_attempt_answers_every_request_it_covered() {
        let mut ledger = Ledger::default();
        let mut waiters = Waiters::default();
        let first = ledger.begin();
        for caller in ["x", "y"] {
            let seq = ledger.request();
            waiters.add(seq, caller);
        }
        ledger.finish(first, committed(2));
        assert!(
            waiters.settle(&ledger.take_finished()).is_empty(),
            "an attempt begun before a request does not answer it"
        );
        let next = ledger.begin();
        ledger.finish(next, committed(3));
        let answers = waiters.settle(&ledger.take_finished());
        assert_eq!(answers, [("x", committed(3)), ("y", committed(3))]);
        assert!(ledger.take_finished().is_empty(), "taken once");
    }

    #[test]
    fn waiters_of_a_stop_are_all_released() {
        let mut waiters = Waiters::default();
        waiters.add(1, 'a');
        waiters.add(2, 'b');
        assert_eq!(waiters.take_all(), ['a', 'b']);
        assert!(waiters.is_empty());
    }
}
