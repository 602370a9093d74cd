//! `heartalk run`: the event loop that owns the fleet.
//!
//! One task on a current-thread runtime waits on its sources (operator
//! signals and SIGCHLD, sd_notify datagrams, control-socket requests, the
//! metrics refresh, the next fleet deadline) and hands each event to
//! [`Fleet`]. Single-threaded on purpose: workers are forked from this
//! thread, so `PR_SET_PDEATHSIG` stays tied to the supervisor's life, and
//! the fleet needs no locking. What runs in spawned tasks only does I/O and
//! reports back: metrics scrapes (fed a snapshot of the fleet),
//! control-socket connections and the `metrics_listen` server. The
//! workers' output pipes are not read here at all but on the log thread
//! ([`Capture`]): this loop only hands it each new worker's pipes, so
//! however much the workers log, no line is framed or tagged on this
//! thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use shared::config::Config;
use shared::control::{Body, Command, ErrorCode, ReloadResult, RestartResult, ScaleResult};
use tokio::sync::{mpsc, oneshot};

use crate::control::{self, Ask, ControlError, ControlSocket};
use crate::exit::Exit;
use crate::fleet::{Fleet, RestartRefused, ScaleRefused, SetupError};
use crate::host::{Driver, SysHost};
use crate::logs::{self, Capture, LogSink};
use crate::notify::NotifySocket;
use crate::reloads::Waiters;
use crate::scrape::{self, CpuSampler, FleetMetrics};
use crate::signals::{Intent, Signals};
use crate::systemd::ServiceManager;
use crate::{cpus, sockets, status, sys};

/// Runs the fleet until it is stopped; returns the exit code to use.
pub async fn run(config: Config, sink: Option<LogSink>) -> anyhow::Result<Exit> {
    // Install handlers before the first fork so no SIGCHLD is missed.
    let mut signals = Signals::install().context("installing signal handlers")?;
    let pid1 = sys::is_pid1();
    if !pid1 {
        if let Err(e) = sys::become_subreaper() {
            tracing::warn!(event = "subreaper_unavailable", error = %e, "orphaned grandchildren will go to init");
        }
    }
    let started = Instant::now();
    // Before the first fork: workers inherit the raised limit.
    raise_fd_limit();
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

    let control_path = control::socket_path(&config);
    let control_socket = match ControlSocket::bind(&control_path) {
        Ok(c) => c,
        Err(e @ ControlError::InUse(_)) => {
            tracing::error!(event = "setup_failed", error = %e);
            return Ok(Exit::AlreadyRunning);
        }
        Err(e) => {
            tracing::error!(event = "setup_failed", error = %e);
            return Ok(Exit::Setup);
        }
    };

    let mut driver = Driver::new(SysHost, notify.env_value.clone());
    let mut fleet = match driver.prepare(&config, cpus, None) {
        Ok(first) => Fleet::new(first, format!("@heartalk/{}/metrics", std::process::id())),
        Err(SetupError::Secrets(errors)) => {
            for error in &errors {
                tracing::error!(event = "setup_failed", error = %error);
                eprintln!("heartalk: {error}");
            }
            return Ok(Exit::Usage);
        }
        Err(e @ SetupError::Program(_)) => {
            tracing::error!(event = "setup_failed", error = %e);
            return Ok(Exit::Usage);
        }
        Err(e) => {
            tracing::error!(event = "setup_failed", error = %e);
            return Ok(Exit::Setup);
        }
    };
    // The fleet-wide rate-limit table: created once, shared by every worker
    // of every generation (a reload does not reset a window). Without it the
    // workers count per process, so a failure is logged, not fatal.
    let limits =
        match crate::sys::shared_memory(c"heartalk-limits", shared::activation::LIMITS_TABLE_BYTES)
        {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::warn!(event = "limits_table_unavailable", error = %e);
                None
            }
        };
    driver.set_limits_fd(limits.as_ref().map(std::os::fd::AsRawFd::as_raw_fd));
    // The fleet-state page: how many slots of each app are not serving,
    // read by every worker's `/ready` (its own app's word). Without it each worker answers for itself only,
    // so a failure is logged, not fatal.
    match crate::fleet_state::FleetState::create() {
        Ok(state) => driver.set_fleet_state(state),
        Err(e) => {
            tracing::warn!(event = "fleet_state_unavailable", error = %e, "workers' /ready answers for themselves only")
        }
    }
    driver.set_control_socket(
        config
            .supervisor
            .service_metrics
            .then_some(control_path.as_path()),
    );
    // Worker output is read and tagged on a thread of its own, so a log
    // flood cannot delay this loop; without it, workers write to our stdout.
    let mut capture = match &sink {
        Some(sink) => match Capture::start(sink.clone(), config.log.max_line) {
            Ok(capture) => Some(capture),
            Err(e) => {
                tracing::warn!(event = "log_capture_unavailable", error = %e, "worker output goes to stdout");
                None
            }
        },
        None => None,
    };
    driver.set_capture_output(capture.is_some());

    let (ask_tx, mut asks) = mpsc::channel::<Ask>(64);
    let control_task = tokio::spawn({
        let tx = ask_tx.clone();
        async move { control::serve(&control_socket, tx).await }
    });
    if let Some(addr) = config.supervisor.metrics_listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                tracing::info!(event = "metrics_listen", addr = %addr);
                tokio::spawn(serve_metrics_http(listener, ask_tx.clone()));
            }
            Err(e) => {
                tracing::error!(event = "metrics_listen_failed", addr = %addr, error = %e, "fleet metrics are still on the service port")
            }
        }
    }
    drop(ask_tx);

    let metrics = Arc::new(FleetMetrics::default());
    let mut cpu = CpuSampler::default();
    let mut refresh = tokio::time::interval(scrape::REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let config_text = config.path.display().to_string();
    let me = status::Supervisor {
        started,
        config: &config_text,
        pid1,
        tcp_migrate_req: migrate,
    };
    // `heartalk reload` callers, each waiting for the reload that covers
    // its request number.
    let mut pending_reloads: Waiters<oneshot::Sender<Body>> = Waiters::default();
    // `heartalk restart` callers, by restart number.
    let mut pending_restarts: Vec<(u64, oneshot::Sender<Body>)> = Vec::new();

    // systemd, when it runs us as a Type=notify service (see `systemd.rs`).
    let manager = ServiceManager::from_env();
    let mut manager_ping =
        tokio::time::interval(manager.ping_period().unwrap_or(Duration::from_secs(3600)));
    manager_ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut told_reloading, mut told_stopping, mut told_ready) = (false, false, false);

    driver.apply(&mut fleet, Instant::now(), Fleet::start_all);
    let mut drains_seen = fleet.drains_started();
    read_outputs(&mut driver, capture.as_mut());

    let exit = loop {
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
                        let reaped = sys::reap();
                        for (pid, _) in &reaped {
                            // Its CPU reading ends with it, scraped or not.
                            cpu.forget(*pid);
                        }
                        driver.exits(&mut fleet, &reaped, now);
                    }
                    Some(Intent::Stop) => {
                        // A second one while stopping: stop fast.
                        let fast = fleet.is_stopping();
                        driver.apply(&mut fleet, now, |f| f.stop(fast, now));
                    }
                    Some(Intent::FastStop) => driver.apply(&mut fleet, now, |f| f.stop(true, now)),
                    Some(Intent::Reload) => {
                        fleet.request_reload("signal");
                    }
                    Some(Intent::ReopenLogs) => {
                        tracing::info!(event = "reopen_logs", "SIGUSR1: reopening the log file");
                        if let Some(sink) = &sink {
                            sink.reopen();
                        }
                    }
                }
            }
            msg = notify.recv() => {
                match msg {
                    Ok(m) => on_notify(&mut fleet, &mut driver, &metrics, &m),
                    Err(e) => tracing::warn!(event = "notify_error", error = %e),
                }
            }
            Some(ask) = asks.recv() => {
                let now = Instant::now();
                match ask.command {
                    Command::Status => {
                        let report = status::build(&driver.view(&fleet, now), &me, &metrics, &mut cpu, now);
                        let _ = ask.reply.send(Body::Status(report));
                    }
                    Command::Metrics => {
                        let view = driver.view(&fleet, now);
                        let extra = scrape::supervisor_families(&view, &mut cpu, now, sink.as_ref().map(LogSink::stats));
                        let targets = scrape::targets(&view);
                        let metrics = metrics.clone();
                        tokio::spawn(async move {
                            let text = metrics.collect(targets, extra).await;
                            let _ = ask.reply.send(Body::Metrics { text });
                        });
                    }
                    Command::Reload => match fleet.request_reload("control socket") {
                        // Started (or queued) after the select, with every
                        // other request; answered when an attempt covers it.
                        Some(seq) => pending_reloads.add(seq, ask.reply),
                        None => {
                            let _ = ask.reply.send(stopping());
                        }
                    },
                    Command::Restart { app } => match restart_secrets(&mut driver, &fleet, app.as_deref())
                        .map_err(RestartRefused::Secrets)
                        .and_then(|()| fleet.restart(app.as_deref()))
                    {
                        Ok((seq, actions)) => {
                            driver.perform(&mut fleet, actions, now);
                            pending_restarts.push((seq, ask.reply));
                        }
                        Err(RestartRefused::Stopping) => {
                            let _ = ask.reply.send(stopping());
                        }
                        Err(e) => {
                            let _ = ask.reply.send(Body::Error {
                                code: ErrorCode::Refused,
                                message: e.to_string(),
                            });
                        }
                    },
                    Command::Describe { app } => {
                        let view = driver.view(&fleet, now);
                        let report = status::build(&view, &me, &metrics, &mut cpu, now);
                        let answer = match crate::describe::build(&view, &report, &app, now) {
                            Some(d) => Body::Describe(Box::new(d)),
                            None => Body::Error {
                                code: ErrorCode::Refused,
                                message: format!("no app named `{app}`"),
                            },
                        };
                        let _ = ask.reply.send(answer);
                    }
                    Command::Scale { app, instances } => {
                        let answer = scale(&mut fleet, &mut driver, &app, &instances, cpus, now);
                        let _ = ask.reply.send(answer);
                    }
                    Command::Stop => {
                        let _ = ask.reply.send(Body::Stopping);
                        if !fleet.is_stopping() {
                            tracing::info!(event = "stop_requested", via = "control socket");
                            driver.apply(&mut fleet, now, |f| f.stop(false, now));
                        }
                    }
                }
            }
            _ = refresh.tick() => {
                // Keep every worker's last known numbers fresh, so a worker
                // that dies without warning loses little from the totals.
                scrape_in_background(&fleet, &metrics);
            }
            _ = manager_ping.tick() => manager.ping(),
            _ = sleep => {}
        }
        // Pings that queued up while the loop was busy count before any
        // worker's silence is judged.
        while let Some(m) = notify.try_recv() {
            on_notify(&mut fleet, &mut driver, &metrics, &m);
        }
        let now = Instant::now();
        if let Some(late) = deadline.and_then(|d| now.checked_duration_since(d)) {
            if late > STALL {
                // The supervisor itself did not run (paused container,
                // SIGSTOP, blocked stdout): the workers' silence is ours.
                fleet.pardon_silence(now, late);
            }
        }
        driver.apply(&mut fleet, now, |f| f.tick(now));
        if fleet.reload_due() {
            if !told_reloading {
                manager.reloading();
                told_reloading = true;
            }
            // Before `read_outputs`, so the new workers' pipes are read at once.
            reload(&mut fleet, &mut driver, &config.path, cpus);
        }
        read_outputs(&mut driver, capture.as_mut());
        if fleet.drains_started() != drains_seen {
            // Catch what a worker counted before it began draining (it keeps
            // serving its metrics until it exits).
            drains_seen = fleet.drains_started();
            scrape_in_background(&fleet, &metrics);
        }
        answer_reloads(&mut fleet, &mut pending_reloads);
        for done in fleet.take_finished_restarts() {
            if let Some(i) = pending_restarts.iter().position(|(s, _)| *s == done.seq) {
                let (_, reply) = pending_restarts.swap_remove(i);
                let _ = reply.send(Body::Restart(RestartResult {
                    apps: done.apps,
                    replaced: done.replaced,
                    skipped: done.skipped,
                    failed: done.failed,
                    outcome: done.outcome.to_string(),
                }));
            }
        }
        if fleet.take_first_ready() {
            manager.ready(&serving(&fleet));
            told_ready = true;
        }
        if told_reloading && !fleet.is_reloading() && !fleet.reload_due() {
            // Over, whatever the outcome: a generation serves either way —
            // unless the fleet never served yet (a reload refused before the
            // first READY: the first READY is still to come) or is stopping.
            told_reloading = false;
            if !fleet.is_stopping() && (told_ready || fleet.all_online()) {
                manager.ready(&serving(&fleet));
                told_ready = true;
            }
        }
        if fleet.is_stopping() && !told_stopping {
            manager.stopping();
            told_stopping = true;
        }
        if fleet.is_stopped() {
            let exit = if fleet.was_forced() {
                Exit::Forced
            } else {
                Exit::Clean
            };
            tracing::info!(event = "supervisor_exit", code = exit.code());
            break exit;
        }
        if !fleet.is_stopping() && fleet.all_errored() {
            // No reload will run any more: whoever waits is told so now.
            for reply in pending_reloads.take_all() {
                let _ = reply.send(stopping());
            }
            tracing::error!(
                event = "supervisor_exit",
                code = Exit::AllErrored.code(),
                "every slot is errored; exiting so the orchestrator can restart us"
            );
            break Exit::AllErrored;
        }
    };
    // Every worker has exited: let the readers take what is left in the
    // pipes (bounded: an orphan may still hold one open), then write it out,
    // rotated files compressed and pruned. The control socket stays up (and
    // answers) until then: `heartalk stop` takes its going away to mean the
    // supervisor has exited, so that must be the very last step.
    let finishing = async {
        let drained = match capture {
            Some(capture) => capture.finish(Duration::from_secs(10)).await,
            None => true,
        };
        if !drained {
            tracing::warn!(
                event = "log_pipes_open",
                "a worker pipe is still open (an orphan holds it?); not waiting for it"
            );
        }
        if let Some(sink) = &sink {
            sink.flush(Duration::from_secs(30)).await;
        }
    };
    tokio::pin!(finishing);
    loop {
        tokio::select! {
            _ = &mut finishing => break,
            Some(ask) = asks.recv() => {
                let body = match ask.command {
                    Command::Status => {
                        let now = Instant::now();
                        Body::Status(status::build(&fleet.view(), &me, &metrics, &mut cpu, now))
                    }
                    Command::Stop => Body::Stopping,
                    Command::Reload
                    | Command::Metrics
                    | Command::Restart { .. }
                    | Command::Scale { .. }
                    | Command::Describe { .. } => stopping(),
                };
                let _ = ask.reply.send(body);
            }
        }
    }
    // Dropping the task drops the `ControlSocket`, which removes the file
    // (if it is still ours); awaiting makes that happen before we return.
    control_task.abort();
    let _ = control_task.await;
    Ok(exit)
}

/// Raises the open-file limit to the hard limit (see
/// [`sys::raise_nofile_limit`]) and logs the outcome; a failure leaves the
/// limit as it was and is not fatal.
fn raise_fd_limit() {
    match sys::raise_nofile_limit() {
        Ok(l) => tracing::info!(
            event = "fd_limit",
            soft_before = l.soft_before,
            soft = l.soft,
            hard = l.hard,
            "open-file limit (RLIMIT_NOFILE) for the supervisor and its workers"
        ),
        Err(e) => tracing::warn!(
            event = "fd_limit",
            error = %e,
            "could not raise the open-file limit; workers inherit the current one"
        ),
    }
}

/// How late the event loop may wake for a deadline before it counts as a
/// stall of the supervisor itself (see [`crate::fleet::Fleet::pardon_silence`]).
const STALL: Duration = Duration::from_secs(1);

/// A worker's sd_notify message.
fn on_notify(
    fleet: &mut Fleet,
    driver: &mut Driver,
    metrics: &Arc<FleetMetrics>,
    m: &crate::notify::Message,
) {
    if m.status.as_deref() == Some("drained") {
        // A draining worker is done and waits for its last scrape: take
        // it, then it exits.
        scrape_in_background(fleet, metrics);
    }
    let now = Instant::now();
    driver.apply(fleet, now, |f| f.on_notify(m, now));
}

/// `heartalk scale APP N|max|file`: new sockets bound here, then the fleet
/// adds or drains slots (see `fleet/scale.rs`).
fn scale(
    fleet: &mut Fleet,
    driver: &mut Driver,
    app: &str,
    instances: &str,
    cpus: u32,
    now: Instant,
) -> Body {
    let refused = |message: String| Body::Error {
        code: ErrorCode::Refused,
        message,
    };
    let want = match crate::fleet::setup::parse_instances(instances) {
        Ok(w) => w,
        Err(e) => return refused(e),
    };
    let plan = match fleet.plan_scale(app, want, cpus) {
        Ok(p) => p,
        Err(ScaleRefused::Stopping) => return stopping(),
        Err(e) => return refused(e.to_string()),
    };
    if plan.target > from_count(fleet, app) {
        let errors = driver.check_secrets(fleet.configs().filter(|c| c.name == app));
        if !errors.is_empty() {
            return refused(errors.join("; "));
        }
    }
    let sockets = match driver.bind(plan.addr, plan.bind) {
        Ok(s) => s,
        Err(e) => return refused(format!("cannot listen on {}: {e}", plan.addr)),
    };
    let from = from_count(fleet, app);
    let to = plan.target;
    driver.apply(fleet, now, |f| f.scale(plan, sockets, now));
    let view = fleet.view();
    let shown = view.apps.iter().find(|a| a.name == app);
    Body::Scale(ScaleResult {
        app: app.to_string(),
        from,
        to,
        scaled: shown.and_then(|a| a.scaled.clone()),
        instances: shown.map(|a| a.instances_file.clone()).unwrap_or_default(),
    })
}

/// How many slots `app` has now.
fn from_count(fleet: &Fleet, app: &str) -> usize {
    fleet
        .view()
        .apps
        .iter()
        .find(|a| a.name == app)
        .map_or(0, |a| a.slots.len())
}

/// A restart's successors read the secret files anew: the apps it covers
/// (`app`, or all) are checked first, and a failure refuses the restart.
fn restart_secrets(driver: &mut Driver, fleet: &Fleet, app: Option<&str>) -> Result<(), String> {
    let errors = driver.check_secrets(
        fleet
            .configs()
            .filter(|c| app.is_none_or(|name| c.name == name)),
    );
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// The `STATUS=` line for the service manager.
fn serving(fleet: &Fleet) -> String {
    let view = fleet.view();
    let online = view
        .apps
        .iter()
        .flat_map(|a| &a.slots)
        .filter(|s| s.state == crate::fleet::SlotState::Online)
        .count();
    format!(
        "serving: {online} workers online, generation {}",
        view.generation
    )
}

/// Hands each new worker's stdout and stderr to the log thread.
fn read_outputs(driver: &mut Driver, capture: Option<&mut Capture>) {
    let Some(capture) = capture else { return };
    for w in driver.take_new_outputs() {
        for (fd, stream) in [(w.outputs.stdout, "stdout"), (w.outputs.stderr, "stderr")] {
            let source = logs::Source {
                app: w.app.clone(),
                slot: w.slot,
                pid: w.pid.as_raw(),
                stream,
            };
            capture.read(fd, source);
        }
    }
}

/// Scrapes every worker in the background, updating their last known
/// numbers (what a worker that leaves is retired with).
fn scrape_in_background(fleet: &Fleet, metrics: &Arc<FleetMetrics>) {
    let targets = scrape::targets(&fleet.view());
    let metrics = metrics.clone();
    tokio::spawn(async move {
        metrics.refresh(targets).await;
    });
}

/// Answers every `heartalk reload` caller whose request a finished reload
/// attempt covered, with that attempt's outcome. Once a stop has begun no
/// further reload will run, so whoever still waits is told so.
fn answer_reloads(fleet: &mut Fleet, pending: &mut Waiters<oneshot::Sender<Body>>) {
    let finished = fleet.take_finished_reloads();
    for (reply, outcome) in pending.settle(&finished) {
        let _ = reply.send(Body::Reload(ReloadResult::from(&outcome)));
    }
    if fleet.is_stopping() {
        for reply in pending.take_all() {
            let _ = reply.send(stopping());
        }
    }
}

/// The answer to a reload that will not run because a stop has begun.
fn stopping() -> Body {
    Body::Error {
        code: ErrorCode::Stopping,
        message: "the supervisor is stopping".into(),
    }
}

/// Re-reads the config and starts a rollout answering every request so
/// far; a bad file is refused with every error logged, and the running
/// generation keeps serving. The config is read only now, when the reload
/// starts, so a request queued behind a rollout gets the file as it is
/// when its own reload runs.
fn reload(fleet: &mut Fleet, driver: &mut Driver, path: &std::path::Path, cpus: u32) {
    match Config::load(path) {
        Ok(config) => match driver.prepare(&config, cpus, Some(fleet)) {
            Ok(next) => {
                let now = Instant::now();
                driver.apply(fleet, now, |f| f.reload(next, now));
            }
            Err(e) => {
                tracing::error!(event = "reload_refused", error = %e, "the new generation cannot be set up; keeping the running one");
                fleet.record_refused(e.to_string());
            }
        },
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

/// The fleet-wide `/metrics` on `[supervisor] metrics_listen`, served by
/// the supervisor itself (it does not depend on any worker being up).
async fn serve_metrics_http(listener: tokio::net::TcpListener, asks: mpsc::Sender<Ask>) {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let asks = asks.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let asks = asks.clone();
                async move {
                    let (status, body) = if req.uri().path() != "/metrics" {
                        (hyper::StatusCode::NOT_FOUND, "not found\n".to_string())
                    } else {
                        let (tx, rx) = oneshot::channel();
                        let asked = asks
                            .send(Ask {
                                command: Command::Metrics,
                                reply: tx,
                            })
                            .await;
                        match (asked, rx.await) {
                            (Ok(()), Ok(Body::Metrics { text })) => (hyper::StatusCode::OK, text),
                            _ => (
                                hyper::StatusCode::SERVICE_UNAVAILABLE,
                                "metrics unavailable\n".to_string(),
                            ),
                        }
                    };
                    let mut resp = hyper::Response::new(Full::new(bytes::Bytes::from(body)));
                    *resp.status_mut() = status;
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(
                            "text/plain; version=0.0.4; charset=utf-8",
                        ),
                    );
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
