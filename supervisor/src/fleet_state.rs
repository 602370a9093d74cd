//! The fleet-state page: one page of shared memory (a memfd) that the
//! supervisor creates once, at start, and passes to every worker it
//! launches as `HEARTALK_FLEET_FD`, with its app's word of the page as
//! `HEARTALK_FLEET_WORD`, so workers can answer for their whole app
//! without asking. Only the supervisor writes it; workers get a read-only
//! descriptor of a file sealed against resizing and writes, and map it
//! read-only. Its layout is `shared::activation::fleet_state`.
//!
//! Word `i` is how many slots of the app holding word `i` are currently
//! not serving (degraded or hung): while it is above zero every worker of
//! that app answers `/ready` 503, so the app's load balancer steers away
//! from the whole app. The degraded worker itself cannot accept
//! connections, so the balancer's probes reach the others; without this
//! they would keep saying "ready" for an app that leaves part of its
//! connections hanging. Other apps listen on other ports, behind other
//! balancers: one app's degraded worker is none of their business.
//!
//! Which app holds which word is [`assign_words`]: an app keeps its word
//! for as long as it runs, across reloads.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;

use shared::activation::{FLEET_STATE_BYTES, fleet_state::WORDS};

use crate::sys::{self, SharedWords};

/// The supervisor's handle on the fleet-state page.
pub struct FleetState {
    /// The read-only descriptor workers get.
    reader: OwnedFd,
    page: SharedWords,
}

impl FleetState {
    /// Creates the page (all zeros: every slot serving).
    pub fn create() -> io::Result<FleetState> {
        let (page, reader) = sys::published_memory(c"heartalk-fleet", FLEET_STATE_BYTES)?;
        Ok(FleetState { reader, page })
    }

    /// The read-only descriptor to pass to workers (close-on-exec here;
    /// the spawner passes it explicitly). Valid as long as `self` lives.
    pub fn fd(&self) -> RawFd {
        self.reader.as_raw_fd()
    }

    /// Publishes how many slots of each app are not serving: `(word,
    /// count)` for every app that has a word; every other word becomes 0
    /// (an app a reload removed). Cheap (a store only where a word
    /// changes), so callers may simply call it after every change.
    pub fn publish(&self, not_serving: impl IntoIterator<Item = (usize, u64)>) {
        let mut next = [0u64; WORDS];
        for (word, n) in not_serving {
            if let Some(w) = next.get_mut(word) {
                *w += n;
            }
        }
        for (word, n) in self.page.words().iter().zip(next) {
            if word.load(Ordering::Relaxed) != n {
                word.store(n, Ordering::Release);
            }
        }
    }

    /// What was last published for the app holding `word`.
    pub fn not_serving(&self, word: usize) -> u64 {
        self.page
            .words()
            .get(word)
            .map_or(0, |w| w.load(Ordering::Acquire))
    }
}

/// The word of each app of a configuration (`next`, by its key: name and
/// listen address, the same key that keeps its slot sockets), given the
/// words the running apps hold (`current`).
///
/// An app that is running keeps its word, so a reload that reorders, adds
/// or removes apps never moves one: during the reload an app's old and new
/// workers, which serve side by side, read the same word. A new app takes
/// the lowest word no running app and no app before it holds; at start
/// (nothing running) that is its position in the config. Past
/// [`WORDS`] apps, an app gets none (`None`: its workers answer `/ready`
/// for themselves). The words of removed apps are free again once the
/// reload commits; their draining workers answer `/ready` 503 `draining`
/// whatever their word says.
pub fn assign_words<K: PartialEq>(
    next: &[K],
    current: &[(K, Option<usize>)],
) -> Vec<Option<usize>> {
    let mut taken = vec![false; WORDS];
    let kept: Vec<Option<usize>> = next
        .iter()
        .map(|k| current.iter().find(|(c, _)| c == k).and_then(|(_, w)| *w))
        .collect();
    for (_, w) in current {
        if let Some(w) = w.filter(|w| *w < WORDS) {
            taken[w] = true;
        }
    }
    kept.into_iter()
        .map(|w| {
            w.or_else(|| {
                let free = taken.iter().position(|t| !t)?;
                taken[free] = true;
                Some(free)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::shm::ReadOnlyWords;
    use std::os::fd::AsFd;

    #[test]
    fn each_app_reads_its_own_word() {
        let state = FleetState::create().unwrap();
        // What a worker does: take the read-only descriptor (as fork+exec
        // passes it), check it, map it read-only, read its app's word.
        let fd = state.reader.try_clone().unwrap();
        shared::shm::check(fd.as_raw_fd(), FLEET_STATE_BYTES).unwrap();
        let reader = ReadOnlyWords::map(fd.as_fd(), FLEET_STATE_BYTES).unwrap();
        drop(fd);
        assert_eq!(reader.len(), WORDS);
        assert!(
            (0..WORDS).all(|w| reader.load(w) == Some(0)),
            "a new page: all serve"
        );

        // App 0 has a degraded worker, app 1 none, app 2 two.
        state.publish([(0, 1), (1, 0), (2, 2)]);
        assert_eq!(reader.load(0), Some(1));
        assert_eq!(
            reader.load(1),
            Some(0),
            "another app's trouble is not app 1's"
        );
        assert_eq!(reader.load(2), Some(2));
        assert_eq!(state.not_serving(2), 2);
        // App 0 recovered; app 2 was removed by a reload: its word is cleared.
        state.publish([(0, 0), (1, 0)]);
        assert!((0..WORDS).all(|w| reader.load(w) == Some(0)));
        // A word past the page is ignored: it writes nowhere.
        state.publish([(WORDS, 3)]);
        assert_eq!(state.not_serving(WORDS), 0);
        assert!((0..WORDS).all(|w| reader.load(w) == Some(0)));
    }

    #[test]
    fn workers_cannot_write_or_resize_the_page() {
        let state = FleetState::create().unwrap();
        assert!(SharedWords::map(state.reader.as_fd(), FLEET_STATE_BYTES).is_err());
        assert!(nix::unistd::ftruncate(&state.reader, 0).is_err());
        state.publish([(0, 1)]);
        assert_eq!(
            state.not_serving(0),
            1,
            "the supervisor's mapping writes on"
        );
    }

    /// The environment variable `name` of process `pid`.
    fn environ(pid: nix::unistd::Pid, name: &str) -> Option<String> {
        let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        env.split(|b| *b == 0).find_map(|kv| {
            let kv = std::str::from_utf8(kv).ok()?;
            kv.strip_prefix(name)?.strip_prefix('=').map(str::to_string)
        })
    }

    #[test]
    fn a_degraded_worker_counts_in_its_own_apps_word_only() {
        use crate::fleet::Fleet;
        use crate::host::{Driver, SysHost};
        use std::time::{Duration, Instant};
        // Two apps of sleepers standing in for workers: `a` with two
        // slots, `b` with one.
        let app = |name: &str, n: u32| {
            format!(
                "[[apps]]\nname = \"{name}\"\nscript = \"/bin/sleep\"\nargs = [\"60\"]\ninstances = {n}\nlisten = \"127.0.0.1:0\"\n"
            )
        };
        let text = format!("{}{}", app("a", 2), app("b", 1));
        let config = shared::config::Config::parse(
            &text,
            std::path::Path::new("/tmp/ecosystem.toml"),
            &|_| None,
        )
        .unwrap();
        let mut driver = Driver::new(SysHost, "@heartalk-fleet-state-test".into());
        let first = driver.prepare(&config, 1, None).unwrap();
        let mut fleet = Fleet::new(first, "@heartalk-fleet-state-test/metrics".into());
        let state = FleetState::create().unwrap();
        let fd = state.reader.try_clone().unwrap();
        let page = ReadOnlyWords::map(fd.as_fd(), FLEET_STATE_BYTES).unwrap();
        drop(fd);
        driver.set_fleet_state(state);
        let t0 = Instant::now();
        driver.apply(&mut fleet, t0, Fleet::start_all);
        let pids: Vec<Vec<nix::unistd::Pid>> = fleet
            .view()
            .apps
            .iter()
            .map(|a| {
                a.slots
                    .iter()
                    .filter_map(|s| s.worker.as_ref().map(|w| w.pid))
                    .collect()
            })
            .collect();
        let mut say = |fleet: &mut Fleet, pid, text: &str, secs| {
            let msg = crate::notify::parse(pid, text.as_bytes());
            let at = t0 + Duration::from_secs(secs);
            driver.apply(fleet, at, |f| f.on_notify(&msg, at));
        };
        for &pid in pids.iter().flatten() {
            say(&mut fleet, pid, "READY=1", 0);
        }
        // Each worker was told its app's word (its position at start).
        let words: Vec<Vec<Option<String>>> = pids
            .iter()
            .map(|app| {
                app.iter()
                    .map(|&p| environ(p, "HEARTALK_FLEET_WORD"))
                    .collect()
            })
            .collect();

        // One of `a`'s workers cannot accept: `a`'s word only.
        say(&mut fleet, pids[0][1], "X_HEARTALK_DEGRADED=1", 1);
        let seen = (page.load(0), page.load(1));
        say(&mut fleet, pids[0][1], "X_HEARTALK_DEGRADED=0", 2);
        let after = (page.load(0), page.load(1));
        // `b`'s worker: `b`'s word only.
        say(&mut fleet, pids[1][0], "X_HEARTALK_DEGRADED=1", 3);
        let b_seen = (page.load(0), page.load(1));
        let total = fleet.not_serving();

        for pid in fleet.worker_pids() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        let word = |w: &str| Some(w.to_string());
        assert_eq!(words, [vec![word("0"), word("0")], vec![word("1")]]);
        assert_eq!(seen, (Some(1), Some(0)), "app b stays ready");
        assert_eq!(after, (Some(0), Some(0)));
        assert_eq!(b_seen, (Some(0), Some(1)), "app a stays ready");
        assert_eq!(total, 1);
    }

    #[test]
    fn apps_keep_their_words_across_reloads() {
        // At start: the position in the config.
        let start = assign_words(&["a", "b", "c"], &[]);
        assert_eq!(start, [Some(0), Some(1), Some(2)]);
        let running = |names: &[&'static str], words: &[Option<usize>]| {
            names
                .iter()
                .copied()
                .zip(words.iter().copied())
                .collect::<Vec<_>>()
        };
        // A reload that reorders: every app keeps its word.
        let now = running(&["a", "b", "c"], &start);
        assert_eq!(
            assign_words(&["c", "a", "b"], &now),
            [Some(2), Some(0), Some(1)]
        );
        // One removed, one added: the new one does not take the removed
        // one's word while the removed one's workers still run.
        assert_eq!(
            assign_words(&["d", "c", "a"], &now),
            [Some(3), Some(2), Some(0)]
        );
        // Once that committed, the freed words are reused lowest first.
        let after = running(&["d", "c", "a"], &[Some(3), Some(2), Some(0)]);
        assert_eq!(
            assign_words(&["d", "c", "a", "e", "f"], &after),
            [Some(3), Some(2), Some(0), Some(1), Some(4)]
        );
    }

    #[test]
    fn apps_past_the_page_get_no_word() {
        let names: Vec<usize> = (0..WORDS + 2).collect();
        let words = assign_words(&names, &[]);
        assert_eq!(words[WORDS - 1], Some(WORDS - 1));
        assert_eq!(words[WORDS], None);
        assert_eq!(words[WORDS + 1], None);
        // One that had none gets a word once one is free.
        let current: Vec<(usize, Option<usize>)> = names[1..]
            .iter()
            .copied()
            .zip(words[1..].iter().copied())
            .collect();
        let next = assign_words(&names[1..], &current);
        assert_eq!(next[WORDS - 1], Some(0), "app 0's word, freed");
        assert_eq!(next[WORDS], None);
    }
}
