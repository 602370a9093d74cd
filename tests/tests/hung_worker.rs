//! The watchdog: a worker that stops serving — stopped (SIGSTOP), or stuck
//! in a busy loop — falls silent and is replaced on its slot's socket,
//! with the connections queued there served by the replacement; a worker
//! that never pings is not watched; a worker at full CPU from load keeps
//! pinging and is left alone.

mod helper;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use helper::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// The watchdog these tests run with.
const WATCHDOG: Duration = Duration::from_secs(2);

/// The worker at index `slot` of the app's workers in `status --json`, with
/// its pid, state and ping age.
fn slot_of(status: &Value, slot: usize) -> Value {
    status["apps"][0]["workers"][slot].clone()
}

/// Waits until `slot`'s worker has pinged its watchdog once.
fn wait_first_ping(sup: &Supervisor, slot: usize) {
    wait_for(&format!("a first ping on slot {slot}"), DEADLINE, || {
        slot_of(&sup.status(), slot)["watchdog_ping_age_secs"]
            .as_f64()
            .map(|_| ())
    });
}

/// `n` requests on fresh connections, all at once; each result is the
/// status code or the error, and how long it took.
fn burst(addr: SocketAddr, n: usize, timeout: Duration) -> Vec<(Result<u16, String>, Duration)> {
    let threads: Vec<_> = (0..n)
        .map(|_| {
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = http_get(addr, "/health", timeout)
                    .map(|r| r.status)
                    .map_err(|e| e.to_string());
                (r, t.elapsed())
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn a_stopped_worker_is_replaced_and_its_queued_connections_are_served() {
    let config = real_worker_config("2", "watchdog = \"2s\"\n");
    let mut sup = Supervisor::start(&config);
    let addr = sup.addr();
    let pids = sup.wait_ready(2);
    // Both workers ping: status shows a recent ping for each.
    for slot in 0..2 {
        wait_first_ping(&sup, slot);
    }
    let slot0 = slot_of(&sup.status(), 0);
    let stopped = slot0["pid"].as_i64().unwrap() as i32;
    assert!(pids.contains(&stopped));

    kill(Pid::from_raw(stopped), Signal::SIGSTOP).unwrap();
    let t0 = Instant::now();
    // Requests started while the worker is stopped: the ones the kernel
    // hashes to its slot wait in the slot's queue, and the replacement
    // answers them. None is lost.
    let during = std::thread::spawn(move || burst(addr, 24, Duration::from_secs(20)));

    let hung = sup.wait_event("worker_hung", |e| e["pid"] == stopped);
    assert_eq!(hung["reason"], "silent", "{hung}");
    let replacement = sup.wait_event("worker_ready", |e| e["slot"] == 0 && e["pid"] != stopped);
    let replaced_after = t0.elapsed();
    // watchdog + 1 s is the target; the margin is for a loaded CI machine.
    assert!(
        replaced_after < WATCHDOG + Duration::from_secs(4),
        "replaced only after {replaced_after:?}"
    );
    let new_pid = replacement["pid"].as_i64().unwrap() as i32;

    let results = during.join().unwrap();
    assert!(
        results.iter().all(|(r, _)| *r == Ok(200)),
        "requests started while the worker was stopped: {results:?}"
    );
    // Some of them did land on the stopped worker's slot and waited there
    // (24 connections all hashed to the other slot: odds 2^-24).
    assert!(
        results
            .iter()
            .any(|(_, took)| *took > Duration::from_millis(500)),
        "no request waited for the replacement: {results:?}"
    );
    // Every request started after the replacement succeeds.
    for i in 0..40 {
        let r = http_get(addr, "/health", Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("request {i} after the replacement: {e}"));
        assert_eq!(r.status, 200);
    }
    // The stopped worker got SIGABRT and, stopped, is SIGKILLed.
    wait_for("the hung worker to be reaped", DEADLINE, || {
        (!alive(stopped)).then_some(())
    });
    let s = sup.status();
    let slot0 = slot_of(&s, 0);
    assert_eq!(slot0["pid"], new_pid, "{slot0}");
    assert_eq!(slot0["state"], "online", "{slot0}");
    assert_eq!(slot0["last_exit"]["reason"], "hung", "{slot0}");
    let text = scrape_fleet(addr);
    assert_eq!(
        sample(
            &text,
            "heartalk_worker_hung_total",
            "app=\"heartalk\",reason=\"silent\""
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "heartalk_worker_restarts_total",
            "app=\"heartalk\",reason=\"hung\""
        ),
        Some(1.0)
    );
    // The other worker was never touched.
    assert_eq!(sup.events("worker_hung").len(), 1);
}

#[test]
fn a_worker_spinning_in_a_busy_loop_is_replaced() {
    let config = test_worker_config(1, "serve", "watchdog = \"2s\"\n");
    let mut sup = Supervisor::start(&config);
    let addr = sup.addr();
    let pid = sup.wait_ready(1)[0];
    wait_first_ping(&sup, 0);
    let r = http_get(addr, "/spin", Duration::from_secs(5)).unwrap();
    assert_eq!(r.status, 200);
    let hung = sup.wait_event("worker_hung", |e| e["pid"] == pid);
    assert_eq!(hung["reason"], "silent");
    let replacement = sup.wait_event("worker_ready", |e| e["pid"] != pid);
    let new_pid = replacement["pid"].as_i64().unwrap();
    let r = http_get(addr, "/", Duration::from_secs(5)).unwrap();
    assert_eq!(r.json()["pid"], new_pid);
    // SIGABRT ends a spinning process by itself.
    wait_for("the spinning worker to be reaped", DEADLINE, || {
        (!alive(pid)).then_some(())
    });
    let exited = sup.wait_event("worker_exited", |e| e["pid"] == pid);
    assert_eq!(exited["reason"], "hung", "{exited}");
}

#[test]
fn a_worker_that_never_pings_is_not_watched() {
    // `no-ping`: a plain sd_notify program that knows nothing of watchdogs.
    let config = test_worker_config(1, "serve", "watchdog = \"1s\"\n")
        .replace("args = [\"serve\"]", "args = [\"serve\", \"no-ping\"]");
    let mut sup = Supervisor::start(&config);
    let addr = sup.addr();
    let pid = sup.wait_ready(1)[0];
    // Three watchdog intervals of silence.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let r = http_get(addr, "/", Duration::from_secs(5)).unwrap();
        assert_eq!(r.json()["pid"], pid);
        // Pacing the requests through the silence under test.
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sup.events("worker_hung").is_empty());
    let slot = slot_of(&sup.status(), 0);
    assert_eq!(slot["pid"], pid);
    assert_eq!(slot["state"], "online");
    assert!(slot["watchdog_ping_age_secs"].is_null(), "{slot}");
}

#[test]
fn a_worker_at_full_cpu_from_load_keeps_pinging() {
    let config = real_worker_config("1", "watchdog = \"3s\"\n");
    let mut sup = Supervisor::start(&config);
    let addr = sup.addr();
    let pid = sup.wait_ready(1)[0];
    wait_first_ping(&sup, 0);
    let load = Load::start(addr, 16, "/health");
    load.wait_more(2_000);
    // Three watchdog intervals at full load; the worker's own thread is busy.
    let start = Instant::now();
    let mut busiest = 0.0f64;
    let mut oldest_ping = 0.0f64;
    while start.elapsed() < Duration::from_secs(9) {
        // Sampling period over the 9 s under test, not a wait for an event.
        std::thread::sleep(Duration::from_millis(500));
        let slot = slot_of(&sup.status(), 0);
        busiest = busiest.max(slot["cpu_percent"].as_f64().unwrap_or(0.0));
        oldest_ping = oldest_ping.max(slot["watchdog_ping_age_secs"].as_f64().unwrap_or(99.0));
    }
    let errors = load.finish();
    assert!(errors.is_empty(), "{errors:?}");
    // A precondition, not the claim: the worker really was busy.
    assert!(
        busiest >= 50.0,
        "the load did not keep the worker busy (peak {busiest} % CPU)"
    );
    assert!(
        sup.events("worker_hung").is_empty(),
        "{:?}",
        sup.events("worker_hung")
    );
    assert_eq!(slot_of(&sup.status(), 0)["pid"], pid);
    // Pings every 1.5 s: none was ever as old as the 3 s watchdog.
    assert!(
        oldest_ping < 3.0,
        "a ping came {oldest_ping} s apart at full load"
    );
}

/// The fleet-wide metrics, from `/metrics` on the service port (the real
/// worker serves them from the supervisor).
fn scrape_fleet(addr: SocketAddr) -> String {
    wait_for("the fleet's metrics", DEADLINE, || scrape(addr))
}
