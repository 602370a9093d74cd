//! `heartalk restart [APP]`: every worker (of one app, or all) replaced by
//! a fresh process on the same config, under continuous load, with no
//! request failed; the other app keeps its workers; nothing is re-read
//! (the generation stays); an unknown app is refused.

mod helper;

use std::collections::HashSet;
use std::net::SocketAddr;

use helper::*;
use serde_json::Value;

/// Two apps: `heartalk` (the real worker, 2 slots) and `tw` (the test
/// worker, 1 slot).
fn config() -> String {
    format!(
        "{}\n[[apps]]\nname = \"tw\"\nscript = \"{}\"\nargs = [\"serve\"]\ninstances = 1\nlisten = \"127.0.0.1:0\"\n",
        real_worker_config(
            "2",
            &format!(
                "max_surge = 1\nkill_timeout = \"20s\"\n[apps.env]\nJWT_SECRET = \"{SECRET}\""
            )
        ),
        test_worker().display()
    )
}

/// Each app's current pids, from `status --json`.
fn pids(status: &Value, app: &str) -> HashSet<i64> {
    status["apps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["name"] == app)
        .flat_map(|a| a["workers"].as_array().unwrap())
        .filter_map(|w| w["pid"].as_i64())
        .collect()
}

fn listen(status: &Value, app: &str) -> SocketAddr {
    let a = status["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == app)
        .unwrap();
    a["listen"].as_str().unwrap().parse().unwrap()
}

#[test]
fn restarting_one_app_under_load_fails_no_request() {
    let mut sup = Supervisor::start(&config());
    sup.wait_ready(3);
    let before = sup.status();
    let addr = listen(&before, "heartalk");
    let load = Load::start(addr, 6, "/health");
    load.wait_more(100);

    let out = sup.cli(&["restart", "heartalk"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("restarted heartalk: 2 workers replaced"),
        "{stdout}"
    );
    // The replaced workers drain while the load goes on.
    load.wait_more(200);
    let old = pids(&before, "heartalk");
    sup.wait_exited("restart", &old);
    load.finish_clean();

    let after = sup.status();
    let new = pids(&after, "heartalk");
    assert_eq!(new.len(), 2);
    assert!(
        new.is_disjoint(&old),
        "every worker replaced: {old:?} -> {new:?}"
    );
    assert_eq!(
        pids(&after, "tw"),
        pids(&before, "tw"),
        "the other app is untouched"
    );
    assert_eq!(after["supervisor"]["generation"], 1, "no config re-read");
    // The slot's last exit says why.
    for w in after["apps"][0]["workers"].as_array().unwrap() {
        assert_eq!(w["last_exit"]["reason"], "restart", "{w}");
        assert_eq!(w["restarts"], 1);
    }
    // Replaced at most max_surge (1) at a time: the second successor is
    // spawned only after the first one's READY.
    let timeline = sup.timeline(&["restart_replacing", "worker_ready"]);
    let order: Vec<&str> = timeline
        .iter()
        .skip_while(|e| e["event"] != "restart_replacing")
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "restart_replacing",
            "worker_ready",
            "restart_replacing",
            "worker_ready"
        ]
    );
}

#[test]
fn restarting_everything_then_an_unknown_app() {
    let mut sup = Supervisor::start(&config());
    sup.wait_ready(3);
    let before = sup.status();
    let out = sup.cli(&["restart"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("restarted heartalk, tw: 3 workers replaced")
    );
    let after = sup.status();
    for app in ["heartalk", "tw"] {
        assert!(pids(&after, app).is_disjoint(&pids(&before, app)), "{app}");
    }

    let out = sup.cli(&["restart", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no app named `nope`"), "{stderr}");
}
