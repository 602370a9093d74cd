//! Processes a test starts besides the supervisor: liveness from /proc,
//! child guards that kill and reap, daemons waited for by their port,
//! commands run to their end within a deadline.

use super::*;

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => proc_state(&stat) != Some('Z'),
        Err(_) => false,
    }
}

/// The state letter of a `/proc/PID/stat` line.
pub fn proc_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The parent pid of a `/proc/PID/stat` line.
pub fn proc_ppid(stat: &str) -> Option<i32> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A child process that is stopped and reaped when the guard is dropped,
/// whatever happens to the test. A child still running then is sent
/// SIGKILL (or, made with [`ChildGuard::graceful`], first the given signal
/// and the given time to exit); a child that led its own process group at
/// spawn (`process_group(0)`) has that whole group SIGKILLed too, so none
/// of its own children outlives the test. Dropping always ends in `wait`.
pub struct ChildGuard {
    pub child: Child,
    name: &'static str,
    /// Signal and grace period tried before SIGKILL.
    stop: Option<(nix::sys::signal::Signal, Duration)>,
    group: bool,
}

impl ChildGuard {
    /// Guards `child` (called `name` in messages); SIGKILL on drop.
    pub fn new(name: &'static str, child: Child) -> ChildGuard {
        Self::guard(name, child, None)
    }

    /// Like [`ChildGuard::new`], but on drop a running child is sent
    /// `signal` first and given `grace` to exit before SIGKILL.
    pub fn graceful(
        name: &'static str,
        child: Child,
        signal: nix::sys::signal::Signal,
        grace: Duration,
    ) -> ChildGuard {
        Self::guard(name, child, Some((signal, grace)))
    }

    fn guard(
        name: &'static str,
        child: Child,
        stop: Option<(nix::sys::signal::Signal, Duration)>,
    ) -> ChildGuard {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        // Spawned with `process_group(0)`: the child leads its own group.
        let group = nix::unistd::getpgid(Some(pid)) == Ok(pid);
        ChildGuard {
            child,
            name,
            stop,
            group,
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill, killpg};
        if self.child.try_wait().ok().flatten().is_none() {
            if let Some((signal, grace)) = self.stop {
                let _ = kill(self.pid(), signal);
                let deadline = Instant::now() + grace;
                while Instant::now() < deadline {
                    if self.child.try_wait().ok().flatten().is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            // Ok without a signal when the child has exited meanwhile.
            let _ = self.child.kill();
        }
        if self.group {
            // ESRCH when everything in the group has exited.
            let _ = killpg(self.pid(), Signal::SIGKILL);
        }
        if let Err(e) = self.child.wait() {
            eprintln!("reaping {}: {e}", self.name);
        }
    }
}

/// Waits up to `timeout` for `child` to exit and returns its status; a
/// child still running then is killed and reaped, and `None` is returned.
pub fn wait_or_kill(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to its end with both output pipes read on threads (a chatty
/// command cannot block on them); killed, and the test failed, if it
/// outlives `limit`, so a hung script fails instead of hanging the test.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = pipe.read_to_end(&mut v);
            v
        })
    };
    let out = read(Box::new(child.stdout.take().expect("stdout")));
    let err = read(Box::new(child.stderr.take().expect("stderr")));
    let status = wait_or_kill(&mut child, limit)
        .unwrap_or_else(|| panic!("{cmd:?} did not finish within {limit:?}"));
    std::process::Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// An output for a failure message: the exit code, stdout and stderr.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A server program run for a test (Prometheus, Alertmanager ...): its
/// stdout and stderr go to `<dir>/<name>.log`, and it is killed and reaped
/// on drop (a [`ChildGuard`]), before its temp dir is removed.
pub struct Daemon {
    guard: ChildGuard,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    name: &'static str,
}

impl Daemon {
    /// Runs `cmd` (stdin null, output to the log in `dir`), which is to
    /// serve HTTP on `addr`, and waits up to [`DEADLINE`] until
    /// `GET ready_path` answers 200. Panics, with the log, when the
    /// program exits first.
    pub fn start(
        name: &'static str,
        cmd: &mut Command,
        dir: tempfile::TempDir,
        addr: SocketAddr,
        ready_path: &str,
    ) -> Daemon {
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("run {name} (scripts/deps.sh installs it): {e}"));
        let mut daemon = Daemon {
            guard: ChildGuard::new(name, child),
            addr,
            dir,
            name,
        };
        wait_for(&format!("{name} ready"), DEADLINE, || {
            if let Some(status) = daemon.guard.child.try_wait().expect("try_wait") {
                panic!("{name} exited ({status}):\n{}", daemon.log());
            }
            let r = http_get(addr, ready_path, Duration::from_secs(2)).ok()?;
            (r.status == 200).then_some(())
        });
        daemon
    }

    /// Everything the program has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.name)))
            .unwrap_or_default()
    }
}
