//! `heartalk run`: the event loop that owns the fleet.
//!
//! One task on a current-thread runtime waits on four sources (operator
//! signals, SIGCHLD, sd_notify datagrams, the next fleet deadline) and hands
//! each event to [`Fleet`]. Single-threaded on purpose: workers are forked
//! from this thread, so `PR_SET_PDEATHSIG` stays tied to the supervisor's
//! life, and no locking is needed anywhere in the supervisor.

use std::time::{Duration, Instant};

use anyhow::Context;
use shared::config::Config;

use crate::exit::Exit;
use crate::fleet::{Fleet, SetupError};
use crate::notify::NotifySocket;
use crate::signals::{Intent, Signals};
use crate::{cpus, sockets, sys};

/// Runs the fleet until it is stopped; returns the exit code to use.
pub async fn run(config: Config) -> anyhow::Result<Exit> {
    // Install handlers before the first fork so no SIGCHLD is missed.
    let mut signals = Signals::install().context("installing signal handlers")?;
    let pid1 = sys::is_pid1();
    if !pid1 {
        if let Err(e) = sys::become_subreaper() {
            tracing::warn!(event = "subreaper_unavailable", error = %e, "orphaned grandchildren will go to init");
        }
    }
    let notify = NotifySocket::bind().context("binding the sd_notify socket")?;
    let migrate = sockets::enable_tcp_migrate_req();
    let cpus = cpus::usable();
    tracing::info!(
        event = "supervisor_start",
        pid = std::process::id(),
        pid1,
        version = env!("CARGO_PKG_VERSION"),
        config = %config.path.display(),
        usable_cpus = cpus,
        tcp_migrate_req = ?migrate,
    );

    let mut fleet = match Fleet::new(&config, notify.env_value.clone(), cpus) {
        Ok(f) => f,
        Err(e @ SetupError::Program(_)) => {
            tracing::error!(event = "setup_failed", error = %e);
            return Ok(Exit::Usage);
        }
        Err(e) => {
            tracing::error!(event = "setup_failed", error = %e);
            return Ok(Exit::Setup);
        }
    };
    fleet.start_all(Instant::now());

    loop {
        let deadline = fleet.next_deadline();
        let sleep = tokio::time::sleep_until(
            deadline
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600)),
        );
        tokio::select! {
            signal = signals.next() => {
                let now = Instant::now();
                match signal {
                    None => {
                        for (pid, status) in sys::reap() {
                            fleet.on_exit(pid, status, now);
                        }
                    }
                    Some(Intent::Stop) if fleet.is_stopping() => fleet.stop(true, now),
                    Some(Intent::Stop) => fleet.stop(false, now),
                    Some(Intent::FastStop) => fleet.stop(true, now),
                    Some(Intent::Reload) => reload(&mut fleet, &config.path, now),
                    Some(Intent::ReopenLogs) => tracing::info!(event = "reopen_logs", "SIGUSR1 received; no log files are open (logs go to stdout)"),
                }
            }
            msg = notify.recv() => {
                match msg {
                    Ok(m) => fleet.on_notify(&m, Instant::now()),
                    Err(e) => tracing::warn!(event = "notify_error", error = %e),
                }
            }
            _ = sleep => {}
        }
        fleet.tick(Instant::now());
        if fleet.take_queued_reload() {
            reload(&mut fleet, &config.path, Instant::now());
        }
        if fleet.take_first_ready() {
            // We may ourselves be a Type=notify systemd service.
            let _ = shared::activation::notify("READY=1");
        }
        if fleet.is_stopped() {
            let exit = if fleet.was_forced() {
                Exit::Forced
            } else {
                Exit::Clean
            };
            tracing::info!(event = "supervisor_exit", code = exit.code());
            return Ok(exit);
        }
        if !fleet.is_stopping() && fleet.all_errored() {
            tracing::error!(
                event = "supervisor_exit",
                code = Exit::AllErrored.code(),
                "every slot is errored; exiting so the orchestrator can restart us"
            );
            return Ok(Exit::AllErrored);
        }
    }
}

/// Re-reads the config and starts a rollout; a bad file is refused with
/// every error logged, and the running generation keeps serving.
fn reload(fleet: &mut Fleet, path: &std::path::Path, now: Instant) {
    tracing::info!(event = "reload_requested", config = %path.display());
    match Config::load(path) {
        Ok(config) => fleet.reload(&config, now),
        Err(e) => {
            let errors: Vec<String> = match &e {
                shared::config::LoadError::Invalid(list) => {
                    list.to_string().lines().map(str::to_string).collect()
                }
                other => vec![other.to_string()],
            };
            tracing::error!(event = "reload_refused", errors = ?errors, "the new config is invalid; keeping the running generation");
            fleet.record_refused(errors.join("; "));
        }
    }
}
