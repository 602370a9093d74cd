//! Zero-downtime reload (SIGHUP): under continuous load from keep-alive
//! and connection-per-request clients, five reloads lose no request; a
//! long request in flight when the reload starts completes; the new
//! generation sees the new config and the old pids are gone.

mod helper;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use helper::*;
use nix::sys::signal::Signal;
use serde_json::json;

fn config(version: &str, extra_env: &str) -> String {
    real_worker_config(
        "2",
        &format!(
            "kill_timeout = \"20s\"\n[apps.env]\nSERVICE_VERSION = \"{version}\"\nSIMULATED_LATENCY_MS = \"2500\"\nSIMULATED_TOKENS_PER_SEC = \"0\"\nJWT_SECRET = \"{SECRET}\"\n{extra_env}"
        ),
    )
}

/// A supervisor on `config("1.0.0", "")` with its two workers ready: the
/// supervisor, the fleet's address and the workers' pids.
fn start_v1() -> (Supervisor, SocketAddr, HashSet<i32>) {
    let mut sup = Supervisor::start(&config("1.0.0", ""));
    let addr = sup.addr();
    let old = sup.wait_ready(2).into_iter().collect();
    (sup, addr, old)
}

#[test]
fn five_reloads_under_load_lose_no_request() {
    let mut sup = Supervisor::start(&config("1.0.0", ""));
    let addr = sup.addr();
    sup.wait_ready(2);

    let load = Load::start(addr, 6, "/health");
    load.wait_more(100);
    for n in 1..=5 {
        sup.signal(Signal::SIGHUP);
        let committed = sup.wait_event_n("reload_committed", n, |_| true);
        assert_eq!(committed["generation"], n as u64 + 1);
        // keep the load on through the old workers' drain
        load.wait_more(200);
        // ~10 s of load in all, as in the PM2 measurement: not a wait for
        // a condition, just the load test's duration.
        std::thread::sleep(Duration::from_millis(1500));
    }
    // the last old workers finish draining while the load goes on
    wait_for("old workers drained", DEADLINE, || {
        (sup.events("worker_exited").len() >= 10).then_some(())
    });
    let total = load.served();
    let errors = load.finish();
    assert!(
        errors.is_empty(),
        "{} failed requests, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(total > 1000);
    let exits = sup.events("worker_exited");
    assert!(
        exits
            .iter()
            .all(|e| e["reason"] == "reload" && e["code"] == 0),
        "{exits:?}"
    );
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
fn a_long_request_in_flight_completes_and_the_new_config_applies() {
    let (mut sup, addr, old) = start_v1();

    // A 2.5 s simulated chat in flight across the reload.
    let slow = std::thread::spawn(move || {
        post_json(
            addr,
            "/api/v1/chat/generate",
            Some(&user_token()),
            &json!({"messages":[{"role":"user","content":"你好"}]}),
        )
    });
    // In flight once a worker is handling it: its route is decided.
    wait_for("the chat request in flight", DEADLINE, || {
        (sample_sum(&scrape(addr)?, "ai_route_decisions_total", "") >= 1.0).then_some(())
    });
    std::fs::write(sup.config_path(), config("2.0.0", "")).unwrap();
    sup.signal(Signal::SIGHUP);
    sup.wait_event("reload_committed", |_| true);
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.body);

    // every answer now comes from the new generation, with the new env
    for _ in 0..20 {
        let h = http_get(addr, "/health", DEADLINE).unwrap();
        assert_eq!(h.json()["version"], "2.0.0");
    }
    wait_for("old workers gone", DEADLINE, || {
        old.iter().all(|p| !alive(*p)).then_some(())
    });
    let new: HashSet<i32> = sup
        .events("worker_ready")
        .iter()
        .filter(|e| e["generation"] == 2)
        .map(|e| e["pid"].as_i64().unwrap() as i32)
        .collect();
    assert_eq!(new.len(), 2);
    assert!(new.is_disjoint(&old), "all pids changed");
    assert!(new.iter().all(|p| alive(*p)));
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
fn a_bad_config_is_refused_and_the_old_workers_keep_serving() {
    let (mut sup, addr, old) = start_v1();
    std::fs::write(
        sup.config_path(),
        "[[apps]]\nname = \"heartalk\"\ninstances = 0\n",
    )
    .unwrap();
    sup.signal(Signal::SIGHUP);
    let refused = sup.wait_event("reload_refused", |_| true);
    assert!(
        refused["errors"]
            .as_str()
            .unwrap()
            .contains("ecosystem.toml:3:"),
        "{refused}"
    );
    assert!(sup.events("reload_started").is_empty());
    assert_eq!(http_get(addr, "/health", DEADLINE).unwrap().status, 200);
    assert!(old.iter().all(|p| alive(*p)));
    assert_eq!(
        sup.events("worker_spawned").len(),
        2,
        "nothing new was started"
    );
}

#[test]
fn new_workers_that_never_become_ready_are_rolled_back() {
    let (mut sup, addr, old) = start_v1();
    let broken = test_worker_config(2, "no-ready", "listen_timeout = \"500ms\"")
        .replace("name = \"tw\"", "name = \"heartalk\"");
    // keep the app's address so the slot sockets are shared
    let broken = broken.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{addr}\""));
    std::fs::write(sup.config_path(), broken).unwrap();
    sup.signal(Signal::SIGHUP);
    let rolled = sup.wait_event("reload_rolled_back", |_| true);
    assert!(
        rolled["reason"]
            .as_str()
            .unwrap()
            .contains("not ready within listen_timeout"),
        "{rolled}"
    );
    assert!(sup.events("reload_committed").is_empty());
    for _ in 0..20 {
        assert_eq!(http_get(addr, "/health", DEADLINE).unwrap().status, 200);
    }
    assert!(
        old.iter().all(|p| alive(*p)),
        "the old generation still serves"
    );
    // the failed new workers were killed and reaped
    let new: Vec<i32> = sup
        .spawned_pids()
        .into_iter()
        .filter(|p| !old.contains(p))
        .collect();
    assert!(!new.is_empty());
    wait_for("failed new workers reaped", DEADLINE, || {
        new.iter().all(|p| !alive(*p)).then_some(())
    });
}

#[test]
fn reloads_during_a_reload_are_queued_not_interleaved() {
    let cfg = test_worker_config(2, "slow-ready=400", "");
    let mut sup = Supervisor::start(&cfg);
    sup.wait_ready(2);
    sup.signal(Signal::SIGHUP);
    sup.wait_event("reload_started", |_| true);
    sup.signal(Signal::SIGHUP);
    sup.wait_event("reload_queued", |_| true);
    sup.signal(Signal::SIGHUP);
    sup.wait_event_n("reload_committed", 2, |_| true);
    // the timeline never has two rollouts open at once
    let timeline = sup.timeline(&["reload_started", "reload_committed", "reload_rolled_back"]);
    let names: Vec<&str> = timeline
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "reload_started",
            "reload_committed",
            "reload_started",
            "reload_committed"
        ],
        "{timeline:?}"
    );
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
fn scaling_up_and_down_by_reload_loses_no_request() {
    let mut sup = Supervisor::start(&config("1.0.0", "").replace("instances = 2", "instances = 3"));
    let addr = sup.addr();
    sup.wait_ready(3);
    let load = Load::start(addr, 4, "/health");
    for (n, instances) in [(1, 1), (2, 4)] {
        let cfg = std::fs::read_to_string(sup.config_path()).unwrap();
        let current = if n == 1 {
            "instances = 3"
        } else {
            "instances = 1"
        };
        std::fs::write(
            sup.config_path(),
            cfg.replace(current, &format!("instances = {instances}")),
        )
        .unwrap();
        let out = sup.cli(&["reload"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = sup.status();
        let workers = status["apps"][0]["workers"].as_array().unwrap().len();
        assert_eq!(workers, instances, "{status}");
        load.wait_more(200);
    }
    // the retired slots' workers drained and exited
    wait_for("old workers gone", DEADLINE, || {
        (sup.events("worker_exited").len() >= 4).then_some(())
    });
    let errors = load.finish();
    assert!(
        errors.is_empty(),
        "{} failed requests, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    // every new worker answers
    let mut seen = HashSet::new();
    for _ in 0..80 {
        seen.insert(
            http_get(addr, "/health", DEADLINE)
                .unwrap()
                .header("x-worker-id")
                .unwrap()
                .to_string(),
        );
    }
    assert!(seen.len() >= 2, "{seen:?}");
}
