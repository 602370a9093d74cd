//! The supervisor's fleet-state page, read-only: how many slots of this
//! worker's app are currently not serving (degraded or hung). `/ready`
//! answers 503 while that is above zero, so the app's load balancer steers
//! away from the whole app: the degraded worker itself cannot accept the
//! probe. Other apps of the same supervisor have words of their own and
//! do not concern this one.
//!
//! The supervisor creates the page (a memfd of
//! `shared::activation::FLEET_STATE_BYTES`, sealed) once and passes every
//! worker a read-only descriptor of it as `HEARTALK_FLEET_FD`, and its
//! app's word as `HEARTALK_FLEET_WORD`; the layout is
//! `shared::activation::fleet_state`. A worker running without them
//! (alone, under an older supervisor, or in an app past the page's 512
//! words) answers for itself only.

use std::os::fd::{AsFd, OwnedFd};

use shared::activation::{FLEET_STATE_BYTES, env, fleet_state};
use shared::shm::{self, ReadOnlyWords};

/// The page, mapped read-only, and which word of it is this worker's app's.
pub struct FleetState {
    page: ReadOnlyWords,
    word: usize,
}

impl FleetState {
    /// Maps the page named by `HEARTALK_FLEET_FD` and reads the word named
    /// by `HEARTALK_FLEET_WORD`, if the supervisor passed both. The
    /// descriptor is taken only once it is known to be the page (a stale
    /// number is left alone, never closed). A page that cannot be used is
    /// logged and means "answer for this worker only".
    pub fn from_env() -> Option<FleetState> {
        let word = std::env::var(env::HEARTALK_FLEET_WORD).ok()?;
        let fd = shm::inherited(env::HEARTALK_FLEET_FD, FLEET_STATE_BYTES)?;
        let state = word
            .trim()
            .parse()
            .map_err(|_| std::io::Error::other(format!("{word:?} is not a word number")))
            .and_then(|word| FleetState::map(fd?, word));
        match state {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "HEARTALK_FLEET_FD unusable; /ready answers for this worker only");
                None
            }
        }
    }

    /// Maps a fleet-state file read-only, to read word `word`. The
    /// descriptor is closed once mapped: the mapping keeps the memory
    /// alive and needs no descriptor, which leaves one more for
    /// connections.
    pub fn map(fd: OwnedFd, word: usize) -> std::io::Result<FleetState> {
        if word >= fleet_state::WORDS {
            return Err(std::io::Error::other(format!(
                "word {word} is past the page's {}",
                fleet_state::WORDS
            )));
        }
        let page = ReadOnlyWords::map(fd.as_fd(), FLEET_STATE_BYTES)?;
        Ok(FleetState { page, word })
    }

    /// How many slots of this worker's app are currently not serving.
    pub fn not_serving(&self) -> u64 {
        // `map` checked the word is within the page.
        self.page.load(self.word).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::shm::SharedWords;
    use std::sync::atomic::Ordering;

    /// A page as the supervisor makes it: its writable view, and the
    /// read-only descriptor a worker gets.
    fn page() -> (SharedWords, OwnedFd) {
        shm::create_read_only_shared(c"heartalk-fleet", FLEET_STATE_BYTES).unwrap()
    }

    #[test]
    fn reads_its_own_apps_word() {
        let (writer, fd) = page();
        let state = FleetState::map(fd, 1).unwrap();
        assert_eq!(state.not_serving(), 0);
        // Another app's slot is degraded: not this app's business.
        writer.words()[0].store(3, Ordering::Release);
        assert_eq!(state.not_serving(), 0);
        // One of this app's.
        writer.words()[1].store(1, Ordering::Release);
        assert_eq!(state.not_serving(), 1);
        writer.words()[1].store(0, Ordering::Release);
        assert_eq!(state.not_serving(), 0);
    }

    #[test]
    fn a_word_past_the_page_or_a_short_file_is_refused() {
        let (_writer, fd) = page();
        assert!(FleetState::map(fd, fleet_state::WORDS).is_err());
        let empty = shm::create(c"empty", 0).unwrap();
        assert!(FleetState::map(empty, 0).is_err());
    }
}
