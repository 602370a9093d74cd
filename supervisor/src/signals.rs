//! OS signals, mapped to the small set of things an operator can ask for.
//!
//! Everything else in the supervisor reacts to an [`Intent`], never to a
//! raw signal number, so the signal table in docs/operations.md is this
//! file. SIGCHLD is not an intent: it only wakes the reaper.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// What an operator (or orchestrator) asked the supervisor to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// SIGTERM, SIGINT: drain every worker within `kill_timeout`, then exit.
    Stop,
    /// SIGQUIT (or a second SIGTERM/SIGINT during a stop): kill now.
    FastStop,
    /// SIGHUP: zero-downtime reload.
    Reload,
    /// SIGUSR1: reopen log files.
    ReopenLogs,
}

/// The installed signal streams. Create this before the first worker is
/// spawned so no SIGCHLD can be missed.
pub struct Signals {
    term: Signal,
    int: Signal,
    quit: Signal,
    hup: Signal,
    usr1: Signal,
    child: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            child: signal(SignalKind::child())?,
        })
    }

    /// Waits for the next operator intent, or `None` when a child may have
    /// changed state (SIGCHLD: time to reap).
    pub async fn next(&mut self) -> Option<Intent> {
        tokio::select! {
            _ = self.term.recv() => Some(Intent::Stop),
            _ = self.int.recv() => Some(Intent::Stop),
            _ = self.quit.recv() => Some(Intent::FastStop),
            _ = self.hup.recv() => Some(Intent::Reload),
            _ = self.usr1.recv() => Some(Intent::ReopenLogs),
            _ = self.child.recv() => None,
        }
    }
}
