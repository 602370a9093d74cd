//! Rolling restarts (`heartalk restart [APP]`): every worker of every app,
//! or of one, replaced by a fresh process running the same config — for a
//! leak, a rotated secret file, a wedged dependency — with no request
//! lost and nothing re-read. Each slot gets a successor on its own socket
//! (the mechanism of the memory guard), at most `max_surge` at a time per
//! app; once a successor is READY the old worker drains. A successor that
//! fails to start leaves the old worker serving and is reported; the others
//! go on. A slot that is not serving when its turn comes (waiting for a
//! restart, starting) is skipped: it gets a fresh process anyway.
//!
//! One restart runs at a time, never beside a rollout; a reload asked for
//! meanwhile waits for it (see [`Fleet::reload_due`]).

use std::collections::VecDeque;

use super::{Fleet, Mode, Replace, SlotState};

/// A restart in progress.
pub(super) struct Rolling {
    seq: u64,
    apps: Vec<String>,
    /// Slots whose turn has not come, in order.
    queue: VecDeque<(usize, usize)>,
    replaced: u32,
    skipped: u32,
    failed: Vec<String>,
}

/// How a restart ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartOutcome {
    /// Its number, as [`Fleet::restart`] returned it.
    pub seq: u64,
    pub apps: Vec<String>,
    /// Workers replaced by a fresh, READY one.
    pub replaced: u32,
    /// Slots that were not serving when their turn came.
    pub skipped: u32,
    /// Replacements that failed (the old worker kept serving), why.
    pub failed: Vec<String>,
    /// `done`, or `stopped` when a stop cut it short.
    pub outcome: &'static str,
}

/// Why a restart was not started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestartRefused {
    #[error("no app named `{0}`")]
    UnknownApp(String),
    #[error("a reload is in progress; restart after it")]
    Reloading,
    #[error("a restart is already in progress")]
    Restarting,
    #[error("the supervisor is stopping")]
    Stopping,
    /// The successors would refuse their secrets (checked before the
    /// restart by the event loop, see [`crate::secrets`]).
    #[error("{0}")]
    Secrets(String),
}

impl Fleet {
    /// Starts a rolling restart of `app` (every app when `None`); returns
    /// its number, which [`Fleet::take_finished_restarts`] reports.
    pub fn restart(&mut self, app: Option<&str>) -> Result<(u64, super::Actions), RestartRefused> {
        if self.mode == Mode::Stopping {
            return Err(RestartRefused::Stopping);
        }
        if self.rollout.is_some() {
            return Err(RestartRefused::Reloading);
        }
        if self.rolling.is_some() {
            return Err(RestartRefused::Restarting);
        }
        let chosen: Vec<usize> = (0..self.apps.len())
            .filter(|&a| app.is_none_or(|name| self.apps[a].config.name == name))
            .collect();
        if let (Some(name), true) = (app, chosen.is_empty()) {
            return Err(RestartRefused::UnknownApp(name.to_string()));
        }
        self.restart_seq += 1;
        let seq = self.restart_seq;
        let apps: Vec<String> = chosen
            .iter()
            .map(|&a| self.apps[a].config.name.clone())
            .collect();
        tracing::info!(event = "restart_started", seq, apps = ?apps);
        self.rolling = Some(Rolling {
            seq,
            apps,
            queue: chosen
                .iter()
                .flat_map(|&a| (0..self.apps[a].slots.len()).map(move |s| (a, s)))
                .collect(),
            replaced: 0,
            skipped: 0,
            failed: Vec::new(),
        });
        self.roll_on();
        Ok((seq, self.done()))
    }

    /// Restarts finished since the last call.
    pub fn take_finished_restarts(&mut self) -> Vec<RestartOutcome> {
        std::mem::take(&mut self.rolled)
    }

    /// Whether a rolling restart runs.
    pub fn is_restarting(&self) -> bool {
        self.rolling.is_some()
    }

    /// Restart successors of app `a` started and not yet settled.
    pub(super) fn restarting_in(&self, a: usize) -> usize {
        self.apps[a]
            .slots
            .iter()
            .filter(|s| {
                s.restart_unready
                    || s.replacing == Replace::Restart
                        && (s.successor.is_some() || s.successor_spawning.is_some())
            })
            .count()
    }

    /// Gives the next slots their successor (up to `max_surge` in flight
    /// per app), and ends the restart when every slot has had its turn.
    pub(super) fn roll_on(&mut self) {
        let Some(mut r) = self.rolling.take() else {
            return;
        };
        let mut start = Vec::new();
        let mut i = 0;
        while i < r.queue.len() {
            let (a, s) = r.queue[i];
            let app = &self.apps[a];
            let busy = self.restarting_in(a) + start.iter().filter(|(x, _)| *x == a).count();
            if busy >= app.config.max_surge as usize {
                i += 1;
                continue;
            }
            r.queue.remove(i);
            let slot = &app.slots[s];
            let serving = slot.state == SlotState::Online
                && slot.successor.is_none()
                && slot.successor_spawning.is_none()
                && slot.worker.as_ref().is_some_and(|w| !w.hung);
            if serving {
                start.push((a, s));
            } else {
                r.skipped += 1;
            }
        }
        self.rolling = Some(r);
        for (a, s) in start {
            tracing::info!(event = "restart_replacing", app = %self.apps[a].config.name, slot = s);
            self.start_successor(a, s, Replace::Restart);
        }
        let settled = self.rolling.as_ref().is_some_and(|r| r.queue.is_empty())
            && (0..self.apps.len()).all(|a| self.restarting_in(a) == 0);
        if settled {
            self.end_rolling("done");
        }
    }

    /// A restart successor settled: it took its slot over, or failed.
    pub(super) fn restart_settled(&mut self, result: Result<(), String>) {
        let Some(r) = self.rolling.as_mut() else {
            return;
        };
        match result {
            Ok(()) => r.replaced += 1,
            Err(why) => {
                tracing::warn!(event = "restart_replace_failed", reason = %why, "the old worker keeps serving");
                r.failed.push(why);
            }
        }
        self.roll_on();
    }

    /// Ends the restart in progress, if any, with `outcome`.
    pub(super) fn end_rolling(&mut self, outcome: &'static str) {
        let Some(r) = self.rolling.take() else {
            return;
        };
        tracing::info!(
            event = "restart_finished",
            seq = r.seq,
            outcome,
            replaced = r.replaced,
            skipped = r.skipped,
            failed = r.failed.len()
        );
        self.rolled.push(RestartOutcome {
            seq: r.seq,
            apps: r.apps,
            replaced: r.replaced,
            skipped: r.skipped,
            failed: r.failed,
            outcome,
        });
    }
}
