//! The HearTalk AI worker: one HTTP server process per supervisor slot.
//!
//! A worker adopts the listening sockets its supervisor passes down
//! (systemd socket activation) or binds its own, serves the API with hyper,
//! reports `READY=1` over `NOTIFY_SOCKET`, and on SIGTERM drains in-flight
//! requests before exiting. [`run`] is the whole lifecycle; `main.rs` only
//! sets up logging and maps its error to the exit code.
//!
//! Modules, one concept each:
//! - [`settings`]: environment configuration (API.md §14);
//! - [`listener`]: inherited or self-bound sockets;
//! - [`server`]: accept loop, connection serving, drain;
//! - [`router`]: route table, 404/405, per-request wrapper;
//! - [`health`]: `/health`, `/api/v1/health`, `/ready`;
//! - [`response`]: body type, JSON and error builders, common headers;
//! - [`request_id`], [`clock`]: request ids and timestamps;
//! - [`state`]: what connection tasks share (phase, counters).

pub mod auth;
pub mod clock;
pub mod health;
pub mod history;
pub mod listener;
pub mod provider;
pub mod request_id;
pub mod response;
pub mod router;
pub mod routing;
pub mod server;
pub mod settings;
pub mod state;
pub mod tokens;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use crate::settings::Settings;
use crate::state::AppState;

/// Runs the worker until it has drained after SIGTERM/SIGINT.
///
/// The runtime is tokio's `current_thread` flavour on purpose: the
/// supervisor already runs one worker process per CPU (as nginx runs
/// workers), so parallelism comes from processes sharing `SO_REUSEPORT`
/// sockets. One thread per process avoids work-stealing overhead and
/// cross-thread synchronisation, and a stuck worker affects only its own
/// connections.
pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let settings = Settings::from_env();
    // Before the runtime exists: claiming the fds edits the environment,
    // which is only sound while the process has a single thread.
    let sockets = listener::take_or_bind(&settings)?;
    tracing::info!(
        inherited = sockets.inherited,
        count = sockets.listeners.len(),
        worker_id = settings.worker_id,
        environment = %settings.node_env,
        pid = std::process::id(),
        "starting"
    );
    let router_config_loaded = health::router_config_loads(&settings.keywords_config);
    let state = Arc::new(AppState::new(settings, started, router_config_loaded));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(server::serve(sockets.listeners, state))
}
