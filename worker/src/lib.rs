//! The HearTalk AI worker: one HTTP server process per supervisor slot.
//!
//! A worker adopts the listening sockets its supervisor passes down
//! (systemd socket activation) or binds its own, serves the API with hyper,
//! reports `READY=1` over `NOTIFY_SOCKET`, and on SIGTERM drains in-flight
//! requests before exiting. [`run`] is the whole lifecycle; `main.rs` only
//! sets up logging and maps its error to the exit code.
//!
//! The tree is the architecture; dependencies point one way, from the edge
//! down (`layers_tests.rs` checks every `crate::` path of every file):
//! - [`http`]: the HTTP edge (sockets, accept loop and drain, the HTTP/1.1
//!   driver, deadlines, the connection budget, the endpoints table, common headers,
//!   CORS, request ids, client IP, health and fleet metrics) and its state
//!   (what connection tasks share);
//! - [`pipeline`]: the chat pipeline and its endpoints (auth, validation,
//!   keyword routing, history, reasoning, chat, SSE streams, `/v1/*`,
//!   translation and catalogue, response bodies and errors), the context
//!   it runs in and the services it uses (the long-lived objects built
//!   once per worker);
//! - infrastructure: [`provider`] (Ark, simulated; token estimates, the
//!   upstream health window), [`cache`] (response cache, coalescing),
//!   [`limits`] (rate limits, the fleet-wide table, circuit breakers),
//!   [`runtime`] (clock, hashing, the Redis link, watchdog pings, the
//!   fleet-state page, memory given back), and the cross-cutting
//!   [`settings`] (environment, API.md §14), [`telemetry`] (metrics) and
//!   [`logs`];
//! - on top, the wiring: [`run`] builds the services and the state and
//!   starts the server; `main.rs` calls it.

pub mod cache;
pub mod http;
pub mod limits;
pub mod logs;
pub mod pipeline;
pub mod provider;
pub mod runtime;
pub mod settings;
pub mod telemetry;

#[cfg(test)]
mod layers_tests;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use crate::http::state::AppState;
use crate::settings::Settings;

/// Settings the worker refuses to start with ([`Settings::refusals`]):
/// secrets that cannot be used, bad token rules. Exit status 64.
#[derive(Debug, thiserror::Error)]
#[error("refusing to start: {}", .0.join("; "))]
pub struct Refused(pub Vec<String>);

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
    // Before any socket: a worker that cannot use its secrets or token
    // rules serves nothing (`main` makes this exit 64).
    if !settings.refusals.is_empty() {
        return Err(Refused(settings.refusals).into());
    }
    // Before the runtime exists: claiming the fds edits the environment,
    // which is only sound while the process has a single thread.
    let sockets = http::listener::take_or_bind(&settings)?;
    tracing::info!(
        inherited = sockets.inherited,
        count = sockets.listeners.len(),
        worker_id = settings.worker_id,
        environment = %settings.node_env,
        pid = std::process::id(),
        "starting"
    );
    for problem in &settings.problems {
        tracing::error!("invalid setting, default used: {problem}");
    }
    for warning in settings.security_warnings() {
        tracing::warn!("{warning}");
    }
    telemetry::install();
    // The supervisor's fleet-state page (what `/ready` answers for the
    // whole app), taken while the environment is read single-threaded.
    let fleet_state = runtime::fleet_state::FleetState::from_env();
    // The socket to the supervisor, made once now so it still works when
    // the process has run out of descriptors.
    let notifier = shared::activation::Notifier::from_env().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot connect to NOTIFY_SOCKET; no watchdog pings or degraded reports");
        None
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(async move {
        // reqwest clients register with the runtime's reactor: build inside it.
        let services =
            pipeline::services::Services::new(&settings).context("setting up the chat pipeline")?;
        tracing::info!(
            provider = services.provider.name(),
            simulated = services.provider.is_simulated(),
            router_fallback = services.router.is_fallback(),
            "pipeline ready"
        );
        telemetry::register_defaults(services.provider.name(), services.redis.is_some());
        if let Some(link) = &services.redis {
            tokio::spawn(link.clone().maintain());
            // A short grace so the first requests already share the cache
            // and limits; Redis being down never holds the start-up longer.
            link.wait_up(std::time::Duration::from_secs(1)).await;
        }
        let state = Arc::new(
            AppState::new(settings, started, services)
                .with_fleet_state(fleet_state)
                .with_notifier(notifier),
        );
        tokio::spawn(probe_backend(state.ctx.clone()));
        match (
            &state.ctx.settings.metrics_socket,
            state.ctx.settings.pipeline.metrics_port,
        ) {
            // Under a supervisor: it scrapes us and serves the fleet's sum
            // (on its own admin address; N workers could not share one port).
            (Some(name), _) => {
                tokio::spawn(http::server::serve_metrics_unix(
                    name.clone(),
                    state.clone(),
                ));
            }
            (None, Some(port)) => {
                tokio::spawn(http::server::serve_metrics(port, state.clone()));
            }
            (None, None) => {}
        }
        http::server::serve(sockets.listeners, state).await
    })
}

/// Probes the backend's `/health` every `HEALTH_CHECK_INTERVAL` for the
/// `ai_backend_up` gauge. Never touches request handling.
async fn probe_backend(ctx: Arc<pipeline::context::Pipeline>) {
    let mut tick = tokio::time::interval(
        ctx.settings
            .pipeline
            .health_check_interval
            .max(std::time::Duration::from_secs(1)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        telemetry::backend_up(ctx.services.history.probe().await);
    }
}
