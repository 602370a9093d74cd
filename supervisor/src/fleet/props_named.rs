//! The fleet's named cases: failures the generated sequences found,
//! shrunk and kept, and hand-made sequences (a rolling restart, the
//! machine without a driver), run with the same `Sim` and invariants.

use super::*;

/// Apps `a` and `b` with one slot each, `max_surge` 1, 3 unstable restarts.
fn one_each(memory: bool, watchdog: bool) -> Shape {
    Shape {
        a: 1,
        b: 1,
        surge: 1,
        memory,
        watchdog,
        max_restarts: 3,
    }
}

// Shrunk failures, kept by name.

/// Found by `any_sequence_keeps_the_invariants`: during a graceful stop no
/// memory check runs, but `next_deadline` still offered the (passed)
/// check time, so the event loop woke at once, again and again — a busy
/// loop for up to `kill_timeout`, logging `supervisor_stalled` on every
/// turn once the deadline was more than a second old.
#[test]
fn a_stop_with_memory_limits_does_not_spin_on_the_memory_check() {
    let mut sim = Sim::start(one_each(true, false));
    sim.apply(&Event::Ready { pick: 0 });
    sim.finish();
}

/// Found by `any_sequence_keeps_the_invariants`: a hung worker's
/// replacement that missed `listen_timeout` was SIGKILLed, but its passed
/// READY deadline stayed in `next_deadline` until its exit was reaped, so
/// the loop spun meanwhile, sending SIGKILL and logging
/// `hung_replace_failed` on every turn.
#[test]
fn a_late_replacement_is_killed_once_and_does_not_spin() {
    let mut sim = Sim::start(one_each(false, true));
    sim.apply(&Event::Ready { pick: 1 });
    sim.apply(&Event::Ping { pick: 1 });
    sim.apply(&Event::Advance { ms: 4000 });
    let kills = sim
        .driver
        .host
        .signals
        .iter()
        .filter(|(p, s)| *p == Pid::from_raw(100_003) && *s == Signal::SIGKILL)
        .count();
    assert_eq!(kills, 1, "the replacement is killed once");
    sim.finish();
}

/// Seen while fixing the case above: a replacement killed for missing
/// `listen_timeout` could still send READY before it died (a datagram
/// already queued) and take the slot over, draining the healthy worker it
/// was to replace and leaving the slot to a dying process. The old worker
/// keeps serving, as the `memory_replace_failed` event says.
#[test]
fn a_killed_replacement_s_late_ready_does_not_take_the_slot() {
    let mut sim = Sim::start(one_each(true, false));
    let (old, replacement) = (Pid::from_raw(100_001), Pid::from_raw(100_003));
    sim.ready_all();
    sim.driver.host.memory.insert(old, SOFT + 1);
    // Two strikes, one check interval apart: a replacement starts.
    sim.apply(&Event::Advance { ms: 2000 });
    assert_eq!(
        sim.fleet.apps[0].slots[0].successor.as_ref().map(|w| w.pid),
        Some(replacement)
    );
    // It misses listen_timeout and is killed, then its READY arrives.
    sim.apply(&Event::Advance { ms: 2000 });
    assert!(sim.driver.host.killed.contains(&replacement));
    sim.say(replacement, "READY=1");
    sim.settle_step();
    assert_eq!(
        sim.fleet.apps[0].slots[0].worker.as_ref().map(|w| w.pid),
        Some(old)
    );
    assert!(!sim.driver.host.signals.contains(&(old, Signal::SIGTERM)));
    sim.exit(
        replacement,
        WaitStatus::Signaled(replacement, Signal::SIGKILL, false),
    );
    sim.settle_step();
    assert_eq!(sim.fleet.apps[0].slots[0].state, SlotState::Online);
    sim.finish();
}

/// The machine on its own, without a driver: events go in, actions come
/// out, and nothing happens until the answers are fed back.
#[test]
fn the_fleet_returns_actions_and_performs_none() {
    let shape = Shape {
        a: 2,
        b: 1,
        surge: 1,
        memory: false,
        watchdog: false,
        max_restarts: 3,
    };
    let mut host = FakeHost::default();
    let first = prepare(&mut host, &config(&shape), 2, None).unwrap();
    let mut fleet = Fleet::new(first, "@heartalk-props/metrics".into());
    let t0 = Instant::now();
    let orders: Vec<SpawnOrder> = fleet
        .start_all()
        .into_iter()
        .filter_map(|a| match a {
            Action::Spawn(o) => Some(o),
            _ => None,
        })
        .collect();
    let slots: Vec<(String, usize)> = orders
        .iter()
        .map(|o| (o.app.name.clone(), o.slot))
        .collect();
    assert_eq!(slots, [("a".into(), 0), ("a".into(), 1), ("b".into(), 0)]);
    // Ordered, not started: the slots wait for the answers.
    assert!(fleet.worker_pids().is_empty());
    assert!(
        fleet.view().apps[0]
            .slots
            .iter()
            .all(|s| s.worker.is_none())
    );
    // The first spawn worked, the second failed, the third is answered
    // after a stop began: that worker is killed, not adopted.
    let pid = Pid::from_raw(4242);
    assert!(fleet.spawned(orders[0].id, Ok(pid), t0).is_empty());
    assert_eq!(fleet.worker_pids(), [pid]);
    let _ = fleet.spawned(orders[1].id, Err("no such file".into()), t0);
    let restart = fleet.next_deadline().expect("a restart is scheduled");
    assert_eq!(fleet.view().apps[0].slots[1].state, SlotState::Waiting);
    let stop = fleet.stop(false, t0);
    let late = Pid::from_raw(4243);
    let answer: Vec<Action> = fleet.spawned(orders[2].id, Ok(late), t0).0;
    assert!(
        matches!(answer.as_slice(), [Action::SignalGroup { pid, sig: Signal::SIGKILL }] if *pid == late),
        "{answer:?}"
    );
    // The stop asked the one running worker to finish and let go of
    // every slot socket; no restart comes.
    let stop = stop.0;
    assert!(
        stop.iter()
            .any(|a| matches!(a, Action::Signal { pid: p, sig: Signal::SIGTERM } if *p == pid))
    );
    assert_eq!(
        stop.iter()
            .filter(|a| matches!(a, Action::CloseSocket(_)))
            .count(),
        3
    );
    assert!(
        fleet
            .tick(restart)
            .0
            .iter()
            .all(|a| !matches!(a, Action::Spawn(_)))
    );
}

/// `heartalk restart` on a quiet fleet: app `a`'s three workers are
/// replaced at most `max_surge` (2) at a time, each old one drained once
/// its successor is READY; `b` is not touched; one successor that dies
/// before READY leaves its old worker serving and is reported.
#[test]
fn a_rolling_restart_replaces_each_worker_and_reports_a_failure() {
    let mut sim = Sim::start(Shape {
        a: 3,
        b: 1,
        surge: 2,
        memory: false,
        watchdog: false,
        max_restarts: 3,
    });
    sim.ready_all();
    let before = sim.slots();
    sim.apply(&Event::Restart { which: 1 });
    assert!(sim.fleet.is_restarting());
    // Two successors of `a`, none of `b`.
    let first = sim.unready();
    assert_eq!(first.len(), 2, "max_surge at a time");
    sim.say(first[0], "READY=1");
    sim.settle_step();
    // The first took its slot; the third slot's successor starts.
    let second = sim.unready();
    assert_eq!(second.len(), 2);
    let failing = second[0];
    sim.exit(failing, WaitStatus::Exited(failing, 1));
    sim.settle_step();
    let last = sim.unready();
    assert_eq!(last.len(), 1);
    sim.say(last[0], "READY=1");
    sim.settle_step();
    assert!(!sim.fleet.is_restarting());
    let done = sim.restarted.last().expect("finished").clone();
    assert_eq!(
        (done.replaced, done.skipped, done.failed.len()),
        (2, 0, 1),
        "{done:?}"
    );
    assert_eq!(done.apps, ["a"]);
    let after = sim.slots();
    // Two of `a`'s slots have new workers, one kept its old one; `b` as was.
    let changed: Vec<bool> = before.iter().zip(&after).map(|(x, y)| x.2 != y.2).collect();
    assert_eq!(changed.iter().filter(|c| **c).count(), 2);
    assert_eq!(before[3], after[3]);
    for (old, new) in before.iter().zip(&after) {
        if old.2 != new.2 {
            let pid = old.2.unwrap();
            assert!(
                sim.driver.host.signals.contains(&(pid, Signal::SIGTERM)),
                "{pid} drained"
            );
        }
    }
    let restarts = sim.fleet.view().restarts_by;
    assert!(
        restarts.contains(&("a".into(), "restart", 2)),
        "{restarts:?}"
    );
    // A second restart can run now; a reload waits for it.
    sim.apply(&Event::Restart { which: 0 });
    sim.fleet.request_reload("signal");
    assert!(!sim.fleet.reload_due(), "a reload waits for the restart");
    sim.finish();
}

/// Found in review: scaling down retires the highest slots, so with the
/// low ones errored it would keep only errored slots (and with every slot
/// errored the supervisor exits). Such a scale is refused.
#[test]
fn a_scale_down_that_would_keep_only_errored_slots_is_refused() {
    let mut sim = Sim::start(Shape {
        a: 3,
        b: 1,
        surge: 1,
        memory: false,
        watchdog: false,
        max_restarts: 0,
    });
    sim.ready_all();
    // Slot 0 of `a` crashes before min_uptime: with max_restarts 0 it is errored.
    let pid = sim.fleet.apps[0].slots[0].worker.as_ref().unwrap().pid;
    sim.exit(pid, WaitStatus::Exited(pid, 1));
    sim.settle_step();
    assert_eq!(sim.fleet.apps[0].slots[0].state, SlotState::Errored);
    let one = Some(Instances::Count(std::num::NonZeroU32::new(1).unwrap()));
    let refused = sim.fleet.plan_scale("a", one, 2);
    assert!(
        matches!(refused, Err(ScaleRefused::OnlyErrored(..))),
        "{refused:?}"
    );
    // Down to two keeps slot 1 serving: allowed.
    let two = Some(Instances::Count(std::num::NonZeroU32::new(2).unwrap()));
    assert!(sim.fleet.plan_scale("a", two, 2).is_ok());
    sim.finish();
}

/// Found in review: when the old worker dies while its restart successor
/// is still starting, the successor takes the slot over; the restart
/// counts it as replaced only once it is READY (and as failed if it dies
/// first), not at the takeover.
#[test]
fn a_restart_successor_that_takes_over_early_counts_once_ready() {
    let mut sim = Sim::start(one_each(false, false));
    sim.ready_all();
    let old = sim.fleet.apps[0].slots[0].worker.as_ref().unwrap().pid;
    sim.apply(&Event::Restart { which: 1 });
    let successor = sim.unready()[0];
    sim.exit(old, WaitStatus::Exited(old, 1));
    sim.settle_step();
    assert_eq!(
        sim.fleet.apps[0].slots[0].worker.as_ref().map(|w| w.pid),
        Some(successor),
        "the successor took the slot over"
    );
    assert!(sim.fleet.is_restarting(), "not counted before READY");
    sim.say(successor, "READY=1");
    sim.settle_step();
    let done = sim.restarted.last().expect("finished").clone();
    assert_eq!((done.replaced, done.failed.len()), (1, 0), "{done:?}");
    // The same again, but the new worker dies before READY: a failure.
    sim.apply(&Event::Restart { which: 1 });
    let (current, successor) = (successor, sim.unready()[0]);
    sim.exit(current, WaitStatus::Exited(current, 1));
    sim.settle_step();
    sim.exit(successor, WaitStatus::Exited(successor, 1));
    sim.settle_step();
    let done = sim.restarted.last().expect("finished").clone();
    assert_eq!((done.replaced, done.failed.len()), (0, 1), "{done:?}");
    sim.finish();
}

/// Found in review: children reaped in one batch. Two new workers of a
/// rollout die together; the first exit rolls the rollout back, which
/// SIGKILLs the other new workers — the second included, though it is
/// already reaped (its pid may be someone else's by now). The fleet hears
/// of both exits before any action is performed, and the driver sends no
/// signal to a pid the fleet no longer tracks.
#[test]
fn a_rollback_sends_no_signal_to_a_worker_reaped_in_the_same_batch() {
    let mut sim = Sim::start(Shape {
        a: 2,
        b: 1,
        surge: 2,
        memory: false,
        watchdog: false,
        max_restarts: 3,
    });
    sim.ready_all();
    sim.apply(&Event::Reload { a: 2, surge: 2 });
    let next: Vec<Pid> = sim.unready();
    assert!(next.len() >= 2, "{next:?}");
    let reaped = [
        (next[0], WaitStatus::Exited(next[0], 1)),
        (next[1], WaitStatus::Exited(next[1], 1)),
    ];
    for (pid, _) in &reaped {
        sim.driver.host.live.remove(pid);
    }
    let now = sim.now;
    sim.driver.exits(&mut sim.fleet, &reaped, now);
    sim.settle_step();
    assert_eq!(sim.outcomes.last(), Some(&"rolled_back"));
    assert!(
        sim.driver.host.stray.is_empty(),
        "{:?}",
        sim.driver.host.stray
    );
    assert_eq!(
        sim.driver.signals_skipped(),
        1,
        "the SIGKILL to the reaped one"
    );
    sim.finish();
}

#[test]
fn secrets_the_workers_would_refuse_stop_a_generation_before_any_socket() {
    let shape = one_each(false, false);
    let mut host = FakeHost {
        secrets_refused: vec!["JWT_SECRET_FILE=/x: readable by every user".into()],
        ..FakeHost::default()
    };
    match prepare(&mut host, &config(&shape), 2, None) {
        Err(SetupError::Secrets(errors)) => {
            // Checked once per app, every error kept.
            assert_eq!(errors.len(), 2, "{errors:?}");
            assert!(errors[0].contains("readable by every user"));
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a generation with refused secrets was prepared"),
    }
    assert_eq!(host.bound, [], "a socket was bound before the refusal");
    // The same configuration with its secrets accepted binds each app's.
    host.secrets_refused.clear();
    let generation = prepare(&mut host, &config(&shape), 2, None);
    assert!(generation.is_ok(), "{:?}", generation.err());
    assert_eq!(host.bound.len(), 2, "{:?}", host.bound);
}

/// Found by `any_sequence_keeps_the_invariants` (a clean-clone CI run): a
/// rolling restart gave a successor to a slot still waiting out a crash's
/// backoff; when the successor became READY it took the slot over, but
/// the slot kept its restart time, whose passed deadline then woke the
/// event loop at once, again and again.
#[test]
fn a_restart_after_crashes_does_not_spin() {
    let mut sim = Sim::start(Shape {
        a: 3,
        b: 2,
        surge: 2,
        memory: false,
        watchdog: false,
        max_restarts: 1,
    });
    for event in [
        Event::Ready { pick: 0 },
        Event::Ready { pick: 0 },
        Event::Ready { pick: 0 },
        Event::Ready { pick: 0 },
        Event::Ready { pick: 0 },
        Event::CrashNewest,
        Event::Restart { which: 0 },
        Event::Exit {
            pick: 7,
            code: None,
        },
        Event::ExitTwo {
            pick: 10,
            other: 15,
        },
        Event::Ready { pick: 2 },
        Event::Advance { ms: 100 },
    ] {
        sim.apply(&event);
    }
    sim.finish();
}

/// A worker that exits 64 refused its configuration or secrets: `status`
/// and `describe` say `refused`, not `crash`, while the restart policy
/// and the restart counter (and so the crash-loop alert) treat it as a
/// crash. Any other non-zero code stays a `crash`.
#[test]
fn a_worker_exiting_64_is_refused_and_restarted_as_a_crash() {
    let mut sim = Sim::start(Shape {
        a: 2,
        b: 1,
        surge: 1,
        memory: false,
        watchdog: false,
        max_restarts: 5,
    });
    sim.ready_all();
    let slot_worker = |sim: &Sim, s: usize| sim.fleet.apps[0].slots[s].worker.as_ref().unwrap().pid;
    let refused = slot_worker(&sim, 0);
    sim.exit(
        refused,
        WaitStatus::Exited(refused, i32::from(shared::EXIT_REFUSED)),
    );
    let crashed = slot_worker(&sim, 1);
    sim.exit(crashed, WaitStatus::Exited(crashed, 1));
    sim.settle_step();
    let view = sim.fleet.view();
    let slots = &view.apps[0].slots;
    let reasons: Vec<_> = slots
        .iter()
        .map(|s| s.last_exit.as_ref().map(|e| (e.reason, e.code)))
        .collect();
    assert_eq!(
        reasons,
        [Some(("refused", Some(64))), Some(("crash", Some(1)))]
    );
    for slot in slots {
        assert_eq!(slot.state, SlotState::Waiting, "a restart is scheduled");
    }
    let crashes: u64 = view
        .restarts_by
        .iter()
        .filter(|(app, reason, _)| app == "a" && *reason == "crash")
        .map(|(_, _, n)| n)
        .sum();
    assert_eq!(crashes, 2, "{:?}", view.restarts_by);
    sim.finish();
}
