//! `heartalk describe APP` on a running fleet: the effective config with
//! the app's secrets masked (a `*_SECRET` value, a password inside a URL),
//! every slot, a crash in the recent exits with its reason and signal and
//! in the restart counts, the last reload's outcome; `--json`; an unknown
//! app refused.

mod helper;

use helper::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const SECRET_VALUE: &str = "s3cr3t-value-xyz";
const URL_PASSWORD: &str = "hunter2pw";

#[test]
fn describe_shows_the_app_with_its_secrets_masked() {
    let extra = format!(
        "max_memory = \"300M\"\n[apps.env]\nJWT_SECRET = \"{SECRET_VALUE}\"\nREDIS_URL = \"redis://:{URL_PASSWORD}@127.0.0.1:6379/0\"\nNODE_ENV = \"production\"\nHEARTALK_API_KEY = \"describe-test-key\"\n"
    );
    let mut sup = Supervisor::start(&test_worker_config(2, "serve", &extra));
    let pids = sup.wait_ready(2);
    kill(Pid::from_raw(pids[1]), Signal::SIGKILL).unwrap();
    sup.wait_event("restart_scheduled", |_| true);
    sup.wait_event_n("worker_ready", 3, |_| true);
    sup.signal(Signal::SIGHUP);
    sup.wait_event("reload_committed", |_| true);

    let out = sup.cli(&["describe", "tw"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "app tw",
        "instances  2",
        "JWT_SECRET=********",
        "REDIS_URL=redis://:********@127.0.0.1:6379/0",
        "NODE_ENV=production",
        "max_memory",
        "300.0 MB",
        "kill_timeout",
        "last reload  generation 2 committed",
        &format!("pid {}  gen 1  crash (SIGKILL)", pids[1]),
    ] {
        assert!(text.contains(want), "{want:?} missing in\n{text}");
    }
    assert!(
        !text.contains(SECRET_VALUE) && !text.contains(URL_PASSWORD),
        "{text}"
    );

    let out = sup.cli(&["describe", "tw", "--json"]);
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!raw.contains(SECRET_VALUE) && !raw.contains(URL_PASSWORD));
    let d: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(d["workers"].as_array().unwrap().len(), 2);
    assert_eq!(d["restarts"]["crash"], 1);
    // The reload drained both generation-1 workers: newest exits first.
    let exits = d["recent_exits"].as_array().unwrap();
    let reasons: Vec<&str> = exits
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.last(), Some(&"crash"), "{reasons:?}");
    assert!(reasons.iter().filter(|r| **r == "reload").count() <= 2);
    assert_eq!(d["last_reload"]["outcome"], "committed");

    let out = sup.cli(&["describe", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no app named `nope`"));
}
