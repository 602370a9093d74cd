//! The supervisor's exit codes (documented in docs/operations.md).
//!
//! Orchestrators act on these: any non-zero code restarts the container,
//! and the specific value tells an operator where to look.

/// Why `heartalk` exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Every worker stopped cleanly (or a fast stop was requested).
    Clean = 0,
    /// A stop had to SIGKILL at least one worker at `kill_timeout`, or
    /// another runtime failure; for `heartalk reload`, a refused or
    /// rolled-back reload; for `heartalk health`, anything but a 200.
    Forced = 1,
    /// Bad command line or bad config file (EX_USAGE).
    Usage = 64,
    /// Every slot is `errored`: the workers keep crashing (EX_UNAVAILABLE).
    AllErrored = 69,
    /// Setting up failed: socket bind, program missing, signal setup (EX_OSERR).
    Setup = 71,
    /// Another supervisor already answers on the control socket (EX_TEMPFAIL).
    AlreadyRunning = 75,
    /// CLI verbs: no supervisor is running (like `systemctl status`'s 3).
    NotRunning = 3,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}
