//! A slot's worker from start to end: ordering a spawn and adopting its
//! answer, READY, exit and the restart policy, the watchdog's verdict, the
//! memory guard, a replacement (*successor*) taking the slot over, draining
//! a worker that left its slot, and the stop. Every rule only changes the
//! fleet's state and records actions (see [`Action`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::{
    ABORT_GRACE, Action, Actions, AppRun, Draining, ExitInfo, Fleet, Mode, Pending, Replace, Role,
    Slot, SlotState, SpawnOrder, Worker, log_ready, replace_failed, restart_reason,
};
use crate::memory::{self, Verdict};
use crate::restart::Decision;
use crate::sockets::SlotSocket;

/// The order to start a worker for `slot` of `app`.
pub(super) fn order(
    app: &AppRun,
    slot: &Slot,
    generation: u64,
    id: u64,
    metrics_id: &str,
) -> SpawnOrder {
    SpawnOrder {
        id,
        app: app.config.clone(),
        program: app.program.clone(),
        slot: slot.index,
        generation,
        socket: slot.socket.clone(),
        metrics_id: metrics_id.to_string(),
        word: app.word,
    }
}

impl Fleet {
    /// Orders a worker for `role`'s slot (the slot already marked as
    /// waiting for it) and remembers what the answer is for.
    pub(super) fn order_spawn(&mut self, role: Role, generation: u64) -> u64 {
        let (id, metrics_id) = self.next_metrics_id();
        let (app, slot) = match role {
            Role::Current(a, s) | Role::Successor(a, s) => (&self.apps[a], &self.apps[a].slots[s]),
            Role::Next(a, s) => {
                let r = self
                    .rollout
                    .as_ref()
                    .expect("a new worker belongs to a rollout");
                (&r.apps[a], &r.apps[a].slots[s])
            }
            Role::Draining => unreachable!("nothing is spawned to drain"),
        };
        let spawn = order(app, slot, generation, id, &metrics_id);
        self.spawning.insert(
            id,
            Pending {
                role,
                app: app.config.name.clone(),
                slot: slot.index,
                generation,
                metrics_id,
            },
        );
        self.act(Action::Spawn(spawn));
        id
    }

    pub(super) fn start_slot(&mut self, a: usize, s: usize) {
        let slot = &mut self.apps[a].slots[s];
        slot.restart_at = None;
        slot.state = SlotState::Starting;
        let id = self.order_spawn(Role::Current(a, s), self.generation);
        self.apps[a].slots[s].spawning = Some(id);
    }

    /// The answer to [`Action::Spawn`] number `id`: the new worker's pid,
    /// or why it could not be started. A worker nobody waits for any more
    /// (its rollout rolled back, its slot stopped) is killed and tracked.
    pub fn spawned(&mut self, id: u64, result: Result<Pid, String>, now: Instant) -> Actions {
        if let Some(p) = self.spawning.remove(&id) {
            match result {
                Ok(pid) => self.adopt(id, p, pid, now),
                Err(error) => self.spawn_failed(id, p, error, now),
            }
        }
        self.done()
    }

    /// Whether spawn order `id` is no longer wanted — its rollout rolled
    /// back or a stop began since it was ordered (by an earlier action of
    /// the same batch). It is then forgotten, and the driver skips it
    /// rather than start a worker only to kill it.
    pub fn withdrawn(&mut self, id: u64) -> bool {
        let Some(p) = self.spawning.get(&id) else {
            return true;
        };
        if self.awaited(id, p.role, p.generation) {
            return false;
        }
        self.spawning.remove(&id);
        true
    }

    /// Whether spawn `id` is still what `role`'s slot waits for.
    fn awaited(&self, id: u64, role: Role, generation: u64) -> bool {
        let running = self.mode == Mode::Running;
        // The slot may be gone (scaled down) since the order.
        fn slot(apps: &[AppRun], a: usize, s: usize) -> Option<&Slot> {
            apps.get(a).and_then(|x| x.slots.get(s))
        }
        match role {
            Role::Current(a, s) => {
                running && slot(&self.apps, a, s).is_some_and(|x| x.spawning == Some(id))
            }
            Role::Successor(a, s) => {
                running && slot(&self.apps, a, s).is_some_and(|x| x.successor_spawning == Some(id))
            }
            Role::Next(a, s) => self.rollout.as_ref().is_some_and(|r| {
                r.generation == generation
                    && slot(&r.apps, a, s).is_some_and(|x| x.spawning == Some(id))
            }),
            Role::Draining => false,
        }
    }

    fn adopt(&mut self, id: u64, p: Pending, pid: Pid, now: Instant) {
        tracing::info!(event = "worker_spawned", app = %p.app, slot = p.slot, pid = pid.as_raw(), generation = p.generation);
        if !self.awaited(id, p.role, p.generation) {
            self.discard(pid, p.generation, p.app, p.slot, "superseded", now);
            return;
        }
        let (a, s) = match p.role {
            Role::Current(a, s) | Role::Successor(a, s) | Role::Next(a, s) => (a, s),
            Role::Draining => return,
        };
        let app = match p.role {
            Role::Next(..) => &mut self.rollout.as_mut().expect("awaited").apps[a],
            _ => &mut self.apps[a],
        };
        let worker = Worker::new(
            pid,
            p.generation,
            now,
            app.config.listen_timeout,
            p.metrics_id,
        );
        let slot = &mut app.slots[s];
        if let Role::Successor(..) = p.role {
            slot.successor_spawning = None;
            slot.successor = Some(worker);
        } else {
            slot.spawning = None;
            slot.strikes = 0;
            slot.worker = Some(worker);
        }
        self.pids.insert(pid, p.role);
    }

    fn spawn_failed(&mut self, id: u64, p: Pending, error: String, now: Instant) {
        let awaited = self.awaited(id, p.role, p.generation);
        tracing::error!(event = "spawn_failed", app = %p.app, slot = p.slot, error = %error);
        if !awaited {
            return;
        }
        match p.role {
            Role::Current(a, s) => {
                self.apps[a].slots[s].spawning = None;
                let exit = ExitInfo {
                    reason: "spawn_failed",
                    code: None,
                    signal: None,
                };
                if self.after_exit(a, s, exit, Duration::ZERO, now) {
                    self.count_restart(&p.app, "crash");
                }
            }
            Role::Successor(a, s) => {
                let slot = &mut self.apps[a].slots[s];
                slot.successor_spawning = None;
                if slot.replacing == Replace::Restart {
                    self.restart_settled(Err(format!("slot {s}: cannot start a worker: {error}")));
                }
            }
            Role::Next(a, s) => {
                if let Some(r) = self.rollout.as_mut() {
                    r.apps[a].slots[s].spawning = None;
                }
                self.rollback(
                    format!("cannot start a worker of app `{}`: {error}", p.app),
                    now,
                );
            }
            Role::Draining => {}
        }
    }

    pub(super) fn current_ready(&mut self, a: usize, s: usize, now: Instant) {
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
            if std::mem::take(&mut slot.restart_unready) {
                // A restart's new worker that took its slot over early.
                self.restart_settled(Ok(()));
            }
        }
    }

    /// A replacement is READY: it takes the slot over, and the worker it
    /// replaces drains (memory) or keeps its SIGKILL deadline (hung).
    pub(super) fn successor_ready(&mut self, a: usize, s: usize, now: Instant) {
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
        // A slot waiting out a crash's backoff when a restart's successor
        // became READY: the successor is its worker now, and the restart
        // it waited for is void (left set, its passed deadline would wake
        // the event loop at once, again and again).
        slot.restart_at = None;
        slot.next_memory_check = Some(now + app.config.memory_check_interval);
        slot.restarts += 1;
        let why = slot.replacing;
        if let Some(old) = slot.worker.replace(successor) {
            let kill_timeout = app.config.kill_timeout;
            let name = app.config.name.clone();
            let index = slot.index;
            // Replaced for its memory or by `heartalk restart` (it drains
            // on), or hung (its SIGKILL is already scheduled).
            let reason = if old.hung { "hung" } else { why.reason() };
            self.count_restart(&name, reason);
            // What `status` shows as the slot's last exit.
            self.apps[a].slots[s].last_exit = Some(ExitInfo {
                reason,
                code: None,
                signal: None,
            });
            let drain = if why == Replace::Restart {
                "restart"
            } else {
                "memory"
            };
            self.drain(old, &name, index, drain, kill_timeout, None, now);
        }
        if why == Replace::Restart {
            self.restart_settled(Ok(()));
        }
    }

    pub(super) fn current_exited(
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
        let reason = worker.end_reason(stopping, code);
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
        let name = app.config.name.clone();
        // A replacement (memory or hung) already under way takes the slot over.
        if let Some(successor) = slot.successor.take() {
            slot.last_exit = Some(exit);
            slot.restarts += 1;
            slot.state = if successor.ready_at.is_some() {
                SlotState::Online
            } else {
                SlotState::Starting
            };
            let ready = successor.ready_at.is_some();
            self.pids.insert(successor.pid, Role::Current(a, s));
            slot.worker = Some(successor);
            slot.restart_at = None;
            slot.strikes = 0;
            let why = slot.replacing;
            self.count_restart(&name, restart_reason(reason));
            if why == Replace::Restart {
                if ready {
                    self.restart_settled(Ok(()));
                } else {
                    // It counts once it is READY (or as failed if it is not).
                    self.apps[a].slots[s].restart_unready = true;
                }
            }
            return;
        }
        if std::mem::take(&mut slot.restart_unready) {
            self.restart_settled(Err(format!(
                "slot {s}: the new worker exited before it was ready (code {:?}, signal {:?})",
                exit.code, exit.signal
            )));
        }
        if self.after_exit(a, s, exit, uptime, now) {
            self.count_restart(&name, restart_reason(reason));
        }
    }

    /// Applies the restart policy; true when a restart was scheduled.
    fn after_exit(
        &mut self,
        a: usize,
        s: usize,
        exit: ExitInfo,
        uptime: Duration,
        now: Instant,
    ) -> bool {
        let app = &mut self.apps[a];
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
                tracing::error!(
                    event = "slot_errored",
                    app = %app.config.name,
                    slot = slot.index,
                    unstable_restarts = slot.unstable,
                    max_restarts = app.policy.max_restarts,
                    "worker keeps exiting before min_uptime; giving up on this slot"
                );
                // Nothing will accept on this socket again: close it so the
                // kernel stops routing new connections to a dead queue.
                if let Some(socket) = slot.socket.take() {
                    self.act(Action::CloseSocket(socket));
                }
                false
            }
        }
    }

    /// Slot `s`'s worker is hung (`reason`: `silent`, its watchdog expired;
    /// `trigger`, it said `WATCHDOG=trigger`). It gets SIGABRT (a core dump
    /// or backtrace shows where it was stuck) and SIGKILL [`ABORT_GRACE`]
    /// later; a replacement starts at once on the slot's socket, so the
    /// connections queued there are served by it instead of waiting for a
    /// process that will never accept them.
    pub(super) fn hang(&mut self, a: usize, s: usize, reason: &'static str, now: Instant) {
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
        let pid = w.pid;
        let name = app.config.name.clone();
        let replacing = slot.successor.is_some() || slot.successor_spawning.is_some();
        self.act(Action::Signal {
            pid,
            sig: Signal::SIGABRT,
        });
        *self.hangs_by.entry((name, reason)).or_default() += 1;
        if !replacing {
            self.start_successor(a, s, Replace::Hung);
        }
    }

    /// SIGKILLs a worker nobody needs any more (a failed new generation, a
    /// superseded replacement) and tracks it until it is reaped.
    pub(super) fn discard(
        &mut self,
        pid: Pid,
        generation: u64,
        app: String,
        slot: usize,
        reason: &'static str,
        now: Instant,
    ) {
        self.act(Action::SignalGroup {
            pid,
            sig: Signal::SIGKILL,
        });
        self.track(Draining {
            pid,
            app,
            slot,
            generation,
            reason,
            kill_at: now,
            killed: true,
            metrics_id: None,
            socket: None,
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
    pub(super) fn drain(
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
                socket,
            });
            return;
        }
        tracing::info!(event = "worker_draining", app = %app, slot, pid = worker.pid.as_raw(), generation = worker.generation, reason);
        self.drains_started += 1;
        self.act(Action::Signal {
            pid: worker.pid,
            sig: Signal::SIGTERM,
        });
        self.track(Draining {
            pid: worker.pid,
            app: app.to_string(),
            slot,
            generation: worker.generation,
            reason,
            kill_at: now + kill_timeout,
            killed: false,
            metrics_id: Some(worker.metrics_id.clone()),
            socket,
        });
    }

    pub(super) fn tick_slot(&mut self, a: usize, s: usize, now: Instant) {
        let stopping = self.mode == Mode::Stopping;
        let reloading = self.rollout.is_some();
        let app = &mut self.apps[a];
        let monitored = app.monitored();
        let name = &app.config.name;
        let slot = &mut app.slots[s];
        let mut kills = Vec::new();
        let mut hung = false;
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
                kills.push(w.pid);
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
                    kills.push(w.pid);
                }
            }
            hung = slot.state == SlotState::Online
                && !w.hung
                && !stopping
                && crate::watchdog::expired(w.last_ping, app.config.watchdog, now);
        }
        let late = !hung
            && slot.successor.as_ref().is_some_and(|w| {
                w.ready_at.is_none() && !w.failed_start && now >= w.ready_deadline
            });
        if late {
            let (event, then) = replace_failed(slot);
            if let Some(succ) = slot.successor.as_mut() {
                tracing::warn!(event, app = %name, slot = slot.index, pid = succ.pid.as_raw(), "the replacement was not ready within listen_timeout; {then}");
                // Killed once; its exit (Role::Successor) clears the slot's
                // successor, and its deadline no longer wakes the loop.
                succ.failed_start = true;
                kills.push(succ.pid);
            }
        }
        let due = !hung
            && slot.restart_at.is_some_and(|at| now >= at)
            && slot.state == SlotState::Waiting
            && !stopping;
        let check_due = !hung && !due && slot.next_memory_check.is_some_and(|at| now >= at);
        let mut sample = None;
        if check_due && !stopping && monitored {
            slot.next_memory_check = Some(now + app.config.memory_check_interval);
            if slot.state == SlotState::Online
                && slot.successor.is_none()
                && slot.successor_spawning.is_none()
                && !reloading
            {
                sample = slot.worker.as_ref().map(|w| Action::SampleMemory {
                    pid: w.pid,
                    pss_above: app.limits.soft,
                    max_age: app.config.memory_check_interval,
                });
            }
        }
        for pid in kills {
            self.act(Action::SignalGroup {
                pid,
                sig: Signal::SIGKILL,
            });
        }
        if hung {
            self.hang(a, s, "silent", now);
        } else if due {
            self.start_slot(a, s);
        } else if let Some(sample) = sample {
            self.act(sample);
        }
    }

    /// The answer to [`Action::SampleMemory`]: `pid`'s RSS, and its PSS
    /// when it was over the soft limit. Judged only if `pid` still serves
    /// its slot with nothing replacing it and no reload running.
    pub fn memory_sampled(&mut self, pid: Pid, rss: u64, pss: Option<u64>) -> Actions {
        if let Some(&Role::Current(a, s)) = self.pids.get(&pid) {
            if self.rollout.is_none() && self.mode == Mode::Running {
                self.judge_memory(a, s, rss, pss);
            }
        }
        self.done()
    }

    fn judge_memory(&mut self, a: usize, s: usize, rss: u64, pss: Option<u64>) {
        let app = &mut self.apps[a];
        let slot = &mut app.slots[s];
        if slot.state != SlotState::Online
            || slot.successor.is_some()
            || slot.successor_spawning.is_some()
        {
            return;
        }
        let Some(w) = slot.worker.as_mut() else {
            return;
        };
        match memory::judge(&app.limits, rss, pss, &mut slot.strikes) {
            Verdict::Fine => {}
            Verdict::Strike(n) => {
                tracing::info!(event = "memory_strike", app = %app.config.name, slot = slot.index, pid = w.pid.as_raw(), rss, pss, strike = n, limit = app.limits.soft);
            }
            Verdict::Kill => {
                tracing::warn!(event = "memory_kill", app = %app.config.name, slot = slot.index, pid = w.pid.as_raw(), rss, limit = app.limits.hard, "over max_memory_hard: SIGKILL");
                w.kill_reason = Some("memory");
                w.killed = true;
                let pid = w.pid;
                self.act(Action::SignalGroup {
                    pid,
                    sig: Signal::SIGKILL,
                });
            }
            Verdict::Replace => {
                tracing::warn!(event = "memory_replace", app = %app.config.name, slot = slot.index, pid = w.pid.as_raw(), rss, pss, limit = app.limits.soft, "over max_memory: starting a replacement");
                self.start_successor(a, s, Replace::Memory);
            }
        }
    }

    /// Starts a replacement (memory, hung or restart) for slot `s` of app
    /// `a`: it takes the slot over once READY (see [`Fleet::successor_ready`]).
    pub(super) fn start_successor(&mut self, a: usize, s: usize, why: Replace) {
        // The worker it replaces runs this generation's config (during a
        // reload `self.generation` already names the next one).
        let generation = self.apps[a].slots[s]
            .worker
            .as_ref()
            .map_or(self.generation, |w| w.generation);
        let id = self.order_spawn(Role::Successor(a, s), generation);
        let slot = &mut self.apps[a].slots[s];
        slot.successor_spawning = Some(id);
        slot.replacing = why;
    }

    /// Begins a graceful stop (SIGTERM, SIGKILL after `kill_timeout`) or a
    /// fast one (SIGKILL now). Closing our copies of the listening sockets
    /// first makes the port refuse new connections once the workers close
    /// theirs, so a load balancer fails over at once.
    pub fn stop(&mut self, fast: bool, now: Instant) -> Actions {
        let first = self.mode == Mode::Running;
        self.mode = Mode::Stopping;
        tracing::info!(
            event = if fast { "fast_stop" } else { "stop" },
            workers = self.pids.len()
        );
        if let Some(r) = self.rollout.take() {
            self.discard_generation(r, "stopped", now);
        }
        self.end_rolling("stopped");
        let mut kills = Vec::new();
        let mut closes = Vec::new();
        for d in &mut self.draining {
            closes.extend(d.socket.take());
            if fast && !d.killed {
                d.killed = true;
                kills.push(d.pid);
            }
        }
        let successors: Vec<(Worker, String, usize)> = self
            .apps
            .iter_mut()
            .flat_map(|a| {
                let name = a.config.name.clone();
                a.slots.iter_mut().filter_map(move |s| {
                    s.successor_spawning = None;
                    s.successor.take().map(|w| (w, name.clone(), s.index))
                })
            })
            .collect();
        let mut terms = Vec::new();
        for app in &mut self.apps {
            for slot in &mut app.slots {
                closes.extend(slot.socket.take());
                slot.restart_at = None;
                slot.spawning = None;
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
                        kills.push(w.pid);
                    }
                    Some(w) if first || w.kill_at.is_none() => {
                        slot.state = SlotState::Stopping;
                        // A hung worker keeps its (earlier) SIGKILL deadline.
                        let deadline = now + app.config.kill_timeout;
                        w.kill_at = Some(w.kill_at.map_or(deadline, |k| k.min(deadline)));
                        terms.push(w.pid);
                    }
                    Some(_) => {}
                }
            }
        }
        for (succ, app, slot) in successors {
            self.discard(succ.pid, succ.generation, app, slot, "stopped", now);
        }
        self.out.extend(closes.into_iter().map(Action::CloseSocket));
        self.out
            .extend(kills.into_iter().map(|pid| Action::SignalGroup {
                pid,
                sig: Signal::SIGKILL,
            }));
        self.out.extend(terms.into_iter().map(|pid| Action::Signal {
            pid,
            sig: Signal::SIGTERM,
        }));
        self.done()
    }
}
