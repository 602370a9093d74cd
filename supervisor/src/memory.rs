//! The memory guard's measurements and policy.
//!
//! RSS is sampled cheaply from `/proc/PID/statm` every
//! `memory_check_interval`; only when it is over `max_memory` is the costlier
//! PSS read from `/proc/PID/smaps_rollup` to confirm (RSS counts shared pages
//! in full, so a worker sharing its binary with its siblings looks bigger than
//! it is). `memory_strikes` consecutive confirmations trigger a graceful
//! replacement; crossing `max_memory_hard` kills at once. The policy is a pure
//! function of the samples so the strike rules are unit-tested.
//!
//! `status` and `/metrics` show PSS too, but they ask for it as often as
//! they are called, and reading `smaps_rollup` makes the kernel walk every
//! mapping of the worker. So every PSS reading goes through [`PssCache`]:
//! at most one read per worker per `memory_check_interval`, shared by the
//! guard and both reports.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

/// What one sample says about a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// Over the soft limit, not yet for enough consecutive samples.
    Strike(u32),
    /// Over the soft limit for `memory_strikes` samples: replace gracefully.
    Replace,
    /// Over the hard limit: kill now.
    Kill,
}

/// The limits of one app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
    pub strikes: u32,
}

/// Updates `strikes` (consecutive confirmed samples over the soft limit)
/// and says what to do. `pss` is only consulted when `rss` is over the soft
/// limit; callers pass `None` when they did not read it.
pub fn judge(limits: &Limits, rss: u64, pss: Option<u64>, strikes: &mut u32) -> Verdict {
    if limits.hard.is_some_and(|h| rss > h) {
        return Verdict::Kill;
    }
    let over = match limits.soft {
        Some(soft) if rss > soft => pss.unwrap_or(rss) > soft,
        _ => false,
    };
    if !over {
        *strikes = 0;
        return Verdict::Fine;
    }
    *strikes += 1;
    if *strikes >= limits.strikes.max(1) {
        Verdict::Replace
    } else {
        Verdict::Strike(*strikes)
    }
}

/// Resident set size from a `/proc/PID/statm` line (pages × page size).
pub fn parse_statm(text: &str, page_size: u64) -> Option<u64> {
    text.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|p| p * page_size)
}

/// The `Pss:` line of `/proc/PID/smaps_rollup`, in bytes.
pub fn parse_pss(smaps_rollup: &str) -> Option<u64> {
    smaps_rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// A worker's RSS now, or `None` if it is gone.
pub fn rss(pid: Pid) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    parse_statm(&text, page_size())
}

/// A worker's PSS now (costlier: the kernel walks its mappings).
pub fn pss(pid: Pid) -> Option<u64> {
    parse_pss(&std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?)
}

fn page_size() -> u64 {
    crate::sys::page_size()
}

/// The latest PSS reading of each worker, and when it was taken.
#[derive(Debug, Default)]
pub struct PssCache {
    readings: HashMap<Pid, (Instant, Option<u64>)>,
}

impl PssCache {
    /// `pid`'s PSS as of less than `max_age` before `now`: the cached
    /// reading when it is that recent, else a fresh one from `read` (which
    /// is cached, `None` included, so a vanished worker is not re-read
    /// either).
    ///
    /// With `max_age` = the memory-check interval, the guard — whose
    /// checks are at least one interval apart — never judges the same
    /// reading twice: each check uses one taken after the previous check.
    pub fn get(
        &mut self,
        pid: Pid,
        now: Instant,
        max_age: Duration,
        read: impl FnOnce(Pid) -> Option<u64>,
    ) -> Option<u64> {
        match self.readings.get(&pid) {
            Some(&(at, pss)) if now.saturating_duration_since(at) < max_age => pss,
            _ => {
                let pss = read(pid);
                self.readings.insert(pid, (now, pss));
                pss
            }
        }
    }

    /// The latest reading of `pid`, however old, without reading.
    pub fn latest(&self, pid: Pid) -> Option<u64> {
        self.readings.get(&pid).and_then(|&(_, pss)| pss)
    }

    /// Drops `pid`'s reading (it was reaped; its pid may be reused).
    pub fn forget(&mut self, pid: Pid) {
        self.readings.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn limits() -> Limits {
        Limits {
            soft: Some(150 * MB),
            hard: Some(300 * MB),
            strikes: 2,
        }
    }

    #[test]
    fn strikes_must_be_consecutive_and_confirmed_by_pss() {
        let l = limits();
        let mut s = 0;
        assert_eq!(judge(&l, 100 * MB, None, &mut s), Verdict::Fine);
        assert_eq!(
            judge(&l, 160 * MB, Some(160 * MB), &mut s),
            Verdict::Strike(1)
        );
        // PSS says the excess is shared pages: not a strike, and the count resets.
        assert_eq!(judge(&l, 160 * MB, Some(120 * MB), &mut s), Verdict::Fine);
        assert_eq!(s, 0);
        assert_eq!(
            judge(&l, 160 * MB, Some(155 * MB), &mut s),
            Verdict::Strike(1)
        );
        assert_eq!(
            judge(&l, 170 * MB, Some(165 * MB), &mut s),
            Verdict::Replace
        );
    }

    #[test]
    fn hard_limit_kills_at_once() {
        let mut s = 0;
        assert_eq!(judge(&limits(), 301 * MB, None, &mut s), Verdict::Kill);
    }

    #[test]
    fn no_limits_means_fine() {
        let l = Limits {
            soft: None,
            hard: None,
            strikes: 2,
        };
        let mut s = 5;
        assert_eq!(judge(&l, u64::MAX, None, &mut s), Verdict::Fine);
        assert_eq!(s, 0);
    }

    #[test]
    fn proc_parsers() {
        assert_eq!(
            parse_statm("1000 250 100 1 0 200 0\n", 4096),
            Some(250 * 4096)
        );
        assert_eq!(parse_statm("", 4096), None);
        let rollup = "00400000-7ffc [rollup]\nRss:              5120 kB\nPss:              2048 kB\nPss_Anon:  1 kB\n";
        assert_eq!(parse_pss(rollup), Some(2048 * 1024));
        assert_eq!(parse_pss("Rss: 1 kB\n"), None);
    }

    #[test]
    fn pss_is_read_at_most_once_per_interval() {
        let mut cache = PssCache::default();
        let (a, b) = (Pid::from_raw(100), Pid::from_raw(200));
        let interval = Duration::from_secs(1);
        let t0 = Instant::now();
        let reads = std::cell::RefCell::new(Vec::new());
        let read = |value: u64| {
            let reads = &reads;
            move |pid: Pid| {
                reads.borrow_mut().push(pid);
                Some(value)
            }
        };
        assert_eq!(cache.get(a, t0, interval, read(10)), Some(10));
        // Within the interval: the cached value, not a new read.
        let soon = t0 + Duration::from_millis(999);
        assert_eq!(cache.get(a, soon, interval, read(11)), Some(10));
        assert_eq!(cache.latest(a), Some(10));
        // Another worker has its own reading.
        assert_eq!(cache.get(b, soon, interval, read(20)), Some(20));
        // One interval later: read again.
        assert_eq!(cache.get(a, t0 + interval, interval, read(12)), Some(12));
        assert_eq!(*reads.borrow(), [a, b, a]);
        // A worker that is gone is not re-read within the interval either.
        let mut gone_reads = 0;
        let gone = Pid::from_raw(300);
        for ms in [0, 500] {
            let at = t0 + Duration::from_millis(ms);
            let pss = cache.get(gone, at, interval, |_| {
                gone_reads += 1;
                None
            });
            assert_eq!(pss, None);
        }
        assert_eq!(gone_reads, 1);
        // Reaped: forgotten, so a reused pid starts afresh.
        cache.forget(a);
        assert_eq!(cache.latest(a), None);
        assert_eq!(
            cache.get(a, t0 + interval, interval, |_| Some(99)),
            Some(99)
        );
    }

    #[test]
    fn reads_this_process() {
        let me = Pid::this();
        assert!(rss(me).is_some_and(|r| r > 0));
        assert!(pss(me).is_some_and(|p| p > 0));
    }
}
