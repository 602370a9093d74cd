//! Performing the fleet's actions. [`Fleet`] decides and returns
//! [`Actions`]; the [`Driver`] carries them out in order through a
//! [`Host`] — the effects on the world: forking a worker, signalling it,
//! reading its memory, binding sockets — and feeds the answers back
//! ([`Fleet::spawned`], [`Fleet::memory_sampled`]) until nothing is left
//! to do. [`SysHost`] is the real host (the syscalls in [`crate::spawn`],
//! [`crate::sys`], [`crate::memory`] and [`crate::sockets`]); the fleet's
//! generated-sequence tests put a fake in its place that invents pids,
//! records every signal and lets the test say what the processes do.
//!
//! The driver also holds what every worker is handed besides its app and
//! slot (the notify socket, the shared tables, output capture), the
//! fleet-state page it publishes to, and the PSS readings (costly, so
//! cached per `memory_check_interval`).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use shared::config::{App, Config};

use crate::fleet::{Action, Actions, Fleet, FleetView, Generation, SetupError, SpawnOrder};
use crate::fleet_state::FleetState;
use crate::memory::PssCache;
use crate::sockets::SlotSocket;
use crate::spawn::Launch;

/// Every effect the fleet has on the world.
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

    /// A worker's PSS now (costlier; the driver caches it per interval).
    fn pss(&mut self, pid: Pid) -> Option<u64>;

    /// Finds the program an app runs.
    fn resolve(&mut self, app: &App) -> Result<PathBuf, String> {
        crate::spawn::resolve_program(app)
    }

    /// Why `app`'s workers would refuse their secrets (one line each;
    /// empty: they would start). See [`crate::secrets`].
    fn check_secrets(&mut self, app: &App) -> Vec<String> {
        crate::secrets::check_app(app)
    }

    /// Binds `count` SO_REUSEPORT sockets on `addr` (port 0 resolved once).
    fn bind(&mut self, addr: SocketAddr, count: usize) -> io::Result<Vec<SlotSocket>> {
        crate::sockets::bind_slots(addr, count)
    }
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

/// The read ends of a new worker's stdout and stderr pipes.
pub struct Outputs {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// A new worker's output, for the event loop to read.
pub struct WorkerOutputs {
    pub app: String,
    pub slot: usize,
    pub pid: Pid,
    pub outputs: Outputs,
}

/// Carries out the fleet's actions through `H` (see the module doc).
pub struct Driver<H: Host = SysHost> {
    pub host: H,
    notify_socket: String,
    /// Whether workers' stdout/stderr go through pipes to the log writer.
    capture_output: bool,
    /// Handed to workers for `/metrics` on the service port.
    control_socket: Option<PathBuf>,
    /// The shared rate-limit table every worker gets (`HEARTALK_LIMITS_FD`).
    limits_fd: Option<RawFd>,
    /// The page every worker's `/ready` reads (`HEARTALK_FLEET_FD`).
    page: Option<FleetState>,
    /// The latest PSS of each worker, read at most once per interval.
    pss: PssCache,
    /// Output pipes of workers spawned since the event loop last looked.
    new_outputs: Vec<WorkerOutputs>,
    /// Signals not sent because their pid was reaped in the meantime.
    skipped: u64,
}

impl<H: Host> Driver<H> {
    /// A driver whose workers notify on `notify_socket`.
    pub fn new(host: H, notify_socket: String) -> Driver<H> {
        Driver {
            host,
            notify_socket,
            capture_output: false,
            control_socket: None,
            limits_fd: None,
            page: None,
            pss: PssCache::default(),
            new_outputs: Vec::new(),
            skipped: 0,
        }
    }

    /// Passes this shared-memory table to every worker launched from now
    /// on (the caller keeps it open for the fleet's life).
    pub fn set_limits_fd(&mut self, fd: Option<RawFd>) {
        self.limits_fd = fd;
    }

    /// Passes this fleet-state page to every worker launched from now on
    /// (with its app's word) and publishes the fleet's counts to it.
    pub fn set_fleet_state(&mut self, page: FleetState) {
        self.page = Some(page);
    }

    /// Tells workers where the control socket is (for `/metrics` on the
    /// service port); `None` keeps that path off.
    pub fn set_control_socket(&mut self, path: Option<&Path>) {
        self.control_socket = path.map(Path::to_path_buf);
    }

    /// Capture worker stdout/stderr through pipes (the log writer reads them).
    pub fn set_capture_output(&mut self, on: bool) {
        self.capture_output = on;
    }

    /// New workers' output pipes since the last call.
    pub fn take_new_outputs(&mut self) -> Vec<WorkerOutputs> {
        std::mem::take(&mut self.new_outputs)
    }

    /// Sets up a generation of `config` (see [`crate::fleet::setup`]);
    /// `current` is the running fleet, whose sockets are kept.
    pub fn prepare(
        &mut self,
        config: &Config,
        cpus: u32,
        current: Option<&Fleet>,
    ) -> Result<Generation, SetupError> {
        crate::fleet::prepare(&mut self.host, config, cpus, current)
    }

    /// Why the workers of `apps` would refuse their secrets (the host's
    /// [`Host::check_secrets`]): asked before a restart or a scale-up
    /// starts new workers, as a generation's setup asks before its own.
    pub fn check_secrets<'a>(&mut self, apps: impl IntoIterator<Item = &'a App>) -> Vec<String> {
        apps.into_iter()
            .flat_map(|app| self.host.check_secrets(app))
            .collect()
    }

    /// Binds `count` more slot sockets on `addr` (for a scale-up).
    pub fn bind(&mut self, addr: SocketAddr, count: usize) -> io::Result<Vec<SlotSocket>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        self.host.bind(addr, count)
    }

    /// Hands one event to the fleet and performs what it decides; `now` is
    /// the event's time, which the answers carry too.
    pub fn apply(
        &mut self,
        fleet: &mut Fleet,
        now: Instant,
        event: impl FnOnce(&mut Fleet) -> Actions,
    ) {
        let actions = event(fleet);
        self.perform(fleet, actions, now);
    }

    /// Performs `actions` in order, and those the answers lead to, until
    /// none is left.
    pub fn perform(&mut self, fleet: &mut Fleet, actions: Actions, now: Instant) {
        let mut queue: VecDeque<Action> = actions.into_iter().collect();
        while let Some(action) = queue.pop_front() {
            let more = match action {
                Action::Spawn(order) => {
                    if fleet.withdrawn(order.id) {
                        continue;
                    }
                    let result = self.spawn(&order);
                    fleet.spawned(order.id, result, now)
                }
                // A pid reaped since the signal was decided (several children
                // reaped in one batch, see `exits`) is not signalled: the
                // number may be someone else's by now.
                Action::Signal { pid, sig } => {
                    match fleet.tracks(pid) {
                        true => self.host.signal(pid, sig),
                        false => self.skipped += 1,
                    }
                    continue;
                }
                Action::SignalGroup { pid, sig } => {
                    match fleet.tracks(pid) {
                        true => self.host.signal_group(pid, sig),
                        false => self.skipped += 1,
                    }
                    continue;
                }
                Action::SampleMemory {
                    pid,
                    pss_above,
                    max_age,
                } => {
                    let Some(rss) = self.host.rss(pid) else {
                        continue;
                    };
                    let host = &mut self.host;
                    let pss = pss_above
                        .filter(|soft| rss > *soft)
                        .and_then(|_| self.pss.get(pid, now, max_age, |p| host.pss(p)));
                    fleet.memory_sampled(pid, rss, pss)
                }
                Action::CloseSocket(socket) => {
                    drop(socket);
                    continue;
                }
                Action::Publish(counts) => {
                    if let Some(page) = &self.page {
                        page.publish(counts);
                    }
                    continue;
                }
            };
            queue.extend(more);
        }
    }

    fn spawn(&mut self, order: &SpawnOrder) -> Result<Pid, String> {
        let launch = Launch {
            app: &order.app,
            program: &order.program,
            slot: order.slot,
            generation: order.generation,
            socket: order.socket.as_ref().map(|s| s.raw_fd()),
            notify_socket: &self.notify_socket,
            metrics_socket: &order.metrics_id,
            control_socket: self.control_socket.as_deref(),
            limits_fd: self.limits_fd,
            fleet: self.page.as_ref().map(FleetState::fd).zip(order.word),
            outputs: None,
        };
        match self.host.spawn(launch, self.capture_output) {
            Ok((pid, outputs)) => {
                if let Some(outputs) = outputs {
                    self.new_outputs.push(WorkerOutputs {
                        app: order.app.name.clone(),
                        slot: order.slot,
                        pid,
                        outputs,
                    });
                }
                Ok(pid)
            }
            Err(e) => Err(format!("{}: {e}", order.program.display())),
        }
    }

    /// Children reaped together: the fleet hears of every exit before any
    /// action is performed, so nothing decided for the first is done to
    /// another that is already gone.
    pub fn exits(&mut self, fleet: &mut Fleet, reaped: &[(Pid, WaitStatus)], now: Instant) {
        let mut all = Vec::new();
        for &(pid, status) in reaped {
            self.pss.forget(pid);
            all.extend(fleet.on_exit(pid, status, now));
        }
        self.perform(fleet, Actions(all), now);
    }

    /// Signals not sent so far because their pid had been reaped.
    pub fn signals_skipped(&self) -> u64 {
        self.skipped
    }

    /// The fleet's picture with every slot worker's PSS: a reading older
    /// than its app's `memory_check_interval` is taken again, a younger
    /// one — by the memory guard or an earlier report — is kept, so
    /// `smaps_rollup` is read at most once per interval however often
    /// `status` and `/metrics` ask.
    pub fn view(&mut self, fleet: &Fleet, now: Instant) -> FleetView {
        let mut view = fleet.view();
        for app in &mut view.apps {
            for w in app.slots.iter_mut().filter_map(|s| s.worker.as_mut()) {
                let host = &mut self.host;
                w.pss = self.pss.get(w.pid, now, app.pss_max_age, |p| host.pss(p));
            }
        }
        view
    }
}
