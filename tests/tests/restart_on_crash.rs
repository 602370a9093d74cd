//! kill -9 of a worker: a replacement with a new pid takes its slot, the
//! restart is counted with reason `crash`, and requests keep succeeding.

mod helper;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use helper::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[test]
fn a_killed_worker_is_replaced_while_requests_keep_succeeding() {
    let mut sup = Supervisor::start(&real_worker_config("2", "min_uptime = \"100ms\""));
    let addr = sup.addr();
    let pids = sup.wait_ready(2);

    // Clients on new connections throughout the crash and the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok) = (stop.clone(), ok.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match http_get(addr, "/health", Duration::from_secs(10)) {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failures.push(format!("{other:?}")),
                    }
                }
                failures
            })
        })
        .collect();
    wait_for("some traffic", DEADLINE, || {
        (ok.load(Ordering::Relaxed) > 20).then_some(())
    });

    let victim = pids[0];
    let victim_slot = sup
        .events("worker_ready")
        .iter()
        .find(|e| e["pid"] == victim)
        .unwrap()["slot"]
        .clone();
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();

    let replaced = sup.wait_event("worker_ready", |e| {
        e["slot"] == victim_slot && e["pid"] != victim
    });
    let new_pid = replaced["pid"].as_i64().unwrap() as i32;
    assert_ne!(new_pid, victim);
    assert!(alive(new_pid));
    let exit = sup.wait_event("worker_exited", |e| e["pid"] == victim);
    assert_eq!(exit["reason"], "crash");
    assert_eq!(exit["signal"], "SIGKILL");
    let restart = sup.wait_event("restart_scheduled", |e| e["slot"] == victim_slot);
    assert_eq!(restart["restarts"], 1);

    // the new worker serves: keep going until its slot has answered
    let before = ok.load(Ordering::Relaxed);
    wait_for("traffic after the restart", DEADLINE, || {
        (ok.load(Ordering::Relaxed) > before + 20).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let failures = c.join().unwrap();
        assert!(
            failures.is_empty(),
            "requests failed during the restart: {failures:?}"
        );
    }

    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(0));
}
