//! The fleet: every app's slots, the worker in each, and the rules that move
//! them between states. All decisions happen here, driven by four inputs
//! from the event loop (`run.rs`): a child exited, a worker notified, a
//! deadline passed, an operator asked to stop. Nothing here blocks.
//!
//! Slot states: `starting` (spawned, waiting for `READY=1` until
//! `listen_timeout`) → `online` → (exit) → `waiting` (restart backoff) →
//! `starting` ...; or `errored` once the restart policy gives up; or
//! `stopping` → `stopped` during shutdown.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use shared::config::{App, Config, Instances};

use crate::notify::Message;
use crate::restart::{Decision, Policy};
use crate::sockets::{SlotSocket, bind_slots};
use crate::spawn::{Launch, resolve_program, spawn};
use crate::sys;

/// Why the fleet could not be set up.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    Starting,
    Online,
    Waiting,
    Stopping,
    Stopped,
    Errored,
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SlotState::Starting => "starting",
            SlotState::Online => "online",
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
    /// stop), `listen_timeout`, `spawn_failed` or `stopped`.
    pub reason: &'static str,
    pub code: Option<i32>,
    pub signal: Option<String>,
}

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
    killed: bool,
}

struct Slot {
    index: usize,
    socket: Option<SlotSocket>,
    state: SlotState,
    worker: Option<Worker>,
    restarts: u32,
    unstable: u32,
    restart_at: Option<Instant>,
    last_exit: Option<ExitInfo>,
}

struct AppRun {
    config: App,
    program: PathBuf,
    policy: Policy,
    slots: Vec<Slot>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Running,
    Stopping,
}

pub struct Fleet {
    apps: Vec<AppRun>,
    /// pid → (app index, slot index), for every live worker.
    pids: HashMap<Pid, (usize, usize)>,
    mode: Mode,
    notify_socket: String,
    generation: u64,
    /// A worker had to be SIGKILLed during the stop (exit code 1).
    forced: bool,
    announced_ready: bool,
}

impl Fleet {
    /// Resolves programs and binds every slot socket; starts nothing yet.
    pub fn new(config: &Config, notify_socket: String, cpus: u32) -> Result<Fleet, SetupError> {
        let mut apps = Vec::new();
        for app in &config.apps {
            let program = resolve_program(app).map_err(SetupError::Program)?;
            let count = match app.instances {
                Instances::Count(n) => n.get() as usize,
                Instances::Max => cpus as usize,
            };
            let sockets = bind_slots(app.listen, count).map_err(|source| SetupError::Bind {
                app: app.name.clone(),
                addr: app.listen,
                source,
            })?;
            tracing::info!(
                event = "listening",
                app = %app.name,
                addr = %sockets[0].addr,
                slots = count,
                "bound {count} SO_REUSEPORT socket(s)"
            );
            let slots = sockets
                .into_iter()
                .enumerate()
                .map(|(index, s)| Slot {
                    index,
                    socket: Some(s),
                    state: SlotState::Waiting,
                    worker: None,
                    restarts: 0,
                    unstable: 0,
                    restart_at: None,
                    last_exit: None,
                })
                .collect();
            apps.push(AppRun {
                policy: Policy {
                    base: app.restart_delay,
                    cap: app.restart_delay_max,
                    min_uptime: app.min_uptime,
                    max_restarts: app.max_restarts,
                },
                config: app.clone(),
                program,
                slots,
            });
        }
        Ok(Fleet {
            apps,
            pids: HashMap::new(),
            mode: Mode::Running,
            notify_socket,
            generation: 1,
            forced: false,
            announced_ready: false,
        })
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
        let app = &mut self.apps[a];
        let slot = &mut app.slots[s];
        slot.restart_at = None;
        let launch = Launch {
            app: &app.config,
            program: &app.program,
            slot: slot.index,
            generation,
            socket: slot.socket.as_ref().map(SlotSocket::raw_fd),
            notify_socket: &self.notify_socket,
        };
        match spawn(&launch) {
            Ok(pid) => {
                tracing::info!(event = "worker_spawned", app = %app.config.name, slot = slot.index, pid = pid.as_raw(), generation);
                slot.state = SlotState::Starting;
                slot.worker = Some(Worker {
                    pid,
                    generation,
                    spawned_at: now,
                    ready_at: None,
                    ready_deadline: now + app.config.listen_timeout,
                    kill_at: None,
                    failed_start: false,
                    killed: false,
                });
                self.pids.insert(pid, (a, s));
            }
            Err(e) => {
                tracing::error!(event = "spawn_failed", app = %app.config.name, slot = slot.index, program = %app.program.display(), error = %e);
                let exit = ExitInfo {
                    reason: "spawn_failed",
                    code: None,
                    signal: None,
                };
                Self::after_exit(app, s, exit, Duration::ZERO, now);
            }
        }
    }

    /// A child was reaped. Orphans (not workers) are only logged.
    pub fn on_exit(&mut self, pid: Pid, status: WaitStatus, now: Instant) {
        let Some((a, s)) = self.pids.remove(&pid) else {
            tracing::debug!(event = "orphan_reaped", pid = pid.as_raw(), status = ?status);
            return;
        };
        let stopping = self.mode == Mode::Stopping;
        let app = &mut self.apps[a];
        let slot = &mut app.slots[s];
        let Some(worker) = slot.worker.take() else {
            return;
        };
        let (code, signal) = match status {
            WaitStatus::Exited(_, code) => (Some(code), None),
            WaitStatus::Signaled(_, sig, _) => (None, Some(sig.as_str().to_string())),
            _ => (None, None),
        };
        let reason = if worker.failed_start {
            "listen_timeout"
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
            pid = pid.as_raw(),
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
        Self::after_exit(app, s, exit, uptime, now);
    }

    fn after_exit(app: &mut AppRun, s: usize, exit: ExitInfo, uptime: Duration, now: Instant) {
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
            }
        }
    }

    /// A datagram arrived on the notify socket.
    pub fn on_notify(&mut self, msg: &Message, now: Instant) {
        let Some(&(a, s)) = self.pids.get(&msg.pid) else {
            tracing::debug!(
                event = "notify_ignored",
                pid = msg.pid.as_raw(),
                "not a worker's main process"
            );
            return;
        };
        let app = &mut self.apps[a];
        let slot = &mut app.slots[s];
        let Some(worker) = slot.worker.as_mut() else {
            return;
        };
        if let Some(status) = &msg.status {
            tracing::debug!(event = "worker_status", app = %app.config.name, slot = slot.index, status = %status);
        }
        if msg.ready && worker.ready_at.is_none() && slot.state == SlotState::Starting {
            worker.ready_at = Some(now);
            slot.state = SlotState::Online;
            tracing::info!(
                event = "worker_ready",
                app = %app.config.name,
                slot = slot.index,
                pid = worker.pid.as_raw(),
                generation = worker.generation,
                startup_ms = now.saturating_duration_since(worker.spawned_at).as_millis() as u64,
            );
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

    /// Acts on every deadline that has passed.
    pub fn tick(&mut self, now: Instant) {
        for a in 0..self.apps.len() {
            for s in 0..self.apps[a].slots.len() {
                let app = &mut self.apps[a];
                let name = &app.config.name;
                let slot = &mut app.slots[s];
                if let Some(w) = slot.worker.as_mut() {
                    if slot.state == SlotState::Starting
                        && !w.failed_start
                        && now >= w.ready_deadline
                    {
                        tracing::warn!(
                            event = "listen_timeout",
                            app = %name,
                            slot = slot.index,
                            pid = w.pid.as_raw(),
                            timeout_ms = app.config.listen_timeout.as_millis() as u64,
                            "worker did not send READY=1 in time; killing it"
                        );
                        w.failed_start = true;
                        sys::signal_group(w.pid, Signal::SIGKILL);
                    }
                    if let Some(at) = w.kill_at {
                        if !w.killed && now >= at {
                            tracing::warn!(
                                event = "kill_timeout",
                                app = %name,
                                slot = slot.index,
                                pid = w.pid.as_raw(),
                                "worker still running after kill_timeout; sending SIGKILL"
                            );
                            w.killed = true;
                            self.forced = true;
                            sys::signal_group(w.pid, Signal::SIGKILL);
                        }
                    }
                }
                let due = slot.restart_at.is_some_and(|at| now >= at);
                if due && slot.state == SlotState::Waiting && self.mode == Mode::Running {
                    self.start_slot(a, s, now);
                }
            }
        }
    }

    /// The earliest instant at which [`Fleet::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.apps
            .iter()
            .flat_map(|a| &a.slots)
            .flat_map(|s| {
                let w = s.worker.as_ref();
                let ready = w
                    .filter(|w| s.state == SlotState::Starting && !w.failed_start)
                    .map(|w| w.ready_deadline);
                let kill = w.filter(|w| !w.killed).and_then(|w| w.kill_at);
                [ready, kill, s.restart_at]
            })
            .flatten()
            .min()
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
                        sys::signal_group(w.pid, Signal::SIGKILL);
                    }
                    Some(w) if first || w.kill_at.is_none() => {
                        slot.state = SlotState::Stopping;
                        w.kill_at = Some(now + app.config.kill_timeout);
                        sys::signal(w.pid, Signal::SIGTERM);
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
