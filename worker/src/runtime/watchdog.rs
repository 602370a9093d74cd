//! The worker's half of the supervisor's watchdog (systemd's protocol):
//! when `WATCHDOG_USEC` is set for this process, ping `WATCHDOG=1` over
//! `NOTIFY_SOCKET` at half that interval.
//!
//! The pings come from a task on the serving runtime itself — the one
//! thread that accepts and answers — not from a thread of their own: a
//! stopped, deadlocked or spinning event loop then falls silent and the
//! supervisor replaces the worker, while a loop that is merely busy still
//! reaches the timer between requests (a ping costs one datagram, on a
//! socket made at start that never blocks: see
//! [`shared::activation::Notifier`]).

use std::sync::Arc;
use std::time::Duration;

use shared::activation::Notifier;

/// The ping period for a watchdog `interval`: half of it, as
/// `sd_watchdog_enabled(3)` recommends, so one late ping is not fatal.
pub fn period(interval: Duration) -> Duration {
    (interval / 2).max(Duration::from_millis(1))
}

/// Pings over `notifier`, the worker's kept socket to the supervisor, for
/// as long as the runtime runs; returns at once when no watchdog is set
/// (standalone, or `watchdog = "0"`), or, with a warning, when one is set
/// but there is no socket to the supervisor to ping over. `worker_id` is
/// for the log.
pub async fn ping(notifier: Option<Arc<Notifier>>, worker_id: u32) {
    let Some(interval) = shared::activation::watchdog_interval() else {
        return;
    };
    let Some(notifier) = notifier else {
        tracing::warn!(
            worker_id,
            "watchdog set but no notify socket; the supervisor will judge this worker hung"
        );
        return;
    };
    let period = period(interval);
    tracing::info!(
        interval_ms = interval.as_millis() as u64,
        period_ms = period.as_millis() as u64,
        "watchdog on: pinging the supervisor"
    );
    let mut ticks = tokio::time::interval(period);
    // A late tick is sent once, not in a burst that would hide the stall.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticks.tick().await;
        // Never blocks: a ping the supervisor has no room for is dropped
        // (the next one follows in half an interval).
        match notifier.send("WATCHDOG=1") {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, worker_id, "watchdog ping failed");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_at_half_the_interval() {
        assert_eq!(period(Duration::from_secs(10)), Duration::from_secs(5));
        assert_eq!(period(Duration::from_micros(1)), Duration::from_millis(1));
    }
}
