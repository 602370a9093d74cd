//! The control socket: private (0600, other users refused), robust to
//! garbage, oversized frames and unknown protocol versions, and every CLI
//! verb fails plainly when no supervisor runs; a file at the socket path
//! that is not a socket is never deleted, and the verbs only look for the
//! socket (they create no directory).

mod helper;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use helper::*;
use nix::sys::signal::Signal;

/// Sends raw bytes and returns whatever comes back before the close.
fn raw_exchange(path: &std::path::Path, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn answer(raw: &[u8]) -> serde_json::Value {
    assert!(raw.len() > 4, "no answer: {raw:?}");
    serde_json::from_slice(&raw[4..]).unwrap()
}

#[test]
fn the_socket_is_private_and_survives_bad_clients() {
    let mut sup = Supervisor::start(&test_worker_config(1, "serve", ""));
    sup.wait_ready(1);
    let path = sup.control_socket();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // another user is refused
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(workspace_bin("heartalk"))
        .args(["status", "--socket"])
        .arg(&path)
        .output()
        .expect("setpriv");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied"), "{err}");

    // garbage: an error answer (or a close), and the supervisor carries on
    let garbage = raw_exchange(&path, b"\x00\x00\x00\x05hello");
    assert_eq!(answer(&garbage)["code"], "bad_request");
    // an oversized frame is refused from its length prefix alone
    let huge = raw_exchange(&path, &u32::MAX.to_be_bytes());
    assert_eq!(answer(&huge)["code"], "bad_request");
    // an unknown protocol version is answered, not hung
    let body = br#"{"version":99,"command":{"type":"status"}}"#;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    let v = answer(&raw_exchange(&path, &frame));
    assert_eq!(v["result"], "error");
    assert_eq!(v["code"], "unsupported_version");
    // a client that connects and says nothing does not block others
    let _idle = UnixStream::connect(&path).unwrap();
    let status = sup.status();
    assert_eq!(status["apps"][0]["workers"][0]["state"], "online");
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(0));
    assert!(!path.exists(), "the socket is removed on exit");
}

#[test]
fn every_verb_says_plainly_that_no_supervisor_runs() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody-home.sock");
    for verb in ["status", "reload", "stop"] {
        let out = Command::new(workspace_bin("heartalk"))
            .args([verb, "--socket"])
            .arg(&socket)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{verb}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{verb}: {err}");
        assert!(err.contains("no supervisor is running"), "{verb}: {err}");
    }
}

#[test]
fn a_second_supervisor_on_the_same_socket_refuses_to_start() {
    let mut first = Supervisor::start(&test_worker_config(1, "serve", ""));
    first.wait_ready(1);
    let config = std::fs::read_to_string(first.config_path()).unwrap();
    let mut second = Supervisor::start(&config);
    assert_eq!(second.wait_exit(DEADLINE).code(), Some(75));
    let failed = second.wait_event("setup_failed", |_| true);
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("another supervisor is already running"),
        "{failed}"
    );
    // the first one is untouched
    assert!(first.status()["apps"][0]["workers"][0]["state"] == "online");
}

#[test]
fn reload_and_stop_verbs_report_their_outcome() {
    let mut sup = Supervisor::start(&real_worker_config("2", ""));
    sup.wait_ready(2);
    let out = sup.cli(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "reload committed: generation 2"
    );

    let good = std::fs::read_to_string(sup.config_path()).unwrap();
    std::fs::write(
        sup.config_path(),
        good.replace("instances = 2", "instances = 0"),
    )
    .unwrap();
    let out = sup.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reload refused") && err.contains("at least one worker"),
        "{err}"
    );

    let out = sup.cli(&["stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "stopped");
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
fn a_regular_file_at_the_control_socket_path_is_left_alone() {
    // A mistyped `control_socket` naming the config file itself: the
    // supervisor must refuse to start, not delete the file.
    let config = format!(
        "[supervisor]\ncontrol_socket = \"ecosystem.toml\"\n\n{}",
        test_worker_config(1, "serve", "")
    );
    let mut sup = Supervisor::start(&config);
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(71));
    assert_eq!(
        std::fs::read_to_string(sup.config_path()).expect("the config survives"),
        config
    );
    let failed = sup.wait_event("setup_failed", |_| true);
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("is not a socket") && error.contains("ecosystem.toml"),
        "{failed}"
    );
    assert!(sup.spawned_pids().is_empty(), "no worker was started");
}

#[test]
fn cli_verbs_create_no_directories_looking_for_the_socket() {
    // No `control_socket`: the verbs look in `run`'s default places, and a
    // `$XDG_RUNTIME_DIR` that does not exist must stay that way (only
    // `heartalk run` may create the socket's directory).
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ecosystem.toml");
    std::fs::write(&config, test_worker_config(1, "serve", "")).unwrap();
    let listing = || {
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let before = listing();
    let missing = dir.path().join("runtime");
    // Only `status`: with no runtime dir the next default place is the
    // machine's /run/heartalk, where another supervisor may answer, and
    // it must not be reloaded or stopped by a test. (`reload` and `stop`
    // resolve the socket the same way.)
    let out = Command::new(workspace_bin("heartalk"))
        .args(["status", "-c"])
        .arg(&config)
        .env("XDG_RUNTIME_DIR", missing.join("user"))
        .env_remove("HEARTALK_SOCKET")
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(0 | 3)), "{out:?}");
    assert!(!missing.exists(), "status created {}", missing.display());
    assert_eq!(listing(), before, "status wrote next to the config");

    // The verbs find the socket `run` made in the same default place.
    let xdg = dir.path().join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    let mut sup = Supervisor::run_file(&config, |c| {
        c.env("XDG_RUNTIME_DIR", &xdg);
    });
    sup.wait_ready(1);
    assert!(xdg.join("heartalk.sock").exists());
    let verb = |name: &str| {
        Command::new(workspace_bin("heartalk"))
            .args([name, "-c"])
            .arg(&config)
            .env("XDG_RUNTIME_DIR", &xdg)
            .env_remove("HEARTALK_SOCKET")
            .output()
            .unwrap()
    };
    let out = verb("status");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&format!("pid {}", sup.pid())), "{table}");
    let out = verb("reload");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = verb("stop");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(0));
    assert!(!xdg.join("heartalk.sock").exists(), "removed on exit");
}
