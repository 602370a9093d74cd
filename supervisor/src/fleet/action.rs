//! What the fleet asks the world to do. Every event the fleet takes
//! returns [`Actions`]; it performs none of them itself. The driver
//! ([`crate::host::Driver`]) carries them out in order and answers the two
//! that have a result with an event of their own: a [`Action::Spawn`] with
//! [`Fleet::spawned`](super::Fleet::spawned) (the new pid, or why the fork
//! failed), a [`Action::SampleMemory`] with
//! [`Fleet::memory_sampled`](super::Fleet::memory_sampled). This is the
//! sans-io shape of quinn-proto: the rules can be run on any sequence of
//! events, in a test, without a process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use shared::config::App;

use crate::sockets::SlotSocket;

/// One effect on the world.
#[derive(Debug)]
pub enum Action {
    /// Start a worker; answer with `Fleet::spawned(order.id, ...)`.
    Spawn(SpawnOrder),
    /// Send a signal to one process (one already gone is not an error).
    Signal { pid: Pid, sig: Signal },
    /// Send a signal to a worker's process group (the worker and anything
    /// it started), or to the worker alone when it has no group any more.
    SignalGroup { pid: Pid, sig: Signal },
    /// Read a worker's RSS, and its PSS when the RSS is above `pss_above`
    /// (a reading younger than `max_age` may be reused: PSS is costly);
    /// answer with `Fleet::memory_sampled`. A worker already gone gets no
    /// answer.
    SampleMemory {
        pid: Pid,
        pss_above: Option<u64>,
        max_age: Duration,
    },
    /// The fleet lets go of a slot socket (an errored slot, a stop, a
    /// retired slot whose worker has drained). The kernel closes it with
    /// its last holder, so new connections are refused rather than queued
    /// where nobody will accept them.
    CloseSocket(Arc<SlotSocket>),
    /// Each app's count of slots not serving, by its word of the
    /// fleet-state page (what its workers' `/ready` reads). Sent only when
    /// a count changed.
    Publish(Vec<(usize, u64)>),
}

/// A worker to start.
#[derive(Debug)]
pub struct SpawnOrder {
    /// Names the answer (`Fleet::spawned`).
    pub id: u64,
    pub app: Arc<App>,
    pub program: Arc<PathBuf>,
    pub slot: usize,
    pub generation: u64,
    /// The slot's socket (`None` once closed: a worker started then gets
    /// no listening socket).
    pub socket: Option<Arc<SlotSocket>>,
    /// Abstract socket name the worker serves its metrics on.
    pub metrics_id: String,
    /// The app's word of the fleet-state page, if it has one.
    pub word: Option<usize>,
}

/// The actions one event asks for, in the order they are to be performed.
#[derive(Debug, Default)]
#[must_use = "the fleet performs nothing itself: hand these to the driver"]
pub struct Actions(pub Vec<Action>);

impl Actions {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl IntoIterator for Actions {
    type Item = Action;
    type IntoIter = std::vec::IntoIter<Action>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}
