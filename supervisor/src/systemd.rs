//! The supervisor's own service manager: when systemd runs `heartalk` as a
//! `Type=notify` service (deploy/heartalk.service), the supervisor speaks
//! to it the protocol its workers speak to the supervisor, one level up —
//! `READY=1` once every slot first serves, `RELOADING=1` while a reload
//! runs and `READY=1` again when it is over (whatever its outcome: the
//! running generation serves either way), `STOPPING=1` when a stop begins,
//! a `STATUS=` line with each, and `WATCHDOG=1` at half of `WatchdogSec`
//! for as long as the event loop turns. The pings come from the event loop
//! itself, so a supervisor stuck anywhere falls silent and systemd
//! restarts it, as the supervisor does for a hung worker.
//!
//! Without `NOTIFY_SOCKET` (a container, a terminal) every call is a no-op.

use std::time::Duration;

use shared::activation::Notifier;

/// The service manager's socket, if there is one, and its watchdog.
#[derive(Debug, Default)]
pub struct ServiceManager {
    notifier: Option<Notifier>,
    watchdog: Option<Duration>,
}

impl ServiceManager {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` of this
    /// process (a socket that cannot be reached is logged and ignored).
    pub fn from_env() -> ServiceManager {
        let notifier = match Notifier::from_env() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(event = "service_manager_unreachable", error = %e);
                None
            }
        };
        let watchdog = notifier
            .as_ref()
            .and(shared::activation::watchdog_interval());
        if let Some(w) = watchdog {
            tracing::info!(
                event = "service_watchdog",
                interval_ms = w.as_millis() as u64,
                "pinging the service manager's watchdog"
            );
        }
        ServiceManager { notifier, watchdog }
    }

    /// How often to send `WATCHDOG=1` (half the interval), if watched.
    pub fn ping_period(&self) -> Option<Duration> {
        self.watchdog.map(|w| (w / 2).max(Duration::from_millis(1)))
    }

    /// The event loop turned: the supervisor is alive.
    pub fn ping(&self) {
        if self.watchdog.is_some() {
            self.send("WATCHDOG=1");
        }
    }

    /// Every slot serves (first start, or a reload is over).
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// A reload began; `READY=1` follows when it is over.
    pub fn reloading(&self) {
        let usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
            .unwrap_or(0);
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading"
        ));
    }

    /// A stop began: workers are draining.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping: draining workers");
    }

    fn send(&self, state: &str) {
        if let Some(n) = &self.notifier {
            // Never blocks; a full queue drops this one message.
            if let Err(e) = n.send(state) {
                tracing::debug!(event = "service_notify_failed", error = %e);
            }
        }
    }
}
