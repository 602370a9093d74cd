//! `heartalk top` used as a person would: in a real 80×24 terminal (a
//! detached tmux session, read back with `capture-pane`, keys typed with
//! `send-keys`), against a real fleet. Both workers' pids show up with the
//! fleet line; Down moves the selection (the details pane follows); a
//! supervisor that goes away is said on the screen; `q` quits with status
//! 0 and the terminal restored (the alternate screen left). Without a
//! supervisor it exits 3 with the usual message, never taking the screen;
//! without a terminal, 64.

mod helper;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use helper::*;
use nix::sys::signal::Signal;

/// A private tmux server (its own socket, in a temp dir) running
/// `heartalk top --socket SOCKET` in an 80×24 pane under a shell that says
/// how it exited (tmux 3.3 can lose `pane_dead_status` of a command that
/// exits at once); the pane stays when it exits. Killed on drop, even when
/// the test fails.
struct Tmux {
    dir: tempfile::TempDir,
}

/// What the shell prints after `top`, on the terminal `top` left behind.
const EXITED: &str = "top exited with ";

impl Tmux {
    fn top(socket: &Path) -> Tmux {
        // remain-on-exit from the server's start: set after the session
        // it would race a command that exits at once.
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("tmux.conf");
        std::fs::write(&conf, "set -g remain-on-exit on\n").expect("tmux.conf");
        let tmux = Tmux { dir };
        let conf = conf.display().to_string();
        let script = format!(r#""$0" top --socket "$1"; s=$?; echo "{EXITED}$s"; exit $s"#);
        let heartalk = workspace_bin("heartalk").display().to_string();
        let socket = socket.display().to_string();
        #[rustfmt::skip]
        tmux.ok(&[
            "-f", &conf, "new-session", "-d", "-x", "80", "-y", "24",
            "sh", "-c", &script, &heartalk, &socket,
        ]);
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(self.dir.path().join("tmux.sock"))
            .args(args)
            .env_remove("TMUX")
            .output()
            .unwrap_or_else(|e| panic!("tmux: {e} (scripts/deps.sh installs it)"))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What the pane shows now.
    fn screen(&self) -> String {
        self.ok(&["capture-pane", "-p"])
    }

    /// Everything the pane has shown, scrolled-off lines too, wrapped
    /// lines joined.
    fn history(&self) -> String {
        self.ok(&["capture-pane", "-p", "-J", "-S", "-"])
    }

    fn keys(&self, key: &str) {
        self.ok(&["send-keys", key]);
    }

    /// A pane variable (`pane_dead`, `alternate_on` ...).
    fn pane(&self, var: &str) -> String {
        self.ok(&["display-message", "-p", &format!("#{{{var}}}")])
            .trim()
            .to_string()
    }

    /// Waits until the screen shows every one of `wanted`.
    fn wait_screen(&self, what: &str, wanted: &[String]) -> String {
        wait_until(what, DEADLINE, || {
            let screen = self.screen();
            match wanted.iter().all(|w| screen.contains(w.as_str())) {
                true => Ok(screen),
                false => Err(format!("the screen is\n{screen}")),
            }
        })
    }

    /// Waits for `top` to exit; its exit status.
    fn wait_exit(&self) -> String {
        wait_until("top to exit", DEADLINE, || {
            let history = self.history();
            let said = history.lines().find_map(|l| l.strip_prefix(EXITED));
            match (said, self.pane("pane_dead").as_str()) {
                (Some(status), "1") => Ok(status.trim().to_string()),
                _ => Err(format!("the pane shows\n{history}")),
            }
        })
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn pids_by_slot(sup: &Supervisor) -> Vec<u32> {
    sup.status()["apps"][0]["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["pid"].as_u64().expect("a pid") as u32)
        .collect()
}

#[test]
fn top_shows_the_fleet_follows_the_keys_and_restores_the_terminal() {
    let mut sup = Supervisor::start(&test_worker_config(2, "serve", ""));
    sup.wait_ready(2);
    let pids = pids_by_slot(&sup);
    let tmux = Tmux::top(&sup.control_socket());

    // Both workers, the fleet line, the first one's details, the log.
    let screen = tmux.wait_screen(
        "both workers and the log on the screen",
        &[
            format!(" {} ", pids[0]),
            format!(" {} ", pids[1]),
            "workers 2/2 online".to_string(),
            format!("pid {}  app tw  slot 0", pids[0]),
            "heartalk worker_ready".to_string(),
        ],
    );
    assert!(screen.starts_with("heartalk "), "{screen}");
    assert!(screen.contains("gen 1  last reload: none yet"), "{screen}");
    let header = screen.lines().find(|l| l.contains("APP/SLOT")).unwrap();
    for col in ["PID", "STATE", "CPU", "RSS", "REQ/S", "CONNS", "RESTARTS"] {
        assert!(
            header.contains(col),
            "{col} missing at 80 columns: {screen}"
        );
    }
    assert!(screen.lines().all(|l| l.chars().count() <= 80), "{screen}");
    assert_eq!(tmux.pane("alternate_on"), "1");

    // Down: the second worker is selected and its details shown.
    tmux.keys("Down");
    tmux.wait_screen(
        "the second worker's details",
        &[format!("pid {}  app tw  slot 1", pids[1])],
    );

    // The supervisor goes away: said on the screen, top keeps going.
    sup.signal(Signal::SIGTERM);
    sup.wait_exit(DEADLINE);
    tmux.wait_screen(
        "the lost supervisor on the screen",
        &["retrying every second: no supervisor is running".to_string()],
    );

    // q: top exits 0, and the terminal is the shell's again.
    tmux.keys("q");
    assert_eq!(tmux.wait_exit(), "0", "{}", tmux.screen());
    // Back on the main screen, which never had the view on it.
    let history = tmux.history();
    assert_eq!(tmux.pane("alternate_on"), "0", "{history}");
    assert!(!history.contains("workers 2/2"), "{history}");
}

#[test]
fn top_without_a_supervisor_exits_3_before_taking_the_screen() {
    let dir = tempfile::tempdir().unwrap();
    let socket: PathBuf = dir.path().join("none.sock");
    let tmux = Tmux::top(&socket);
    assert_eq!(tmux.wait_exit(), "3", "{}", tmux.history());
    let history = tmux.history();
    assert!(
        history.contains(&format!(
            "heartalk: no supervisor is running (nothing listens on {})",
            socket.display()
        )),
        "{history}"
    );
    assert_eq!(tmux.pane("alternate_on"), "0");
}

#[test]
fn top_needs_a_terminal() {
    let out = Command::new(workspace_bin("heartalk"))
        .args(["top", "--socket", "/nonexistent/heartalk.sock"])
        .output()
        .expect("run heartalk");
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "heartalk top needs a terminal; use `heartalk status`"
    );
}
