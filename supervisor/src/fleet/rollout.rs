//! Reloads. A request is numbered and queued ([`Fleet::request_reload`]);
//! when none runs, the event loop prepares the next generation from the
//! config as it is then and hands it to [`Fleet::reload`], which starts it
//! beside the current one, `max_surge` new workers at a time per app. Once
//! every new worker is READY the rollout commits (the new generation
//! becomes current and every old worker drains); if one fails to start,
//! exits or misses `listen_timeout`, it rolls back (the new workers are
//! killed; the old generation carries on untouched). One outcome answers
//! every request accepted before the attempt began.

use std::sync::Arc;
use std::time::Instant;

use super::{Action, Actions, Fleet, Generation, Mode, Role, Rollout, SlotState, log_ready};
use crate::reloads::{Finished, ReloadOutcome};
use crate::sockets::SlotSocket;

impl Fleet {
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

    /// Whether a rollout runs.
    pub fn is_reloading(&self) -> bool {
        self.rollout.is_some()
    }

    /// Whether a requested reload should start now: some request is not
    /// yet answered and no rollout runs. The caller prepares the next
    /// generation and calls [`Fleet::reload`] or, for a bad file or a
    /// failed setup, [`Fleet::record_refused`] (either answers every
    /// request so far).
    /// A reload waits for a rolling restart to finish.
    pub fn reload_due(&self) -> bool {
        self.rollout.is_none()
            && self.rolling.is_none()
            && self.mode == Mode::Running
            && self.reloads.outstanding()
    }

    /// Begins a reload to `next`, answering every request accepted so far:
    /// the next generation starts beside the current one. Called when
    /// [`Fleet::reload_due`]; called while a rollout runs, it only records
    /// a request, which the reload after that rollout answers.
    pub fn reload(&mut self, next: Generation, now: Instant) -> Actions {
        if self.mode == Mode::Stopping {
            tracing::warn!(event = "reload_ignored", "reload asked for during a stop");
        } else if self.rollout.is_some() {
            self.request_reload("reload");
        } else {
            let covers = self.reloads.begin();
            self.generation += 1;
            let generation = self.generation;
            let apps = next.apps;
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
        self.done()
    }

    /// Records a reload refused before it started (bad config, a program
    /// not found, a port that cannot be bound): it answers every request
    /// accepted so far. Called only when no rollout runs (after
    /// [`Fleet::reload_due`]); the running generation carries on.
    pub fn record_refused(&mut self, reason: String) {
        debug_assert!(self.rollout.is_none(), "a rollout answers its own requests");
        let covers = self.reloads.begin();
        self.finish_reload(covers, self.generation + 1, "refused", Some(reason));
    }

    /// Reload attempts finished since the last call, oldest first, each
    /// with the highest request number it answers.
    pub fn take_finished_reloads(&mut self) -> Vec<Finished> {
        self.reloads.take_finished()
    }

    /// A new worker is READY; the rollout may go on or commit.
    pub(super) fn next_ready(&mut self, a: usize, s: usize, now: Instant) {
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

    /// Orders more next-generation workers (up to each app's `max_surge`
    /// not yet ready), and commits once all of them are ready.
    fn advance(&mut self, now: Instant) {
        let Some(r) = self.rollout.as_mut() else {
            return;
        };
        let generation = r.generation;
        let mut start = Vec::new();
        let mut i = 0;
        while i < r.pending.len() {
            let (a, s) = r.pending[i];
            let app = &mut r.apps[a];
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
            app.slots[s].state = SlotState::Starting;
            start.push((a, s));
        }
        let done = r.pending.is_empty()
            && r.apps
                .iter()
                .flat_map(|a| &a.slots)
                .all(|s| s.state == SlotState::Online);
        for (a, s) in start {
            let id = self.order_spawn(Role::Next(a, s), generation);
            if let Some(r) = self.rollout.as_mut() {
                r.apps[a].slots[s].spawning = Some(id);
            }
        }
        if done {
            self.commit(now);
        }
    }

    /// New workers that miss their READY deadline fail the rollout.
    pub(super) fn tick_rollout(&mut self, now: Instant) {
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
                match slot.worker.take() {
                    Some(w) => self.drain(
                        w,
                        &app.config.name,
                        slot.index,
                        "reload",
                        app.config.kill_timeout,
                        retired,
                        now,
                    ),
                    None => self.out.extend(retired.map(Action::CloseSocket)),
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
    pub(super) fn rollback(&mut self, reason: String, now: Instant) {
        let Some(r) = self.rollout.take() else { return };
        let (generation, covers) = (r.generation, r.covers);
        self.discard_generation(r, "rolled_back", now);
        tracing::error!(event = "reload_rolled_back", generation, reason = %reason, "the previous generation keeps serving");
        self.finish_reload(covers, generation, "rolled_back", Some(reason));
    }

    /// Kills every worker of an abandoned next generation and lets go of
    /// its sockets (those the current generation shares stay open).
    pub(super) fn discard_generation(&mut self, r: Rollout, reason: &'static str, now: Instant) {
        for app in r.apps {
            for slot in app.slots {
                if let Some(w) = &slot.worker {
                    // A worker already reaped (the one whose exit caused
                    // this rollback) is no longer tracked.
                    if self.pids.contains_key(&w.pid) {
                        self.discard(
                            w.pid,
                            w.generation,
                            app.config.name.clone(),
                            slot.index,
                            reason,
                            now,
                        );
                    }
                }
                self.out.extend(slot.socket.map(Action::CloseSocket));
            }
        }
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
}
