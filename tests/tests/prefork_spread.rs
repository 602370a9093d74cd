//! N workers of the real `heartalk-worker` start on the supervisor's
//! SO_REUSEPORT sockets and new connections are spread across them.

mod helper;

use std::collections::HashSet;
use std::time::Duration;

use helper::*;
use nix::sys::signal::Signal;

#[test]
fn four_workers_start_and_share_the_port() {
    let mut sup = Supervisor::start(&real_worker_config("4", ""));
    let addr = sup.addr();
    let pids = sup.wait_ready(4);
    assert_eq!(pids.len(), 4);
    assert!(pids.iter().all(|p| alive(*p)));

    let mut seen = HashSet::new();
    for _ in 0..60 {
        let r = http_get(addr, "/health", Duration::from_secs(10)).expect("GET /health");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["status"], "healthy");
        seen.insert(r.header("x-worker-id").expect("X-Worker-Id").to_string());
    }
    assert!(seen.len() >= 2, "all 60 new connections went to {seen:?}");

    // the standard component probe answers too, from a supervised worker
    let r = http_get(addr, "/api/v1/health", Duration::from_secs(10)).unwrap();
    let data = &r.json()["data"];
    assert_eq!(data["service"], "ai-service");
    assert!(pids.contains(&(data["system"]["pid"].as_i64().unwrap() as i32)));

    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(0), "{}", sup.stderr());
    assert!(pids.iter().all(|p| !alive(*p)));
}

#[test]
fn instances_max_under_taskset_starts_one_worker() {
    let mut sup =
        Supervisor::start_wrapped(&real_worker_config("\"max\"", ""), &["taskset", "-c", "0"]);
    let addr = sup.addr();
    sup.wait_ready(1);
    assert_eq!(sup.events("listening")[0]["slots"], 1);
    assert_eq!(sup.events("worker_spawned").len(), 1);
    assert_eq!(
        http_get(addr, "/health", Duration::from_secs(10))
            .unwrap()
            .status,
        200
    );
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(0));
}
