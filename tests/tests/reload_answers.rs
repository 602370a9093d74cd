//! `heartalk reload` is answered with the outcome of the reload that
//! covered it, and promptly: two refusals in a row for the same reason each
//! get their answer (an identical outcome is still a new one), and a reload
//! queued behind a running rollout gets its own outcome, not the running
//! rollout's.

mod helper;

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use helper::*;
use nix::sys::signal::Signal;

/// Starts `heartalk reload` against `sup` without waiting for it.
fn spawn_reload(sup: &Supervisor) -> Child {
    Command::new(workspace_bin("heartalk"))
        .arg("reload")
        .arg("--socket")
        .arg(sup.control_socket())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn heartalk reload")
}

/// Waits up to `timeout` for a CLI process; one still running then is
/// killed and reaped, and the test fails (the CLI itself would wait 600 s).
fn finish(mut child: Child, what: &str, timeout: Duration) -> Output {
    if wait_or_kill(&mut child, timeout).is_none() {
        panic!("{what}: `heartalk reload` got no answer within {timeout:?}");
    }
    child.wait_with_output().expect("reload output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

#[test]
fn two_refused_reloads_in_a_row_are_both_answered() {
    let config = test_worker_config(1, "serve", "");
    let mut sup = Supervisor::start(&config);
    sup.wait_ready(1);
    std::fs::write(
        sup.config_path(),
        config.replace("instances = 1", "instances = 0"),
    )
    .unwrap();
    for n in 1..=2 {
        let out = finish(spawn_reload(&sup), &format!("reload #{n}"), DEADLINE);
        assert_eq!(out.status.code(), Some(1), "reload #{n}: {out:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("reload refused") && err.contains("at least one worker"),
            "reload #{n}: {err}"
        );
    }
    assert_eq!(sup.events("reload_refused").len(), 2);
    // the running generation carries on
    let status = sup.status();
    assert_eq!(status["supervisor"]["generation"], 1);
    assert_eq!(status["apps"][0]["workers"][0]["state"], "online");
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
fn a_reload_queued_behind_a_rollout_gets_its_own_outcome() {
    let config = test_worker_config(1, "serve", "");
    let mut sup = Supervisor::start(&config);
    sup.wait_ready(1);

    // Reload A: new workers take 2 s to become ready, so it is still
    // rolling out when reload B arrives.
    let slow = config.replace("[\"serve\"]", "[\"slow-ready=2000\"]");
    assert_ne!(slow, config);
    std::fs::write(sup.config_path(), &slow).unwrap();
    let a = spawn_reload(&sup);
    sup.wait_event("reload_started", |_| true);

    // Reload B, against a config that must be refused.
    std::fs::write(
        sup.config_path(),
        slow.replace("instances = 1", "instances = 0"),
    )
    .unwrap();
    let b = spawn_reload(&sup);
    sup.wait_event_n("reload_requested", 2, |_| true);

    let a = finish(a, "reload A", DEADLINE);
    let b = finish(b, "reload B", DEADLINE);
    // B really was asked for while A was rolling out.
    let order: Vec<String> = sup
        .timeline(&["reload_requested", "reload_committed"])
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        order,
        ["reload_requested", "reload_requested", "reload_committed"],
        "B must arrive during A's rollout"
    );

    assert_eq!(a.status.code(), Some(0), "reload A: {a:?}");
    assert_eq!(text(&a.stdout), "reload committed: generation 2");
    assert_eq!(b.status.code(), Some(1), "reload B: {b:?}");
    let err = text(&b.stderr);
    assert!(
        err.contains("reload refused") && err.contains("at least one worker"),
        "reload B: {err}"
    );
    let status = sup.status();
    assert_eq!(status["supervisor"]["generation"], 2);
    assert_eq!(status["supervisor"]["reload"]["last"]["outcome"], "refused");
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(0));
}
