//! How many CPUs this process may really use, for `instances = "max"`.
//!
//! PM2 counts the host's CPUs, so inside a container limited to 2 CPUs on a
//! 64-core host it forks 64 workers. We take the smaller of the scheduler
//! affinity mask and the cgroup CPU quota (v2 `cpu.max`, or v1
//! `cpu.cfs_quota_us`), rounding a fractional quota up, and never less than 1.

use std::path::{Path, PathBuf};

/// The usable CPU count of the calling process.
pub fn usable() -> u32 {
    let affinity = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&i| set.is_set(i).unwrap_or(false))
                .count() as u32
        })
        .unwrap_or(1);
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let quotas = quota_files(&cgroup, Path::new("/sys/fs/cgroup"))
        .into_iter()
        .filter_map(|(path, v2)| {
            let text = std::fs::read_to_string(&path).ok()?;
            if v2 {
                parse_cpu_max(&text)
            } else {
                let period =
                    std::fs::read_to_string(path.with_file_name("cpu.cfs_period_us")).ok()?;
                parse_cfs(&text, &period)
            }
        });
    combine(affinity, quotas)
}

/// min(affinity, ⌈each quota⌉), at least 1.
pub fn combine(affinity: u32, quotas: impl IntoIterator<Item = f64>) -> u32 {
    let mut n = affinity.max(1);
    for q in quotas {
        if q > 0.0 {
            n = n.min(q.ceil().max(1.0) as u32);
        }
    }
    n.max(1)
}

/// `cpu.max` is `"<quota> <period>"` or `"max <period>"` (no limit).
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut it = text.split_whitespace();
    let quota = it.next()?;
    let period: f64 = it.next()?.parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    Some(quota.parse::<f64>().ok()? / period)
}

/// cgroup v1: quota `-1` means no limit.
pub fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    let q: f64 = quota.trim().parse().ok()?;
    let p: f64 = period.trim().parse().ok()?;
    (q > 0.0 && p > 0.0).then(|| q / p)
}

/// The quota files that limit this process: for v2 the `cpu.max` of its
/// cgroup and every ancestor (a parent's limit binds too); for v1 the
/// `cpu.cfs_quota_us` of its cpu cgroup. Paths are tried both as listed and
/// at the mount root, since in a cgroup namespace the two coincide.
pub fn quota_files(proc_self_cgroup: &str, root: &Path) -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            let mut dir = root.join(rel);
            loop {
                out.push((dir.join("cpu.max"), true));
                if dir == root || !dir.pop() {
                    break;
                }
            }
        } else if controllers.split(',').any(|c| c == "cpu") {
            for mount in ["cpu,cpuacct", "cpu"] {
                out.push((root.join(mount).join(rel).join("cpu.cfs_quota_us"), false));
                out.push((root.join(mount).join("cpu.cfs_quota_us"), false));
            }
        }
    }
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_rounds_up_and_affinity_caps() {
        assert_eq!(combine(8, [1.5]), 2);
        assert_eq!(combine(1, [4.0]), 1);
        assert_eq!(combine(8, []), 8);
        assert_eq!(combine(8, [0.2]), 1);
        assert_eq!(combine(8, [3.0, 2.5]), 3);
        assert_eq!(combine(0, []), 1);
    }

    #[test]
    fn cpu_max_and_cfs_parse() {
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("garbage"), None);
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("200000\n", "100000\n"), Some(2.0));
    }

    #[test]
    fn v2_walks_up_to_the_root() {
        let files = quota_files("0::/kubepods/pod1/ctr\n", Path::new("/sys/fs/cgroup"));
        let paths: Vec<_> = files.iter().map(|(p, _)| p.to_str().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "/sys/fs/cgroup/kubepods/pod1/ctr/cpu.max",
                "/sys/fs/cgroup/kubepods/pod1/cpu.max",
                "/sys/fs/cgroup/kubepods/cpu.max",
                "/sys/fs/cgroup/cpu.max",
            ]
        );
    }

    #[test]
    fn quota_files_on_a_real_directory_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/cpu.max"), "50000 100000").unwrap();
        std::fs::write(dir.path().join("a/b/cpu.max"), "max 100000").unwrap();
        let q: Vec<f64> = quota_files("0::/a/b", dir.path())
            .into_iter()
            .filter_map(|(p, _)| parse_cpu_max(&std::fs::read_to_string(p).ok()?))
            .collect();
        assert_eq!(combine(4, q), 1, "the parent's half-CPU quota binds");
    }
}
