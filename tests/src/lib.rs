//! Support crate for the end-to-end tests in `tests/tests/`: the mock model
//! provider ([`mock_ark`]) and the mock HearTalk backend ([`mock_backend`]),
//! both real HTTP servers on 127.0.0.1:0 with faults the tests can dial in,
//! and a real Redis server ([`redis_server`]) per test.
//! Its binary `test-worker` is the misbehaving worker the supervisor tests use.

pub mod mock_ark;
pub mod mock_backend;
pub mod redis_server;

/// A free TCP port on 127.0.0.1 (bound, read, released): nothing listens on
/// it until the test starts something there.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// [`free_port`] as an address on 127.0.0.1: for a server the test starts
/// there, or, left alone, for a closed port that refuses connections.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// The repository's root (for the shipped configs, scripts and assets).
pub fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Raises this process's soft open-file limit to its hard limit (children
/// started afterwards inherit it) and returns the soft limit now in force.
/// Panics if the limit cannot be read or set.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the local, initialised struct it is
    // given a pointer to.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(got, 0, "getrlimit: {}", std::io::Error::last_os_error());
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit only reads the local, initialised struct it is
        // given a pointer to.
        let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        assert_eq!(set, 0, "setrlimit: {}", std::io::Error::last_os_error());
    }
    lim.rlim_cur
}

/// Resident memory of process `pid` in bytes, from `/proc/PID/statm` (its
/// resident pages times the page size from `sysconf`); `None` once the
/// process is gone.
pub fn rss(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf takes no pointers; it only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).expect("sysconf(_SC_PAGESIZE)"))
}
