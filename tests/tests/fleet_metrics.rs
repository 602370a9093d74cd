//! One correct fleet-wide answer per scrape: `GET /metrics` on the service
//! port (whichever worker answers) and on `metrics_listen` sum every
//! worker's counters, never go backwards when a worker dies, and pass
//! `promtool check metrics`.

mod helper;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use helper::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// `name{labels}` → value, for counter-like series (`_total`, `_count`,
/// `_sum`, `_bucket`).
fn counters(text: &str) -> HashMap<String, f64> {
    samples(text)
        .filter(|(series, _)| {
            let name = series_name(series);
            let counter_like = ["_total", "_count", "_sum", "_bucket"]
                .iter()
                .any(|s| name.ends_with(s));
            counter_like && !name.starts_with("process_")
        })
        .map(|(series, v)| (series.to_string(), v))
        .collect()
}

/// The `http_requests_total` of `route`, over every method and status.
fn route_total(text: &str, route: &str) -> f64 {
    sample_sum(text, "http_requests_total", &format!("route=\"{route}\""))
}

#[test]
fn k_requests_are_counted_exactly_whichever_worker_answers() {
    let admin = free_addr();
    let config = before_apps(
        &real_worker_config("3", ""),
        &format!("[supervisor]\nmetrics_listen = \"{admin}\"\ncontrol_socket = \"@CTL@\""),
    );
    let mut sup = Supervisor::start(&config.replace("@CTL@", "ctl.sock"));
    let addr = sup.addr();
    sup.wait_ready(3);

    const K: usize = 90;
    let mut answered_by = HashSet::new();
    for _ in 0..K {
        let r = http_get(addr, "/ready", Duration::from_secs(10)).unwrap();
        assert_eq!(r.status, 200);
        answered_by.insert(r.header("x-worker-id").unwrap().to_string());
    }
    assert!(
        answered_by.len() >= 2,
        "requests should land on several workers: {answered_by:?}"
    );
    // Several scrapes over fresh connections land on different workers;
    // every one of them has the same, exact total.
    for _ in 0..6 {
        let text = http_get(addr, "/metrics", Duration::from_secs(10))
            .unwrap()
            .body;
        assert_eq!(route_total(&text, "/ready"), K as f64, "{text}");
    }
    // the supervisor's own admin address serves the same numbers
    let text = http_get(admin, "/metrics", Duration::from_secs(10))
        .unwrap()
        .body;
    assert_eq!(route_total(&text, "/ready"), K as f64);
    assert!(text.contains("heartalk_supervisor_resident_memory_bytes "));
    assert!(
        text.contains("heartalk_worker_memory_bytes{app=\"heartalk\",slot=\"0\",kind=\"pss\"}")
    );
}

#[test]
fn counters_never_go_backwards_when_a_worker_is_killed() {
    let mut sup = Supervisor::start(&real_worker_config("2", "min_uptime = \"100ms\""));
    let addr = sup.addr();
    let pids = sup.wait_ready(2);
    for _ in 0..40 {
        http_get(addr, "/ready", Duration::from_secs(10)).unwrap();
    }
    let before = counters(
        &http_get(addr, "/metrics", Duration::from_secs(10))
            .unwrap()
            .body,
    );
    kill(Pid::from_raw(pids[0]), Signal::SIGKILL).unwrap();
    sup.wait_event("worker_ready", |e| {
        e["pid"] != pids[0] && e["pid"] != pids[1]
    });
    for _ in 0..10 {
        http_get(addr, "/ready", Duration::from_secs(10)).unwrap();
    }
    let after_text = http_get(addr, "/metrics", Duration::from_secs(10))
        .unwrap()
        .body;
    let after = counters(&after_text);
    for (series, v) in &before {
        let now = after
            .get(series)
            .copied()
            .unwrap_or_else(|| panic!("{series} vanished:\n{after_text}"));
        assert!(now >= *v, "{series} went from {v} to {now}");
    }
    assert!(route_total(&after_text, "/ready") >= 50.0);
    assert!(
        after_text.contains("heartalk_worker_restarts_total{app=\"heartalk\",reason=\"crash\"} 1"),
        "{after_text}"
    );
}

#[test]
fn the_exposition_passes_promtool() {
    let ark = heartalk_e2e::mock_ark::MockArk::start();
    let svc = live_service(&ark.base_url(), &[]);
    let body = serde_json::json!({"messages":[{"role":"user","content":"你好"}]});
    assert_eq!(svc.post("/api/v1/chat/generate", &body).status, 200);
    assert_eq!(svc.post("/api/v1/chat/stream", &body).status, 200);
    svc.sup.signal(Signal::SIGHUP);
    let mut sup = svc.sup;
    sup.wait_event("reload_committed", |_| true);
    let text = http_get(svc.addr, "/metrics", Duration::from_secs(10))
        .unwrap()
        .body;
    assert!(text.contains("ai_upstream_duration_seconds_bucket"));
    assert!(
        text.contains("heartalk_reloads_total{app=\"heartalk\",outcome=\"committed\"} 1"),
        "{text}"
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/test.sh installs the prometheus package)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
