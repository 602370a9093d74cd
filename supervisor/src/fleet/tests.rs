//! Unit tests of the fleet's watchdog and degraded rules, driven the way the
//! event loop drives them (notify messages, ticks at chosen instants) with
//! `/bin/sleep` standing in for a worker: the rules fork and signal real
//! processes, and these are harmless ones. Every child is killed and reaped
//! by pid (never `waitpid(-1)`, which could take another test's child).

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use shared::config::Config;

use super::*;
use crate::host::Driver;
use crate::notify::parse;

/// A fleet of `instances` sleepers with a 2 s watchdog, started, every
/// worker READY at `t0`.
struct Sleepers {
    fleet: Fleet,
    driver: Driver,
    t0: Instant,
}

const WATCHDOG: Duration = Duration::from_secs(2);

/// `instances` sleepers with a 2 s watchdog.
fn config(instances: u32) -> Config {
    let text = format!(
        "[[apps]]\nname = \"s\"\nscript = \"/bin/sleep\"\nargs = [\"60\"]\ninstances = {instances}\nlisten = \"127.0.0.1:0\"\nwatchdog = \"2s\"\n"
    );
    Config::parse(&text, Path::new("/tmp/ecosystem.toml"), &|_| None).unwrap()
}

impl Sleepers {
    fn start(instances: u32) -> Sleepers {
        let mut driver = Driver::new(crate::host::SysHost, "@heartalk-fleet-test".into());
        let first = driver.prepare(&config(instances), 1, None).unwrap();
        let mut fleet = Fleet::new(first, "@heartalk-fleet-test/metrics".into());
        let t0 = Instant::now();
        driver.apply(&mut fleet, t0, Fleet::start_all);
        let mut s = Sleepers { fleet, driver, t0 };
        for pid in s.current() {
            s.say(pid, "READY=1", t0);
        }
        s
    }

    /// The single worker of a one-slot fleet, SIGSTOPped (a SIGABRT then
    /// stays pending, as for a worker stopped by an operator).
    fn stopped_worker(&self) -> Pid {
        let old = self.current()[0];
        kill(old, Signal::SIGSTOP).unwrap();
        old
    }

    fn say(&mut self, pid: Pid, text: &str, at: Instant) {
        let msg = parse(pid, text.as_bytes());
        self.driver
            .apply(&mut self.fleet, at, |f| f.on_notify(&msg, at));
    }

    fn tick(&mut self, at: Instant) {
        self.driver.apply(&mut self.fleet, at, |f| f.tick(at));
    }

    fn reload(&mut self, config: &Config, at: Instant) {
        let next = self.driver.prepare(config, 1, Some(&self.fleet)).unwrap();
        self.driver
            .apply(&mut self.fleet, at, |f| f.reload(next, at));
    }

    fn stop(&mut self, fast: bool, at: Instant) {
        self.driver.apply(&mut self.fleet, at, |f| f.stop(fast, at));
    }

    /// The current worker of every slot.
    fn current(&self) -> Vec<Pid> {
        self.fleet
            .view()
            .apps
            .iter()
            .flat_map(|a| &a.slots)
            .filter_map(|s| s.worker.as_ref().map(|w| w.pid))
            .collect()
    }

    fn state(&self, slot: usize) -> SlotState {
        self.fleet.view().apps[0].slots[slot].state
    }

    fn successor(&self, slot: usize) -> Option<Pid> {
        self.fleet.apps[0].slots[slot]
            .successor
            .as_ref()
            .map(|w| w.pid)
    }

    fn at(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs)
    }

    /// Waits (up to 5 s) for `pid` to end and tells the fleet.
    fn reap(&mut self, pid: Pid, at: Instant) -> WaitStatus {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(status) => {
                    self.driver
                        .apply(&mut self.fleet, at, |f| f.on_exit(pid, status, at));
                    return status;
                }
                Err(e) => panic!("waitpid {pid}: {e}"),
            }
        }
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        for pid in self.fleet.worker_pids() {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

#[test]
fn a_worker_that_never_pinged_is_never_hung() {
    let mut s = Sleepers::start(1);
    s.tick(s.at(3600.0));
    assert_eq!(s.state(0), SlotState::Online);
    assert!(s.successor(0).is_none());
    assert_eq!(s.fleet.next_deadline(), None, "nothing to wake up for");
}

#[test]
fn silence_past_the_watchdog_replaces_the_worker_and_aborts_it() {
    let mut s = Sleepers::start(1);
    let old = s.current()[0];
    s.say(old, "WATCHDOG=1", s.at(1.0));
    assert_eq!(s.fleet.next_deadline(), Some(s.at(1.0) + WATCHDOG));
    s.tick(s.at(2.9));
    assert_eq!(s.state(0), SlotState::Online, "still within the interval");
    s.tick(s.at(3.0));
    assert_eq!(s.state(0), SlotState::Hung);
    assert_eq!(s.fleet.not_serving(), 1);
    let new = s.successor(0).expect("a replacement starts at once");
    assert_eq!(
        s.fleet.apps[0].slots[0]
            .successor
            .as_ref()
            .unwrap()
            .generation,
        1
    );
    // SIGABRT ends a sleeper by itself.
    let status = s.reap(old, s.at(3.1));
    assert!(
        matches!(status, WaitStatus::Signaled(_, Signal::SIGABRT, _)),
        "{status:?}"
    );
    let view = s.fleet.view();
    let slot = &view.apps[0].slots[0];
    assert_eq!(slot.worker.as_ref().unwrap().pid, new);
    assert_eq!(slot.state, SlotState::Starting);
    assert_eq!(slot.last_exit.as_ref().unwrap().reason, "hung");
    s.say(new, "READY=1", s.at(3.2));
    assert_eq!(s.state(0), SlotState::Online);
    assert_eq!(s.fleet.not_serving(), 0);
    let has = |rows: &[(String, &'static str, u64)], reason: &str, n: u64| {
        rows.iter().any(|(_, r, k)| *r == reason && *k == n)
    };
    let v = s.fleet.view();
    assert!(has(&v.hangs_by, "silent", 1));
    assert!(has(&v.hangs_by, "trigger", 0), "zero from the start");
    assert!(has(&v.restarts_by, "hung", 1));
    assert!(has(&v.restarts_by, "crash", 0));
    // The replacement is not watched until it pings.
    s.tick(s.at(60.0));
    assert_eq!(s.state(0), SlotState::Online);
}

#[test]
fn a_replacement_ready_first_retires_the_hung_worker_with_its_kill_deadline() {
    let mut s = Sleepers::start(1);
    let old = s.stopped_worker();
    s.say(old, "WATCHDOG=trigger", s.at(1.0));
    assert_eq!(s.state(0), SlotState::Hung);
    let new = s.successor(0).unwrap();
    s.say(new, "READY=1", s.at(1.1));
    assert_eq!(s.current(), vec![new]);
    assert_eq!(s.state(0), SlotState::Online);
    // The hung one is SIGKILLed at its deadline (ABORT_GRACE), not after
    // a kill_timeout drain.
    assert_eq!(s.fleet.next_deadline(), Some(s.at(1.0) + ABORT_GRACE));
    s.tick(s.at(1.0) + ABORT_GRACE);
    assert!(s.fleet.draining.iter().any(|d| d.pid == old && d.killed));
    // SIGKILL wakes the stopped process; the kernel may report the
    // SIGABRT that was pending since, but it dies now either way.
    let status = s.reap(old, s.at(3.1));
    assert!(
        matches!(
            status,
            WaitStatus::Signaled(_, Signal::SIGKILL | Signal::SIGABRT, _)
        ),
        "{status:?}"
    );
    let v = s.fleet.view();
    assert!(
        v.hangs_by
            .iter()
            .any(|(_, r, n)| *r == "trigger" && *n == 1)
    );
    assert!(
        v.restarts_by
            .iter()
            .any(|(_, r, n)| *r == "hung" && *n == 1)
    );
}

#[test]
fn a_hang_during_a_reload_keeps_its_generation_and_its_kill_deadline() {
    let mut s = Sleepers::start(1);
    let old = s.stopped_worker();
    s.say(old, "WATCHDOG=1", s.at(0.5));
    s.reload(&config(1), s.at(1.0));
    s.tick(s.at(2.5));
    assert_eq!(s.state(0), SlotState::Hung);
    let succ = s.fleet.apps[0].slots[0].successor.as_ref().unwrap();
    assert_eq!(
        succ.generation, 1,
        "the replacement runs the current generation"
    );
    // The next generation becomes ready and commits.
    let next = s
        .fleet
        .rollout
        .as_ref()
        .and_then(|r| r.apps[0].slots[0].worker.as_ref().map(|w| w.pid))
        .expect("next-generation worker");
    s.say(next, "READY=1", s.at(2.6));
    assert!(s.fleet.rollout.is_none(), "committed");
    let hung = s.fleet.draining.iter().find(|d| d.pid == old).unwrap();
    assert_eq!(hung.reason, "hung");
    assert_eq!(
        hung.kill_at,
        s.at(2.5) + ABORT_GRACE,
        "no kill_timeout drain"
    );
}

#[test]
fn a_stop_keeps_a_hung_workers_earlier_kill_deadline() {
    let mut s = Sleepers::start(1);
    let old = s.stopped_worker();
    s.say(old, "WATCHDOG=trigger", s.at(1.0));
    s.stop(false, s.at(1.5));
    let w = s.fleet.apps[0].slots[0].worker.as_ref().unwrap();
    assert_eq!(w.kill_at, Some(s.at(1.0) + ABORT_GRACE));
}

#[test]
fn a_supervisor_stall_pardons_the_workers_silence() {
    let mut s = Sleepers::start(2);
    let pids = s.current();
    for &p in &pids {
        s.say(p, "WATCHDOG=1", s.at(1.0));
    }
    // The loop wakes 30 s late: nobody is judged for the supervisor's pause.
    s.fleet.pardon_silence(s.at(31.0), Duration::from_secs(29));
    s.tick(s.at(31.0));
    assert_eq!(s.state(0), SlotState::Online);
    assert_eq!(s.state(1), SlotState::Online);
    // ...but a worker that stays silent from then on is.
    s.tick(s.at(33.0));
    assert_eq!(s.state(0), SlotState::Hung);
}

#[test]
fn degraded_reports_show_in_the_view_and_the_count() {
    let mut s = Sleepers::start(2);
    let pids = s.current();
    s.say(
        pids[1],
        "X_HEARTALK_DEGRADED=1\nSTATUS=degraded: at budget",
        s.at(1.0),
    );
    assert_eq!(s.state(0), SlotState::Online);
    assert_eq!(s.state(1), SlotState::Degraded);
    assert_eq!(s.fleet.not_serving(), 1);
    s.say(pids[1], "X_HEARTALK_DEGRADED=0\nSTATUS=serving", s.at(2.0));
    assert_eq!(s.state(1), SlotState::Online);
    assert_eq!(s.fleet.not_serving(), 0);
}
