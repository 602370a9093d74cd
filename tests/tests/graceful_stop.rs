//! SIGTERM drains: in-flight requests finish, workers exit, the supervisor
//! exits 0; a worker that ignores SIGTERM is killed at `kill_timeout`.

mod helper;

use std::time::{Duration, Instant};

use helper::*;
use nix::sys::signal::Signal;

#[test]
fn sigterm_lets_a_slow_request_finish_then_exits_zero() {
    let mut sup = Supervisor::start(&test_worker_config(2, "serve", "kill_timeout = \"20s\""));
    let addr = sup.addr();
    let pids = sup.wait_ready(2);

    let conn = send_get(addr, "/slow?ms=3000", Duration::from_secs(30)).unwrap();
    // The request is in flight once a worker has accepted its connection
    // (one still in the kernel's backlog would be left there by the stop).
    wait_for("a worker to accept the slow request", DEADLINE, || {
        accepted(&conn).then_some(())
    });
    let slow = std::thread::spawn(move || read_answer(conn));
    let stop_at = Instant::now();
    sup.signal(Signal::SIGTERM);

    let resp = slow.join().unwrap().expect("slow request must complete");
    assert_eq!(resp.status, 200);
    let status = sup.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", sup.stderr());
    assert!(
        stop_at.elapsed() >= Duration::from_millis(2000),
        "stop did not wait for the request"
    );
    for pid in pids {
        assert!(!alive(pid), "worker {pid} still alive after stop");
    }
    let exits = sup.events("worker_exited");
    assert!(
        exits
            .iter()
            .all(|e| e["reason"] == "stopped" && e["code"] == 0),
        "{exits:?}"
    );
}

#[test]
fn a_worker_ignoring_sigterm_is_killed_after_kill_timeout() {
    let mut sup = Supervisor::start(&test_worker_config(
        1,
        "ignore-term",
        "kill_timeout = \"1s\"",
    ));
    let pids = sup.wait_ready(1);
    let stop_at = Instant::now();
    sup.signal(Signal::SIGTERM);
    let status = sup.wait_exit(DEADLINE);
    let took = stop_at.elapsed();
    assert_eq!(status.code(), Some(1), "a forced stop is not a clean exit");
    assert!(
        took >= Duration::from_millis(900),
        "killed before kill_timeout: {took:?}"
    );
    assert!(!alive(pids[0]));
    assert_eq!(sup.events("kill_timeout").len(), 1);
    let exit = &sup.events("worker_exited")[0];
    assert_eq!(exit["signal"], "SIGKILL", "{exit}");
}

#[test]
fn sigquit_is_a_fast_stop() {
    let mut sup = Supervisor::start(&test_worker_config(
        2,
        "ignore-term",
        "kill_timeout = \"60s\"",
    ));
    let pids = sup.wait_ready(2);
    sup.signal(Signal::SIGQUIT);
    let status = sup.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(pids.iter().all(|p| !alive(*p)));
}

#[test]
fn a_second_sigterm_escalates_to_a_fast_stop() {
    let mut sup = Supervisor::start(&test_worker_config(
        1,
        "ignore-term",
        "kill_timeout = \"60s\"",
    ));
    let pids = sup.wait_ready(1);
    sup.signal(Signal::SIGTERM);
    sup.wait_event("stop", |_| true);
    sup.signal(Signal::SIGTERM);
    sup.wait_exit(Duration::from_secs(10));
    assert!(!alive(pids[0]));
}
