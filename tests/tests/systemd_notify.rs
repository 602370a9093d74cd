//! The supervisor under a service manager (deploy/heartalk.service is
//! `Type=notify` with `WatchdogSec=`): the test plays systemd — it binds the
//! notify socket, sets `NOTIFY_SOCKET` and `WATCHDOG_USEC` for the real
//! `heartalk`, and reads what arrives: READY=1 once the workers serve,
//! WATCHDOG=1 at half the interval for as long as the event loop turns
//! (and none while the supervisor is SIGSTOPped), RELOADING=1 then READY=1
//! around a reload, STOPPING=1 at a stop. Workers speak to the supervisor,
//! never to systemd.

mod helper;

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use helper::*;
use nix::sys::signal::Signal;

/// The service manager's end of the notify socket.
struct Manager {
    sock: UnixDatagram,
    name: String,
    /// Every message so far, with when it arrived.
    got: Vec<(Instant, String)>,
}

impl Manager {
    fn bind(tag: &str) -> Manager {
        let name = format!("heartalk-e2e-systemd-{tag}-{}", std::process::id());
        let sock =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Manager {
            sock,
            name: format!("@{name}"),
            got: Vec::new(),
        }
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok((n, _)) = self.sock.recv_from(&mut buf) {
            self.got.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }

    /// Waits for a message containing `what` after the first `from`
    /// messages; returns its index.
    fn wait(&mut self, what: &str, from: usize) -> usize {
        wait_for(what, DEADLINE, || {
            self.drain();
            self.got
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, (_, m))| m.lines().any(|l| l == what))
                .map(|(i, _)| i)
        })
    }

    fn pings_between(&self, from: Instant, to: Instant) -> usize {
        self.got
            .iter()
            .filter(|(t, m)| *t >= from && *t < to && m == "WATCHDOG=1")
            .count()
    }
}

#[test]
fn ready_watchdog_reloading_and_stopping_reach_the_service_manager() {
    let mut manager = Manager::bind("full");
    let socket = manager.name.clone();
    let mut sup = Supervisor::start_with(&test_worker_config(2, "serve", ""), |cmd| {
        cmd.env("NOTIFY_SOCKET", &socket)
            .env("WATCHDOG_USEC", "400000");
    });
    sup.wait_ready(2);
    let ready = manager.wait("READY=1", 0);
    assert!(
        manager.got[ready]
            .1
            .contains("STATUS=serving: 2 workers online"),
        "{:?}",
        manager.got[ready]
    );
    // Pings at half the 400 ms interval while the loop turns.
    let from = Instant::now();
    let mut n = manager.got.len();
    for _ in 0..6 {
        n = manager.wait("WATCHDOG=1", n) + 1;
    }
    let pinging = from.elapsed();
    assert!(pinging < Duration::from_secs(6), "6 pings took {pinging:?}");
    // A stopped supervisor pings no more: systemd would restart it.
    sup.signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_millis(1200)); // the silence under test
    manager.drain();
    let resumed = Instant::now();
    sup.signal(Signal::SIGCONT);
    // A message already queued when SIGSTOP landed may arrive just after.
    let silent = manager.pings_between(stopped + Duration::from_millis(300), resumed);
    assert_eq!(silent, 0, "pinged while stopped");
    n = manager.wait("WATCHDOG=1", manager.got.len());

    // A reload: RELOADING=1, then READY=1 once it is over.
    sup.signal(Signal::SIGHUP);
    let reloading = manager.wait("RELOADING=1", n);
    assert!(
        manager.got[reloading]
            .1
            .lines()
            .any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{:?}",
        manager.got[reloading]
    );
    sup.wait_event("reload_committed", |_| true);
    let again = manager.wait("READY=1", reloading);
    assert!(manager.got[again].1.contains("generation 2"));

    sup.signal(Signal::SIGTERM);
    manager.wait("STOPPING=1", again);
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(0));
    // Nothing from the workers reached the service manager.
    manager.drain();
    let own = ["READY=1", "WATCHDOG=1", "RELOADING=1", "STOPPING=1"];
    for (_, m) in &manager.got {
        let first = m.lines().next().unwrap_or("");
        assert!(own.contains(&first), "unexpected message {m:?}");
    }
}

#[test]
fn without_a_watchdog_nothing_pings() {
    let mut manager = Manager::bind("quiet");
    let socket = manager.name.clone();
    let mut sup = Supervisor::start_with(&test_worker_config(1, "serve", ""), |cmd| {
        cmd.env("NOTIFY_SOCKET", &socket)
            .env_remove("WATCHDOG_USEC");
    });
    sup.wait_ready(1);
    let ready = manager.wait("READY=1", 0);
    // Wait for something later than READY to be sure the loop has turned:
    // a reload's RELOADING=1.
    sup.signal(Signal::SIGHUP);
    manager.wait("RELOADING=1", ready);
    manager.wait("READY=1", ready + 1);
    assert!(
        manager.got.iter().all(|(_, m)| m != "WATCHDOG=1"),
        "{:?}",
        manager.got
    );
}

#[test]
fn a_reload_refused_before_the_first_ready_does_not_claim_ready() {
    let mut manager = Manager::bind("early");
    let socket = manager.name.clone();
    let mut sup = Supervisor::start_with(
        &test_worker_config(1, "no-ready", "listen_timeout = \"60s\""),
        |cmd| {
            cmd.env("NOTIFY_SOCKET", &socket)
                .env_remove("WATCHDOG_USEC");
        },
    );
    sup.wait_event("worker_spawned", |_| true);
    std::fs::write(sup.config_path(), "this is not toml [").unwrap();
    sup.signal(Signal::SIGHUP);
    let reloading = manager.wait("RELOADING=1", 0);
    sup.wait_event("reload_refused", |_| true);
    // A control-socket answer comes from a later turn of the event loop than
    // the one that refused the reload (and would have sent READY=1).
    assert_eq!(sup.status()["apps"][0]["workers"][0]["state"], "starting");
    manager.drain();
    let ready: Vec<&String> = manager.got[reloading..]
        .iter()
        .map(|(_, m)| m)
        .filter(|m| m.lines().any(|l| l == "READY=1"))
        .collect();
    assert!(ready.is_empty(), "READY while no worker serves: {ready:?}");
}
