//! `heartalk scale APP N|max|file`: an app's worker count changed live.
//! New slots get new sockets on the app's port (bound by the driver before
//! the event: [`Fleet::plan_scale`] says how many) and a worker each;
//! removed slots — the highest-numbered ones — have their worker drained,
//! their socket kept open until it exits, so connections queued there are
//! still served. The other slots and their workers are not touched.
//!
//! The count holds until reset: a reload keeps it (the config's
//! `instances` for that app is ignored while it does, and `status` shows
//! both numbers), `heartalk scale APP file` goes back to the file's value.
//! It is not written anywhere: a new supervisor starts with the file's
//! count, so the file stays the one source of truth across restarts —
//! unlike PM2, where `pm2 scale` is silently forgotten, `status` always
//! says when a count is not the file's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use shared::config::Instances;

use super::setup::{instances_text, slot_count};
use super::{Action, Actions, Fleet, Mode, Slot, SlotState};
use crate::sockets::SlotSocket;

/// What a scale needs before it can happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePlan {
    app: usize,
    /// The app's address: new sockets join its SO_REUSEPORT group.
    pub addr: SocketAddr,
    /// How many new sockets to bind there.
    pub bind: usize,
    /// The slot count to reach.
    pub target: usize,
    /// The override (`None`: back to the file's `instances`).
    want: Option<Instances>,
}

/// Why a scale was not done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScaleRefused {
    #[error("no app named `{0}`")]
    UnknownApp(String),
    #[error("a reload is in progress; scale after it")]
    Reloading,
    #[error("a restart is in progress; scale after it")]
    Restarting,
    #[error("the supervisor is stopping")]
    Stopping,
    #[error(
        "scaling `{0}` down to {1} would keep only errored slots and retire the serving ones; scale up or reload instead"
    )]
    OnlyErrored(String, usize),
}

impl Fleet {
    /// Plans scaling `app` to `want` (`None`: the file's `instances`) on
    /// `cpus` usable CPUs.
    pub fn plan_scale(
        &self,
        app: &str,
        want: Option<Instances>,
        cpus: u32,
    ) -> Result<ScalePlan, ScaleRefused> {
        if self.mode == Mode::Stopping {
            return Err(ScaleRefused::Stopping);
        }
        if self.rollout.is_some() {
            return Err(ScaleRefused::Reloading);
        }
        if self.rolling.is_some() {
            return Err(ScaleRefused::Restarting);
        }
        let a = self
            .apps
            .iter()
            .position(|x| x.config.name == app)
            .ok_or_else(|| ScaleRefused::UnknownApp(app.to_string()))?;
        let run = &self.apps[a];
        let target = slot_count(want.unwrap_or(run.config.instances), cpus);
        // Scaling down retires the highest slots: never the last serving
        // ones in favour of errored ones (with every slot errored the
        // supervisor would exit).
        let errored = |s: &&Slot| s.state == SlotState::Errored;
        if target < run.slots.len()
            && run.slots[..target].iter().all(|s| errored(&s))
            && !run.slots[target..].iter().all(|s| errored(&s))
        {
            return Err(ScaleRefused::OnlyErrored(app.to_string(), target));
        }
        let addr = run
            .slots
            .iter()
            .find_map(|s| s.socket.as_ref().map(|x| x.addr))
            .unwrap_or(run.config.listen);
        Ok(ScalePlan {
            app: a,
            addr,
            bind: target.saturating_sub(run.slots.len()),
            target,
            want,
        })
    }

    /// Scales as `plan` says; `sockets` are its `bind` new ones.
    pub fn scale(&mut self, plan: ScalePlan, sockets: Vec<SlotSocket>, now: Instant) -> Actions {
        let a = plan.app;
        let from = self.apps[a].slots.len();
        self.apps[a].scaled = plan.want;
        let name = self.apps[a].config.name.clone();
        tracing::info!(
            event = "scale",
            app = %name,
            from,
            to = plan.target,
            instances = %plan.want.map_or_else(|| "file".to_string(), instances_text),
            file = %instances_text(self.apps[a].config.instances),
        );
        for socket in sockets.into_iter().take(plan.bind) {
            let s = self.apps[a].slots.len();
            self.apps[a].slots.push(Slot::new(s, Arc::new(socket)));
            self.start_slot(a, s);
        }
        let kill_timeout = self.apps[a].config.kill_timeout;
        while self.apps[a].slots.len() > plan.target {
            let mut slot = self.apps[a]
                .slots
                .pop()
                .expect("more slots than the target");
            if let Some(succ) = slot.successor.take() {
                self.discard(
                    succ.pid,
                    succ.generation,
                    name.clone(),
                    slot.index,
                    "scale",
                    now,
                );
            }
            match slot.worker.take() {
                Some(w) => self.drain(
                    w,
                    &name,
                    slot.index,
                    "scale",
                    kill_timeout,
                    slot.socket.take(),
                    now,
                ),
                None => self.out.extend(slot.socket.take().map(Action::CloseSocket)),
            }
        }
        self.done()
    }
}
