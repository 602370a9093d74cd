//! The memory guard: a worker growing past `max_memory` under load is
//! replaced gracefully (the replacement is READY before the old one is
//! told to stop, and no request fails); one jumping past
//! `max_memory_hard` is killed at once.

mod helper;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use helper::*;
use nix::sys::signal::Signal;

#[test]
fn a_growing_worker_is_replaced_gracefully_under_load() {
    // 256 KiB kept per request: a worker crosses 48 MiB after ~200 requests.
    let extra = "max_memory = \"48M\"\nmemory_check_interval = \"200ms\"\nmemory_strikes = 2\nkill_timeout = \"10s\"";
    let mut sup = Supervisor::start(&test_worker_config(1, "leak=256", extra));
    let addr = sup.addr();
    let first = sup.wait_ready(1)[0];

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (stop, served) = (stop.clone(), served.clone());
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match http_get(addr, "/", Duration::from_secs(30)) {
                        Ok(r) if r.status == 200 => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        other => errors.push(format!("{other:?}")),
                    }
                }
                errors
            })
        })
        .collect();

    let replace = sup.wait_event("memory_replace", |e| e["pid"] == first);
    assert!(replace["rss"].as_u64().unwrap() > 48 << 20);
    // The crossing was confirmed by PSS on two consecutive samples.
    let strikes = sup.events("memory_strike");
    assert!(
        strikes
            .iter()
            .any(|e| e["pid"] == first && e["strike"] == 1),
        "{strikes:?}"
    );
    let exit = sup.wait_event("worker_exited", |e| e["pid"] == first);
    assert_eq!(exit["reason"], "memory");
    assert_eq!(
        exit["code"], 0,
        "the old worker drained and exited by itself"
    );

    // Order: replacement READY, then the old worker told to drain.
    let timeline = sup.timeline(&["memory_replace", "worker_ready", "worker_draining"]);
    let names: Vec<String> = timeline
        .iter()
        .map(|e| format!("{}:{}", e["event"].as_str().unwrap(), e["pid"]))
        .collect();
    let at = |name: &str| {
        names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("{name} missing from {names:?}"))
    };
    let successor = sup
        .events("worker_ready")
        .iter()
        .map(|e| e["pid"].as_i64().unwrap())
        .find(|p| *p != i64::from(first))
        .expect("a replacement became ready");
    assert!(at(&format!("memory_replace:{first}")) < at(&format!("worker_ready:{successor}")));
    assert!(
        at(&format!("worker_ready:{successor}")) < at(&format!("worker_draining:{first}")),
        "{names:?}"
    );

    let before = served.load(Ordering::Relaxed);
    wait_for("traffic on the replacement", DEADLINE, || {
        (served.load(Ordering::Relaxed) > before + 50).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let errors: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(errors.is_empty(), "requests failed: {errors:?}");
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
fn crossing_the_hard_limit_kills_at_once() {
    // Soft strikes that cannot add up: on a loaded machine the balloon can
    // sit between the limits for two checks while its pages are touched,
    // and a soft replacement would then stop the checks before the kill.
    let extra = "max_memory = \"32M\"\nmax_memory_hard = \"64M\"\nmemory_check_interval = \"100ms\"\nmemory_strikes = 100";
    let mut sup = Supervisor::start(&test_worker_config(1, "serve", extra));
    let addr = sup.addr();
    let first = sup.wait_ready(1)[0];
    // 100 MB at once: past the hard limit.
    let _ = http_get(addr, "/balloon?mb=100", DEADLINE);
    let kill = sup.wait_event("memory_kill", |e| e["pid"] == first);
    assert!(kill["rss"].as_u64().unwrap() > 64 << 20);
    let exit = sup.wait_event("worker_exited", |e| e["pid"] == first);
    assert_eq!(exit["reason"], "memory");
    assert_eq!(exit["signal"], "SIGKILL");
    // and the slot is refilled
    sup.wait_event("worker_ready", |e| e["pid"] != first);
    assert_eq!(http_get(addr, "/", DEADLINE).unwrap().status, 200);
}
