//! A log disk that fills up (a 2 MiB tmpfs, mounted here; CI runs as
//! root): the trouble is reported when it starts (a `log_writes_failing`
//! event on stdout with the error, `heartalk_log_writes_failing` 1),
//! workers keep serving, lost lines are counted in
//! `heartalk_log_lines_dropped_total`, and writing resumes — with a
//! warning saying how many lines were lost, and the gauge back to 0 —
//! once space is freed.

mod helper;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use helper::*;
use nix::sys::signal::Signal;

/// A mounted tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_log_disk_drops_and_counts_then_recovers() {
    let mnt_parent = tempfile::tempdir().unwrap();
    let logs = mnt_parent.path().join("logs");
    let _fs = Tmpfs::mount(&logs, "2m");
    let admin = free_addr();
    let config = before_apps(
        &test_worker_config(1, "serve", ""),
        &format!(
            "[supervisor]\nmetrics_listen = \"{admin}\"\ncontrol_socket = \"ctl.sock\"\n[log]\ndir = {:?}\nmax_size = \"256K\"\nmax_files = 100\ncompress = false",
            logs.display().to_string()
        ),
    )
    .replace("args = [\"serve\"]", "args = [\"serve\", \"tick=1\"]");
    let mut sup = Supervisor::start(&config);
    let addr = sup.addr();
    let pid = sup.wait_ready(1)[0];
    assert_eq!(
        metric(admin, "heartalk_log_writes_failing", ""),
        Some(0.0),
        "the gauge is exposed, at 0, while writing works"
    );
    assert!(sup.events("log_writes_failing").is_empty());

    // fill the disk to the brim
    let filler = logs.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 2 << 20]);
    wait_for("lines to be dropped", Duration::from_secs(30), || {
        let dropped = metric(admin, "heartalk_log_lines_dropped_total", "").unwrap_or(0.0);
        (dropped > 100.0).then_some(())
    });

    // reported while it lasts, not only once it is over: one event for the
    // episode (not one per line), on stdout although the file is failing,
    // with the error and the file; and the gauge reads 1
    let failing = sup.events("log_writes_failing");
    assert_eq!(failing.len(), 1, "one event per episode: {failing:?}");
    let ev = &failing[0];
    assert_eq!(ev["level"], "ERROR", "{ev}");
    assert!(
        ev["error"]
            .as_str()
            .is_some_and(|e| e.contains("No space left on device")),
        "the ENOSPC error text: {ev}"
    );
    assert_eq!(
        ev["file"].as_str(),
        Some(logs.join("heartalk.log").to_str().unwrap()),
        "{ev}"
    );
    assert_eq!(
        metric(admin, "heartalk_log_writes_failing", ""),
        Some(1.0),
        "the gauge while the disk is full"
    );
    assert!(
        sup.events("log_writes_resumed").is_empty(),
        "nothing resumed yet"
    );

    // the worker keeps serving, and was never restarted
    for _ in 0..20 {
        let r =
            http_get(addr, "/", Duration::from_secs(10)).expect("served while the disk is full");
        assert_eq!(r.status, 200);
    }
    assert!(alive(pid));
    assert_eq!(sup.events("worker_spawned").len(), 1);

    // free the space: writing resumes, and says how much was lost
    std::fs::remove_file(&filler).unwrap();
    for entry in std::fs::read_dir(&logs).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("heartalk-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let current = logs.join("heartalk.log");
    let resumed = wait_for("writing to resume", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&current).ok()?;
        let at = text.find("\"log_writes_resumed\"")?;
        // and new worker lines follow the warning
        text[at..].contains("tick 0 ").then_some(text)
    });
    let warning = resumed
        .lines()
        .find(|l| l.contains("log_writes_resumed"))
        .unwrap();
    let w: serde_json::Value = serde_json::from_str(warning).unwrap();
    assert!(w["dropped"].as_u64().unwrap() > 0, "{w}");
    // the same event on stdout, and the gauge cleared
    let on_stdout = sup.wait_event("log_writes_resumed", |_| true);
    assert_eq!(on_stdout["dropped"], w["dropped"], "{on_stdout}");
    wait_for("the gauge to clear", Duration::from_secs(10), || {
        (metric(admin, "heartalk_log_writes_failing", "")? == 0.0).then_some(())
    });
    assert_eq!(
        sup.events("log_writes_failing").len(),
        1,
        "still the one episode"
    );
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(0));
}
