//! A worker that exits at once: restarts back off with growing gaps, the
//! slot ends `errored`, and with every slot errored the supervisor exits
//! non-zero (69) so an orchestrator restarts the container.

mod helper;

use helper::*;

#[test]
fn crash_loop_backs_off_then_errors_then_exits_nonzero() {
    let extra = "restart_delay = \"100ms\"\nrestart_delay_max = \"2s\"\nmin_uptime = \"1s\"\nmax_restarts = 4";
    let mut sup = Supervisor::start(&test_worker_config(2, "exit-now=3", extra));
    let status = sup.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(69), "{}", sup.stderr());

    let errored = sup.events("slot_errored");
    assert_eq!(errored.len(), 2, "both slots errored: {errored:?}");
    // 1 first start + 4 restarts per slot.
    let spawned = sup.events("worker_spawned");
    assert_eq!(spawned.len(), 10, "{spawned:?}");
    for slot in 0..2 {
        let delays: Vec<u64> = sup
            .events("restart_scheduled")
            .iter()
            .filter(|e| e["slot"] == slot)
            .map(|e| e["delay_ms"].as_u64().unwrap())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800], "slot {slot}");
        // and the real gaps between spawns grow accordingly
        let times: Vec<f64> = spawned
            .iter()
            .filter(|e| e["slot"] == slot)
            .map(|e| seconds_of_day(e["timestamp"].as_str().unwrap()))
            .collect();
        assert_eq!(times.len(), 5);
        let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        for (gap, want) in gaps.iter().zip([0.1, 0.2, 0.4, 0.8]) {
            // never early; late by at most a generous margin on a busy box
            assert!(
                *gap >= want - 0.005 && *gap < want + 2.0,
                "slot {slot}: gaps {gaps:?}"
            );
        }
        assert!(gaps[3] > gaps[0], "gaps must grow: {gaps:?}");
    }
    let exits = sup.events("worker_exited");
    assert!(
        exits
            .iter()
            .all(|e| e["reason"] == "crash" && e["code"] == 3),
        "{exits:?}"
    );
}

#[test]
fn a_worker_that_never_becomes_ready_is_a_failed_start() {
    let extra = "listen_timeout = \"300ms\"\nmax_restarts = 1\nrestart_delay = \"50ms\"";
    let mut sup = Supervisor::start(&test_worker_config(1, "no-ready", extra));
    let status = sup.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(69));
    let timeouts = sup.events("listen_timeout");
    assert_eq!(timeouts.len(), 2, "{timeouts:?}");
    let exits = sup.events("worker_exited");
    assert!(
        exits.iter().all(|e| e["reason"] == "listen_timeout"),
        "{exits:?}"
    );
    assert!(sup.events("worker_ready").is_empty());
}

/// `2026-11-28T10:47:29.445157Z` → seconds since midnight.
fn seconds_of_day(ts: &str) -> f64 {
    let time = ts.split('T').nth(1).unwrap().trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
}
