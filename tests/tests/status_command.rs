//! `heartalk status --json` tells the truth: live pids that match /proc,
//! restart counts and reasons after a crash and a memory replacement, a
//! new generation after a reload; the table shows every worker.

mod helper;

use std::time::Duration;

use helper::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

fn workers(status: &Value) -> Vec<Value> {
    status["apps"][0]["workers"].as_array().unwrap().clone()
}

#[test]
fn status_follows_crashes_and_reloads() {
    let mut sup = Supervisor::start(&real_worker_config("3", "min_uptime = \"100ms\""));
    let addr = sup.addr();
    let pids = sup.wait_ready(3);

    let s = sup.status();
    assert_eq!(s["supervisor"]["pid"], sup.pid());
    assert_eq!(s["supervisor"]["state"], "running");
    assert_eq!(s["supervisor"]["generation"], 1);
    assert_eq!(s["apps"][0]["listen"], addr.to_string());
    let ws = workers(&s);
    assert_eq!(ws.len(), 3);
    for w in &ws {
        let pid = w["pid"].as_i64().unwrap() as i32;
        assert!(pids.contains(&pid) && alive(pid), "{w}");
        assert_eq!(w["state"], "online");
        assert_eq!(w["generation"], 1);
        assert!(w["rss_bytes"].as_u64().unwrap() > 0);
        assert!(w["pss_bytes"].as_u64().unwrap() > 0);
        assert_eq!(w["restarts"], 0);
    }

    // kill -9 one worker: a new pid in its slot, one restart, reason crash
    let victim = ws[1]["pid"].as_i64().unwrap() as i32;
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    let s = wait_for("the restarted slot online", DEADLINE, || {
        let s = sup.status();
        let w = &workers(&s)[1];
        (w["state"] == "online" && w["pid"] != victim).then_some(s)
    });
    let w = &workers(&s)[1];
    assert_eq!(w["restarts"], 1);
    assert_eq!(w["last_exit"]["reason"], "crash");
    assert_eq!(w["last_exit"]["signal"], "SIGKILL");
    assert!(alive(w["pid"].as_i64().unwrap() as i32));

    // a reload: every pid changes, generation 2
    sup.signal(Signal::SIGHUP);
    sup.wait_event("reload_committed", |_| true);
    let s = sup.status();
    assert_eq!(s["supervisor"]["generation"], 2);
    assert_eq!(s["supervisor"]["reload"]["last"]["outcome"], "committed");
    let ws = workers(&s);
    assert_eq!(ws.len(), 3, "{s}");
    assert!(ws.iter().all(|w| w["generation"] == 2), "{s}");

    // the table: a header line, a config line, a column header, a row per worker
    let out = sup.cli(&["status"]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert_eq!(table.lines().count(), 3 + 3, "{table}");
    assert!(table.lines().nth(2).unwrap().starts_with("app"), "{table}");
    assert!(table.contains("online"));
}

#[test]
fn status_shows_a_memory_replacement() {
    let extra = "max_memory = \"40M\"\nmemory_check_interval = \"100ms\"";
    let mut sup = Supervisor::start(&test_worker_config(1, "serve", extra));
    let addr = sup.addr();
    let first = sup.wait_ready(1)[0];
    let _ = http_get(addr, "/balloon?mb=60", Duration::from_secs(10));
    sup.wait_event("worker_exited", |e| {
        e["pid"] == first && e["reason"] == "memory"
    });
    let s = sup.status();
    let w = &workers(&s)[0];
    assert_ne!(w["pid"], first);
    assert_eq!(w["restarts"], 1);
    assert_eq!(w["last_exit"]["reason"], "memory");
    assert!(alive(w["pid"].as_i64().unwrap() as i32));
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(0));
}
