//! `heartalk logs` on the files a real fleet wrote: the last lines reach
//! back through rotated and gzipped files, `--json` prints the stored lines
//! byte for byte, `--app`/`--slot` keep the lines about them and every
//! human line names its source, `--follow` keeps printing across
//! rotations and ends quietly when its reader goes away, and it all works
//! with the supervisor stopped (it reads files, not the control socket).

mod helper;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use helper::*;
use nix::sys::signal::Signal;
use serde_json::Value;

/// `heartalk logs -c CONFIG ARGS...`.
fn logs(config: &Path, args: &[&str]) -> Output {
    Command::new(workspace_bin("heartalk"))
        .arg("logs")
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .expect("run heartalk logs")
}

/// The lines `heartalk logs` printed; it must have succeeded.
fn printed(config: &Path, args: &[&str]) -> Vec<String> {
    let out = logs(config, args);
    assert!(
        out.status.success(),
        "heartalk logs {args:?}: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .lines()
        .map(str::to_string)
        .collect()
}

fn file_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn rotated_count(dir: &Path) -> usize {
    file_names(dir)
        .iter()
        .filter(|n| n.starts_with("heartalk-"))
        .count()
}

/// One test worker in `mode`, its log rotated past `max_size` and every
/// rotated file kept; returns once it is ready.
fn rotating_fleet(mode: &str, max_size: &str) -> Supervisor {
    let config = before_apps(
        &test_worker_config(1, mode, ""),
        &format!("[log]\nmax_size = \"{max_size}\"\nmax_files = 1000"),
    );
    let mut sup = Supervisor::start(&config);
    sup.wait_ready(1);
    sup
}

#[test]
fn last_lines_reach_back_through_gzipped_files_after_the_supervisor_stopped() {
    let mut sup = rotating_fleet("spam=3000", "8K");
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(0));
    let dir = sup.log_dir();
    let cfg = sup.config_path();

    let stored = read_log_lines(&dir);
    let gzipped = file_names(&dir)
        .iter()
        .filter(|n| n.ends_with(".log.gz"))
        .count();
    let current = std::fs::read_to_string(dir.join("heartalk.log"))
        .unwrap()
        .lines()
        .count();
    assert!(gzipped >= 5, "{:?}", file_names(&dir));
    assert!(
        current < 100 && stored.len() > 1000,
        "{current} {}",
        stored.len()
    );

    // --json: the stored lines, byte for byte, oldest first, the last 500
    // reaching back through several gzipped files
    let json = printed(&cfg, &["--json", "--lines", "500"]);
    assert_eq!(json, stored[stored.len() - 500..]);
    // 50 by default
    assert_eq!(printed(&cfg, &["--json"]), stored[stored.len() - 50..]);
    // more than there is: everything
    assert_eq!(printed(&cfg, &["--json", "-n", "100000"]), stored);

    // --raw: the worker's own text; N counts the lines the filter keeps
    let raw = printed(&cfg, &["--raw", "--app", "tw", "-n", "1200"]);
    assert_eq!(raw.len(), 1200);
    let spam: Vec<&String> = raw.iter().filter(|l| l.starts_with("line ")).collect();
    assert!(spam.len() > 1150, "{raw:?}");
    let first: u64 = spam[0]["line 0 ".len()..].parse().unwrap();
    for (i, l) in spam.iter().enumerate() {
        assert_eq!(**l, format!("line 0 {}", first + i as u64));
    }
    assert_eq!(*spam.last().unwrap(), "line 0 2999");
    // --since: every line of the last hour, none older than the cutoff
    assert_eq!(printed(&cfg, &["--json", "--since", "1h"]), stored);
    assert!(printed(&cfg, &["--json", "--since", "1ms"]).is_empty());
}

#[test]
fn filters_keep_the_lines_about_an_app_or_slot_and_every_line_names_its_source() {
    let tw = test_worker_config(2, "spam=300", "");
    let other = test_worker_config(1, "spam=300", "").replace("name = \"tw\"", "name = \"other\"");
    let mut sup = Supervisor::start(&format!("{tw}\n{other}"));
    sup.wait_ready(3);
    let dir = sup.log_dir();
    wait_for("every spam line in the file", DEADLINE, || {
        let n = read_logs(&dir)
            .iter()
            .filter(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("line "))
            })
            .count();
        (n == 900).then_some(())
    });
    let cfg = sup.config_path();

    // every line, and each says where it came from (the fleet is running:
    // what was printed is the start of what is stored a moment later)
    let human = printed(&cfg, &["-n", "100000"]);
    let json = printed(&cfg, &["--json", "-n", "100000"]);
    let stored = read_log_lines(&dir);
    assert_eq!(json, stored[..json.len()], "--json prints the stored lines");
    assert!(human.len() >= 900 && human.len() <= stored.len());
    for (line, text) in human.iter().zip(&stored) {
        let v: Value = serde_json::from_str(text).unwrap();
        let mut cols = line.split_whitespace();
        let (time, source) = (cols.next().unwrap(), cols.next().unwrap());
        assert!(time.starts_with("20") && time.ends_with('Z'), "{line}");
        let expected = if v.get("stream").is_some() {
            format!("{}/{}/{}", v["app"].as_str().unwrap(), v["slot"], v["pid"])
        } else {
            "heartalk".to_string()
        };
        assert_eq!(source, expected, "{line} from {text}");
    }

    // --app and --slot: the app's (slot's) worker lines and the
    // supervisor's events about it; fleet-wide events are left out
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(0));
    let words = |l: &str, want: &[&str]| {
        let w: Vec<&str> = l.split_whitespace().collect();
        want.iter().all(|x| w.contains(x))
    };
    let raw = printed(
        &cfg,
        &["--raw", "--app", "tw", "--slot", "1", "-n", "100000"],
    );
    let spam: Vec<&String> = raw.iter().filter(|l| l.starts_with("line ")).collect();
    let want: Vec<String> = (0..300).map(|i| format!("line 1 {i}")).collect();
    assert_eq!(spam, want.iter().collect::<Vec<_>>());
    for l in raw.iter().filter(|l| !l.starts_with("line ")) {
        assert!(words(l, &["app=tw", "slot=1"]), "{l}");
    }
    assert!(
        raw.iter().any(|l| l.starts_with("worker_ready ")),
        "{raw:?}"
    );
    assert!(
        raw.iter().any(|l| l.starts_with("worker_exited ")),
        "{raw:?}"
    );
    assert!(!raw.iter().any(|l| l.starts_with("fleet_ready")), "{raw:?}");

    let other = printed(&cfg, &["--app", "other", "-n", "100000"]);
    assert!(other.len() > 300);
    for l in &other {
        let source = l.split_whitespace().nth(1).unwrap();
        assert!(
            source.starts_with("other/0/") || (source == "heartalk" && words(l, &["app=other"])),
            "{l}"
        );
    }
    // N counts the lines the filters keep
    assert_eq!(
        printed(&cfg, &["--app", "other", "-n", "3"]),
        other[other.len() - 3..]
    );
    let slot0 = printed(&cfg, &["--slot", "0", "--raw", "-n", "100000"]);
    assert_eq!(
        slot0.iter().filter(|l| l.starts_with("line 0 ")).count(),
        600,
        "slot 0 of both apps"
    );
    assert!(!slot0.iter().any(|l| l.starts_with("line 1 ")));
}

#[test]
fn follow_keeps_printing_across_rotations_and_ends_quietly_when_stdout_closes() {
    let mut sup = rotating_fleet("tick=5", "4K");
    let dir = sup.log_dir();
    let child = Command::new(workspace_bin("heartalk"))
        .args(["logs", "-f", "--raw", "--app", "tw", "-n", "0", "-c"])
        .arg(sup.config_path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn heartalk logs -f");
    let mut guard = ChildGuard::new("heartalk logs -f", child);
    let stdout = guard.child.stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (lines, stop) = (lines.clone(), stop.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if stop.load(Ordering::SeqCst) {
                    break; // and close the pipe
                }
                lines.lock().unwrap().push(line);
            }
        })
    };
    let ticks = || -> Vec<u64> {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.strip_prefix("tick 0 "))
            .map(|n| n.parse().unwrap())
            .collect()
    };

    wait_for("a tick printed by logs -f", DEADLINE, || {
        (!ticks().is_empty()).then_some(())
    });
    let before = rotated_count(&dir);
    wait_for("three rotations while following", DEADLINE, || {
        (rotated_count(&dir) >= before + 3).then_some(())
    });
    // everything written so far (into the newest file) reaches the follower
    let last = read_logs(&dir)
        .iter()
        .filter_map(|l| l["message"].as_str()?.strip_prefix("tick 0 ")?.parse().ok())
        .max()
        .unwrap();
    wait_for("the follower to catch up", DEADLINE, || {
        (ticks().last() >= Some(&last)).then_some(())
    });
    let seen = ticks();
    for pair in seen.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "a tick lost or repeated: {seen:?}");
    }
    assert!(seen.len() > 50, "{seen:?}");

    // its reader goes away: the next write fails and it exits 0
    stop.store(true, Ordering::SeqCst);
    let status = wait_or_kill(&mut guard.child, DEADLINE).expect("logs -f ended");
    assert_eq!(status.code(), Some(0), "{status:?}");
    reader.join().unwrap();
    drop(guard);

    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
fn no_log_file_or_bad_usage_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ecosystem.toml");
    std::fs::write(&cfg, test_worker_config(1, "serve", "")).unwrap();
    let out = logs(&cfg, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("no log file in") && err.contains("logs"),
        "{err}"
    );
    assert_eq!(logs(&cfg, &["--raw", "--json"]).status.code(), Some(64));
    assert_eq!(logs(&cfg, &["--since", "soon"]).status.code(), Some(64));
    let missing = dir.path().join("missing.toml");
    assert_eq!(logs(&missing, &[]).status.code(), Some(64));
}
