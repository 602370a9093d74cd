//! What the fleet shows: a read-only picture of every slot and worker for
//! `status`, `/metrics` and the scrapers, taken between events.

use std::time::{Duration, Instant};

use nix::unistd::Pid;

use std::path::PathBuf;
use std::sync::Arc;

use shared::config::App;

use super::{ExitInfo, ExitRecord, Fleet, Mode, ReloadOutcome, Slot, SlotState};

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
    /// How old a PSS reading may be (the app's `memory_check_interval`).
    pub pss_max_age: Duration,
    /// The file's `instances` (`4` or `max`).
    pub instances_file: String,
    /// `heartalk scale`'s count while it overrides the file's.
    pub scaled: Option<String>,
    /// Its effective config and the program it runs (for `describe`).
    pub config: Arc<App>,
    pub program: Arc<PathBuf>,
    /// Its latest worker exits, oldest first.
    pub exits: Vec<ExitRecord>,
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
    /// Its latest PSS reading, if any: filled in by the driver, which
    /// reads memory (see [`crate::host::Driver::view`]).
    pub pss: Option<u64>,
    /// Its latest watchdog ping (`None`: it never pinged, not watched).
    pub last_ping: Option<Instant>,
}

impl Fleet {
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
                pss_max_age: a.config.memory_check_interval,
                instances_file: super::setup::instances_text(a.config.instances),
                scaled: a.scaled.map(super::setup::instances_text),
                config: a.config.clone(),
                program: a.program.clone(),
                exits: self
                    .history
                    .get(&a.config.name)
                    .map(|h| h.iter().cloned().collect())
                    .unwrap_or_default(),
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
                            pss: None,
                            last_ping: w.last_ping,
                        }),
                        restarts: s.restarts,
                        unstable_restarts: s.unstable,
                        last_exit: s.last_exit.clone(),
                    })
                    .collect(),
            })
            .collect();
        let listed = |m: &std::collections::BTreeMap<(String, &'static str), u64>| {
            m.iter().map(|((a, r), n)| (a.clone(), *r, *n)).collect()
        };
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
            restarts_by: listed(&self.restarts_by),
            reloads_by: listed(&self.reloads_by),
            hangs_by: listed(&self.hangs_by),
        }
    }
}

/// What `status` and /metrics show for a slot: a serving slot whose worker
/// is hung or degraded shows that instead of `online`.
pub(super) fn shown_state(s: &Slot) -> SlotState {
    match (s.state, s.worker.as_ref()) {
        (SlotState::Online, Some(w)) if w.hung => SlotState::Hung,
        (SlotState::Online, Some(w)) if w.degraded => SlotState::Degraded,
        (state, _) => state,
    }
}
