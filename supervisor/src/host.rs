//! The fleet's effects on the world, behind one trait: forking a worker,
//! signalling it, reading its memory. [`Fleet`](crate::fleet::Fleet)
//! decides; its [`Host`] acts. [`SysHost`] is the real one (the syscalls in
//! [`crate::spawn`], [`crate::sys`] and [`crate::memory`]); the fleet's
//! generated-sequence tests put a fake in its place that invents pids,
//! records every signal and lets the test say what the processes do, so
//! the fleet's rules run on any interleaving of events without a process.
//!
//! What stays outside: binding the slot sockets (they are kernel objects
//! the fleet hands to workers; a test binds loopback port 0) and the
//! fleet-state page (shared memory, written only when one was set).

use std::io;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::fleet::Outputs;
use crate::spawn::Launch;

/// Every effect the fleet has on its workers.
pub trait Host {
    /// Starts the worker `launch` describes (its `outputs` left `None`);
    /// with `capture`, its stdout and stderr go to fresh pipes whose read
    /// ends come back with its pid.
    fn spawn(&mut self, launch: Launch<'_>, capture: bool) -> io::Result<(Pid, Option<Outputs>)>;

    /// Sends `sig` to one process; a process already gone is not an error.
    fn signal(&mut self, pid: Pid, sig: Signal);

    /// Sends `sig` to a worker's process group (the worker and anything it
    /// started), or to the worker alone when it has no group any more.
    fn signal_group(&mut self, pid: Pid, sig: Signal);

    /// A worker's RSS now, or `None` if it is gone.
    fn rss(&mut self, pid: Pid) -> Option<u64>;

    /// A worker's PSS now (costlier; the fleet caches it per interval).
    fn pss(&mut self, pid: Pid) -> Option<u64>;
}

/// The real host: forks, signals and reads `/proc`.
#[derive(Debug, Default)]
pub struct SysHost;

impl Host for SysHost {
    fn spawn(
        &mut self,
        mut launch: Launch<'_>,
        capture: bool,
    ) -> io::Result<(Pid, Option<Outputs>)> {
        use std::os::fd::AsRawFd;
        // Pipes for stdout and stderr; the write ends go to the child and
        // are closed here when this returns, so EOF means the worker (and
        // anything it started) has closed them.
        let pipes = if capture {
            let (out_r, out_w) = crate::sys::pipe()?;
            let (err_r, err_w) = crate::sys::pipe()?;
            Some(((out_r, out_w), (err_r, err_w)))
        } else {
            None
        };
        launch.outputs = pipes
            .as_ref()
            .map(|((_, o), (_, e))| (o.as_raw_fd(), e.as_raw_fd()));
        let pid = crate::spawn::spawn(&launch)?;
        Ok((
            pid,
            pipes.map(|((stdout, _), (stderr, _))| Outputs { stdout, stderr }),
        ))
    }

    fn signal(&mut self, pid: Pid, sig: Signal) {
        crate::sys::signal(pid, sig);
    }

    fn signal_group(&mut self, pid: Pid, sig: Signal) {
        crate::sys::signal_group(pid, sig);
    }

    fn rss(&mut self, pid: Pid) -> Option<u64> {
        crate::memory::rss(pid)
    }

    fn pss(&mut self, pid: Pid) -> Option<u64> {
        crate::memory::pss(pid)
    }
}
