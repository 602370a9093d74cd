//! The fleet: every app's slots, the worker in each, and the rules that move
//! them between states. All decisions happen here, driven by the event loop
//! (`run.rs`): a child exited, a worker notified, a deadline passed, an
//! operator asked to stop or reload. Nothing here blocks. Its effects on
//! workers — forking, signalling, reading their memory — go through a
//! [`Host`] (the real one is [`SysHost`]); the only other I/O is binding
//! slot sockets and writing the fleet-state page. With a fake host the
//! rules run on generated sequences of events (`fleet_props.rs`).
//!
//! Slot states: `starting` (spawned, waiting for `READY=1` until
//! `listen_timeout`) → `online` → (exit) → `waiting` (restart backoff) →
//! `starting` ...; or `errored` once the restart policy gives up; or
//! `stopping` → `stopped` during shutdown. An `online` slot is *shown*
//! `degraded` while its worker reports it cannot accept, and `hung` once
//! its watchdog expired (see [`shown_state`]).
//!
//! Replacing a worker never leaves its slot without one: the replacement
//! starts on the slot's (kept) socket, and only once it is READY does the
//! old worker get SIGTERM and join the `draining` list, where it finishes
//! its in-flight requests until it exits or `kill_timeout` passes. A reload
//! (a *rollout*) does this for every slot, all or nothing: the old
//! generation keeps serving until every new worker is READY, then all old
//! workers drain at once (the commit); if any new worker fails to start,
//! the new ones are killed and the old generation carries on (rollback).
//! A memory replacement does the same for one slot (its *successor*); a
//! hung worker gets a successor too, but is SIGKILLed on its own deadline
//! rather than drained.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use shared::config::{App, Config, Instances};

use crate::host::{Host, SysHost};
use crate::memory::{self, Verdict};
use crate::notify::Message;
use crate::reloads::{Finished, Ledger};
use crate::restart::{Decision, Policy};
use crate::sockets::{SlotSocket, bind_slots};
use crate::spawn::{Launch, resolve_program};

/// Why the fleet (or a new generation of it) could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Program(String),
    #[error("app `{app}`: cannot listen on {addr}: {source}")]
    Bind {
        app: String,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A slot's state. `Degraded` and `Hung` are how an `Online` slot is
/// *shown* (in `status` and /metrics) while its worker reports that it
/// cannot accept connections, or after its watchdog expired and until its
/// replacement takes over; the lifecycle rules only ever store the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    Starting,
    Online,
    Degraded,
    Hung,
    Waiting,
    Stopping,
    Stopped,
    Errored,
}

impl SlotState {
    /// Every state, in the order `status` and the metrics list them.
    pub const ALL: [SlotState; 8] = [
        SlotState::Starting,
        SlotState::Online,
        SlotState::Degraded,
        SlotState::Hung,
        SlotState::Waiting,
        SlotState::Stopping,
        SlotState::Stopped,
        SlotState::Errored,
    ];
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SlotState::Starting => "starting",
            SlotState::Online => "online",
            SlotState::Degraded => "degraded",
            SlotState::Hung => "hung",
            SlotState::Waiting => "waiting",
            SlotState::Stopping => "stopping",
            SlotState::Stopped => "stopped",
            SlotState::Errored => "errored",
        })
    }
}

/// How a worker's life ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// `crash` (non-zero exit or signal), `exit` (code 0 while not asked to
    /// stop), `listen_timeout`, `spawn_failed`, `memory` (killed over
    /// `max_memory_hard`), `hung` (its watchdog expired: SIGABRT, then
    /// SIGKILL), `stopped`, `reload` or `memory` (replaced and drained).
    pub reason: &'static str,
    pub code: Option<i32>,
    pub signal: Option<String>,
}

pub use crate::reloads::ReloadOutcome;

struct Worker {
    pid: Pid,
    generation: u64,
    spawned_at: Instant,
    ready_at: Option<Instant>,
    ready_deadline: Instant,
    /// Set once SIGTERM was sent: SIGKILL follows at this instant.
    kill_at: Option<Instant>,
    /// Killed for missing `listen_timeout`.
    failed_start: bool,
    /// Why the supervisor killed it, if it did (`memory`).
    kill_reason: Option<&'static str>,
    killed: bool,
    /// Abstract socket name it serves its metrics on.
    metrics_id: String,
    /// Its latest `WATCHDOG=1`; the first one arms its watchdog.
    last_ping: Option<Instant>,
    /// Its watchdog expired: it had SIGABRT, a replacement is starting,
    /// and it is SIGKILLed at `kill_at`.
    hung: bool,
    /// It reported that it cannot accept connections (`X_HEARTALK_DEGRADED=1`).
    degraded: bool,
}

impl Worker {
    fn new(
        pid: Pid,
        generation: u64,
        now: Instant,
        listen_timeout: Duration,
        metrics_id: String,
    ) -> Worker {
        Worker {
            metrics_id,
            pid,
            generation,
            spawned_at: now,
            ready_at: None,
            ready_deadline: now + listen_timeout,
            kill_at: None,
            failed_start: false,
            kill_reason: None,
            killed: false,
            last_ping: None,
            hung: false,
            degraded: false,
        }
    }

    /// Whether this worker counts as not serving (degraded or hung).
    fn not_serving(&self) -> bool {
        self.degraded || self.hung
    }
}

struct Slot {
    index: usize,
    socket: Option<Arc<SlotSocket>>,
    state: SlotState,
    worker: Option<Worker>,
    /// A replacement (memory or hung) waiting for READY.
    successor: Option<Worker>,
    restarts: u32,
    unstable: u32,
    restart_at: Option<Instant>,
    last_exit: Option<ExitInfo>,
    strikes: u32,
    next_memory_check: Option<Instant>,
}

impl Slot {
    fn new(index: usize, socket: Arc<SlotSocket>) -> Slot {
        Slot {
            index,
            socket: Some(socket),
            state: SlotState::Waiting,
            worker: None,
            successor: None,
            restarts: 0,
            unstable: 0,
            restart_at: None,
            last_exit: None,
            strikes: 0,
            next_memory_check: None,
        }
    }
}

struct AppRun {
    config: App,
    program: PathBuf,
    policy: Policy,
    limits: memory::Limits,
    slots: Vec<Slot>,
    /// Its word of the fleet-state page (`HEARTALK_FLEET_WORD`; `None`
    /// past the page's 512): see `crate::fleet_state::assign_words`.
    word: Option<usize>,
}

impl AppRun {
    fn monitored(&self) -> bool {
        self.limits.soft.is_some() || self.limits.hard.is_some()
    }

    /// How many of its current workers are not serving (degraded or hung).
    fn not_serving(&self) -> u64 {
        self.slots
            .iter()
            .filter_map(|s| s.worker.as_ref())
            .filter(|w| w.not_serving())
            .count() as u64
    }
}

/// A reload in progress: the next generation, started `max_surge` workers
/// at a time per app while the current one keeps serving.
struct Rollout {
    apps: Vec<AppRun>,
    pending: VecDeque<(usize, usize)>,
    generation: u64,
    /// The highest reload request number this rollout answers.
    covers: u64,
}

/// An old worker finishing its in-flight work.
struct Draining {
    pid: Pid,
    app: String,
    slot: usize,
    generation: u64,
    reason: &'static str,
    kill_at: Instant,
    killed: bool,
    /// Its metrics socket: scraped until it exits, so what it counts while
    /// draining reaches the fleet totals.
    metrics_id: Option<String>,
    /// Keeps a retired slot's socket open until its worker has drained, so
    /// connections queued on it are still served (scale-down).
    _socket: Option<Arc<SlotSocket>>,
}

/// Which worker a pid is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Current(usize, usize),
    Successor(usize, usize),
    Next(usize, usize),
    Draining,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Running,
    Stopping,
}

/// How workers are launched: what every worker is handed besides its
/// app, slot and generation.
#[derive(Default)]
struct LaunchSettings {
    notify_socket: String,
    /// Whether workers' stdout/stderr go through pipes to the log writer.
    capture_output: bool,
    /// Handed to workers for `/metrics` on the service port.
    control_socket: Option<PathBuf>,
    /// The shared rate-limit table every worker gets (`HEARTALK_LIMITS_FD`).
    limits_fd: Option<std::os::fd::RawFd>,
    /// The fleet-state page's descriptor (`HEARTALK_FLEET_FD`).
    fleet_fd: Option<std::os::fd::RawFd>,
}

/// The fleet, acting through `H` (see [`Host`]).
pub struct Fleet<H = SysHost> {
    host: H,
    apps: Vec<AppRun>,
    rollout: Option<Rollout>,
    draining: Vec<Draining>,
    pids: HashMap<Pid, Role>,
    mode: Mode,
    launch: LaunchSettings,
    /// The newest generation number handed out.
    generation: u64,
    cpus: u32,
    /// A worker had to be SIGKILLed during the stop (exit code 1).
    forced: bool,
    announced_ready: bool,
    /// Reload requests, and the attempts that answered them.
    reloads: Ledger,
    /// Workers spawned so far (names their metrics sockets).
    spawn_seq: u64,
    /// Drains started so far (the event loop scrapes a worker as it starts draining).
    drains_started: u64,
    /// Output pipes of workers spawned since the event loop last looked.
    new_outputs: Vec<WorkerOutputs>,
    /// Restarts by (app, reason: crash | memory | reload).
    restarts_by: BTreeMap<(String, &'static str), u64>,
    /// Reloads by (app, outcome: committed | rolled_back | refused).
    reloads_by: BTreeMap<(String, &'static str), u64>,
    /// Every worker's latest PSS: read at most once per
    /// `memory_check_interval`, by the guard or for `status`/`/metrics`.
    pss: memory::PssCache,
    /// Hung workers by (app, reason: silent | trigger).
    hangs_by: BTreeMap<(String, &'static str), u64>,
    /// The page every worker's `/ready` reads: how many slots of its app
    /// are not serving (`HEARTALK_FLEET_FD`, word `HEARTALK_FLEET_WORD`).
    fleet_state: Option<crate::fleet_state::FleetState>,
}

/// A read-only picture of the fleet, for `status` and `/metrics`.
pub struct FleetView {
    pub apps: Vec<AppView>,
    /// Draining workers: (app, slot, metrics socket).
    pub draining: Vec<(String, usize, String)>,
    pub generation: u64,
    pub reloading: bool,
    pub last_reload: Option<ReloadOutcome>,
    pub stopping: bool,
    pub restarts_by: Vec<(String, &'static str, u64)>,
    pub reloads_by: Vec<(String, &'static str, u64)>,
    /// Watchdog expiries by (app, reason).
    pub hangs_by: Vec<(String, &'static str, u64)>,
}

pub struct AppView {
    pub name: String,
    /// The bound address (port 0 resolved).
    pub listen: std::net::SocketAddr,
    pub slots: Vec<SlotView>,
}

pub struct SlotView {
    pub slot: usize,
    pub state: SlotState,
    pub worker: Option<WorkerView>,
    pub restarts: u32,
    pub unstable_restarts: u32,
    pub last_exit: Option<ExitInfo>,
}

pub struct WorkerView {
    pub pid: Pid,
    pub generation: u64,
    pub started: Instant,
    pub metrics_id: String,
    /// The latest PSS reading (see [`Fleet::refresh_pss`]), if any.
    pub pss: Option<u64>,
    /// Its latest watchdog ping (`None`: it never pinged, not watched).
    pub last_ping: Option<Instant>,
}

/// Builds the runtime form of `config`'s apps, reusing the slot sockets of
/// `current` where app name, address and slot index match.
fn build_apps(config: &Config, cpus: u32, current: &[AppRun]) -> Result<Vec<AppRun>, SetupError> {
    let mut apps = Vec::new();
    // An app keeps its fleet-state word for as long as it runs (same key
    // as its sockets: name and address), across reloads.
    let words = crate::fleet_state::assign_words(
        &config
            .apps
            .iter()
            .map(|a| (&a.name, a.listen))
            .collect::<Vec<_>>(),
        &current
            .iter()
            .map(|a| ((&a.config.name, a.config.listen), a.word))
            .collect::<Vec<_>>(),
    );
    for (app, word) in config.apps.iter().zip(words) {
        let program = resolve_program(app).map_err(SetupError::Program)?;
        let count = match app.instances {
            Instances::Count(n) => n.get() as usize,
            Instances::Max => cpus as usize,
        };
        let old = current
            .iter()
            .find(|a| a.config.name == app.name && a.config.listen == app.listen);
        let reusable: Vec<Arc<SlotSocket>> = old
            .map(|a| a.slots.iter().filter_map(|s| s.socket.clone()).collect())
            .unwrap_or_default();
        let mut sockets: Vec<Arc<SlotSocket>> = reusable.into_iter().take(count).collect();
        if sockets.len() < count {
            let addr = sockets.first().map_or(app.listen, |s| s.addr);
            let fresh =
                bind_slots(addr, count - sockets.len()).map_err(|source| SetupError::Bind {
                    app: app.name.clone(),
                    addr: app.listen,
                    source,
                })?;
            sockets.extend(fresh.into_iter().map(Arc::new));
        }
        tracing::info!(
            event = "listening",
            app = %app.name,
            addr = %sockets[0].addr,
            slots = count,
            "{count} SO_REUSEPORT socket(s)"
        );
        apps.push(AppRun {
            policy: Policy {
                base: app.restart_delay,
                cap: app.restart_delay_max,
                min_uptime: app.min_uptime,
                max_restarts: app.max_restarts,
            },
            limits: memory::Limits {
                soft: app.max_memory,
                hard: app.max_memory_hard,
                strikes: app.memory_strikes,
            },
            config: app.clone(),
            program,
            slots: sockets
                .into_iter()
                .enumerate()
                .map(|(i, s)| Slot::new(i, s))
                .collect(),
            word,
        });
    }
    Ok(apps)
}

/// Starts a worker for `slot` of `app` through `host`, with its output
/// pipes when output is captured.
fn launch<H: Host>(
    host: &mut H,
    settings: &LaunchSettings,
    app: &AppRun,
    slot: &Slot,
    generation: u64,
    metrics_id: &str,
) -> std::io::Result<(Pid, Option<Outputs>)> {
    host.spawn(
        Launch {
            app: &app.config,
            program: &app.program,
            slot: slot.index,
            generation,
            socket: slot.socket.as_ref().map(|s| s.raw_fd()),
            notify_socket: &settings.notify_socket,
            metrics_socket: metrics_id,
            control_socket: settings.control_socket.as_deref(),
            limits_fd: settings.limits_fd,
            fleet: settings.fleet_fd.zip(app.word),
            outputs: None,
        },
        settings.capture_output,
    )
}

fn exit_parts(status: WaitStatus) -> (Option<i32>, Option<String>) {
    match status {
        WaitStatus::Exited(_, code) => (Some(code), None),
        WaitStatus::Signaled(_, sig, _) => (None, Some(sig.as_str().to_string())),
        _ => (None, None),
    }
}

impl Fleet {
    /// Resolves programs and binds every slot socket; starts nothing yet.
    pub fn new(config: &Config, notify_socket: String, cpus: u32) -> Result<Fleet, SetupError> {
        Fleet::with_host(SysHost, config, notify_socket, cpus)
    }
}

impl<H: Host> Fleet<H> {
    /// [`Fleet::new`], acting through `host`.
    pub fn with_host(
        host: H,
        config: &Config,
        notify_socket: String,
        cpus: u32,
    ) -> Result<Fleet<H>, SetupError> {
        let mut fleet = Fleet {
            host,
            apps: build_apps(config, cpus, &[])?,
            rollout: None,
            draining: Vec::new(),
            pids: HashMap::new(),
            mode: Mode::Running,
            launch: LaunchSettings {
                notify_socket,
                ..LaunchSettings::default()
            },
            generation: 1,
            cpus,
            forced: false,
            announced_ready: false,
            reloads: Ledger::default(),
            spawn_seq: 0,
            drains_started: 0,
            new_outputs: Vec::new(),
            restarts_by: BTreeMap::new(),
            reloads_by: BTreeMap::new(),
            pss: memory::PssCache::default(),
            hangs_by: BTreeMap::new(),
            fleet_state: None,
        };
        fleet.zero_counters();
        Ok(fleet)
    }

    /// Gives every app's restart and hang counters a 0 from the start, so
    /// Prometheus sees the first one go from 0 to 1 (`increase()` of a
    /// series whose first sample is already 1 is 0: an alert would miss it).
    fn zero_counters(&mut self) {
        for app in &self.apps {
            for reason in RESTART_REASONS {
                self.restarts_by
                    .entry((app.config.name.clone(), reason))
                    .or_default();
            }
            for reason in HANG_REASONS {
                self.hangs_by
                    .entry((app.config.name.clone(), reason))
                    .or_default();
            }
        }
    }

    /// The event loop woke `late` past a deadline: the supervisor itself
    /// did not run (a paused container, SIGSTOP, a blocked stdout), so no
    /// ping could be read. Every watched worker gets a fresh interval from
    /// `now` instead of being judged hung for the supervisor's silence.
    pub fn pardon_silence(&mut self, now: Instant, late: Duration) {
        let mut pardoned = 0;
        for w in self
            .apps
            .iter_mut()
            .flat_map(|a| a.slots.iter_mut())
            .filter_map(|s| s.worker.as_mut())
            .filter(|w| !w.hung)
        {
            if let Some(p) = w.last_ping.as_mut() {
                *p = now;
                pardoned += 1;
            }
        }
        tracing::warn!(
            event = "supervisor_stalled",
            late_ms = late.as_millis() as u64,
            watched = pardoned,
            "the supervisor ran late; workers' watchdogs restart from now"
        );
    }

    /// Passes this shared-memory table to every worker launched from now
    /// on (the caller keeps it open for the fleet's life).
    pub fn set_limits_fd(&mut self, fd: Option<std::os::fd::RawFd>) {
        self.launch.limits_fd = fd;
    }

    /// Passes this fleet-state page to every worker launched from now on
    /// (with its app's word), and keeps each app's count of slots not
    /// serving up to date.
    pub fn set_fleet_state(&mut self, state: crate::fleet_state::FleetState) {
        state.publish(self.not_serving_by_word());
        self.launch.fleet_fd = Some(state.fd());
        self.fleet_state = Some(state);
    }

    /// Publishes each app's count of slots not serving to the workers' page.
    fn publish(&self) {
        if let Some(page) = &self.fleet_state {
            page.publish(self.not_serving_by_word());
        }
    }

    /// Tells workers where the control socket is (for `/metrics` on the
    /// service port); `None` keeps that path off.
    pub fn set_control_socket(&mut self, path: Option<&Path>) {
        self.launch.control_socket = path.map(Path::to_path_buf);
    }

    fn next_metrics_id(&mut self) -> String {
        self.spawn_seq += 1;
        format!(
            "@heartalk/{}/metrics/{}",
            std::process::id(),
            self.spawn_seq
        )
    }

    fn count_restart(&mut self, app: &str, reason: &'static str) {
        *self
            .restarts_by
            .entry((app.to_string(), reason))
            .or_default() += 1;
    }

    /// A reload attempt is over: counted per app in
    /// `heartalk_reloads_total`, and recorded (answering every request
    /// numbered up to `covers`) with one outcome for both.
    fn finish_reload(
        &mut self,
        covers: u64,
        generation: u64,
        outcome: &'static str,
        reason: Option<String>,
    ) {
        for app in &self.apps {
            *self
                .reloads_by
                .entry((app.config.name.clone(), outcome))
                .or_default() += 1;
        }
        self.reloads.finish(
            covers,
            ReloadOutcome {
                generation,
                outcome,
                reason,
            },
        );
    }

    /// Brings every slot worker's PSS up to date for `status` and
    /// `/metrics` (then read from [`Fleet::view`]): a worker's reading
    /// older than its app's `memory_check_interval` is taken again, a
    /// younger one — by the guard or an earlier report — is kept, so
    /// `smaps_rollup` is read at most once per interval however often
    /// they are asked for.
    pub fn refresh_pss(&mut self, now: Instant) {
        for app in &self.apps {
            for w in app.slots.iter().filter_map(|s| s.worker.as_ref()) {
                self.pss
                    .get(w.pid, now, app.config.memory_check_interval, |p| {
                        self.host.pss(p)
                    });
            }
        }
    }

    /// A picture of every slot and worker.
    pub fn view(&self) -> FleetView {
        let apps = self
            .apps
            .iter()
            .map(|a| AppView {
                name: a.config.name.clone(),
                listen: a
                    .slots
                    .iter()
                    .find_map(|s| s.socket.as_ref().map(|x| x.addr))
                    .unwrap_or(a.config.listen),
                slots: a
                    .slots
                    .iter()
                    .map(|s| SlotView {
                        slot: s.index,
                        state: shown_state(s),
                        worker: s.worker.as_ref().map(|w| WorkerView {
                            pid: w.pid,
                            generation: w.generation,
                            started: w.spawned_at,
                            metrics_id: w.metrics_id.clone(),
                            pss: self.pss.latest(w.pid),
                            last_ping: w.last_ping,
                        }),
                        restarts: s.restarts,
                        unstable_restarts: s.unstable,
                        last_exit: s.last_exit.clone(),
                    })
                    .collect(),
            })
            .collect();
        FleetView {
            apps,
            draining: self
                .draining
                .iter()
                .filter_map(|d| d.metrics_id.clone().map(|id| (d.app.clone(), d.slot, id)))
                .collect(),
            generation: self.generation,
            reloading: self.rollout.is_some(),
            last_reload: self.reloads.last().cloned(),
            stopping: self.mode == Mode::Stopping,
            restarts_by: self
                .restarts_by
                .iter()
                .map(|((a, r), n)| (a.clone(), *r, *n))
                .collect(),
            reloads_by: self
                .reloads_by
                .iter()
                .map(|((a, o), n)| (a.clone(), *o, *n))
                .collect(),
            hangs_by: self
                .hangs_by
                .iter()
                .map(|((a, r), n)| (a.clone(), *r, *n))
                .collect(),
        }
    }

    /// How many current workers are not serving (degraded or hung), all
    /// apps together (for tests; the fleet-state page has it per app).
    #[cfg(test)]
    pub(crate) fn not_serving(&self) -> u64 {
        self.apps.iter().map(AppRun::not_serving).sum()
    }

    /// How many current workers of each app are not serving, by the app's
    /// word of the fleet-state page: what the app's workers' `/ready`
    /// reads there. Apps without a word are left out.
    fn not_serving_by_word(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.apps
            .iter()
            .filter_map(|a| Some((a.word?, a.not_serving())))
    }

    /// Capture worker stdout/stderr through pipes (the log writer reads them).
    pub fn set_capture_output(&mut self, on: bool) {
        self.launch.capture_output = on;
    }

    /// New workers' output pipes since the last call.
    pub fn take_new_outputs(&mut self) -> Vec<WorkerOutputs> {
        std::mem::take(&mut self.new_outputs)
    }

    fn keep_outputs(&mut self, app: &str, slot: usize, pid: Pid, outputs: Option<Outputs>) {
        if let Some(outputs) = outputs {
            self.new_outputs.push(WorkerOutputs {
                app: app.to_string(),
                slot,
                pid,
                outputs,
            });
        }
    }

    /// Starts a worker in every slot.
    pub fn start_all(&mut self, now: Instant) {
        for a in 0..self.apps.len() {
            for s in 0..self.apps[a].slots.len() {
                self.start_slot(a, s, now);
            }
        }
    }

    fn start_slot(&mut self, a: usize, s: usize, now: Instant) {
        let generation = self.generation;
        let metrics_id = self.next_metrics_id();
        let result = launch(
            &mut self.host,
            &self.launch,
            &self.apps[a],
            &self.apps[a].slots[s],
            generation,
            &metrics_id,
        );
        let app = &mut self.apps[a];
        let slot = &mut app.slots[s];
        slot.restart_at = None;
        match result {
            Ok((pid, outputs)) => {
                tracing::info!(event = "worker_spawned", app = %app.config.name, slot = slot.index, pid = pid.as_raw(), generation);
                let (name, index) = (app.config.name.clone(), slot.index);
                slot.state = SlotState::Starting;
                slot.strikes = 0;
                slot.worker = Some(Worker::new(
                    pid,
                    generation,
                    now,
                    app.config.listen_timeout,
                    metrics_id,
                ));
                self.pids.insert(pid, Role::Current(a, s));
                self.keep_outputs(&name, index, pid, outputs);
            }
            Err(e) => {
                tracing::error!(event = "spawn_failed", app = %app.config.name, slot = slot.index, program = %app.program.display(), error = %e);
                let exit = ExitInfo {
                    reason: "spawn_failed",
                    code: None,
                    signal: None,
                };
                let name = app.config.name.clone();
                if Self::after_exit(app, s, exit, Duration::ZERO, now) {
                    self.count_restart(&name, "crash");
                }
            }
        }
    }

    /// A child was reaped. Orphans (not workers) are only logged.
    pub fn on_exit(&mut self, pid: Pid, status: WaitStatus, now: Instant) {
        self.exited(pid, status, now);
        self.publish();
    }

    fn exited(&mut self, pid: Pid, status: WaitStatus, now: Instant) {
        self.pss.forget(pid);
        let Some(role) = self.pids.remove(&pid) else {
            tracing::debug!(event = "orphan_reaped", pid = pid.as_raw(), status = ?status);
            return;
        };
        let (code, signal) = exit_parts(status);
        match role {
            Role::Current(a, s) => self.current_exited(a, s, code, signal, now),
            Role::Successor(a, s) => {
                let app = &mut self.apps[a];
                let slot = &mut app.slots[s];
                slot.successor = None;
                let (event, then) = replace_failed(slot);
                tracing::warn!(
                    event,
                    app = %app.config.name,
                    slot = slot.index,
                    pid = pid.as_raw(),
                    code,
                    signal = signal.as_deref(),
                    "the replacement exited before it was ready; {then}"
                );
            }
            Role::Next(a, s) => {
                let name = self
                    .rollout
                    .as_ref()
                    .map(|r| r.apps[a].config.name.clone())
                    .unwrap_or_default();
                tracing::info!(event = "worker_exited", app = %name, slot = s, pid = pid.as_raw(), reason = "reload_failed", code, signal = signal.as_deref());
                self.rollback(format!("new worker of app `{name}` slot {s} exited before it was ready (code {code:?}, signal {signal:?})"), now);
            }
            Role::Draining => {
                if let Some(i) = self.draining.iter().position(|d| d.pid == pid) {
                    let d = self.draining.swap_remove(i);
                    tracing::info!(
                        event = "worker_exited",
                        app = %d.app,
                        slot = d.slot,
                        pid = pid.as_raw(),
                        generation = d.generation,
                        reason = d.reason,
                        code,
                        signal = signal.as_deref(),
                        killed = d.killed,
                    );
                }
            }
        }
    }

    fn current_exited(
        &mut self,
        a: usize,
        s: usize,
        code: Option<i32>,
        signal: Option<String>,
        now: Instant,
    ) {
        let stopping = self.mode == Mode::Stopping;
        let app = &mut self.apps[a];
        let slot = &mut app.slots[s];
        let Some(worker) = slot.worker.take() else {
            return;
        };
        let reason = if worker.failed_start {
            "listen_timeout"
        } else if let Some(r) = worker.kill_reason {
            r
        } else if stopping || worker.kill_at.is_some() {
            "stopped"
        } else if code == Some(0) {
            "exit"
        } else {
            "crash"
        };
        let uptime = now.saturating_duration_since(worker.spawned_at);
        tracing::info!(
            event = "worker_exited",
            app = %app.config.name,
            slot = slot.index,
            pid = worker.pid.as_raw(),
            generation = worker.generation,
            reason,
            code,
            signal = signal.as_deref(),
            uptime_ms = uptime.as_millis() as u64,
        );
        let exit = ExitInfo {
            reason,
            code,
            signal,
        };
        if stopping {
            slot.last_exit = Some(exit);
            slot.state = SlotState::Stopped;
            return;
        }
        // A replacement (memory or hung) already under way takes the slot over.
        if let Some(successor) = slot.successor.take() {
            slot.last_exit = Some(exit);
            slot.restarts += 1;
            slot.state = if successor.ready_at.is_some() {
                SlotState::Online
            } else {
                SlotState::Starting
            };
            self.pids.insert(successor.pid, Role::Current(a, s));
            slot.worker = Some(successor);
            let name = app.config.name.clone();
            self.count_restart(&name, restart_reason(reason));
            return;
        }
        let name = app.config.name.clone();
        if Self::after_exit(app, s, exit, uptime, now) {
            self.count_restart(&name, restart_reason(reason));
        }
    }

    /// Applies the restart policy; true when a restart was scheduled.
    fn after_exit(
        app: &mut AppRun,
        s: usize,
        exit: ExitInfo,
        uptime: Duration,
        now: Instant,
    ) -> bool {
        let slot = &mut app.slots[s];
        slot.last_exit = Some(exit);
        match app.policy.on_exit(uptime, &mut slot.unstable) {
            Decision::RestartAfter(delay) => {
                slot.state = SlotState::Waiting;
                slot.restart_at = Some(now + delay);
                slot.restarts += 1;
                tracing::info!(
                    event = "restart_scheduled",
                    app = %app.config.name,
                    slot = slot.index,
                    delay_ms = delay.as_millis() as u64,
                    restarts = slot.restarts,
                    unstable_restarts = slot.unstable,
                );
                true
            }
            Decision::Errored => {
                slot.state = SlotState::Errored;
                // Nothing will accept on this socket again: close it so the
                // kernel stops routing new connections to a dead queue.
                slot.socket = None;
                tracing::error!(
                    event = "slot_errored",
                    app = %app.config.name,
                    slot = slot.index,
                    unstable_restarts = slot.unstable,
                    max_restarts = app.policy.max_restarts,
                    "worker keeps exiting before min_uptime; giving up on this slot"
                );
                false
            }
        }
    }

    /// A datagram arrived on the notify socket.
    pub fn on_notify(&mut self, msg: &Message, now: Instant) {
        self.notified(msg, now);
        self.publish();
    }

    fn notified(&mut self, msg: &Message, now: Instant) {
        let Some(&role) = self.pids.get(&msg.pid) else {
            tracing::debug!(
                event = "notify_ignored",
                pid = msg.pid.as_raw(),
                "not a worker's main process"
            );
            return;
        };
        if msg.watchdog || msg.watchdog_trigger || msg.degraded.is_some() {
            self.on_liveness(role, msg, now);
        }
        if !msg.ready {
            return;
        }
        match role {
            Role::Current(a, s) => {
                let app = &mut self.apps[a];
                let slot = &mut app.slots[s];
                let Some(w) = slot.worker.as_mut() else {
                    return;
                };
                if w.ready_at.is_none() && slot.state == SlotState::Starting {
                    w.ready_at = Some(now);
                    slot.state = SlotState::Online;
                    log_ready(&app.config.name, slot.index, w, now);
                    slot.next_memory_check = Some(now + app.config.memory_check_interval);
                }
            }
            Role::Successor(a, s) => {
                let app = &mut self.apps[a];
                let slot = &mut app.slots[s];
                // One already killed for missing listen_timeout is dying:
                // its late READY does not retire the worker it replaced.
                let Some(mut successor) = slot.successor.take_if(|w| !w.failed_start) else {
                    return;
                };
                successor.ready_at = Some(now);
                log_ready(&app.config.name, slot.index, &successor, now);
                self.pids.insert(successor.pid, Role::Current(a, s));
                slot.strikes = 0;
                slot.state = SlotState::Online;
                slot.next_memory_check = Some(now + app.config.memory_check_interval);
                slot.restarts += 1;
                if let Some(old) = slot.worker.replace(successor) {
                    let kill_timeout = app.config.kill_timeout;
                    let name = app.config.name.clone();
                    let index = slot.index;
                    // Replaced for its memory (it drains on), or hung (its
                    // SIGKILL is already scheduled).
                    let reason = if old.hung { "hung" } else { "memory" };
                    self.count_restart(&name, reason);
                    // What `status` shows as the slot's last exit.
                    let app = &mut self.apps[a];
                    app.slots[s].last_exit = Some(ExitInfo {
                        reason,
                        code: None,
                        signal: None,
                    });
                    self.drain(old, &name, index, "memory", kill_timeout, None, now);
                }
            }
            Role::Next(a, s) => {
                let Some(r) = self.rollout.as_mut() else {
                    return;
                };
                let app = &mut r.apps[a];
                let slot = &mut app.slots[s];
                if let Some(w) = slot.worker.as_mut() {
                    if w.ready_at.is_none() {
                        w.ready_at = Some(now);
                        slot.state = SlotState::Online;
                        log_ready(&app.config.name, slot.index, w, now);
                    }
                }
                self.advance(now);
            }
            Role::Draining => {}
        }
    }

    /// True exactly once: when every slot first has a ready worker.
    pub fn take_first_ready(&mut self) -> bool {
        if self.announced_ready || self.mode != Mode::Running {
            return false;
        }
        let all = self
            .apps
            .iter()
            .flat_map(|a| &a.slots)
            .all(|s| s.state == SlotState::Online);
        if all {
            self.announced_ready = true;
            tracing::info!(
                event = "fleet_ready",
                workers = self.pids.len(),
                "all workers ready"
            );
        }
        all
    }

    /// A worker's liveness news: a watchdog ping, a request to be treated
    /// as hung, or a change of its ability to accept connections.
    fn on_liveness(&mut self, role: Role, msg: &Message, now: Instant) {
        let (a, s) = match role {
            Role::Current(a, s) => (a, s),
            Role::Successor(a, s) => {
                if let Some(w) = self.apps[a].slots[s].successor.as_mut() {
                    note_liveness(w, msg, now);
                }
                return;
            }
            Role::Next(a, s) => {
                let w = self
                    .rollout
                    .as_mut()
                    .and_then(|r| r.apps[a].slots[s].worker.as_mut());
                if let Some(w) = w {
                    note_liveness(w, msg, now);
                }
                return;
            }
            Role::Draining => return,
        };
        let app = &mut self.apps[a];
        let slot = &mut app.slots[s];
        let Some(w) = slot.worker.as_mut() else {
            return;
        };
        let was_degraded = w.degraded;
        note_liveness(w, msg, now);
        if w.degraded != was_degraded && !w.hung {
            if w.degraded {
                tracing::warn!(
                    event = "worker_degraded",
                    app = %app.config.name,
                    slot = slot.index,
                    pid = w.pid.as_raw(),
                    status = msg.status.as_deref(),
                    "the worker cannot accept connections; its app's /ready answers 503"
                );
            } else {
                tracing::info!(
                    event = "worker_recovered",
                    app = %app.config.name,
                    slot = slot.index,
                    pid = w.pid.as_raw(),
                    status = msg.status.as_deref(),
                );
            }
        }
        if msg.watchdog_trigger && slot.state == SlotState::Online && self.mode == Mode::Running {
            self.hang(a, s, "trigger", now);
        }
    }

    /// Slot `s`'s worker is hung (`reason`: `silent`, its watchdog expired;
    /// `trigger`, it said `WATCHDOG=trigger`). It gets SIGABRT (a core dump
    /// or backtrace shows where it was stuck) and SIGKILL [`ABORT_GRACE`]
    /// later; a replacement starts at once on the slot's socket, so the
    /// connections queued there are served by it instead of waiting for a
    /// process that will never accept them.
    fn hang(&mut self, a: usize, s: usize, reason: &'static str, now: Instant) {
        let app = &mut self.apps[a];
        let watchdog = app.config.watchdog;
        let slot = &mut app.slots[s];
        let Some(w) = slot.worker.as_mut() else {
            return;
        };
        if w.hung {
            return;
        }
        w.hung = true;
        w.kill_reason = Some("hung");
        w.kill_at = Some(now + ABORT_GRACE);
        let silent_ms = w
            .last_ping
            .map(|p| now.saturating_duration_since(p).as_millis() as u64);
        tracing::error!(
            event = "worker_hung",
            app = %app.config.name,
            slot = slot.index,
            pid = w.pid.as_raw(),
            generation = w.generation,
            reason,
            silent_ms,
            watchdog_ms = watchdog.map(|d| d.as_millis() as u64),
            "worker hung: SIGABRT now, SIGKILL in {ABORT_GRACE:?}; a replacement starts on the slot's socket"
        );
        self.host.signal(w.pid, Signal::SIGABRT);
        let name = app.config.name.clone();
        let replacing = slot.successor.is_some();
        *self.hangs_by.entry((name, reason)).or_default() += 1;
        if !replacing {
            self.start_successor(a, s, now);
        }
    }

    /// SIGKILLs a worker nobody needs any more (a failed new generation, a
    /// superseded replacement) and tracks it until it is reaped.
    fn discard(
        &mut self,
        pid: Pid,
        generation: u64,
        app: String,
        slot: usize,
        reason: &'static str,
        now: Instant,
    ) {
        self.host.signal_group(pid, Signal::SIGKILL);
        self.track(Draining {
            pid,
            app,
            slot,
            generation,
            reason,
            kill_at: now,
            killed: true,
            metrics_id: None,
            _socket: None,
        });
    }

    /// Follows a worker that left its slot until it is reaped.
    fn track(&mut self, d: Draining) {
        self.pids.insert(d.pid, Role::Draining);
        self.draining.push(d);
    }

    /// SIGTERM `worker` and track it until it exits (SIGKILL at the
    /// deadline). A hung worker is only tracked, under reason `hung`: it
    /// already had SIGABRT and keeps its SIGKILL deadline (a SIGTERM would
    /// not be acted on, nor its metrics answered).
    #[allow(clippy::too_many_arguments)]
    fn drain(
        &mut self,
        worker: Worker,
        app: &str,
        slot: usize,
        reason: &'static str,
        kill_timeout: Duration,
        socket: Option<Arc<SlotSocket>>,
        now: Instant,
    ) {
        if worker.hung {
            self.track(Draining {
                pid: worker.pid,
                app: app.to_string(),
                slot,
                generation: worker.generation,
                reason: "hung",
                kill_at: worker.kill_at.unwrap_or(now),
                killed: worker.killed,
                metrics_id: None,
                _socket: None,
            });
            return;
        }
        tracing::info!(event = "worker_draining", app = %app, slot, pid = worker.pid.as_raw(), generation = worker.generation, reason);
        self.drains_started += 1;
        self.host.signal(worker.pid, Signal::SIGTERM);
        self.track(Draining {
            pid: worker.pid,
            app: app.to_string(),
            slot,
            generation: worker.generation,
            reason,
            kill_at: now + kill_timeout,
            killed: false,
            metrics_id: Some(worker.metrics_id.clone()),
            _socket: socket,
        });
    }

    /// Accepts a reload request (`via` SIGHUP or the control socket) and
    /// returns its number, which a caller waits on (see [`crate::reloads`]);
    /// `None` during a stop, when no reload will run. The reload itself
    /// starts when [`Fleet::reload_due`] says so: at once, or —
    /// while a rollout runs — after it, once, however many were asked for
    /// meanwhile.
    pub fn request_reload(&mut self, via: &'static str) -> Option<u64> {
        if self.mode == Mode::Stopping {
            tracing::warn!(
                event = "reload_ignored",
                via,
                "reload asked for during a stop"
            );
            return None;
        }
        let seq = self.reloads.request();
        tracing::info!(event = "reload_requested", seq, via);
        if self.rollout.is_some() {
            tracing::info!(
                event = "reload_queued",
                seq,
                "a reload is in progress; this one will follow it"
            );
        }
        Some(seq)
    }

    /// Begins a reload to `config`, answering every request accepted so
    /// far: the next generation starts beside the current one. The event
    /// loop calls it when [`Fleet::reload_due`]; called while a rollout
    /// runs, it only records a request, which the reload after that
    /// rollout answers.
    pub fn reload(&mut self, config: &Config, now: Instant) {
        if self.mode == Mode::Stopping {
            tracing::warn!(event = "reload_ignored", "reload asked for during a stop");
            return;
        }
        if self.rollout.is_some() {
            self.request_reload("reload");
            return;
        }
        let covers = self.reloads.begin();
        let generation = self.generation + 1;
        let apps = match build_apps(config, self.cpus, &self.apps) {
            Ok(apps) => apps,
            Err(e) => {
                tracing::error!(event = "reload_refused", generation, error = %e);
                self.refuse(covers, e.to_string());
                return;
            }
        };
        self.generation = generation;
        let pending = apps
            .iter()
            .enumerate()
            .flat_map(|(a, app)| (0..app.slots.len()).map(move |s| (a, s)))
            .collect();
        tracing::info!(
            event = "reload_started",
            generation,
            workers = apps.iter().map(|a| a.slots.len()).sum::<usize>()
        );
        self.rollout = Some(Rollout {
            apps,
            pending,
            generation,
            covers,
        });
        self.advance(now);
    }

    /// Starts more next-generation workers (up to each app's `max_surge`
    /// not yet ready), and commits once all of them are ready.
    fn advance(&mut self, now: Instant) {
        let Some(mut r) = self.rollout.take() else {
            return;
        };
        let mut failure = None;
        let mut i = 0;
        while i < r.pending.len() {
            let (a, s) = r.pending[i];
            let app = &r.apps[a];
            let starting = app
                .slots
                .iter()
                .filter(|s| s.state == SlotState::Starting)
                .count();
            if starting >= app.config.max_surge as usize {
                i += 1;
                continue;
            }
            r.pending.remove(i);
            let metrics_id = self.next_metrics_id();
            match launch(
                &mut self.host,
                &self.launch,
                app,
                &app.slots[s],
                r.generation,
                &metrics_id,
            ) {
                Ok((pid, outputs)) => {
                    let name = app.config.name.clone();
                    tracing::info!(event = "worker_spawned", app = %app.config.name, slot = s, pid = pid.as_raw(), generation = r.generation);
                    let timeout = app.config.listen_timeout;
                    let slot = &mut r.apps[a].slots[s];
                    slot.state = SlotState::Starting;
                    slot.worker = Some(Worker::new(pid, r.generation, now, timeout, metrics_id));
                    self.pids.insert(pid, Role::Next(a, s));
                    self.keep_outputs(&name, s, pid, outputs);
                }
                Err(e) => {
                    failure = Some(format!(
                        "cannot start a worker of app `{}`: {e}",
                        app.config.name
                    ));
                    break;
                }
            }
        }
        let done = r.pending.is_empty()
            && r.apps
                .iter()
                .flat_map(|a| &a.slots)
                .all(|s| s.state == SlotState::Online);
        self.rollout = Some(r);
        if let Some(reason) = failure {
            self.rollback(reason, now);
        } else if done {
            self.commit(now);
        }
    }

    /// Every new worker is ready: the next generation becomes current and
    /// the old workers drain.
    fn commit(&mut self, now: Instant) {
        let Some(r) = self.rollout.take() else { return };
        let old = std::mem::replace(&mut self.apps, r.apps);
        for (a, app) in self.apps.iter_mut().enumerate() {
            for (s, slot) in app.slots.iter_mut().enumerate() {
                if let Some(w) = &slot.worker {
                    self.pids.insert(w.pid, Role::Current(a, s));
                }
                slot.next_memory_check = Some(now + app.config.memory_check_interval);
            }
        }
        // A retired slot's socket (scale-down, new address) stays open until
        // its worker has drained; a kept one lives on in `apps`.
        let kept: Vec<*const SlotSocket> = self
            .apps
            .iter()
            .flat_map(|a| &a.slots)
            .filter_map(|s| s.socket.as_ref().map(Arc::as_ptr))
            .collect();
        for app in old {
            for mut slot in app.slots {
                let retired = slot
                    .socket
                    .take()
                    .filter(|s| !kept.contains(&Arc::as_ptr(s)));
                if let Some(succ) = slot.successor.take() {
                    self.discard(
                        succ.pid,
                        succ.generation,
                        app.config.name.clone(),
                        slot.index,
                        "reload",
                        now,
                    );
                }
                if let Some(w) = slot.worker.take() {
                    self.drain(
                        w,
                        &app.config.name,
                        slot.index,
                        "reload",
                        app.config.kill_timeout,
                        retired,
                        now,
                    );
                }
            }
        }
        let replaced: Vec<String> = self
            .apps
            .iter()
            .flat_map(|a| a.slots.iter().map(move |_| a.config.name.clone()))
            .collect();
        for name in replaced {
            self.count_restart(&name, "reload");
        }
        tracing::info!(
            event = "reload_committed",
            generation = r.generation,
            draining = self.draining.len()
        );
        self.finish_reload(r.covers, r.generation, "committed", None);
        self.announced_ready = true;
        self.zero_counters();
    }

    /// A new worker failed: kill the next generation, keep the current one.
    fn rollback(&mut self, reason: String, now: Instant) {
        let Some(r) = self.rollout.take() else { return };
        for app in &r.apps {
            for slot in &app.slots {
                if let Some(w) = &slot.worker {
                    // A worker already reaped (the one whose exit caused
                    // this rollback) is no longer tracked.
                    if self.pids.contains_key(&w.pid) {
                        self.discard(
                            w.pid,
                            w.generation,
                            app.config.name.clone(),
                            slot.index,
                            "rolled_back",
                            now,
                        );
                    }
                }
            }
        }
        tracing::error!(event = "reload_rolled_back", generation = r.generation, reason = %reason, "the previous generation keeps serving");
        self.finish_reload(r.covers, r.generation, "rolled_back", Some(reason));
    }

    /// Whether a requested reload should start now: some request is not
    /// yet answered and no rollout runs. The caller re-reads the config and
    /// calls [`Fleet::reload`] or, for a bad file, [`Fleet::record_refused`]
    /// (either answers every request so far).
    pub fn reload_due(&self) -> bool {
        self.rollout.is_none() && self.mode == Mode::Running && self.reloads.outstanding()
    }

    /// Records a reload refused before it started (bad config): it answers
    /// every request accepted so far. Called only when no rollout runs
    /// (after [`Fleet::reload_due`]); the running generation
    /// carries on.
    pub fn record_refused(&mut self, reason: String) {
        debug_assert!(self.rollout.is_none(), "a rollout answers its own requests");
        let covers = self.reloads.begin();
        self.refuse(covers, reason);
    }

    fn refuse(&mut self, covers: u64, reason: String) {
        self.finish_reload(covers, self.generation + 1, "refused", Some(reason));
    }

    /// Reload attempts finished since the last call, oldest first, each
    /// with the highest request number it answers.
    pub fn take_finished_reloads(&mut self) -> Vec<Finished> {
        self.reloads.take_finished()
    }

    /// How many drains have started (changes when a worker begins one).
    pub fn drains_started(&self) -> u64 {
        self.drains_started
    }

    /// Acts on every deadline that has passed.
    pub fn tick(&mut self, now: Instant) {
        self.ticked(now);
        self.publish();
    }

    fn ticked(&mut self, now: Instant) {
        for a in 0..self.apps.len() {
            for s in 0..self.apps[a].slots.len() {
                self.tick_slot(a, s, now);
            }
        }
        // New workers that miss their READY deadline fail the rollout.
        let late = self.rollout.as_ref().and_then(|r| {
            r.apps.iter().find_map(|app| {
                app.slots.iter().find_map(|slot| {
                    let w = slot.worker.as_ref()?;
                    (w.ready_at.is_none() && now >= w.ready_deadline).then(|| {
                        format!(
                            "new worker of app `{}` slot {} (pid {}) was not ready within listen_timeout ({:?})",
                            app.config.name, slot.index, w.pid, app.config.listen_timeout
                        )
                    })
                })
            })
        });
        if let Some(reason) = late {
            self.rollback(reason, now);
        }
        for d in &mut self.draining {
            if !d.killed && now >= d.kill_at {
                tracing::warn!(event = "kill_timeout", app = %d.app, slot = d.slot, pid = d.pid.as_raw(), "draining worker still running after kill_timeout; sending SIGKILL");
                d.killed = true;
                if self.mode == Mode::Stopping {
                    self.forced = true;
                }
                self.host.signal_group(d.pid, Signal::SIGKILL);
            }
        }
    }

    fn tick_slot(&mut self, a: usize, s: usize, now: Instant) {
        let stopping = self.mode == Mode::Stopping;
        let reloading = self.rollout.is_some();
        let app = &mut self.apps[a];
        let monitored = app.monitored();
        let name = &app.config.name;
        let slot = &mut app.slots[s];
        if let Some(w) = slot.worker.as_mut() {
            if slot.state == SlotState::Starting && !w.failed_start && now >= w.ready_deadline {
                tracing::warn!(
                    event = "listen_timeout",
                    app = %name,
                    slot = slot.index,
                    pid = w.pid.as_raw(),
                    timeout_ms = app.config.listen_timeout.as_millis() as u64,
                    "worker did not send READY=1 in time; killing it"
                );
                w.failed_start = true;
                self.host.signal_group(w.pid, Signal::SIGKILL);
            }
            if let Some(at) = w.kill_at {
                if !w.killed && now >= at {
                    if w.hung {
                        tracing::warn!(event = "hung_kill", app = %name, slot = slot.index, pid = w.pid.as_raw(), "hung worker still running after SIGABRT; sending SIGKILL");
                    } else {
                        tracing::warn!(event = "kill_timeout", app = %name, slot = slot.index, pid = w.pid.as_raw(), "worker still running after kill_timeout; sending SIGKILL");
                    }
                    w.killed = true;
                    if stopping {
                        self.forced = true;
                    }
                    self.host.signal_group(w.pid, Signal::SIGKILL);
                }
            }
            if slot.state == SlotState::Online
                && !w.hung
                && !stopping
                && crate::watchdog::expired(w.last_ping, app.config.watchdog, now)
            {
                self.hang(a, s, "silent", now);
                return;
            }
        }
        let late = slot
            .successor
            .as_ref()
            .is_some_and(|w| w.ready_at.is_none() && !w.failed_start && now >= w.ready_deadline);
        if late {
            let (event, then) = replace_failed(slot);
            if let Some(succ) = slot.successor.as_mut() {
                tracing::warn!(event, app = %name, slot = slot.index, pid = succ.pid.as_raw(), "the replacement was not ready within listen_timeout; {then}");
                // Killed once; its exit (Role::Successor) clears the slot's
                // successor, and its deadline no longer wakes the loop.
                succ.failed_start = true;
                self.host.signal_group(succ.pid, Signal::SIGKILL);
            }
        }
        let due = slot.restart_at.is_some_and(|at| now >= at);
        if due && slot.state == SlotState::Waiting && !stopping {
            self.start_slot(a, s, now);
            return;
        }
        let check_due = slot.next_memory_check.is_some_and(|at| now >= at);
        if check_due && !stopping && monitored {
            slot.next_memory_check = Some(now + app.config.memory_check_interval);
            if slot.state == SlotState::Online && slot.successor.is_none() && !reloading {
                self.check_memory(a, s, now);
            }
        }
    }

    /// One memory-guard sample of slot `s`'s worker.
    fn check_memory(&mut self, a: usize, s: usize, now: Instant) {
        let app = &mut self.apps[a];
        let slot = &mut app.slots[s];
        let Some(w) = slot.worker.as_mut() else {
            return;
        };
        let Some(rss) = self.host.rss(w.pid) else {
            return;
        };
        let interval = app.config.memory_check_interval;
        let pss = app
            .limits
            .soft
            .filter(|soft| rss > *soft)
            .and_then(|_| self.pss.get(w.pid, now, interval, |p| self.host.pss(p)));
        match memory::judge(&app.limits, rss, pss, &mut slot.strikes) {
            Verdict::Fine => {}
            Verdict::Strike(n) => {
                tracing::info!(event = "memory_strike", app = %app.config.name, slot = slot.index, pid = w.pid.as_raw(), rss, pss, strike = n, limit = app.limits.soft);
            }
            Verdict::Kill => {
                tracing::warn!(event = "memory_kill", app = %app.config.name, slot = slot.index, pid = w.pid.as_raw(), rss, limit = app.limits.hard, "over max_memory_hard: SIGKILL");
                w.kill_reason = Some("memory");
                w.killed = true;
                self.host.signal_group(w.pid, Signal::SIGKILL);
            }
            Verdict::Replace => {
                tracing::warn!(event = "memory_replace", app = %app.config.name, slot = slot.index, pid = w.pid.as_raw(), rss, pss, limit = app.limits.soft, "over max_memory: starting a replacement");
                self.start_successor(a, s, now);
            }
        }
    }

    /// Starts a replacement (memory or hung) for slot `s` of app `a`: it takes the
    /// slot over once READY (see `on_notify`).
    fn start_successor(&mut self, a: usize, s: usize, now: Instant) {
        // The worker it replaces runs this generation's config (during a
        // reload `self.generation` already names the next one).
        let generation = self.apps[a].slots[s]
            .worker
            .as_ref()
            .map_or(self.generation, |w| w.generation);
        let metrics_id = self.next_metrics_id();
        let launched = launch(
            &mut self.host,
            &self.launch,
            &self.apps[a],
            &self.apps[a].slots[s],
            generation,
            &metrics_id,
        );
        let app = &mut self.apps[a];
        let (name, index, timeout) = (
            app.config.name.clone(),
            app.slots[s].index,
            app.config.listen_timeout,
        );
        match launched {
            Ok((pid, outputs)) => {
                tracing::info!(event = "worker_spawned", app = %name, slot = index, pid = pid.as_raw(), generation);
                app.slots[s].successor =
                    Some(Worker::new(pid, generation, now, timeout, metrics_id));
                self.pids.insert(pid, Role::Successor(a, s));
                self.keep_outputs(&name, index, pid, outputs);
            }
            Err(e) => {
                tracing::error!(event = "spawn_failed", app = %name, slot = index, error = %e)
            }
        }
    }

    /// The earliest instant at which [`Fleet::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        // No memory check runs during a stop: its deadline, left in the
        // past, would wake the loop at once, again and again.
        let stopping = self.mode == Mode::Stopping;
        let current = self.apps.iter().flat_map(|a| {
            let monitored = a.monitored() && !stopping;
            a.slots.iter().flat_map(move |s| {
                let w = s.worker.as_ref();
                let ready = w
                    .filter(|w| s.state == SlotState::Starting && !w.failed_start)
                    .map(|w| w.ready_deadline);
                let kill = w.filter(|w| !w.killed).and_then(|w| w.kill_at);
                let watchdog = w
                    .filter(|w| s.state == SlotState::Online && !w.hung)
                    .and_then(|w| crate::watchdog::deadline(w.last_ping, a.config.watchdog));
                let succ = s
                    .successor
                    .as_ref()
                    .filter(|w| w.ready_at.is_none() && !w.failed_start)
                    .map(|w| w.ready_deadline);
                let mem = s.next_memory_check.filter(|_| monitored);
                [ready, kill, succ, s.restart_at, mem, watchdog]
            })
        });
        let next = self.rollout.iter().flat_map(|r| {
            r.apps.iter().flat_map(|a| &a.slots).filter_map(|s| {
                s.worker
                    .as_ref()
                    .filter(|w| w.ready_at.is_none())
                    .map(|w| Some(w.ready_deadline))
            })
        });
        let draining = self
            .draining
            .iter()
            .filter(|d| !d.killed)
            .map(|d| Some(d.kill_at));
        current.chain(next).chain(draining).flatten().min()
    }

    /// Begins a graceful stop (SIGTERM, SIGKILL after `kill_timeout`) or a
    /// fast one (SIGKILL now). Closing our copies of the listening sockets
    /// first makes the port refuse new connections once the workers close
    /// theirs, so a load balancer fails over at once.
    pub fn stop(&mut self, fast: bool, now: Instant) {
        let first = self.mode == Mode::Running;
        self.mode = Mode::Stopping;
        tracing::info!(
            event = if fast { "fast_stop" } else { "stop" },
            workers = self.pids.len()
        );
        if let Some(r) = self.rollout.take() {
            for app in &r.apps {
                for slot in &app.slots {
                    if let Some(w) = &slot.worker {
                        self.discard(
                            w.pid,
                            w.generation,
                            app.config.name.clone(),
                            slot.index,
                            "stopped",
                            now,
                        );
                    }
                }
            }
        }
        for d in &mut self.draining {
            d._socket = None;
            if fast && !d.killed {
                d.killed = true;
                self.host.signal_group(d.pid, Signal::SIGKILL);
            }
        }
        let successors: Vec<(Worker, String, usize)> = self
            .apps
            .iter_mut()
            .flat_map(|a| {
                let name = a.config.name.clone();
                a.slots
                    .iter_mut()
                    .filter_map(move |s| s.successor.take().map(|w| (w, name.clone(), s.index)))
            })
            .collect();
        for (succ, app, slot) in successors {
            self.discard(succ.pid, succ.generation, app, slot, "stopped", now);
        }
        for app in &mut self.apps {
            for slot in &mut app.slots {
                slot.socket = None;
                slot.restart_at = None;
                match slot.worker.as_mut() {
                    None => {
                        if slot.state != SlotState::Errored {
                            slot.state = SlotState::Stopped;
                        }
                    }
                    Some(w) if fast => {
                        slot.state = SlotState::Stopping;
                        w.killed = true;
                        w.kill_at.get_or_insert(now);
                        self.host.signal_group(w.pid, Signal::SIGKILL);
                    }
                    Some(w) if first || w.kill_at.is_none() => {
                        slot.state = SlotState::Stopping;
                        // A hung worker keeps its (earlier) SIGKILL deadline.
                        let deadline = now + app.config.kill_timeout;
                        w.kill_at = Some(w.kill_at.map_or(deadline, |k| k.min(deadline)));
                        self.host.signal(w.pid, Signal::SIGTERM);
                    }
                    Some(_) => {}
                }
            }
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.mode == Mode::Stopping
    }

    /// Stopping and every worker has been reaped.
    pub fn is_stopped(&self) -> bool {
        self.mode == Mode::Stopping && self.pids.is_empty()
    }

    /// Whether a worker had to be SIGKILLed during the stop.
    pub fn was_forced(&self) -> bool {
        self.forced
    }

    /// Every slot of every app has given up.
    pub fn all_errored(&self) -> bool {
        self.apps
            .iter()
            .flat_map(|a| &a.slots)
            .all(|s| s.state == SlotState::Errored)
    }

    /// Live worker pids (for logs and tests).
    pub fn worker_pids(&self) -> Vec<Pid> {
        self.pids.keys().copied().collect()
    }
}

/// The read ends of a new worker's stdout and stderr pipes.
pub struct Outputs {
    pub stdout: std::os::fd::OwnedFd,
    pub stderr: std::os::fd::OwnedFd,
}

/// A new worker's output, for the event loop to read.
pub struct WorkerOutputs {
    pub app: String,
    pub slot: usize,
    pub pid: Pid,
    pub outputs: Outputs,
}

/// The restart reason a worker's end counts under in
/// `heartalk_worker_restarts_total`.
pub fn restart_reason(exit_reason: &str) -> &'static str {
    match exit_reason {
        "memory" => "memory",
        "reload" => "reload",
        "hung" => "hung",
        _ => "crash",
    }
}

/// Every reason `heartalk_worker_restarts_total` counts under.
const RESTART_REASONS: [&str; 4] = ["crash", "memory", "reload", "hung"];

/// Every reason `heartalk_worker_hung_total` counts under: no ping in time,
/// or the worker's own `WATCHDOG=trigger`.
const HANG_REASONS: [&str; 2] = ["silent", "trigger"];

/// Time a hung worker gets between SIGABRT and SIGKILL: long enough to
/// write a backtrace or a core dump, short enough that the connections it
/// had accepted are reset soon rather than left hanging.
const ABORT_GRACE: Duration = Duration::from_secs(2);

/// The event for a replacement of `slot`'s worker that failed to start, and
/// what happens next: a hung worker is killed anyway (the slot restarts), a
/// worker over its memory keeps serving.
fn replace_failed(slot: &Slot) -> (&'static str, &'static str) {
    if slot.worker.as_ref().is_some_and(|w| w.hung) {
        (
            "hung_replace_failed",
            "the hung worker is killed and the slot restarts",
        )
    } else {
        ("memory_replace_failed", "the old worker keeps serving")
    }
}

/// Records a ping or a degraded/recovered report on `w`.
fn note_liveness(w: &mut Worker, msg: &Message, now: Instant) {
    if msg.watchdog {
        w.last_ping = Some(now);
    }
    if let Some(d) = msg.degraded {
        w.degraded = d;
    }
}

/// What `status` and /metrics show for a slot: a serving slot whose worker
/// is hung or degraded shows that instead of `online`.
fn shown_state(s: &Slot) -> SlotState {
    match (s.state, s.worker.as_ref()) {
        (SlotState::Online, Some(w)) if w.hung => SlotState::Hung,
        (SlotState::Online, Some(w)) if w.degraded => SlotState::Degraded,
        (state, _) => state,
    }
}

fn log_ready(app: &str, slot: usize, w: &Worker, now: Instant) {
    tracing::info!(
        event = "worker_ready",
        app = %app,
        slot,
        pid = w.pid.as_raw(),
        generation = w.generation,
        startup_ms = now.saturating_duration_since(w.spawned_at).as_millis() as u64,
    );
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "fleet_props.rs"]
mod props;
