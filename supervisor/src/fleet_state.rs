//! The fleet-state page: one page of shared memory (a memfd) that the
//! supervisor creates once, at start, and passes to every worker it
//! launches as `HEARTALK_FLEET_FD`, so workers can answer for the whole
//! fleet without asking. Only the supervisor writes it; workers map it
//! read-only. Its layout is `shared::activation::fleet_state`.
//!
//! Word 0 is how many slots are currently not serving (degraded or hung):
//! while it is above zero every worker's `/ready` answers 503, so a load
//! balancer steers away from the whole container. The degraded worker
//! itself cannot accept connections, so the balancer's probes reach the
//! others; without this they would keep saying "ready" for a container
//! that leaves part of its connections hanging.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;

use shared::activation::{FLEET_STATE_BYTES, fleet_state};

use crate::sys::{self, SharedWords};

/// The supervisor's handle on the fleet-state page.
pub struct FleetState {
    fd: OwnedFd,
    page: SharedWords,
}

impl FleetState {
    /// Creates the page (all zeros: every slot serving).
    pub fn create() -> io::Result<FleetState> {
        let fd = sys::shared_memory(c"heartalk-fleet", FLEET_STATE_BYTES)?;
        let page = SharedWords::map(&fd, FLEET_STATE_BYTES)?;
        Ok(FleetState { fd, page })
    }

    /// The descriptor to pass to workers (close-on-exec here; the spawner
    /// passes it explicitly). Valid as long as `self` lives.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Publishes how many slots are currently not serving. Cheap (one
    /// atomic store), so callers may simply call it after every change.
    pub fn set_not_serving(&self, n: u64) {
        self.page.words()[fleet_state::NOT_SERVING].store(n, Ordering::Release);
    }

    /// What was last published.
    pub fn not_serving(&self) -> u64 {
        self.page.words()[fleet_state::NOT_SERVING].load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_mapping_sees_what_the_supervisor_writes() {
        let state = FleetState::create().unwrap();
        assert_eq!(state.not_serving(), 0, "a new page says every slot serves");
        // What a worker does: map the same file (here through a dup of the
        // descriptor, as fork+exec passes it) and read word 0.
        let dup = state.fd.try_clone().unwrap();
        let reader = SharedWords::map(&dup, FLEET_STATE_BYTES).unwrap();
        drop(dup);
        assert_eq!(reader.words().len() as u64, FLEET_STATE_BYTES / 8);
        state.set_not_serving(2);
        assert_eq!(
            reader.words()[fleet_state::NOT_SERVING].load(Ordering::Acquire),
            2
        );
        state.set_not_serving(0);
        assert_eq!(reader.words()[0].load(Ordering::Acquire), 0);
        assert!(state.fd() >= 0);
    }
}
