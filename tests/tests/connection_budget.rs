//! The connection budget and app-wide readiness, end to end: one of three
//! real workers of an app runs out of descriptors (its open-file limit
//! lowered with `prlimit` while it runs) under 12,000 idle connections. It
//! must stop accepting at its budget rather than fail requests, report
//! itself degraded (its metrics through the supervisor, `heartalk
//! status`), the other workers of its app must keep answering new requests
//! but say 503 on `/ready` for the app, a second app of the same
//! supervisor (another port, another balancer) must stay ready, and once
//! the idle connections close the starved worker must recover on its own.

mod helper;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use helper::*;
use serde_json::Value;

/// Idle client connections opened (spread over the three slots by
/// SO_REUSEPORT hashing: about 4,000 each, four times the starved worker's
/// budget). The starved slot holds its budget's worth plus its accept
/// queue (`listen` backlog: 4,096, capped by `net.core.somaxconn`); with
/// two slots its ~6,000 would overflow that queue and the connects past it
/// would hang in SYN retries, hence three.
const IDLE: usize = 12_000;
/// The app's slots: 0 is starved, the others stay healthy.
const SLOTS: u64 = 3;
/// The open-file limit the starved worker is lowered to.
const STARVED_NOFILE: u64 = 1024;
/// Its reserve: max(64, a tenth of the limit) = 102 (worker/src/http/budget.rs;
/// `Ord::max` is not callable in a const).
const STARVED_RESERVE: u64 = if STARVED_NOFILE / 10 > 64 {
    STARVED_NOFILE / 10
} else {
    64
};
/// Its budget then: the limit minus the reserve, 922.
const STARVED_BUDGET: f64 = (STARVED_NOFILE - STARVED_RESERVE) as f64;
/// How long a fresh probe may wait for its answer: the healthy worker
/// answers in milliseconds, the starved one's queue never does.
const PROBE: Duration = Duration::from_millis(1500);
/// Answers wanted from the healthy worker, and fresh connections tried for
/// them at most (each lands on either slot, about evenly).
const ENOUGH: usize = 6;
const TRIES: usize = 60;

/// `[slot].field` of the app under test (the first) in `heartalk status --json`.
fn worker(status: &Value, slot: u64) -> Value {
    status["apps"][0]["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .find(|w| w["slot"] == slot)
        .cloned()
        .unwrap_or_else(|| panic!("no slot {slot} in {status}"))
}

/// One `GET path` on a fresh connection with a short timeout: the answer
/// and the slot that gave it, or `None` when nobody answered in time (the
/// connection landed in the starved worker's queue).
fn probe(addr: SocketAddr, path: &str) -> Option<(Response, u64)> {
    let r = http_get(addr, path, PROBE).ok()?;
    let slot = r.header("x-worker-id")?.parse().ok()?;
    Some((r, slot))
}

/// The app under test's series of `name` for `slot` in a scrape.
fn slot_sample(text: &str, name: &str, slot: u64) -> Option<f64> {
    let labels = format!("slot=\"{slot}\"");
    samples_of(text, name, &labels)
        .find(|(series, _)| series.contains("app=\"heartalk\""))
        .map(|(_, v)| v)
}

/// A worker gauge (`name{app,slot}`) on the supervisor's admin `/metrics`.
fn gauge(admin: SocketAddr, name: &str, slot: u64) -> Option<f64> {
    slot_sample(&scrape(admin)?, name, slot)
}

/// How many connections the starved slot can hold: its budget, accepted,
/// and its accept queue (the listen backlog, capped by somaxconn).
fn starved_capacity() -> usize {
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    STARVED_BUDGET as usize + somaxconn.min(4096) + 1
}

#[test]
fn a_worker_out_of_descriptors_stops_at_its_budget_reports_degraded_and_recovers() {
    // The idle connections need as many descriptors here too.
    let nofile = heartalk_e2e::raise_nofile();
    assert!(
        nofile >= (IDLE as u64) + 1000,
        "this test needs a hard open-file limit of at least {} (ulimit -Hn is {nofile})",
        IDLE + 1000
    );
    // The starved slot's share, with ample margin (the hashing spreads
    // 12,000 connections within about ±160 of 4,000 per slot).
    let share = IDLE / SLOTS as usize + 500;
    assert!(
        starved_capacity() >= share,
        "the starved slot can hold {} connections, fewer than its share {share}: raise net.core.somaxconn",
        starved_capacity()
    );
    let admin = free_addr();
    // The idle connections must outlive the test's degraded phase: no
    // first byte ever comes (FIRST_BYTE_TIMEOUT would close them at 10 s).
    // A second app, `other`, shares the supervisor but not the trouble.
    let other = real_worker_config("1", "").replace("name = \"heartalk\"", "name = \"other\"");
    let config = before_apps(
        &format!(
            "{}\n{other}",
            real_worker_config(
                &SLOTS.to_string(),
                "[apps.env]\nFIRST_BYTE_TIMEOUT = \"300s\"\nKEEPALIVE_TIMEOUT = \"300s\"\n",
            )
        ),
        &format!("[supervisor]\nmetrics_listen = \"{admin}\"\ncontrol_socket = \"control.sock\""),
    );
    let mut sup = Supervisor::start(&config);
    let listening = |sup: &mut Supervisor, app: &str| -> SocketAddr {
        let ev = sup.wait_event("listening", |e| e["app"] == app);
        ev["addr"].as_str().expect("addr").parse().expect("addr")
    };
    let addr = listening(&mut sup, "heartalk");
    let other_addr = listening(&mut sup, "other");
    sup.wait_ready(SLOTS as usize + 1);

    // The supervisor raised its soft limit to the hard one, and says so.
    let fd_limit = sup.wait_event("fd_limit", |_| true);
    assert_eq!(fd_limit["soft"], fd_limit["hard"], "{fd_limit}");
    assert!(fd_limit["soft_before"].is_u64(), "{fd_limit}");

    let status = sup.status();
    let starved = 0u64;
    let healthy: Vec<u64> = (1..SLOTS).collect();
    let starved_pid = worker(&status, starved)["pid"].as_i64().expect("pid");
    for slot in 0..SLOTS {
        assert_eq!(worker(&status, slot)["state"], "online", "{status}");
    }
    let out = Command::new("prlimit")
        .arg("--pid")
        .arg(starved_pid.to_string())
        .arg(format!("--nofile={STARVED_NOFILE}:{STARVED_NOFILE}"))
        .output()
        .expect("run prlimit (util-linux)");
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The worker reads its limit again every second; its budget follows.
    wait_for(
        "the starved worker's budget to follow its limit",
        DEADLINE,
        || (gauge(admin, "ai_connections_max", starved)? == STARVED_BUDGET).then_some(()),
    );
    for &slot in &healthy {
        let max = gauge(admin, "ai_connections_max", slot).expect("healthy budget");
        assert!(max > share as f64, "healthy budget {max}");
    }

    // 12,000 idle connections: the starved worker takes its budget's
    // worth, the rest of its share waits in its slot's kernel queue.
    let started = std::time::Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            idle.push(s);
        }
    }
    assert!(idle.len() >= IDLE - 100, "opened only {}", idle.len());
    eprintln!(
        "{} idle connections opened in {:?}",
        idle.len(),
        started.elapsed()
    );

    // Degraded after 3 s of not accepting: the worker's own gauge, through
    // the supervisor's metrics (its metrics socket still has descriptors:
    // that is what the reserve is for).
    wait_for(
        "the starved worker's ai_worker_degraded = 1",
        Duration::from_secs(30),
        || (gauge(admin, "ai_worker_degraded", starved)? == 1.0).then_some(()),
    );
    let text = scrape(admin).expect("admin metrics");
    assert_eq!(
        slot_sample(&text, "ai_connections_open", starved),
        Some(STARVED_BUDGET),
        "the starved worker holds exactly its budget"
    );
    for &slot in &healthy {
        assert_eq!(slot_sample(&text, "ai_worker_degraded", slot), Some(0.0));
        assert!(
            slot_sample(&text, "ai_connections_open", slot).is_some_and(|n| n > 3000.0),
            "healthy slot {slot} took its share"
        );
    }
    assert!(
        sample_sum(&text, "ai_connection_budget_reached_total", "") >= 1.0,
        "the budget was hit"
    );

    // The supervisor shows the slot degraded (`X_HEARTALK_DEGRADED=1`).
    wait_for("status to show the starved slot degraded", DEADLINE, || {
        let status = sup.status();
        (worker(&status, starved)["state"] == "degraded").then_some(())
    });
    let status = sup.status();
    for &slot in &healthy {
        assert_eq!(worker(&status, slot)["state"], "online", "{status}");
    }

    // New requests on fresh connections: whatever lands on a healthy
    // worker is answered; nothing is answered by the starved one.
    // (A third land on each slot; stop once enough were answered.)
    let (mut answered, mut tries) = (0, 0);
    while answered < ENOUGH && tries < TRIES {
        tries += 1;
        if let Some((r, slot)) = probe(addr, "/health") {
            assert!(
                healthy.contains(&slot),
                "only healthy workers accept: {r:?}"
            );
            assert_eq!(r.status, 200, "{}", r.body);
            answered += 1;
        }
    }
    assert_eq!(
        answered, ENOUGH,
        "only {answered} of {tries} requests answered"
    );

    // The healthy workers' /ready speaks for the app: 503 degraded.
    let (mut ready_answers, mut tries) = (0, 0);
    while ready_answers < ENOUGH && tries < TRIES {
        tries += 1;
        if let Some((r, slot)) = probe(addr, "/ready") {
            assert!(healthy.contains(&slot), "{r:?}");
            assert_eq!(r.status, 503, "app-wide readiness: {}", r.body);
            let body = r.json();
            assert_eq!(body["status"], "degraded", "{body}");
            assert_eq!(body["accepting"], true, "{body}");
            assert_eq!(body["fleet_not_serving"], 1, "one slot of this app: {body}");
            ready_answers += 1;
        }
    }
    assert_eq!(
        ready_answers, ENOUGH,
        "only {ready_answers} of {tries} probes answered"
    );
    // The other app, on its own port behind its own balancer, is ready:
    // one app's degraded worker is not its business.
    let r = http_get(other_addr, "/ready", PROBE).expect("the other app answers");
    assert_eq!(r.status, 200, "the other app: {}", r.body);
    assert_eq!(r.json()["status"], "ready");

    // The idle connections close: the starved worker accepts again,
    // reports serving, and the whole app is ready.
    drop(idle);
    wait_for(
        "the starved worker's ai_worker_degraded = 0",
        Duration::from_secs(30),
        || (gauge(admin, "ai_worker_degraded", starved)? == 0.0).then_some(()),
    );
    wait_for("status to show the slot online again", DEADLINE, || {
        let status = sup.status();
        (worker(&status, starved)["state"] == "online").then_some(())
    });
    let mut ready_from = std::collections::BTreeSet::new();
    wait_for("/ready 200 from every worker", DEADLINE, || {
        let (r, slot) = probe(addr, "/ready")?;
        assert_eq!(r.status, 200, "after recovery: {}", r.body);
        assert_eq!(r.json()["status"], "ready");
        ready_from.insert(slot);
        (ready_from.len() == SLOTS as usize).then_some(())
    });
    assert_eq!(
        worker(&sup.status(), starved)["pid"].as_i64(),
        Some(starved_pid),
        "the starved worker recovered without a restart"
    );

    sup.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(sup.wait_exit(DEADLINE).success());

    // The starved worker's own log: degraded for its budget (never an
    // accept failure: the reserve kept descriptors for everything else),
    // then recovered.
    let lines: Vec<Value> = read_logs(&sup.log_dir())
        .into_iter()
        .filter(|l| l["slot"] == starved && l["pid"] == starved_pid)
        .collect();
    let degraded: Vec<&Value> = lines
        .iter()
        .filter(|l| l["event"] == "accept_degraded")
        .collect();
    assert_eq!(degraded.len(), 1, "{degraded:?}");
    assert_eq!(degraded[0]["level"], "WARN");
    let reason = degraded[0]["reason"].as_str().unwrap_or("");
    assert!(reason.starts_with("connection budget reached"), "{reason}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["event"] == "accept_recovered")
            .count(),
        1
    );
    assert!(
        !lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("accept failed"))),
        "the budget kept accept from failing"
    );
}
