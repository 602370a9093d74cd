//! Every unsafe or raw libc call the supervisor makes, in one place:
//! fork+exec of workers, the single `waitpid` reaper, signalling process
//! groups, the PID-1/subreaper setup, the open-file limit, and shared
//! memory (memfds and their mappings, made by `shared::shm`, which the
//! workers map them with).
//!
//! Spawning is hand-rolled rather than `std::process::Command` because the
//! socket-activation protocol needs `LISTEN_PID` to hold the *child's* pid,
//! which only exists after `fork`; everything the child does between `fork`
//! and `execve` is async-signal-safe (no allocation, no locks), with all
//! strings and arrays prepared by the parent beforehand.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Width reserved for the pid digits in `LISTEN_PID=` and `WATCHDOG_PID=`.
const PID_DIGITS: usize = 20;
/// How many variables can hold the child's pid (`LISTEN_PID`, `WATCHDOG_PID`).
const MAX_PID_VARS: usize = 2;

/// Everything `execve` needs, prepared in the parent so the child does not
/// allocate after `fork`.
pub struct ExecSpec {
    program: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    /// `(index in env, length of "NAME=")` of the entries whose digits the
    /// child fills with its own pid (`LISTEN_PID`, `WATCHDOG_PID`).
    pid_slots: Vec<(usize, usize)>,
    cwd: CString,
    /// Descriptors that become 3, 4, ... in the child.
    pass_fds: Vec<RawFd>,
    /// Replacements for stdout and stderr (pipes of the log writer).
    stdout: Option<RawFd>,
    stderr: Option<RawFd>,
}

impl ExecSpec {
    /// `env` entries are `KEY=VALUE`; for each name in `pid_vars` (at most
    /// two) an entry is appended whose value the child fills with its own
    /// pid, which only exists after `fork` (`LISTEN_PID`, `WATCHDOG_PID`).
    pub fn new(
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        cwd: &Path,
        pass_fds: Vec<RawFd>,
        pid_vars: &[&str],
    ) -> io::Result<ExecSpec> {
        let c = |b: &[u8]| {
            CString::new(b).map_err(|_| io::Error::other("NUL byte in argument or environment"))
        };
        let program_c = c(program.as_os_str().as_bytes())?;
        let mut argv = vec![program_c.clone()];
        for a in args {
            argv.push(c(a.as_bytes())?);
        }
        let mut envc = Vec::with_capacity(env.len() + 1);
        for (k, v) in env {
            envc.push(c(format!("{k}={v}").as_bytes())?);
        }
        if pid_vars.len() > MAX_PID_VARS {
            return Err(io::Error::other("too many pid-valued variables"));
        }
        let mut pid_slots = Vec::with_capacity(pid_vars.len());
        for name in pid_vars {
            // Placeholder digits, overwritten (and NUL-terminated) in the child.
            envc.push(c(format!("{name}={}", "0".repeat(PID_DIGITS)).as_bytes())?);
            pid_slots.push((envc.len() - 1, name.len() + 1));
        }
        Ok(ExecSpec {
            program: program_c,
            argv,
            env: envc,
            pid_slots,
            cwd: c(cwd.as_os_str().as_bytes())?,
            pass_fds,
            stdout: None,
            stderr: None,
        })
    }

    /// Sends the child's stdout/stderr to these descriptors.
    pub fn redirect_output(&mut self, stdout: RawFd, stderr: RawFd) {
        self.stdout = Some(stdout);
        self.stderr = Some(stderr);
    }
}

/// Forks and execs `spec` in a new process group; returns once `execve` has
/// succeeded (or with its error, e.g. ENOENT for a missing program).
pub fn spawn(spec: &ExecSpec) -> io::Result<Pid> {
    let argv: Vec<*const libc::c_char> = spec
        .argv
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = spec
        .env
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let mut pid_bufs: [*mut u8; MAX_PID_VARS] = [std::ptr::null_mut(); MAX_PID_VARS];
    for (buf, &(i, prefix)) in pid_bufs.iter_mut().zip(&spec.pid_slots) {
        // SAFETY: points into the CString's heap buffer after "NAME=",
        // which holds PID_DIGITS placeholder bytes plus the NUL; the child
        // writes at most PID_DIGITS digits and a NUL there (COW copy).
        *buf = unsafe { (spec.env[i].as_ptr() as *mut u8).add(prefix) };
    }
    // A close-on-exec pipe reports exec failure: EOF means exec succeeded.
    let (err_rx, err_tx) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let parent = std::process::id() as libc::pid_t;
    let n_fds = spec.pass_fds.len() as RawFd;

    // SAFETY: the child only calls async-signal-safe libc functions on data
    // prepared above, then execs or _exits; it never returns into Rust code
    // that could touch locks held by other threads of the parent.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: child side; see the comment on `fork` above.
        unsafe {
            child_after_fork(
                spec,
                &argv,
                &envp,
                &pid_bufs,
                err_tx.as_raw_fd(),
                parent,
                n_fds,
            );
        }
    }
    drop(err_tx);
    let mut errno = [0u8; 4];
    let mut got = 0;
    loop {
        // SAFETY: reads into a local 4-byte buffer from a pipe we own.
        let n = unsafe {
            libc::read(
                err_rx.as_raw_fd(),
                errno[got..].as_mut_ptr().cast(),
                errno.len() - got,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        got += n as usize;
        if got == errno.len() {
            break;
        }
    }
    let child = Pid::from_raw(pid);
    if got == 0 {
        return Ok(child);
    }
    // exec failed: the child has _exited; the reaper will collect it.
    Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno)))
}

/// # Safety
/// Must only be called in the child right after `fork`.
unsafe fn child_after_fork(
    spec: &ExecSpec,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    pid_bufs: &[*mut u8; MAX_PID_VARS],
    err_fd: RawFd,
    parent: libc::pid_t,
    n_fds: RawFd,
) -> ! {
    unsafe {
        let fail = |err_fd: RawFd| -> ! {
            let e = *libc::__errno_location();
            let bytes = e.to_ne_bytes();
            libc::write(err_fd, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127)
        };
        // Own process group: terminal ^C goes to the supervisor only, and a
        // SIGKILL at the deadline reaches the worker's own children too.
        if libc::setpgid(0, 0) < 0 {
            fail(err_fd);
        }
        // If the supervisor dies without a clean stop, the worker drains.
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGTERM as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() != parent {
            libc::_exit(1);
        }
        // Signal state is inherited through exec: clear the mask and undo
        // the SIG_IGN that Rust sets for SIGPIPE.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);

        // Move the passed fds out of the way first, so that dup2 into 3..
        // never clobbers a source that is still needed.
        let mut high = [0 as RawFd; 64];
        let count = spec.pass_fds.len().min(high.len());
        for (i, fd) in spec.pass_fds.iter().take(count).enumerate() {
            let h = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3 + n_fds + 64);
            if h < 0 {
                fail(err_fd);
            }
            high[i] = h;
        }
        for (i, h) in high.iter().take(count).enumerate() {
            // dup2 clears FD_CLOEXEC on the target, so these survive exec.
            if libc::dup2(*h, 3 + i as RawFd) < 0 {
                fail(err_fd);
            }
        }
        if let Some(fd) = spec.stdout {
            libc::dup2(fd, 1);
        }
        if let Some(fd) = spec.stderr {
            libc::dup2(fd, 2);
        }
        let mut digits = [0u8; PID_DIGITS];
        let mut n = libc::getpid() as u64;
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            n /= 10;
            len += 1;
            if n == 0 {
                break;
            }
        }
        for pid_buf in pid_bufs.iter().filter(|b| !b.is_null()) {
            for i in 0..len {
                *pid_buf.add(i) = digits[len - 1 - i];
            }
            *pid_buf.add(len) = 0;
        }
        if libc::chdir(spec.cwd.as_ptr()) < 0 {
            fail(err_fd);
        }
        libc::execve(spec.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(err_fd)
    }
}

/// Collects every child that has exited, without blocking. This is the only
/// `waitpid` in the supervisor: workers and reparented orphans alike.
pub fn reap() -> Vec<(Pid, WaitStatus)> {
    let mut out = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => break,
            Ok(status) => {
                if let Some(pid) = status.pid() {
                    out.push((pid, status));
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(event = "reap_failed", error = %e, "waitpid failed");
                break;
            }
        }
    }
    out
}

/// Sends `sig` to one process. A process that is already gone is not an error.
pub fn signal(pid: Pid, sig: Signal) {
    let _ = nix::sys::signal::kill(pid, sig);
}

/// Sends `sig` to a worker's whole process group (the worker and anything it
/// started), falling back to the pid if the group is gone.
pub fn signal_group(pid: Pid, sig: Signal) {
    if nix::sys::signal::killpg(pid, sig).is_err() {
        signal(pid, sig);
    }
}

/// Whether this process is PID 1 of its pid namespace (container init).
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Makes orphaned descendants reparent to us instead of to init, so our
/// single reaper collects them too. Not needed (and not done) as PID 1.
pub fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// The memory page size, for `/proc/PID/statm`.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|n| *n > 0).unwrap_or(4096)
}

/// utime + stime of `pid` in seconds, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: Pid) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) / ticks as f64)
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// An anonymous shared-memory file of `len` zero bytes (close-on-exec; the
/// spawner passes it to workers explicitly) that workers map read-write:
/// the fleet-wide rate-limit table; it lives as long as the supervisor.
/// Its size is sealed, and so are its seals (`F_SEAL_SHRINK`,
/// `F_SEAL_GROW`, `F_SEAL_SEAL`): a worker can neither resize it (every
/// other mapping would `SIGBUS` past the new end) nor seal it against the
/// others' writes. Made by `shared::shm`, which the workers read it with.
pub fn shared_memory(name: &std::ffi::CStr, len: u64) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsFd;
    let fd = shared::shm::create(name, len)?;
    shared::shm::seal(fd.as_fd(), libc::F_SEAL_SEAL)?;
    Ok(fd)
}

/// A shared-memory file of `len` zero bytes that only the supervisor
/// writes (the fleet-state page): its read-write mapping here, and a
/// read-only, close-on-exec descriptor to pass to workers. Sealed against
/// resizing and new writes (`shared::shm::create_read_only_shared`).
pub fn published_memory(
    name: &std::ffi::CStr,
    len: u64,
) -> io::Result<(SharedWords, std::os::fd::OwnedFd)> {
    shared::shm::create_read_only_shared(name, len)
}

/// The open-file limit before and after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit the supervisor was started with.
    pub soft_before: u64,
    /// The soft limit now (what workers inherit through fork and exec).
    pub soft: u64,
    /// The hard limit (the most an unprivileged process may raise to).
    pub hard: u64,
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit, so every
/// worker (which inherits it through fork and exec) can hold as many
/// connections as the system allows it: the usual soft default, 1024, is a
/// compatibility value for `select(2)`, which nothing here uses. Returns
/// the limits before and after; an error leaves the limit as it was.
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft_before, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft_before < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    Ok(NofileLimit {
        soft_before,
        soft,
        hard,
    })
}

/// A shared read-write mapping of a whole shared-memory file, seen as
/// native-endian atomic words (see [`shared_memory`]). Unmapped on drop.
pub use shared::shm::SharedWords;
