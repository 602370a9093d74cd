//! kill -9 of a worker: a replacement with a new pid takes its slot, the
//! restart is counted with reason `crash`, and requests keep succeeding.
//!
//! Requests the victim had already accepted die with it (nothing can save
//! a connection inside a SIGKILLed process); every request that starts
//! after the victim is gone must succeed, including those the kernel
//! queues on the dead slot's socket until the replacement is ready.

mod helper;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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
                // (when the request started, what went wrong)
                let mut failures: Vec<(Instant, String)> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    match http_get(addr, "/health", Duration::from_secs(10)) {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failures.push((started, format!("{other:?}"))),
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

    let exit = sup.wait_event("worker_exited", |e| e["pid"] == victim);
    // The victim has been reaped: from here on it cannot accept anything,
    // so every request that starts now must succeed.
    let gone_at = Instant::now();
    assert_eq!(exit["reason"], "crash");
    assert_eq!(exit["signal"], "SIGKILL");
    let replaced = sup.wait_event("worker_ready", |e| {
        e["slot"] == victim_slot && e["pid"] != victim
    });
    let new_pid = replaced["pid"].as_i64().unwrap() as i32;
    assert_ne!(new_pid, victim);
    assert!(alive(new_pid));
    let restart = sup.wait_event("restart_scheduled", |e| e["slot"] == victim_slot);
    assert_eq!(restart["restarts"], 1);

    // the new worker serves: keep going for a while after the restart
    let before = ok.load(Ordering::Relaxed);
    wait_for("traffic after the restart", DEADLINE, || {
        (ok.load(Ordering::Relaxed) > before + 40).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let mut lost_in_victim = 0;
    for c in clients {
        for (started, what) in c.join().unwrap() {
            assert!(
                started < gone_at,
                "a request started after the crash failed: {what}"
            );
            lost_in_victim += 1;
        }
    }
    assert!(
        lost_in_victim <= 4,
        "at most one in-flight request per client can die with the worker"
    );

    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(0));
}
