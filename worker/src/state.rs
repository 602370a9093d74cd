//! The state every connection task shares: the settings, the worker's
//! lifecycle phase (what `/ready` reports), a count of open connections
//! (what a drain waits for and reports, and what the accept loop holds to
//! its budget: see [`crate::http::budget`]), whether the worker is degraded
//! (cannot accept), the supervisor's fleet-state page, the socket to the
//! supervisor, and facts established once at start-up (whether the router
//! config loaded).
//!
//! It is held in an `Arc`. Its own fields are atomics, a `Notify` (a
//! connection closed at the budget), a `watch` channel (the drain
//! deadline), the mapped fleet-state page and the notify socket, none
//! behind a lock, so handlers never wait on a lock the accept loop could
//! hold; the services it carries keep their own short, never-awaited
//! locks.
//!
//! [`AppState::new`] reads no environment: the fleet-state page and the
//! notify socket are made in [`crate::run`] and passed in with
//! [`AppState::with_fleet_state`] and [`AppState::with_notifier`].

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::Instant;

use http::HeaderValue;

use crate::settings::Settings;

/// Where the worker is in its life, as `/ready` reports it (API.md §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Listeners not yet serving: `/ready` → 503 `starting`.
    Starting = 0,
    /// Accepting and serving: `/ready` → 200 `ready`.
    Ready = 1,
    /// SIGTERM/SIGINT received, listeners closed, in-flight work finishing:
    /// `/ready` → 503 `draining`.
    Draining = 2,
}

/// Shared, read-mostly worker state.
pub struct AppState {
    pub settings: Settings,
    /// When the process started, for `uptime`.
    pub started: Instant,
    /// `X-Worker-Id`, formatted once.
    pub worker_id_header: HeaderValue,
    /// Whether `KEYWORDS_CONFIG` was readable JSON at start-up; the router
    /// loads its table once, so that is the state it is in (false → the
    /// built-in fallback table, health `degraded`).
    pub router_config_loaded: bool,
    /// Provider, router, history client, limiter, CORS policy.
    pub services: crate::services::Services,
    phase: AtomicU8,
    connections: AtomicUsize,
    /// The connection budget in force (see [`crate::http::budget`]).
    max_connections: AtomicUsize,
    /// Wakes the accept loop, stopped at its budget, when a connection closes.
    closed: tokio::sync::Notify,
    /// The worker cannot accept (see [`crate::http::budget::Starvation`]).
    degraded: AtomicBool,
    /// The supervisor's fleet-state page (`None`: alone, or unavailable).
    fleet: Option<crate::runtime::fleet_state::FleetState>,
    /// The kept, non-blocking socket to the supervisor for readiness,
    /// watchdog pings and degraded reports (`None`: no `NOTIFY_SOCKET`, or
    /// it could not be reached).
    pub notifier: Option<shared::activation::Notifier>,
    /// Flips to true when the drain deadline passes: open SSE streams send
    /// their final error frame and end.
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    pub fn new(settings: Settings, started: Instant, services: crate::services::Services) -> Self {
        let worker_id_header = HeaderValue::from(settings.worker_id);
        AppState {
            settings,
            started,
            worker_id_header,
            router_config_loaded: !services.router.is_fallback(),
            services,
            phase: AtomicU8::new(Phase::Starting as u8),
            connections: AtomicUsize::new(0),
            max_connections: AtomicUsize::new(usize::MAX),
            closed: tokio::sync::Notify::new(),
            degraded: AtomicBool::new(false),
            fleet: None,
            notifier: None,
            shutdown: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Reads `/ready`'s app-wide answer from this page (see
    /// [`crate::runtime::fleet_state`]).
    pub fn with_fleet_state(
        mut self,
        fleet: Option<crate::runtime::fleet_state::FleetState>,
    ) -> Self {
        self.fleet = fleet;
        self
    }

    /// Talks to the supervisor over this socket (see [`AppState::notifier`]).
    pub fn with_notifier(mut self, notifier: Option<shared::activation::Notifier>) -> Self {
        self.notifier = notifier;
        self
    }

    /// How many slots of this worker's app are not serving, per the
    /// supervisor's page; `None` without one.
    pub fn fleet_not_serving(&self) -> Option<u64> {
        self.fleet
            .as_ref()
            .map(crate::runtime::fleet_state::FleetState::not_serving)
    }

    /// Whether this worker cannot accept connections (see [`crate::http::budget`]).
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    pub fn set_degraded(&self, degraded: bool) {
        self.degraded.store(degraded, Ordering::Relaxed);
    }

    /// The connection budget in force.
    pub fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }

    /// Sets the connection budget; returns the previous one. A larger
    /// budget wakes the accept loop if it waits at the old one.
    pub fn set_max_connections(&self, max: usize) -> usize {
        let before = self.max_connections.swap(max, Ordering::Relaxed);
        if max > before {
            self.closed.notify_one();
        }
        before
    }

    /// Resolves when a connection closes at or above the budget (or the
    /// budget grows): what the accept loop waits for while it is full.
    pub async fn connection_closed(&self) {
        self.closed.notified().await;
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// Subscribes a stream to the drain deadline.
    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Tells every open stream to finish now; returns how many listen.
    pub fn finish_streams(&self) -> usize {
        self.shutdown.send_replace(true);
        self.shutdown.receiver_count()
    }

    /// Whether responses should close their connection (draining).
    pub fn draining(&self) -> bool {
        self.phase() == Phase::Draining
    }

    /// Connections currently being served.
    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Counts a connection as open until the returned guard is dropped, so
    /// the count stays right however the connection task ends (finished,
    /// failed, or cancelled when the runtime shuts down).
    pub fn connection_opened(self: &std::sync::Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }
}

/// See [`AppState::connection_opened`].
pub struct ConnectionGuard(std::sync::Arc<AppState>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let before = self.0.connections.fetch_sub(1, Ordering::Relaxed);
        // Only a close at or above the budget can be awaited by the accept
        // loop; below it the loop is polling the listeners, not waiting.
        if before >= self.0.max_connections.load(Ordering::Relaxed) {
            self.0.closed.notify_one();
        }
    }
}
