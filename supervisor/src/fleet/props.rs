//! Generated-sequence tests of the fleet's rules. A [`FakeHost`] stands in
//! for the processes (it invents pids, records every signal, answers the
//! memory readings a test chose), and proptest drives the fleet the way
//! `run.rs` does — one event, then a tick, then a due reload — through
//! random interleavings of exits, READY, watchdog pings and triggers,
//! degraded reports, memory samples, failed forks, time passing (waking at
//! every deadline on the way, as the event loop does), reloads that change
//! the instance count and `max_surge`, and stops. After every step the
//! invariants in [`Sim::check`] hold, and the loop settles (no deadline
//! left in the past after a few turns, or it would spin); every sequence
//! ends with a graceful stop that must finish once the workers die of
//! SIGKILL. A second property follows one rollout of a quiet fleet and
//! checks that a rollback leaves the old generation untouched.
//!
//! Case counts are fixed ([`CASES`]) so the suite's time stays bounded.
//! Shrunk failures are kept below as named regression tests.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use proptest::prelude::*;
use shared::config::{Config, Instances};

use super::*;
use crate::host::{Driver, Host, Outputs};
use crate::notify::parse;
use crate::spawn::Launch;

/// Cases per property: enough to reach the rare orders (a crash during a
/// rollout's commit, a memory replacement racing a reload), few enough
/// that the whole file runs in seconds.
const CASES: u32 = 256;

/// [`CASES`] cases, and failures kept as named tests (`props_named.rs`),
/// not in a regressions file.
fn fixed_cases() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A stand-in for the processes the fleet starts.
#[derive(Debug, Default)]
struct FakeHost {
    next_pid: i32,
    /// Spawned and not yet reported exited.
    live: BTreeSet<Pid>,
    /// Every spawn: (pid, app, slot, generation).
    spawned: Vec<(Pid, String, usize, u64)>,
    /// Every signal, in order.
    signals: Vec<(Pid, Signal)>,
    /// Pids that were sent SIGKILL: they die, whatever else they do.
    killed: BTreeSet<Pid>,
    /// Signals to a pid that was never spawned or was already reaped.
    stray: Vec<(Pid, Signal)>,
    /// Each worker's RSS (and PSS); 0 until a test sets it.
    memory: HashMap<Pid, u64>,
    /// The next spawn fails (as a fork or exec error would).
    fail_next_spawn: bool,
    /// What `check_secrets` answers for every app (the real check reads
    /// the process environment and files: not in these tests).
    secrets_refused: Vec<String>,
    /// Every address a generation's setup bound sockets on (real sockets:
    /// the default `bind`).
    bound: Vec<std::net::SocketAddr>,
}

impl FakeHost {
    fn note(&mut self, pid: Pid, sig: Signal) {
        if !self.live.contains(&pid) {
            self.stray.push((pid, sig));
        }
        if sig == Signal::SIGKILL {
            self.killed.insert(pid);
        }
        self.signals.push((pid, sig));
    }
}

impl Host for FakeHost {
    fn spawn(&mut self, launch: Launch<'_>, capture: bool) -> io::Result<(Pid, Option<Outputs>)> {
        assert!(!capture, "the tests do not capture output");
        if std::mem::take(&mut self.fail_next_spawn) {
            return Err(io::Error::other("fake fork failure"));
        }
        self.next_pid += 1;
        let pid = Pid::from_raw(100_000 + self.next_pid);
        self.live.insert(pid);
        self.spawned
            .push((pid, launch.app.name.clone(), launch.slot, launch.generation));
        Ok((pid, None))
    }

    fn signal(&mut self, pid: Pid, sig: Signal) {
        self.note(pid, sig);
    }

    fn signal_group(&mut self, pid: Pid, sig: Signal) {
        self.note(pid, sig);
    }

    fn rss(&mut self, pid: Pid) -> Option<u64> {
        self.live
            .contains(&pid)
            .then(|| self.memory.get(&pid).copied().unwrap_or(0))
    }

    fn pss(&mut self, pid: Pid) -> Option<u64> {
        self.rss(pid)
    }

    fn check_secrets(&mut self, _app: &shared::config::App) -> Vec<String> {
        self.secrets_refused.clone()
    }

    fn bind(
        &mut self,
        addr: std::net::SocketAddr,
        count: usize,
    ) -> io::Result<Vec<crate::sockets::SlotSocket>> {
        self.bound.push(addr);
        crate::sockets::bind_slots(addr, count)
    }
}

const SOFT: u64 = 100_000_000;
const HARD: u64 = 200_000_000;

/// The fleet's configuration: two apps (`a` and `b`), short timeouts.
#[derive(Debug, Clone, Copy)]
struct Shape {
    a: u32,
    b: u32,
    surge: u32,
    memory: bool,
    watchdog: bool,
    /// Unstable restarts a slot gets before it is errored.
    max_restarts: u32,
}

fn config(shape: &Shape) -> Config {
    let mut text = String::new();
    for (name, n) in [("a", shape.a), ("b", shape.b)] {
        text += &format!(
            "[[apps]]\nname = \"{name}\"\nscript = \"/bin/sleep\"\ninstances = {n}\n\
             listen = \"127.0.0.1:0\"\nmax_surge = {}\nlisten_timeout = \"2s\"\n\
             kill_timeout = \"3s\"\nrestart_delay = \"100ms\"\nrestart_delay_max = \"1s\"\n\
             min_uptime = \"1s\"\nmax_restarts = {}\nmemory_check_interval = \"1s\"\n\
             memory_strikes = 2\n",
            shape.surge, shape.max_restarts
        );
        if shape.memory {
            text += &format!("max_memory = {SOFT}\nmax_memory_hard = {HARD}\n");
        }
        text += if shape.watchdog {
            "watchdog = \"2s\"\n"
        } else {
            "watchdog = \"0\"\n"
        };
    }
    Config::parse(&text, Path::new("/tmp/ecosystem.toml"), &|_| None).unwrap()
}

/// One thing that happens to the fleet. `pick` chooses among the live
/// processes (modulo their number), so a shrunk case stays meaningful.
#[derive(Debug, Clone)]
enum Event {
    /// The process exited with `code`, or was killed (`None`: SIGKILL).
    Exit {
        pick: usize,
        code: Option<i32>,
    },
    /// READY from a worker not yet ready (any worker, if none is).
    Ready {
        pick: usize,
    },
    /// Two processes exit and are reaped together: the fleet hears of both
    /// before any action is performed (`Driver::exits`).
    ExitTwo {
        pick: usize,
        other: usize,
    },
    /// The youngest live worker crashes (code 1): what keeps a slot
    /// failing before `min_uptime`, or fails a new generation.
    CrashNewest,
    Ping {
        pick: usize,
    },
    Trigger {
        pick: usize,
    },
    Degraded {
        pick: usize,
        on: bool,
    },
    /// Its memory: 0 under the limits, 1 over `max_memory`, 2 over
    /// `max_memory_hard`.
    Memory {
        pick: usize,
        level: u8,
    },
    FailNextSpawn,
    Advance {
        ms: u64,
    },
    Reload {
        a: u32,
        surge: u32,
    },
    Stop {
        fast: bool,
    },
    /// `heartalk restart`: every app (0), or `a` (1) or `b` (2).
    Restart {
        which: u8,
    },
    /// `heartalk scale`: app `a` (0) or `b` (1) to `n` workers, or back to
    /// the file's count (`n` 0).
    Scale {
        which: u8,
        n: u32,
    },
}

/// Events, and where in them a stop comes (if any): drawn apart so that
/// most sequences run a while before stopping.
fn events() -> impl Strategy<Value = Vec<Event>> {
    (
        proptest::collection::vec(event(), 1..80),
        proptest::option::of((0..80usize, any::<bool>())),
    )
        .prop_map(|(mut events, stop)| {
            if let Some((at, fast)) = stop {
                let at = at.min(events.len());
                events.insert(at, Event::Stop { fast });
            }
            events
        })
}

fn event() -> impl Strategy<Value = Event> {
    let pick = 0..16usize;
    prop_oneof![
        3 => (pick.clone(), prop_oneof![Just(None), (0..3i32).prop_map(Some)])
            .prop_map(|(pick, code)| Event::Exit { pick, code }),
        10 => pick.clone().prop_map(|pick| Event::Ready { pick }),
        3 => pick.clone().prop_map(|pick| Event::Ping { pick }),
        1 => pick.clone().prop_map(|pick| Event::Trigger { pick }),
        1 => (pick.clone(), any::<bool>()).prop_map(|(pick, on)| Event::Degraded { pick, on }),
        3 => (pick, 0..3u8).prop_map(|(pick, level)| Event::Memory { pick, level }),
        1 => Just(Event::FailNextSpawn),
        6 => prop_oneof![3 => 10..500u64, 2 => 500..1500u64, 1 => 1500..8000u64]
            .prop_map(|ms| Event::Advance { ms }),
        2 => (1..4u32, 1..3u32).prop_map(|(a, surge)| Event::Reload { a, surge }),
        1 => Just(Event::CrashNewest),
        2 => (0..16usize, 1..16usize).prop_map(|(pick, other)| Event::ExitTwo { pick, other }),
        1 => (0..3u8).prop_map(|which| Event::Restart { which }),
        1 => (0..2u8, 0..4u32).prop_map(|(which, n)| Event::Scale { which, n }),
    ]
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        1..4u32,
        1..3u32,
        1..3u32,
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(0u32), Just(1), Just(3)],
    )
        .prop_map(|(a, b, surge, memory, watchdog, max_restarts)| Shape {
            a,
            b,
            surge,
            memory,
            watchdog,
            max_restarts,
        })
}

/// A fleet on a fake host, driven as the event loop drives it.
struct Sim {
    fleet: Fleet,
    driver: Driver<FakeHost>,
    now: Instant,
    shape: Shape,
    config: Config,
    /// Outcomes of finished reloads, oldest first.
    outcomes: Vec<&'static str>,
    /// Every slot errored while running: the supervisor would exit.
    gave_up: bool,
    /// Restarts under way: their number and how many slots they cover.
    restarts: Vec<(u64, u32)>,
    /// Outcomes of finished restarts.
    restarted: Vec<RestartOutcome>,
}

impl Sim {
    fn start(shape: Shape) -> Sim {
        let config = config(&shape);
        let mut driver = Driver::new(FakeHost::default(), "@heartalk-props".into());
        let first = driver.prepare(&config, 2, None).unwrap();
        let mut fleet = Fleet::new(first, "@heartalk-props/metrics".into());
        let now = Instant::now();
        driver.apply(&mut fleet, now, Fleet::start_all);
        let mut sim = Sim {
            fleet,
            driver,
            now,
            shape,
            config,
            outcomes: Vec::new(),
            gave_up: false,
            restarts: Vec::new(),
            restarted: Vec::new(),
        };
        sim.settle_step();
        sim
    }

    fn pick(&self, k: usize) -> Option<Pid> {
        let live = &self.driver.host.live;
        (!live.is_empty()).then(|| *live.iter().nth(k % live.len()).unwrap())
    }

    fn say(&mut self, pid: Pid, text: &str) {
        let now = self.now;
        let msg = parse(pid, text.as_bytes());
        self.driver
            .apply(&mut self.fleet, now, |f| f.on_notify(&msg, now));
    }

    fn exit(&mut self, pid: Pid, status: WaitStatus) {
        self.driver.host.live.remove(&pid);
        let now = self.now;
        self.driver
            .apply(&mut self.fleet, now, |f| f.on_exit(pid, status, now));
    }

    /// What the event loop does after every wake: tick, start a due
    /// reload, answer finished ones; then the invariants must hold. A
    /// deadline still not in the future wakes it again at once (a rule
    /// that acts and returns may leave another for the next turn), but it
    /// must settle within a few turns, or the loop would spin.
    fn settle_step(&mut self) {
        for turn in 0.. {
            self.turn();
            match self.fleet.next_deadline() {
                Some(d) if d <= self.now => assert!(
                    turn < 3,
                    "the event loop spins: a deadline {:?} past stays after {turn} turns",
                    self.now - d
                ),
                _ => break,
            }
        }
    }

    fn turn(&mut self) {
        let now = self.now;
        self.driver.apply(&mut self.fleet, now, |f| f.tick(now));
        if self.fleet.reload_due() {
            let next = self
                .driver
                .prepare(&self.config, 2, Some(&self.fleet))
                .unwrap();
            self.driver
                .apply(&mut self.fleet, now, |f| f.reload(next, now));
        }
        assert!(self.driver.take_new_outputs().is_empty());
        for f in self.fleet.take_finished_reloads() {
            self.outcomes.push(f.outcome.outcome);
        }
        for done in self.fleet.take_finished_restarts() {
            let i = self
                .restarts
                .iter()
                .position(|(seq, _)| *seq == done.seq)
                .expect("a restart that was started");
            let (_, slots) = self.restarts.swap_remove(i);
            if done.outcome == "done" {
                // Every slot had its turn: replaced, skipped or failed.
                let settled = done.replaced + done.skipped + done.failed.len() as u32;
                assert_eq!(settled, slots, "{done:?}");
            }
            self.restarted.push(done);
        }
        self.fleet.take_first_ready();
        if !self.fleet.is_stopping() && self.fleet.all_errored() {
            self.gave_up = true;
        }
        self.check();
    }

    fn apply(&mut self, ev: &Event) {
        let skipped = self.driver.signals_skipped();
        self.apply_event(ev);
        if !matches!(ev, Event::ExitTwo { .. }) {
            // One event at a time, the fleet never decides a signal to a
            // pid it no longer tracks (the driver would drop it silently).
            assert_eq!(
                self.driver.signals_skipped(),
                skipped,
                "{ev:?} signalled a reaped pid"
            );
        }
    }

    fn apply_event(&mut self, ev: &Event) {
        match *ev {
            Event::Exit { pick, code } => {
                if let Some(pid) = self.pick(pick) {
                    let status = match code {
                        Some(c) => WaitStatus::Exited(pid, c),
                        None => WaitStatus::Signaled(pid, Signal::SIGKILL, false),
                    };
                    self.exit(pid, status);
                }
            }
            Event::Ready { pick } => {
                let unready = self.unready();
                match unready.is_empty() {
                    true => self.tell(pick, "READY=1"),
                    false => self.say(unready[pick % unready.len()], "READY=1"),
                }
            }
            Event::ExitTwo { pick, other } => {
                let live: Vec<Pid> = self.driver.host.live.iter().copied().collect();
                if live.len() >= 2 {
                    let first = live[pick % live.len()];
                    let second = live[(pick + other) % live.len()];
                    if first != second {
                        let reaped = [
                            (first, WaitStatus::Exited(first, 1)),
                            (second, WaitStatus::Signaled(second, Signal::SIGKILL, false)),
                        ];
                        for (pid, _) in &reaped {
                            self.driver.host.live.remove(pid);
                        }
                        let now = self.now;
                        self.driver.exits(&mut self.fleet, &reaped, now);
                        self.settle_step();
                        return;
                    }
                }
            }
            Event::CrashNewest => {
                let newest = self.driver.host.live.iter().next_back().copied();
                if let Some(pid) = newest {
                    self.exit(pid, WaitStatus::Exited(pid, 1));
                }
            }
            Event::Ping { pick } => self.tell(pick, "WATCHDOG=1"),
            Event::Trigger { pick } => self.tell(pick, "WATCHDOG=trigger"),
            Event::Degraded { pick, on } => self.tell(
                pick,
                if on {
                    "X_HEARTALK_DEGRADED=1"
                } else {
                    "X_HEARTALK_DEGRADED=0"
                },
            ),
            Event::Memory { pick, level } => {
                if let Some(pid) = self.pick(pick) {
                    let rss = [SOFT / 2, SOFT + 1, HARD + 1][level as usize];
                    self.driver.host.memory.insert(pid, rss);
                }
            }
            Event::FailNextSpawn => self.driver.host.fail_next_spawn = true,
            Event::Advance { ms } => return self.advance(Duration::from_millis(ms)),
            Event::Reload { a, surge } => {
                self.shape.a = a;
                self.shape.surge = surge;
                self.config = config(&self.shape);
                self.fleet.request_reload("signal");
            }
            Event::Restart { which } => {
                let app = [None, Some("a"), Some("b")][which as usize];
                let slots = self
                    .fleet
                    .apps
                    .iter()
                    .filter(|a| app.is_none_or(|n| a.config.name == n))
                    .map(|a| a.slots.len() as u32)
                    .sum();
                let busy = self.fleet.is_reloading() || self.fleet.is_restarting();
                match self.fleet.restart(app) {
                    Ok((seq, actions)) => {
                        assert!(!busy && !self.fleet.is_stopping());
                        self.restarts.push((seq, slots));
                        let now = self.now;
                        self.driver.perform(&mut self.fleet, actions, now);
                    }
                    Err(e) => assert!(busy || self.fleet.is_stopping(), "refused: {e}"),
                }
            }
            Event::Scale { which, n } => {
                let app = ["a", "b"][which as usize];
                let want = std::num::NonZeroU32::new(n).map(Instances::Count);
                let busy = self.fleet.is_reloading() || self.fleet.is_restarting();
                match self.fleet.plan_scale(app, want, 2) {
                    Ok(plan) => {
                        assert!(!busy && !self.fleet.is_stopping());
                        let target = plan.target;
                        let sockets = self.driver.bind(plan.addr, plan.bind).unwrap();
                        let now = self.now;
                        self.driver
                            .apply(&mut self.fleet, now, |f| f.scale(plan, sockets, now));
                        let a = self.app(app);
                        assert_eq!(a.slots.len(), target);
                    }
                    Err(ScaleRefused::OnlyErrored(..)) => {
                        let a = self.app(app);
                        assert!(a.slots.iter().any(|s| s.state == SlotState::Errored));
                    }
                    Err(e) => assert!(busy || self.fleet.is_stopping(), "refused: {e}"),
                }
            }
            Event::Stop { fast } => {
                let (fast, now) = (fast || self.fleet.is_stopping(), self.now);
                self.driver
                    .apply(&mut self.fleet, now, |f| f.stop(fast, now));
            }
        }
        self.settle_step();
    }

    /// Live workers that have not sent READY yet, oldest first.
    fn unready(&self) -> Vec<Pid> {
        let f = &self.fleet;
        let next = f.rollout.iter().flat_map(|r| &r.apps);
        let mut pids: Vec<Pid> = f
            .apps
            .iter()
            .chain(next)
            .flat_map(|a| &a.slots)
            .flat_map(|s| [s.worker.as_ref(), s.successor.as_ref()])
            .flatten()
            .filter(|w| w.ready_at.is_none())
            .map(|w| w.pid)
            .collect();
        pids.sort();
        pids
    }

    /// The app called `name`.
    fn app(&self, name: &str) -> &AppRun {
        self.fleet
            .apps
            .iter()
            .find(|x| x.config.name == name)
            .unwrap()
    }

    /// Every worker not yet ready sends READY, one after another.
    fn ready_all(&mut self) {
        while let Some(&pid) = self.unready().first() {
            self.say(pid, "READY=1");
            self.settle_step();
        }
    }

    fn tell(&mut self, pick: usize, text: &str) {
        if let Some(pid) = self.pick(pick) {
            self.say(pid, text);
        }
    }

    /// Lets `by` pass, waking at every deadline on the way.
    fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        while let Some(d) = self.fleet.next_deadline().filter(|d| *d <= target) {
            self.now = self.now.max(d);
            self.settle_step();
        }
        self.now = target;
        self.settle_step();
    }

    /// Stops the fleet gracefully; workers ignore SIGTERM and die only of
    /// SIGKILL. The stop must still finish, every worker reaped.
    fn finish(&mut self) {
        if !self.fleet.is_stopping() {
            let now = self.now;
            self.driver
                .apply(&mut self.fleet, now, |f| f.stop(false, now));
            self.settle_step();
        }
        for _ in 0..20 {
            if self.fleet.is_stopped() {
                assert!(self.driver.host.live.is_empty());
                return;
            }
            let dying: Vec<Pid> = self
                .driver
                .host
                .live
                .intersection(&self.driver.host.killed)
                .copied()
                .collect();
            for pid in dying {
                self.exit(pid, WaitStatus::Signaled(pid, Signal::SIGKILL, false));
                self.settle_step();
            }
            self.advance(Duration::from_secs(5));
        }
        panic!(
            "the stop never finished: live {:?}, tracked {:?}",
            self.driver.host.live, self.fleet.pids
        );
    }

    /// The invariants that hold after every step.
    fn check(&self) {
        let f = &self.fleet;
        let host = &self.driver.host;
        // The driver answered every spawn the fleet ordered.
        assert!(
            f.spawning.is_empty(),
            "unanswered spawns: {}",
            f.spawning.len()
        );
        // No signal ever goes to a pid already reaped (or never spawned):
        // it could be someone else's by now.
        assert!(
            host.stray.is_empty(),
            "signal to a reaped pid: {:?}",
            host.stray
        );
        // Every spawned pid is tracked until it is reaped, and nothing else is.
        let tracked: BTreeSet<Pid> = f.pids.keys().copied().collect();
        assert_eq!(tracked, host.live, "tracked pids are the live ones");
        // ...each in exactly the place its role says.
        let mut placed = 0;
        for (a, app) in f.apps.iter().enumerate() {
            for (s, slot) in app.slots.iter().enumerate() {
                if let Some(w) = &slot.worker {
                    assert_eq!(f.pids.get(&w.pid), Some(&Role::Current(a, s)));
                    placed += 1;
                }
                if let Some(w) = &slot.successor {
                    assert_eq!(f.pids.get(&w.pid), Some(&Role::Successor(a, s)));
                    placed += 1;
                }
            }
        }
        if let Some(r) = &f.rollout {
            for (a, app) in r.apps.iter().enumerate() {
                for (s, slot) in app.slots.iter().enumerate() {
                    if let Some(w) = &slot.worker {
                        assert_eq!(f.pids.get(&w.pid), Some(&Role::Next(a, s)));
                        placed += 1;
                    }
                }
            }
        }
        for d in &f.draining {
            assert_eq!(f.pids.get(&d.pid), Some(&Role::Draining));
            placed += 1;
        }
        assert_eq!(placed, f.pids.len(), "every tracked pid has one place");

        // A slot has a serving or starting worker unless it waits for its
        // restart (which is scheduled), gave up, or the fleet stops.
        for app in &f.apps {
            for (s, slot) in app.slots.iter().enumerate() {
                assert_eq!(slot.index, s, "a slot's number is its place");
                let has = slot.worker.is_some();
                let ok = match (f.mode, slot.state) {
                    (_, SlotState::Starting | SlotState::Online) => has,
                    (Mode::Running, SlotState::Waiting) => !has && slot.restart_at.is_some(),
                    (_, SlotState::Errored) => !has && slot.socket.is_none(),
                    (Mode::Stopping, SlotState::Stopping) => has,
                    (Mode::Stopping, SlotState::Stopped) => !has,
                    _ => false,
                };
                assert!(
                    ok,
                    "app {} slot {} is {} ({:?}) with worker {has}",
                    app.config.name, slot.index, slot.state, f.mode
                );
                if f.mode == Mode::Stopping {
                    assert!(
                        !matches!(slot.state, SlotState::Starting | SlotState::Online),
                        "a stop leaves no slot serving"
                    );
                }
            }
        }

        // A restart replaces at most `max_surge` workers of an app at a
        // time, and never runs beside a rollout.
        if f.rolling.is_some() {
            assert!(f.rollout.is_none(), "a restart beside a rollout");
        }
        for (a, app) in f.apps.iter().enumerate() {
            assert!(
                f.restarting_in(a) <= app.config.max_surge as usize,
                "{} restart successors of {}",
                f.restarting_in(a),
                app.config.name
            );
        }

        // A rollout starts at most `max_surge` workers of an app at a time:
        // its not-yet-ready new workers never outnumber it. (Ready ones
        // stay up beside the old generation until the all-or-nothing
        // commit, so up to `instances` extra workers per app run then.)
        if let Some(r) = &f.rollout {
            assert_eq!(f.mode, Mode::Running, "no rollout during a stop");
            for (a, app) in r.apps.iter().enumerate() {
                let starting = app
                    .slots
                    .iter()
                    .filter(|s| s.state == SlotState::Starting)
                    .count();
                assert!(
                    starting <= app.config.max_surge as usize,
                    "{starting} new workers of {} starting, max_surge {}",
                    app.config.name,
                    app.config.max_surge
                );
                for (s, slot) in app.slots.iter().enumerate() {
                    let pending = r.pending.contains(&(a, s));
                    match slot.state {
                        SlotState::Waiting => assert!(pending && slot.worker.is_none()),
                        SlotState::Starting | SlotState::Online => {
                            assert!(!pending && slot.worker.is_some())
                        }
                        other => panic!("a new worker's slot is {other}"),
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(fixed_cases())]

    /// Any interleaving of events keeps the invariants, and a stop at the
    /// end finishes with every worker reaped.
    #[test]
    fn any_sequence_keeps_the_invariants(
        shape in shape(),
        events in events(),
    ) {
        let mut sim = Sim::start(shape);
        for ev in &events {
            if sim.gave_up {
                break;
            }
            sim.apply(ev);
        }
        sim.finish();
    }
}

/// What happens to a new generation while its rollout runs.
#[derive(Debug, Clone)]
enum RolloutEvent {
    Ready { pick: usize },
    Crash { pick: usize },
    FailNextSpawn,
    Advance { ms: u64 },
}

fn rollout_event() -> impl Strategy<Value = RolloutEvent> {
    prop_oneof![
        4 => (0..16usize).prop_map(|pick| RolloutEvent::Ready { pick }),
        1 => (0..16usize).prop_map(|pick| RolloutEvent::Crash { pick }),
        1 => Just(RolloutEvent::FailNextSpawn),
        2 => (10..1500u64).prop_map(|ms| RolloutEvent::Advance { ms }),
    ]
}

impl Sim {
    /// The rollout's workers, oldest first.
    fn next_gen(&self) -> Vec<Pid> {
        let mut pids: Vec<Pid> = self
            .fleet
            .pids
            .iter()
            .filter(|(_, r)| matches!(r, Role::Next(..)))
            .map(|(p, _)| *p)
            .collect();
        pids.sort();
        pids
    }

    /// Every current slot: its app, state and worker.
    fn slots(&self) -> Vec<(String, SlotState, Option<Pid>)> {
        self.fleet
            .apps
            .iter()
            .flat_map(|a| a.slots.iter().map(move |s| (a, s)))
            .map(|(a, s)| {
                (
                    a.config.name.clone(),
                    s.state,
                    s.worker.as_ref().map(|w| w.pid),
                )
            })
            .collect()
    }
}

proptest! {
    #![proptest_config(fixed_cases())]

    /// A serving fleet (no watchdog, no memory limits: nothing of its own
    /// touches it) is reloaded, and the new generation is READY, crashes,
    /// fails to fork or misses `listen_timeout` in any order. If the
    /// rollout rolls back, the old generation is as it was — not one
    /// signal to its workers, each slot with the same worker in the same
    /// state — and every new worker was SIGKILLed and is tracked until
    /// reaped. If it commits, every old worker was asked to drain.
    #[test]
    fn a_rollback_leaves_the_old_generation_untouched(
        a in 1..4u32,
        b in 1..3u32,
        surge in 1..3u32,
        new_a in 1..4u32,
        events in proptest::collection::vec(rollout_event(), 1..40),
    ) {
        let mut sim = Sim::start(Shape {
            a,
            b,
            surge,
            memory: false,
            watchdog: false,
            max_restarts: 3,
        });
        sim.ready_all();
        let old = sim.driver.host.live.clone();
        let before = sim.slots();
        let sent = sim.driver.host.signals.len();
        let spawned = sim.driver.host.spawned.len();
        sim.apply(&Event::Reload { a: new_a, surge });
        for ev in &events {
            if sim.fleet.rollout.is_none() {
                break;
            }
            let next = sim.next_gen();
            match *ev {
                RolloutEvent::Ready { pick } if !next.is_empty() => {
                    sim.say(next[pick % next.len()], "READY=1");
                    sim.settle_step();
                }
                RolloutEvent::Crash { pick } if !next.is_empty() => {
                    let pid = next[pick % next.len()];
                    sim.exit(pid, WaitStatus::Exited(pid, 1));
                    sim.settle_step();
                }
                RolloutEvent::FailNextSpawn => sim.driver.host.fail_next_spawn = true,
                RolloutEvent::Advance { ms } => sim.advance(Duration::from_millis(ms)),
                _ => {}
            }
        }
        // Past every new worker's listen_timeout, the rollout is over.
        sim.advance(Duration::from_millis(2500));
        prop_assert!(sim.fleet.rollout.is_none());
        let signals = &sim.driver.host.signals[sent..];
        match sim.outcomes.last().copied() {
            Some("rolled_back") => {
                prop_assert!(
                    signals.iter().all(|(p, _)| !old.contains(p)),
                    "a rollback signalled the old generation: {:?}", signals
                );
                prop_assert_eq!(sim.slots(), before);
                for (pid, ..) in &sim.driver.host.spawned[spawned..] {
                    let reaped = !sim.driver.host.live.contains(pid);
                    let killed = sim.driver.host.killed.contains(pid)
                        && sim.fleet.draining.iter().any(|d| d.pid == *pid && d.killed);
                    prop_assert!(reaped || killed, "new worker {} left running", pid);
                }
            }
            Some("committed") => {
                for p in &old {
                    prop_assert!(
                        signals.contains(&(*p, Signal::SIGTERM)),
                        "old worker {} not drained", p
                    );
                }
            }
            other => prop_assert!(false, "the rollout ended with {:?}", other),
        }
        sim.finish();
    }
}

// Shrunk failures and hand-made cases, kept by name.
#[path = "props_named.rs"]
mod named;
