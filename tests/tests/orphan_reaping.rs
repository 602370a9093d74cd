//! PID-1 duties: orphaned grandchildren of workers are reaped (no zombie),
//! both as a container's PID 1 (`unshare --pid`) and, elsewhere, as a
//! child subreaper; SIGTERM to PID 1 stops everything cleanly.

mod helper;

use helper::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Finds, in the global /proc, the `sleep 2.5` the test worker orphaned and
/// checks it was reparented to `reaper` (a global pid).
fn orphan_of(reaper: i32) -> i32 {
    wait_for("the orphaned sleep", DEADLINE, || {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            (cmd == b"sleep\x002.5\x00" && proc_ppid(&stat) == Some(reaper)).then_some(pid)
        })
    })
}

/// Waits until `pid` has vanished from /proc: exited *and* reaped (a zombie
/// keeps its /proc entry until its parent waits for it).
fn wait_reaped(pid: i32) {
    wait_for("the orphan to be reaped", DEADLINE, || {
        std::fs::metadata(format!("/proc/{pid}"))
            .is_err()
            .then_some(())
    });
}

#[test]
fn as_subreaper_the_supervisor_reaps_orphans() {
    let mut sup = Supervisor::start(&test_worker_config(1, "orphan=2.5", ""));
    sup.wait_ready(1);
    let orphan = orphan_of(sup.pid());
    wait_reaped(orphan);
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
fn as_pid1_in_a_pid_namespace() {
    let mut sup = Supervisor::start_wrapped(
        &test_worker_config(2, "orphan=2.5", ""),
        &["unshare", "--pid", "--fork", "--mount-proc"],
    );
    let start = sup.wait_event("supervisor_start", |_| true);
    assert_eq!(start["pid1"], true, "{start}");
    assert_eq!(start["pid"], 1);
    sup.wait_event("fleet_ready", |_| true);

    // `unshare --fork` is our child; the supervisor (PID 1 inside) is its child.
    let unshare = sup.pid();
    let init = wait_for("the namespace's init", DEADLINE, || {
        let children =
            std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).ok()?;
        children.split_whitespace().next()?.parse::<i32>().ok()
    });
    let orphan = orphan_of(init);
    wait_reaped(orphan);

    // SIGTERM to PID 1 (from outside, as `docker stop` does) stops cleanly.
    kill(Pid::from_raw(init), Signal::SIGTERM).unwrap();
    let status = sup.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", sup.stderr());
    assert_eq!(sup.events("worker_exited").len(), 2);
    assert!(
        sup.events("worker_exited")
            .iter()
            .all(|e| e["reason"] == "stopped")
    );
    assert!(!alive(init));
}
