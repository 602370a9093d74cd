//! The fleet: every app's slots, the worker in each, and the rules that move
//! them between states — as a state machine without I/O. It takes events
//! (a child exited, a worker notified, time passed, a reload or stop was
//! asked for, a spawn or memory sample it ordered came back) and returns
//! the [`Actions`] to perform (start a worker, signal a pid, sample memory,
//! close a socket, publish the fleet-state page); the driver
//! ([`crate::host::Driver`]) performs them and feeds the answers back.
//! Timers are [`Fleet::next_deadline`]: the event loop (`run.rs`) sleeps
//! until then and calls [`Fleet::tick`]. Because nothing here touches the
//! system, the rules run on generated sequences of events in `props.rs`.
//! Setting up a generation (finding programs, binding sockets) is the one
//! step with effects: [`setup::prepare`], before the event that takes it.
//!
//! The rules live by concern: `lifecycle.rs` (a slot's worker: start,
//! exit and restart, READY, watchdog, memory, replacement, drain, stop),
//! `rollout.rs` (reloads: the next generation, commit, rollback),
//! `view.rs` (what `status` and /metrics see).
//!
//! Slot states: `starting` (spawned, waiting for `READY=1` until
//! `listen_timeout`) → `online` → (exit) → `waiting` (restart backoff) →
//! `starting` ...; or `errored` once the restart policy gives up; or
//! `stopping` → `stopped` during shutdown. An `online` slot is *shown*
//! `degraded` while its worker reports it cannot accept, and `hung` once
//! its watchdog expired (see `view.rs`).
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

mod action;
mod lifecycle;
mod rolling;
mod rollout;
mod scale;
pub mod setup;
mod view;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use shared::config::{App, Instances};

pub use action::{Action, Actions, SpawnOrder};
pub use rolling::{RestartOutcome, RestartRefused};
pub use scale::{ScalePlan, ScaleRefused};
pub use setup::{Generation, prepare};
pub use view::{AppView, FleetView, SlotView, WorkerView};

use crate::memory;
use crate::notify::Message;
use crate::reloads::Ledger;
use crate::restart::Policy;
use crate::sockets::SlotSocket;

/// Why the fleet (or a new generation of it) could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Program(String),
    /// The apps' secrets would be refused by their workers, one line each
    /// (see [`crate::secrets`]).
    #[error("{}", .0.join("; "))]
    Secrets(Vec<String>),
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
    /// `crash` (non-zero exit or signal), `refused` (exit 64: the worker
    /// refused its configuration or secrets), `exit` (code 0 while not
    /// asked to stop), `listen_timeout`, `spawn_failed`, `memory` (killed over
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

    /// Why its process ended (see [`ExitInfo::reason`]), given its exit
    /// `code` and whether the fleet is stopping.
    fn end_reason(&self, stopping: bool, code: Option<i32>) -> &'static str {
        if self.failed_start {
            "listen_timeout"
        } else if let Some(r) = self.kill_reason {
            r
        } else if stopping || self.kill_at.is_some() {
            "stopped"
        } else if code == Some(0) {
            "exit"
        } else if code == Some(i32::from(shared::EXIT_REFUSED)) {
            // The worker refused its configuration or secrets (it logged
            // why): a crash to the restart policy and the restart counter
            // (and so to the crash-loop alert), but named apart in
            // `status`, `describe` and the event, where an operator looks.
            "refused"
        } else {
            "crash"
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
    /// The spawn ordered for this slot's worker and not yet answered
    /// (see [`Fleet::spawned`]); the slot is `starting` meanwhile.
    spawning: Option<u64>,
    /// The same for its successor.
    successor_spawning: Option<u64>,
    /// Why its latest successor was started.
    replacing: Replace,
    /// Its worker is a restart's replacement that took the slot over before
    /// it was READY (its old worker died first): the restart counts it
    /// once it is READY, or as failed if it exits first.
    restart_unready: bool,
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
            spawning: None,
            successor_spawning: None,
            replacing: Replace::Memory,
            restart_unready: false,
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
    config: Arc<App>,
    program: Arc<PathBuf>,
    policy: Policy,
    limits: memory::Limits,
    slots: Vec<Slot>,
    /// Its word of the fleet-state page (`HEARTALK_FLEET_WORD`; `None`
    /// past the page's 512): see `crate::fleet_state::assign_words`.
    word: Option<usize>,
    /// `heartalk scale`'s count, which overrides the file's `instances`
    /// until reset (kept across reloads; see `scale.rs`).
    scaled: Option<Instances>,
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
    socket: Option<Arc<SlotSocket>>,
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

/// Why a slot's worker is being replaced by a successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    /// Over `max_memory`: the old worker drains once the new one is READY.
    Memory,
    /// Its watchdog expired: the old one is SIGKILLed on its own deadline.
    Hung,
    /// `heartalk restart`: a fresh process, same config (see `rolling.rs`).
    Restart,
}

impl Replace {
    /// The restart reason it counts under (`heartalk_worker_restarts_total`).
    fn reason(self) -> &'static str {
        match self {
            Replace::Memory => "memory",
            Replace::Hung => "hung",
            Replace::Restart => "restart",
        }
    }
}

/// A spawn the fleet ordered and the driver has not answered yet.
struct Pending {
    role: Role,
    app: String,
    slot: usize,
    generation: u64,
    metrics_id: String,
}

/// The fleet's state machine (see the module doc). Every event method
/// returns the [`Actions`] it decided on; none touches the system.
pub struct Fleet {
    apps: Vec<AppRun>,
    rollout: Option<Rollout>,
    draining: Vec<Draining>,
    pids: HashMap<Pid, Role>,
    mode: Mode,
    /// The newest generation number handed out.
    generation: u64,
    /// A worker had to be SIGKILLed during the stop (exit code 1).
    forced: bool,
    announced_ready: bool,
    /// Reload requests, and the attempts that answered them.
    reloads: Ledger,
    /// Names workers' metrics sockets: `<prefix>/<spawn number>`.
    metrics_prefix: String,
    /// Spawns ordered so far (numbers orders and metrics sockets).
    spawn_seq: u64,
    /// Spawns ordered and not yet answered, by order number.
    spawning: HashMap<u64, Pending>,
    /// Drains started so far (the event loop scrapes a worker as it starts draining).
    drains_started: u64,
    /// Restarts by (app, reason: crash | memory | reload | hung).
    restarts_by: BTreeMap<(String, &'static str), u64>,
    /// Reloads by (app, outcome: committed | rolled_back | refused).
    reloads_by: BTreeMap<(String, &'static str), u64>,
    /// Hung workers by (app, reason: silent | trigger).
    hangs_by: BTreeMap<(String, &'static str), u64>,
    /// What the event being handled has decided so far.
    out: Vec<Action>,
    /// The not-serving counts last published (see [`Action::Publish`]).
    published: Vec<(usize, u64)>,
    /// The rolling restart in progress (`heartalk restart`), if any.
    rolling: Option<rolling::Rolling>,
    /// Restarts asked for so far (numbers them), and those finished since
    /// the event loop last looked.
    restart_seq: u64,
    rolled: Vec<RestartOutcome>,
    /// Each app's latest worker exits, newest last (for `describe`).
    history: BTreeMap<String, VecDeque<ExitRecord>>,
}

/// One worker's end, as `heartalk describe` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitRecord {
    pub at: Instant,
    pub slot: usize,
    pub pid: Pid,
    pub generation: u64,
    pub reason: &'static str,
    pub code: Option<i32>,
    pub signal: Option<String>,
}

/// How many exits per app `describe` keeps.
const HISTORY: usize = 20;

impl Fleet {
    /// A fleet of `first`'s apps, nothing started yet ([`Fleet::start_all`]).
    /// Workers' metrics sockets are named `<metrics_prefix>/<n>`.
    pub fn new(first: Generation, metrics_prefix: String) -> Fleet {
        let mut fleet = Fleet {
            apps: first.apps,
            rollout: None,
            draining: Vec::new(),
            pids: HashMap::new(),
            mode: Mode::Running,
            generation: 1,
            forced: false,
            announced_ready: false,
            reloads: Ledger::default(),
            metrics_prefix,
            spawn_seq: 0,
            spawning: HashMap::new(),
            drains_started: 0,
            restarts_by: BTreeMap::new(),
            reloads_by: BTreeMap::new(),
            hangs_by: BTreeMap::new(),
            out: Vec::new(),
            published: Vec::new(),
            rolling: None,
            restart_seq: 0,
            rolled: Vec::new(),
            history: BTreeMap::new(),
        };
        fleet.zero_counters();
        fleet
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

    /// Ends an event: what it decided, plus the fleet-state page when a
    /// count of slots not serving changed.
    fn done(&mut self) -> Actions {
        let counts: Vec<(usize, u64)> = self.not_serving_by_word().collect();
        if counts != self.published {
            self.published.clone_from(&counts);
            self.out.push(Action::Publish(counts));
        }
        Actions(std::mem::take(&mut self.out))
    }

    fn act(&mut self, action: Action) {
        self.out.push(action);
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

    fn next_metrics_id(&mut self) -> (u64, String) {
        self.spawn_seq += 1;
        (
            self.spawn_seq,
            format!("{}/{}", self.metrics_prefix, self.spawn_seq),
        )
    }

    /// Keeps a worker's end in its app's history.
    fn remember(&mut self, app: &str, record: ExitRecord) {
        let ring = self.history.entry(app.to_string()).or_default();
        if ring.len() == HISTORY {
            ring.pop_front();
        }
        ring.push_back(record);
    }

    fn count_restart(&mut self, app: &str, reason: &'static str) {
        *self
            .restarts_by
            .entry((app.to_string(), reason))
            .or_default() += 1;
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

    /// Starts a worker in every slot.
    pub fn start_all(&mut self) -> Actions {
        for a in 0..self.apps.len() {
            for s in 0..self.apps[a].slots.len() {
                self.start_slot(a, s);
            }
        }
        self.done()
    }

    /// A child was reaped. Orphans (not workers) are only logged.
    pub fn on_exit(&mut self, pid: Pid, status: WaitStatus, now: Instant) -> Actions {
        self.exited(pid, status, now);
        self.done()
    }

    fn exited(&mut self, pid: Pid, status: WaitStatus, now: Instant) {
        let Some(role) = self.pids.remove(&pid) else {
            tracing::debug!(event = "orphan_reaped", pid = pid.as_raw(), status = ?status);
            return;
        };
        let (code, signal) = exit_parts(status);
        if let Some((app, slot, generation, reason)) = self.whose(pid, role, code) {
            let record = ExitRecord {
                at: now,
                slot,
                pid,
                generation,
                reason,
                code,
                signal: signal.clone(),
            };
            self.remember(&app, record);
        }
        match role {
            Role::Current(a, s) => self.current_exited(a, s, code, signal, now),
            Role::Successor(a, s) => {
                let app = &mut self.apps[a];
                let slot = &mut app.slots[s];
                slot.successor = None;
                let why = slot.replacing;
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
                if why == Replace::Restart {
                    let failure = format!(
                        "slot {s}: the new worker exited before it was ready (code {code:?}, signal {signal:?})"
                    );
                    self.restart_settled(Err(failure));
                }
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
                    if let Some(socket) = d.socket {
                        self.act(Action::CloseSocket(socket));
                    }
                }
            }
        }
    }

    /// Whose exit `pid`'s is (app, slot, generation) and why it ended, for
    /// the history; called before the exit is handled.
    fn whose(
        &self,
        pid: Pid,
        role: Role,
        code: Option<i32>,
    ) -> Option<(String, usize, u64, &'static str)> {
        let stopping = self.mode == Mode::Stopping;
        match role {
            Role::Current(a, s) => {
                let app = &self.apps[a];
                let w = app.slots[s].worker.as_ref()?;
                let reason = w.end_reason(stopping, code);
                Some((app.config.name.clone(), s, w.generation, reason))
            }
            Role::Successor(a, s) => {
                let app = &self.apps[a];
                let w = app.slots[s].successor.as_ref()?;
                Some((app.config.name.clone(), s, w.generation, "replace_failed"))
            }
            Role::Next(a, s) => {
                let app = &self.rollout.as_ref()?.apps[a];
                let w = app.slots[s].worker.as_ref()?;
                Some((app.config.name.clone(), s, w.generation, "reload_failed"))
            }
            Role::Draining => {
                let d = self.draining.iter().find(|d| d.pid == pid)?;
                Some((d.app.clone(), d.slot, d.generation, d.reason))
            }
        }
    }

    /// A datagram arrived on the notify socket.
    pub fn on_notify(&mut self, msg: &Message, now: Instant) -> Actions {
        self.notified(msg, now);
        self.done()
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
            Role::Current(a, s) => self.current_ready(a, s, now),
            Role::Successor(a, s) => self.successor_ready(a, s, now),
            Role::Next(a, s) => self.next_ready(a, s, now),
            Role::Draining => {}
        }
    }

    /// The running apps' configs (what a restart or scale-up starts).
    pub fn configs(&self) -> impl Iterator<Item = &App> {
        self.apps.iter().map(|a| &*a.config)
    }

    /// Whether every slot has a ready worker.
    pub fn all_online(&self) -> bool {
        self.apps
            .iter()
            .flat_map(|a| &a.slots)
            .all(|s| s.state == SlotState::Online)
    }

    /// True exactly once: when every slot first has a ready worker.
    pub fn take_first_ready(&mut self) -> bool {
        if self.announced_ready || self.mode != Mode::Running {
            return false;
        }
        let all = self.all_online();
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

    /// How many drains have started (changes when a worker begins one).
    pub fn drains_started(&self) -> u64 {
        self.drains_started
    }

    /// Acts on every deadline that has passed.
    pub fn tick(&mut self, now: Instant) -> Actions {
        for a in 0..self.apps.len() {
            for s in 0..self.apps[a].slots.len() {
                self.tick_slot(a, s, now);
            }
        }
        self.tick_rollout(now);
        let stopping = self.mode == Mode::Stopping;
        let mut kills = Vec::new();
        for d in &mut self.draining {
            if !d.killed && now >= d.kill_at {
                tracing::warn!(event = "kill_timeout", app = %d.app, slot = d.slot, pid = d.pid.as_raw(), "draining worker still running after kill_timeout; sending SIGKILL");
                d.killed = true;
                kills.push(d.pid);
            }
        }
        if stopping && !kills.is_empty() {
            self.forced = true;
        }
        for pid in kills {
            self.act(Action::SignalGroup {
                pid,
                sig: Signal::SIGKILL,
            });
        }
        self.done()
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

    pub fn is_stopping(&self) -> bool {
        self.mode == Mode::Stopping
    }

    /// Stopping and every worker has been reaped.
    pub fn is_stopped(&self) -> bool {
        self.mode == Mode::Stopping && self.pids.is_empty() && self.spawning.is_empty()
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

    /// Whether `pid` is a process of the fleet's that has not been reaped.
    pub fn tracks(&self, pid: Pid) -> bool {
        self.pids.contains_key(&pid)
    }

    /// Live worker pids (for logs and tests).
    pub fn worker_pids(&self) -> Vec<Pid> {
        self.pids.keys().copied().collect()
    }
}

fn exit_parts(status: WaitStatus) -> (Option<i32>, Option<String>) {
    match status {
        WaitStatus::Exited(_, code) => (Some(code), None),
        WaitStatus::Signaled(_, sig, _) => (None, Some(sig.as_str().to_string())),
        _ => (None, None),
    }
}

/// The restart reason a worker's end counts under in
/// `heartalk_worker_restarts_total`.
pub fn restart_reason(exit_reason: &str) -> &'static str {
    match exit_reason {
        "memory" => "memory",
        "reload" => "reload",
        "hung" => "hung",
        "restart" => "restart",
        _ => "crash",
    }
}

/// Every reason `heartalk_worker_restarts_total` counts under.
const RESTART_REASONS: [&str; 5] = ["crash", "memory", "reload", "hung", "restart"];

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
mod tests;

#[cfg(test)]
mod props;
