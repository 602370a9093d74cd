//! The connection budget, and telling the fleet when this worker cannot
//! accept.
//!
//! **Budget.** Every connection holds a descriptor, and so does everything
//! else the worker does: upstream and backend calls, Redis, the log pipe,
//! metrics scrapes, the control socket. If connections may take them all,
//! a worker with many idle connections can accept but then fails the
//! upstream call of the next request. So the accept loop stops *polling*
//! its listeners at [`effective`] open connections (`MAX_CONNECTIONS`,
//! capped by the open-file limit minus a [`reserve`]) until one closes:
//! new connections wait in the slot's kernel queue instead of being
//! accepted and failed mid-request. The limit is read again every
//! [`LIMIT_RECHECK`] and on `EMFILE`/`ENFILE`, so a limit changed while
//! running (`prlimit`) moves the budget with it.
//!
//! **Degraded.** A worker that cannot accept — at its budget, or with
//! `accept` failing on a resource error (`EMFILE`, `ENFILE`, `ENOMEM`...)
//! — continuously for [`DEGRADED_AFTER`] reports itself degraded: the
//! sd_notify datagram `X_HEARTALK_DEGRADED=1` with `STATUS=degraded:
//! <reason>` to the supervisor, a warning in the log, `/ready` 503
//! `degraded`, and the `ai_worker_degraded` gauge at 1. Once it has been
//! able to accept again for [`RECOVER_AFTER`] without a break it sends
//! `X_HEARTALK_DEGRADED=0` and `STATUS=serving`: a worker kept at its
//! budget, which a close lets accept one more connection now and then,
//! stays degraded instead of flapping its app's readiness. The decision
//! is the pure [`Starvation`]; [`Watch`] carries it out.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::http::state::AppState;

/// Descriptors kept back from connections at least, whatever the limit:
/// the fixed ones (stdio, the listeners, the epoll and timer descriptors
/// of the runtime, the rate-limit table, the metrics listener, Redis, the
/// log pipe — about twenty) plus room for some forty upstream, backend,
/// control-socket and scrape connections at once.
pub const RESERVE_MIN: u64 = 64;

/// The share of the limit kept back (one tenth): the calls a request makes
/// (an upstream connection each, a backend history fetch, a Redis command)
/// grow with the number of requests in flight, which a higher limit
/// exists to allow.
pub const RESERVE_DIVISOR: u64 = 10;

/// How often the open-file limit is read again (it may be changed from
/// outside with `prlimit`), and the longest the accept loop waits at its
/// budget without looking again.
pub const LIMIT_RECHECK: Duration = Duration::from_secs(1);

/// How long the worker must be unable to accept, without a break, before
/// it reports itself degraded: long enough that a burst which fills the
/// budget for a moment, or one `EMFILE` while a few connections close,
/// does not flap the fleet's readiness; short enough that a load balancer
/// probing every few seconds stops sending within a probe or two.
pub const DEGRADED_AFTER: Duration = Duration::from_secs(3);

/// How long a degraded worker must be able to accept, without a break
/// (below its budget, `accept` not failing), before it reports itself
/// serving again. Under sustained saturation a close lets the worker
/// accept one queued connection, and it is at its budget again at once;
/// recovering on that close would flip the app's `/ready` every few
/// seconds. Checked at least every [`LIMIT_RECHECK`], so a recovery is
/// reported 2 to 3 s after the last stall.
pub const RECOVER_AFTER: Duration = Duration::from_secs(2);

/// The longest pause between two observations of "cannot accept" that
/// still counts as one stretch. The loop looks at least every
/// [`LIMIT_RECHECK`] while at its budget and every
/// [`ACCEPT_BACKOFF`](crate::http::server::ACCEPT_BACKOFF) while `accept`
/// fails, so a longer pause means it was accepting, or had nothing to
/// accept, in between.
pub const MAX_GAP: Duration = Duration::from_secs(2);

/// Descriptors kept back from connections for a soft open-file limit of
/// `nofile`: one tenth, at least [`RESERVE_MIN`], but never more than half
/// (a tiny limit still leaves connections half of it).
pub fn reserve(nofile: u64) -> u64 {
    (nofile / RESERVE_DIVISOR).max(RESERVE_MIN).min(nofile / 2)
}

/// The most connections a soft open-file limit of `nofile` allows: the
/// limit minus its [`reserve`], at least 1.
pub fn derived(nofile: u64) -> usize {
    usize::try_from(nofile.saturating_sub(reserve(nofile)))
        .unwrap_or(usize::MAX)
        .max(1)
}

/// The budget in force: `MAX_CONNECTIONS` (`requested`; `None` = derive
/// it) capped by what the open-file limit allows (`nofile`; `None` = it
/// could not be read, no cap).
pub fn effective(requested: Option<usize>, nofile: Option<u64>) -> usize {
    let cap = nofile.map_or(usize::MAX, derived);
    requested.map_or(cap, |r| r.clamp(1, cap))
}

/// This process's soft `RLIMIT_NOFILE` (`RLIM_INFINITY` is `u64::MAX`).
pub fn nofile_soft() -> Option<u64> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the local we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    (rc == 0).then_some(rl.rlim_cur)
}

/// Why the accept loop cannot accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// `max_connections` connections are open: the listeners are not polled.
    Budget,
    /// `accept` failed on a resource error (the connection stays queued).
    AcceptFailing,
}

/// A change of the degraded state, for the caller to announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Degraded,
    Recovered,
}

/// A stretch of not accepting, as [`Starvation`] tracks it.
#[derive(Debug, Clone, Copy)]
struct Stretch {
    /// When it started.
    since: Instant,
    /// Its cause, as the latest observation says.
    cause: Cause,
    /// The latest observation.
    last: Instant,
}

/// The degraded policy, pure (the caller passes the time): degraded once
/// the loop has been unable to accept for [`DEGRADED_AFTER`] — observed
/// again and again, never more than [`MAX_GAP`] apart, with no accept in
/// between — and serving again once it has been able to accept for
/// [`RECOVER_AFTER`], with no stall in between (hysteresis: a close that
/// lets one queued connection in is not a recovery).
#[derive(Debug, Default)]
pub struct Starvation {
    /// The current stretch of not accepting.
    blocked: Option<Stretch>,
    degraded: bool,
    /// While degraded: since when the loop has been able to accept,
    /// without a stall since.
    clear_since: Option<Instant>,
}

impl Starvation {
    /// The loop cannot accept now, because of `cause`.
    pub fn blocked(&mut self, cause: Cause, now: Instant) -> Option<Change> {
        let since = match self.blocked {
            Some(s) if now.saturating_duration_since(s.last) <= MAX_GAP => s.since,
            _ => now,
        };
        self.blocked = Some(Stretch {
            since,
            cause,
            last: now,
        });
        // A stall interrupts a recovery: it starts over at the next accept.
        self.clear_since = None;
        if !self.degraded && now.saturating_duration_since(since) >= DEGRADED_AFTER {
            self.degraded = true;
            return Some(Change::Degraded);
        }
        None
    }

    /// The loop can accept: it did, or its listeners had nothing queued
    /// (`cause` `None`); or it is below its budget again (`Some(Budget)`:
    /// this ends only a stretch caused by the budget — with `accept`
    /// failing there is room, but no descriptor). A degraded worker
    /// starts its recovery here, and recovers once it lasts
    /// [`RECOVER_AFTER`] (here, or at a later [`Starvation::settle`]).
    pub fn unblocked(&mut self, cause: Option<Cause>, now: Instant) -> Option<Change> {
        match (self.blocked, cause) {
            (Some(s), Some(c)) if s.cause != c => return None,
            (None, _) if !self.degraded => return None,
            _ => {}
        }
        self.blocked = None;
        if self.degraded {
            self.clear_since.get_or_insert(now);
        }
        self.settle(now)
    }

    /// Time passed: a degraded worker that has been able to accept for
    /// [`RECOVER_AFTER`] without a stall is serving again.
    pub fn settle(&mut self, now: Instant) -> Option<Change> {
        let recovered = self.degraded
            && self.blocked.is_none()
            && self
                .clear_since
                .is_some_and(|t| now.saturating_duration_since(t) >= RECOVER_AFTER);
        if !recovered {
            return None;
        }
        self.degraded = false;
        self.clear_since = None;
        Some(Change::Recovered)
    }

    /// Whether a degraded worker is waiting out [`RECOVER_AFTER`].
    #[cfg(test)]
    pub fn is_recovering(&self) -> bool {
        self.clear_since.is_some()
    }

    /// Whether the loop is in a stretch of not accepting.
    pub fn is_blocked(&self) -> bool {
        self.blocked.is_some()
    }

    /// Whether the worker is degraded.
    pub fn is_degraded(&self) -> bool {
        self.degraded
    }

    /// When the current stretch will make the worker degraded, if it lasts.
    pub fn deadline(&self) -> Option<Instant> {
        match self.blocked {
            Some(s) if !self.degraded => Some(s.since + DEGRADED_AFTER),
            _ => None,
        }
    }
}

/// The accept loop's side of the budget: keeps `max_connections` in step
/// with the open-file limit, runs [`Starvation`], and announces its
/// changes (state, gauge, log, sd_notify). Owned by the accept loop; the
/// methods it calls for every connection ([`Watch::room`],
/// [`Watch::accepting`]) are a field test or two, and [`Watch::at_budget`]
/// (every wake-up at the budget) only records the counts: the reason text
/// is built when a change is announced.
pub struct Watch {
    state: Arc<AppState>,
    starvation: Starvation,
    /// Whether the loop is stopped at its budget (counts each stop once).
    at_budget: bool,
    /// Why the loop cannot accept, as the latest observation says.
    reason: Reason,
    /// A degraded state the supervisor has not been told of yet (the
    /// datagram failed: e.g. no descriptor for its socket); retried.
    unsent: Option<bool>,
    /// The soft open-file limit last read.
    nofile: Option<u64>,
}

impl Watch {
    pub fn new(state: Arc<AppState>) -> Watch {
        let mut w = Watch {
            state,
            starvation: Starvation::default(),
            at_budget: false,
            reason: Reason::None,
            unsent: None,
            nofile: None,
        };
        w.refresh_limit();
        w
    }

    /// Reads the open-file limit again and moves the budget with it.
    pub fn refresh_limit(&mut self) {
        let nofile = nofile_soft();
        if nofile == self.nofile {
            return;
        }
        let max = effective(self.state.ctx.settings.max_connections, nofile);
        let before = self.state.set_max_connections(max);
        crate::telemetry::connections_max(max);
        if self.nofile.is_some() {
            tracing::info!(
                nofile = ?nofile,
                max_connections = max,
                before,
                "open-file limit changed; connection budget follows"
            );
        } else {
            tracing::info!(
                nofile = ?nofile,
                max_connections = max,
                requested = ?self.state.ctx.settings.max_connections,
                "connection budget"
            );
        }
        self.nofile = nofile;
    }

    /// The loop stopped at its budget (`open` of `max`).
    pub fn at_budget(&mut self, open: usize, max: usize, now: Instant) {
        if !self.at_budget {
            self.at_budget = true;
            crate::telemetry::budget_reached();
            tracing::debug!(
                open,
                max_connections = max,
                "connection budget reached; not accepting"
            );
        }
        self.reason = Reason::Budget { open, max };
        let change = self.starvation.blocked(Cause::Budget, now);
        self.apply(change);
    }

    /// The loop is below its budget and about to poll its listeners.
    #[inline]
    pub fn room(&mut self) {
        if self.at_budget {
            self.at_budget = false;
            let change = self
                .starvation
                .unblocked(Some(Cause::Budget), Instant::now());
            self.apply(change);
        }
    }

    /// A connection was accepted, or the listeners had nothing queued.
    #[inline]
    pub fn accepting(&mut self) {
        if self.starvation.is_blocked() || self.starvation.is_degraded() {
            let change = self.starvation.unblocked(None, Instant::now());
            self.apply(change);
        }
    }

    /// `accept` failed on a resource error.
    pub fn accept_failed(&mut self, e: &io::Error, now: Instant) {
        if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
            // Out of descriptors below the budget: the limit may have shrunk.
            self.refresh_limit();
        }
        self.reason = Reason::AcceptFailing(e.to_string());
        let change = self.starvation.blocked(Cause::AcceptFailing, now);
        self.apply(change);
    }

    /// Periodic upkeep: the limit, a recovery that has lasted long
    /// enough, and a datagram that could not be sent.
    pub fn tick(&mut self) {
        self.refresh_limit();
        let change = self.starvation.settle(Instant::now());
        self.apply(change);
        self.send_unsent();
    }

    /// When the loop must look again while stopped at its budget.
    pub fn next_look(&self, now: Instant) -> Instant {
        let recheck = now + LIMIT_RECHECK;
        self.starvation
            .deadline()
            .map_or(recheck, |d| d.max(now).min(recheck))
    }

    fn apply(&mut self, change: Option<Change>) {
        let Some(change) = change else { return };
        let degraded = change == Change::Degraded;
        self.state.set_degraded(degraded);
        crate::telemetry::worker_degraded(degraded);
        if degraded {
            tracing::warn!(
                event = "accept_degraded",
                reason = %self.reason,
                open = self.state.open_connections(),
                max_connections = self.state.max_connections(),
                after_secs = DEGRADED_AFTER.as_secs(),
                "cannot accept connections; reporting degraded (/ready 503)"
            );
        } else {
            tracing::info!(
                event = "accept_recovered",
                open = self.state.open_connections(),
                "accepting connections again; reporting serving"
            );
        }
        self.unsent = Some(degraded);
        self.send_unsent();
    }

    fn send_unsent(&mut self) {
        let Some(degraded) = self.unsent else { return };
        let key = shared::activation::NOTIFY_DEGRADED;
        let message = if degraded {
            format!("{key}=1\nSTATUS=degraded: {}", self.reason)
        } else {
            format!("{key}=0\nSTATUS=serving")
        };
        let Some(notifier) = &self.state.notifier else {
            self.unsent = None;
            return;
        };
        match notifier.send(&message) {
            Ok(()) => self.unsent = None,
            // Retried at the next tick (the supervisor's queue is full).
            Err(e) => tracing::debug!(error = %e, "telling the supervisor failed; will retry"),
        }
    }
}

/// Why the accept loop cannot accept, kept as facts; the text is built
/// only where it is read (the degraded warning and datagram).
#[derive(Debug)]
enum Reason {
    /// Nothing observed yet.
    None,
    /// `open` connections of a budget of `max`.
    Budget { open: usize, max: usize },
    /// `accept` failed with this error.
    AcceptFailing(String),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::None => Ok(()),
            Reason::Budget { open, max } => {
                write!(f, "connection budget reached ({open} open, max {max})")
            }
            Reason::AcceptFailing(e) => write!(f, "accept failing: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_a_tenth_but_at_least_64_and_at_most_half() {
        assert_eq!(reserve(1024), 102);
        assert_eq!(derived(1024), 922);
        assert_eq!(reserve(3000), 300);
        assert_eq!(derived(3000), 2700);
        assert_eq!(reserve(256), 64, "the floor");
        assert_eq!(derived(256), 192);
        assert_eq!(reserve(100), 50, "never more than half");
        assert_eq!(derived(100), 50);
        assert_eq!(derived(1), 1, "at least one connection");
        assert_eq!(derived(0), 1);
        assert_eq!(reserve(1 << 20), (1 << 20) / 10);
        assert!(derived(u64::MAX) > 1 << 40, "RLIM_INFINITY");
    }

    #[test]
    fn an_explicit_budget_is_capped_by_the_limit() {
        assert_eq!(effective(None, Some(1024)), 922);
        assert_eq!(effective(Some(500), Some(1024)), 500);
        assert_eq!(effective(Some(5000), Some(1024)), 922, "capped");
        assert_eq!(effective(Some(0), Some(1024)), 1);
        assert_eq!(effective(None, None), usize::MAX, "limit unknown: no cap");
        assert_eq!(effective(Some(10), None), 10);
    }

    #[test]
    fn the_soft_limit_is_readable() {
        assert!(nofile_soft().is_some_and(|n| n > 0));
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn degraded_after_three_seconds_of_not_accepting() {
        let t0 = Instant::now();
        let mut s = Starvation::default();
        assert_eq!(s.deadline(), None);
        // At the budget, looked at every second.
        for ms in [0, 1000, 2000, 2999] {
            assert_eq!(s.blocked(Cause::Budget, at(t0, ms)), None, "{ms}");
        }
        assert_eq!(s.deadline(), Some(at(t0, 3000)));
        assert_eq!(
            s.blocked(Cause::Budget, at(t0, 3000)),
            Some(Change::Degraded)
        );
        assert!(s.is_degraded());
        assert_eq!(s.deadline(), None, "already degraded");
        // Reported once, however long it lasts.
        assert_eq!(s.blocked(Cause::Budget, at(t0, 4000)), None);
        // Below the budget again, and accepting: serving after 2 s of it.
        assert_eq!(s.unblocked(Some(Cause::Budget), at(t0, 4500)), None);
        assert!(s.is_degraded() && s.is_recovering() && !s.is_blocked());
        assert_eq!(s.unblocked(None, at(t0, 4600)), None);
        assert_eq!(s.settle(at(t0, 6499)), None);
        assert_eq!(s.settle(at(t0, 6500)), Some(Change::Recovered));
        assert!(!s.is_degraded() && !s.is_recovering());
        assert_eq!(s.settle(at(t0, 9000)), None, "reported once");
        assert_eq!(
            s.unblocked(None, at(t0, 9000)),
            None,
            "nothing to recover from"
        );
    }

    #[test]
    fn a_close_now_and_then_under_saturation_does_not_flap() {
        let t0 = Instant::now();
        let mut s = Starvation::default();
        let mut changes = Vec::new();
        // At the budget; every 4 s a connection closes, the worker accepts
        // one queued connection and is at its budget again at once. It is
        // looked at every second meanwhile (the loop's recheck).
        for ms in (0..60_000).step_by(1000) {
            changes.extend(s.blocked(Cause::Budget, at(t0, ms)));
            if ms > 0 && ms % 4000 == 0 {
                changes.extend(s.unblocked(Some(Cause::Budget), at(t0, ms + 100)));
                changes.extend(s.unblocked(None, at(t0, ms + 101)));
                changes.extend(s.blocked(Cause::Budget, at(t0, ms + 102)));
            }
            changes.extend(s.settle(at(t0, ms + 999)));
        }
        assert_eq!(
            changes,
            [Change::Degraded],
            "degraded once, never recovered"
        );
        assert!(s.is_degraded());
        // The same with accept failing, and, once degraded, an accept
        // succeeding now and then.
        let mut s = Starvation::default();
        let mut changes = Vec::new();
        for ms in (0..30_000).step_by(100) {
            if ms > 3000 && ms % 1500 == 0 {
                changes.extend(s.unblocked(None, at(t0, ms)));
            } else {
                changes.extend(s.blocked(Cause::AcceptFailing, at(t0, ms)));
            }
            changes.extend(s.settle(at(t0, ms + 50)));
        }
        assert_eq!(changes, [Change::Degraded]);
    }

    #[test]
    fn a_stall_restarts_the_recovery() {
        let t0 = Instant::now();
        let mut s = Starvation::default();
        for ms in [0, 1000, 2000] {
            s.blocked(Cause::Budget, at(t0, ms));
        }
        assert_eq!(
            s.blocked(Cause::Budget, at(t0, 3000)),
            Some(Change::Degraded)
        );
        assert_eq!(s.unblocked(Some(Cause::Budget), at(t0, 10_000)), None);
        assert_eq!(s.settle(at(t0, 11_000)), None);
        // At the budget again 1.5 s into the recovery: it starts over.
        assert_eq!(s.blocked(Cause::Budget, at(t0, 11_500)), None);
        assert!(!s.is_recovering());
        assert_eq!(s.settle(at(t0, 11_550)), None, "blocked: no recovery");
        assert_eq!(s.unblocked(Some(Cause::Budget), at(t0, 11_600)), None);
        assert_eq!(
            s.settle(at(t0, 13_000)),
            None,
            "10 s + 2 s is not enough now"
        );
        assert_eq!(
            s.unblocked(None, at(t0, 13_600)),
            Some(Change::Recovered),
            "an accept 2 s after"
        );
    }

    #[test]
    fn accept_failures_degrade_and_an_accept_recovers() {
        let t0 = Instant::now();
        let mut s = Starvation::default();
        // EMFILE at every accept backoff.
        let backoff = crate::http::server::ACCEPT_BACKOFF.as_millis() as usize;
        for ms in (0..3000).step_by(backoff) {
            assert_eq!(s.blocked(Cause::AcceptFailing, at(t0, ms)), None, "{ms}");
        }
        assert_eq!(
            s.blocked(Cause::AcceptFailing, at(t0, 3000)),
            Some(Change::Degraded)
        );
        // Room below the budget is no cure for a lack of descriptors...
        assert_eq!(s.unblocked(Some(Cause::Budget), at(t0, 3100)), None);
        assert!(s.is_degraded() && !s.is_recovering());
        assert_eq!(s.settle(at(t0, 6000)), None);
        // ...an accepted connection (or an empty queue), lasting, is.
        assert_eq!(s.unblocked(None, at(t0, 6000)), None);
        assert_eq!(s.settle(at(t0, 8000)), Some(Change::Recovered));
    }

    #[test]
    fn short_stretches_do_not_add_up() {
        let t0 = Instant::now();
        let mut s = Starvation::default();
        // 2 s at the budget, a connection closes, 2 s more: never 3 s at once.
        s.blocked(Cause::Budget, at(t0, 0));
        s.blocked(Cause::Budget, at(t0, 2000));
        assert_eq!(s.unblocked(Some(Cause::Budget), at(t0, 2050)), None);
        assert!(!s.is_blocked() && !s.is_recovering());
        s.blocked(Cause::Budget, at(t0, 2100));
        assert_eq!(s.blocked(Cause::Budget, at(t0, 4100)), None);
        assert!(!s.is_degraded());
        // A single failure long ago does not start today's stretch.
        let mut s = Starvation::default();
        s.blocked(Cause::AcceptFailing, at(t0, 0));
        assert_eq!(s.blocked(Cause::AcceptFailing, at(t0, 60_000)), None);
        assert_eq!(s.blocked(Cause::AcceptFailing, at(t0, 62_000)), None);
        assert_eq!(
            s.blocked(Cause::AcceptFailing, at(t0, 63_000)),
            Some(Change::Degraded)
        );
    }

    #[test]
    fn a_stretch_may_change_cause() {
        let t0 = Instant::now();
        let mut s = Starvation::default();
        // Out of descriptors, then at the (re-read, lower) budget: one stretch.
        s.blocked(Cause::AcceptFailing, at(t0, 0));
        s.blocked(Cause::Budget, at(t0, 1000));
        assert_eq!(
            s.blocked(Cause::Budget, at(t0, 3000)),
            Some(Change::Degraded)
        );
        assert_eq!(s.unblocked(Some(Cause::Budget), at(t0, 3500)), None);
        assert_eq!(s.settle(at(t0, 5500)), Some(Change::Recovered));
    }
}
