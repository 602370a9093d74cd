//! `heartalk scale APP N|max|file` on a running fleet under continuous
//! load: up (new slots and workers beside the running ones) and down (the
//! highest slots drained) with no failed request; the count outlives a
//! reload and `status` says it is not the file's; `file` goes back.

mod helper;

use std::collections::HashSet;

use helper::*;
use nix::sys::signal::Signal;
use serde_json::Value;

fn app(status: &Value) -> &Value {
    &status["apps"][0]
}

fn pids(status: &Value) -> Vec<i64> {
    app(status)["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["pid"].as_i64())
        .collect()
}

fn cli_ok(sup: &Supervisor, args: &[&str]) -> String {
    let out = sup.cli(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn scaling_up_and_down_under_load_fails_no_request_and_outlives_a_reload() {
    let mut sup = Supervisor::start(&real_worker_config(
        "2",
        &format!("kill_timeout = \"20s\"\n[apps.env]\nJWT_SECRET = \"{SECRET}\""),
    ));
    let addr = sup.addr();
    sup.wait_ready(2);
    let first = pids(&sup.status());
    let load = Load::start(addr, 6, "/health");
    load.wait_more(100);

    // Up: two more slots; the running workers stay.
    let out = cli_ok(&sup, &["scale", "heartalk", "4"]);
    assert!(
        out.contains("heartalk: 2 -> 4 workers (scaled to 4; the file says 2)"),
        "{out}"
    );
    assert!(out.contains("heartalk: 4 workers serving"), "{out}");
    let up = sup.status();
    assert_eq!(app(&up)["scaled"], "4");
    assert_eq!(app(&up)["instances"], "2");
    let four = pids(&up);
    assert_eq!(four.len(), 4);
    assert_eq!(&four[..2], &first[..], "the running workers are untouched");
    load.wait_more(200);

    // Down: slots 1..3 drain; slot 0 keeps its worker.
    let out = cli_ok(&sup, &["scale", "heartalk", "1"]);
    assert!(out.contains("heartalk: 4 -> 1 workers"), "{out}");
    let gone: HashSet<i64> = four[1..].iter().copied().collect();
    sup.wait_exited("scale", &gone);
    load.wait_more(200);
    assert_eq!(pids(&sup.status()), [first[0]]);

    // A reload keeps the count, and says so.
    sup.signal(Signal::SIGHUP);
    sup.wait_event("reload_committed", |_| true);
    sup.wait_event("scale_kept", |e| e["app"] == "heartalk");
    let reloaded = sup.status();
    assert_eq!(pids(&reloaded).len(), 1);
    assert_eq!(app(&reloaded)["scaled"], "1");
    let table = String::from_utf8_lossy(&sup.cli(&["status"]).stdout).into_owned();
    assert!(
        table.contains("app heartalk scaled to 1 by `heartalk scale` (file: 2;"),
        "{table}"
    );
    load.wait_more(100);

    // Back to the file's two.
    let out = cli_ok(&sup, &["scale", "heartalk", "file"]);
    assert!(
        out.contains("heartalk: 1 -> 2 workers (the file's instances (2))"),
        "{out}"
    );
    let back = sup.status();
    assert_eq!(pids(&back).len(), 2);
    assert!(app(&back)["scaled"].is_null());

    load.finish_clean();
}

#[test]
fn bad_counts_and_unknown_apps_are_refused() {
    let mut sup = Supervisor::start(&test_worker_config(1, "serve", ""));
    sup.wait_ready(1);
    let out = sup.cli(&["scale", "tw", "0"]);
    assert_eq!(out.status.code(), Some(64), "clap refuses 0");
    let out = sup.cli(&["scale", "nope", "2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no app named `nope`"));
    assert_eq!(pids(&sup.status()).len(), 1, "nothing changed");
}
