//! The memory guard's measurements and policy.
//!
//! RSS is sampled cheaply from `/proc/PID/statm` every
//! `memory_check_interval`; only when it is over `max_memory` is the costlier
//! PSS read from `/proc/PID/smaps_rollup` to confirm (RSS counts shared pages
//! in full, so a worker sharing its binary with its siblings looks bigger than
//! it is). `memory_strikes` consecutive confirmations trigger a graceful
//! replacement; crossing `max_memory_hard` kills at once. The policy is a pure
//! function of the samples so the strike rules are unit-tested.

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
    fn reads_this_process() {
        let me = Pid::this();
        assert!(rss(me).is_some_and(|r| r > 0));
        assert!(pss(me).is_some_and(|p| p > 0));
    }
}
