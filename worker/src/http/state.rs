//! The state every connection task shares: the context the pipeline runs
//! in ([`Pipeline`]: settings, services, the drain deadline), the worker's
//! lifecycle phase (what `/ready` reports), a count of open connections
//! (what a drain waits for and reports, and what the accept loop holds to
//! its budget: see [`crate::http::budget`]), whether the worker is degraded
//! (cannot accept), the supervisor's fleet-state page, the socket to the
//! supervisor, what every response gets on its way out (the CORS policy and
//! the per-environment security headers), and facts established once at
//! start-up (whether the router config loaded).
//!
//! It is held in an `Arc`. Its own fields are atomics, a `Notify` (a
//! connection closed at the budget), the mapped fleet-state page and the
//! notify socket, none behind a lock, so handlers never wait on a lock the
//! accept loop could hold; the context it carries holds a `watch` channel
//! (the drain deadline), and its services keep their own short,
//! never-awaited locks.
//!
//! [`AppState::new`] reads no environment: the fleet-state page and the
//! notify socket are made in [`crate::run`] and passed in with
//! [`AppState::with_fleet_state`] and [`AppState::with_notifier`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::Instant;

use http::{HeaderName, HeaderValue};

use crate::http::cors::{self, Cors};
use crate::pipeline::context::Pipeline;
use crate::pipeline::services::Services;
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
    /// The settings and services the pipeline runs with.
    pub ctx: Arc<Pipeline>,
    /// When the process started, for `uptime`.
    pub started: Instant,
    /// `X-Worker-Id`, formatted once.
    pub worker_id_header: HeaderValue,
    /// Whether `KEYWORDS_CONFIG` was readable JSON at start-up; the router
    /// loads its table once, so that is the state it is in (false → the
    /// built-in fallback table, health `degraded`).
    pub router_config_loaded: bool,
    pub cors: Cors,
    /// CSP, CORP, COOP, HSTS for this `NODE_ENV`, computed once.
    pub env_headers: Vec<(HeaderName, HeaderValue)>,
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
    /// (Shared with the watchdog's pings.)
    pub notifier: Option<Arc<shared::activation::Notifier>>,
}

impl AppState {
    pub fn new(settings: Settings, started: Instant, services: Services) -> Self {
        let worker_id_header = HeaderValue::from(settings.worker_id);
        let router_config_loaded = !services.router.is_fallback();
        let cors = Cors::new(
            &settings.node_env,
            settings.pipeline.allowed_origins.as_deref(),
        );
        let env_headers = cors::environment_headers(&settings.node_env);
        AppState {
            ctx: Arc::new(Pipeline::new(settings, services)),
            started,
            worker_id_header,
            router_config_loaded,
            cors,
            env_headers,
            phase: AtomicU8::new(Phase::Starting as u8),
            connections: AtomicUsize::new(0),
            max_connections: AtomicUsize::new(usize::MAX),
            closed: tokio::sync::Notify::new(),
            degraded: AtomicBool::new(false),
            fleet: None,
            notifier: None,
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
        self.notifier = notifier.map(Arc::new);
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
    pub fn connection_opened(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }
}

/// See [`AppState::connection_opened`].
pub struct ConnectionGuard(Arc<AppState>);

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
