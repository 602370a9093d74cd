//! The two systemd protocols a worker speaks: socket activation
//! (`LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES`, fds from 3) and readiness
//! (`sd_notify`: `READY=1` as a datagram to `NOTIFY_SOCKET`), with its
//! watchdog (`WATCHDOG_USEC`/`WATCHDOG_PID`: ping `WATCHDOG=1` in time).
//!
//! Because these are systemd's own protocols, a worker built on them runs
//! unchanged under `heartalk`, under systemd socket activation, or alone.
//! The supervisor side of the same contract (binding and passing the fds,
//! receiving the datagrams) lives in the supervisor crate.
//!
//! [`env`](mod@env) names every environment variable of the contract once, so the
//! supervisor that sets them and the worker that reads them cannot drift
//! apart by a typo.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;

/// The environment variables of the supervisor↔worker contract. The
/// supervisor sets them in every worker it starts (and strips them from its
/// own environment before passing it on, since a parent may have meant them
/// for the supervisor itself); the worker reads them at start-up. The first
/// four are systemd's and keep systemd's spelling; the rest are ours.
pub mod env {
    /// How many sockets were passed, from fd [`super::LISTEN_FDS_START`].
    pub const LISTEN_FDS: &str = "LISTEN_FDS";
    /// The pid the sockets are meant for (a grandchild must not take them).
    pub const LISTEN_PID: &str = "LISTEN_PID";
    /// `:`-separated names of the passed sockets.
    pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
    /// Where `READY=1` and the other sd_notify states go (`@name`: abstract).
    pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
    /// The watchdog interval in microseconds: a program that pings
    /// `WATCHDOG=1` must do so more often than this (systemd's
    /// `sd_watchdog_enabled(3)`; unset = no watchdog).
    pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
    /// The pid the watchdog is meant for (a child that inherited
    /// `WATCHDOG_USEC` must not ping on its parent's behalf).
    pub const WATCHDOG_PID: &str = "WATCHDOG_PID";
    /// The app's name in `ecosystem.toml`.
    pub const HEARTALK_APP: &str = "HEARTALK_APP";
    /// The worker's slot number within its app.
    pub const HEARTALK_WORKER_ID: &str = "HEARTALK_WORKER_ID";
    /// The fleet generation the worker belongs to (a reload increments it).
    pub const HEARTALK_GENERATION: &str = "HEARTALK_GENERATION";
    /// The abstract socket (`@name`) the worker serves its own metrics on,
    /// for the supervisor to scrape.
    pub const HEARTALK_METRICS_SOCKET: &str = "HEARTALK_METRICS_SOCKET";
    /// The supervisor's control socket, for `/metrics` on the service port
    /// (unset when `service_metrics = false`).
    pub const HEARTALK_CONTROL_SOCKET: &str = "HEARTALK_CONTROL_SOCKET";
    /// The descriptor of the fleet-wide rate-limit table (a memfd).
    pub const HEARTALK_LIMITS_FD: &str = "HEARTALK_LIMITS_FD";
    /// The descriptor of the fleet-state page (a read-only memfd of
    /// [`super::FLEET_STATE_BYTES`]; layout in [`super::fleet_state`]).
    pub const HEARTALK_FLEET_FD: &str = "HEARTALK_FLEET_FD";
    /// The word of the fleet-state page that is the worker's app's (see
    /// [`super::fleet_state`]; unset, with no page, for an app past
    /// [`super::fleet_state::WORDS`]).
    pub const HEARTALK_FLEET_WORD: &str = "HEARTALK_FLEET_WORD";

    /// Every name above: the supervisor strips all of them from the
    /// environment it passes on and sets its own, and `[apps.env]` may not
    /// name one (a second entry of the same name would be ambiguous: glibc's
    /// `getenv` returns the first).
    pub const ALL: &[&str] = &[
        LISTEN_FDS,
        LISTEN_PID,
        LISTEN_FDNAMES,
        NOTIFY_SOCKET,
        WATCHDOG_USEC,
        WATCHDOG_PID,
        HEARTALK_APP,
        HEARTALK_WORKER_ID,
        HEARTALK_GENERATION,
        HEARTALK_METRICS_SOCKET,
        HEARTALK_CONTROL_SOCKET,
        HEARTALK_LIMITS_FD,
        HEARTALK_FLEET_FD,
        HEARTALK_FLEET_WORD,
    ];
}

/// The first inherited descriptor, as in `sd_listen_fds(3)`.
pub const LISTEN_FDS_START: RawFd = 3;

/// Size of the fleet-wide rate-limit table (a memfd the supervisor passes as
/// `HEARTALK_LIMITS_FD`; the worker's `fleet_limits` module owns its layout).
pub const LIMITS_TABLE_BYTES: u64 = 4 << 20;

/// Size of the fleet-state page (a memfd the supervisor passes as
/// `HEARTALK_FLEET_FD`): one page, laid out as [`fleet_state`] says.
pub const FLEET_STATE_BYTES: u64 = 4096;

/// The layout of the fleet-state page: what the supervisor tells every
/// worker about its app, without a message per change.
///
/// The page is an array of native-endian `u64` words, each read and
/// written only as an `AtomicU64` (the page is page-aligned, so every word
/// is aligned): one word per app. Word `i` is how many slots of the app
/// whose word is `i` are currently not serving (their worker reported
/// `X_HEARTALK_DEGRADED=1`, or is hung); a worker learns its app's `i`
/// from [`env::HEARTALK_FLEET_WORD`]. While its word is above zero every
/// worker of that app answers `/ready` 503 `degraded`, so the app's load
/// balancer steers away from the whole app rather than only from the
/// worker it cannot reach; other apps (other ports, other balancers) are
/// not concerned.
///
/// An app keeps its word for as long as it runs, across reloads (a new
/// app takes the lowest free one), so the old and new workers of an app
/// read the same word during a reload. Words no app holds are zero. Only
/// the supervisor writes; workers get a read-only descriptor and map it
/// read-only.
pub mod fleet_state {
    /// How many apps have a word: one per `u64` of the page (512). An app
    /// past that has none: its workers get no page and their `/ready`
    /// answers for themselves only.
    pub const WORDS: usize = (super::FLEET_STATE_BYTES / 8) as usize;
}

/// The sd_notify assignment a worker sends when it cannot accept
/// connections (`X_HEARTALK_DEGRADED=1`, its connection budget or its
/// descriptors are exhausted) and when it can again (`=0`). Custom
/// assignments start with `X_`, systemd's convention for app-specific ones.
pub const NOTIFY_DEGRADED: &str = "X_HEARTALK_DEGRADED";

/// Errors reading the socket-activation environment.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("{var}={0:?} is not a number", var = env::LISTEN_FDS)]
    BadCount(String),
    #[error("{var}={0:?} is not a number", var = env::LISTEN_PID)]
    BadPid(String),
    #[error("inherited fd {fd} is not open: {source}")]
    NotOpen {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
}

/// An inherited listening socket and its `LISTEN_FDNAMES` entry.
#[derive(Debug)]
pub struct Inherited {
    pub fd: OwnedFd,
    pub name: Option<String>,
}

/// Takes ownership of the sockets passed by the parent, if they are meant
/// for this process (`LISTEN_PID` equals our pid, as systemd requires, so a
/// grandchild that inherited the variables does not grab them).
///
/// The variables are removed so children of the worker do not see them, and
/// the descriptors are marked close-on-exec.
pub fn take_listen_fds() -> Result<Vec<Inherited>, ActivationError> {
    let count = std::env::var(env::LISTEN_FDS).ok();
    let pid = std::env::var(env::LISTEN_PID).ok();
    let names = std::env::var(env::LISTEN_FDNAMES).ok();
    // SAFETY: called once at start-up, before the worker starts any thread
    // that could read the environment concurrently.
    unsafe {
        std::env::remove_var(env::LISTEN_FDS);
        std::env::remove_var(env::LISTEN_PID);
        std::env::remove_var(env::LISTEN_FDNAMES);
    }
    let Some(count) = count else {
        return Ok(Vec::new());
    };
    if let Some(pid) = pid {
        let pid: u32 = pid
            .trim()
            .parse()
            .map_err(|_| ActivationError::BadPid(pid))?;
        if pid != std::process::id() {
            return Ok(Vec::new());
        }
    }
    let n: RawFd = count
        .trim()
        .parse()
        .map_err(|_| ActivationError::BadCount(count.clone()))?;
    let names: Vec<String> = names
        .map(|s| s.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for i in 0..n.max(0) {
        let fd = LISTEN_FDS_START + i;
        // SAFETY: fcntl on an integer fd has no memory effects; it only
        // reports EBADF when the descriptor is not open.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 {
            return Err(ActivationError::NotOpen {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: as above; sets FD_CLOEXEC on a descriptor we now own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
        // SAFETY: the parent passed this descriptor to us alone (LISTEN_PID
        // matched) and nothing else in this process refers to it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        out.push(Inherited {
            fd: owned,
            name: names.get(i as usize).cloned().filter(|s| !s.is_empty()),
        });
    }
    Ok(out)
}

/// Sends an sd_notify state string (`"READY=1"`, `"STOPPING=1"`, ...) to
/// `NOTIFY_SOCKET`. Returns `Ok(false)` when no socket is configured, so a
/// standalone worker simply carries on.
///
/// An address starting with `@` is in the abstract namespace, as in systemd.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os(env::NOTIFY_SOCKET) else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &notify_addr(&path)?)?;
    Ok(true)
}

/// The address a `NOTIFY_SOCKET` value names: `@name` is in the abstract
/// namespace, as in systemd; anything else is a path.
fn notify_addr(value: &std::ffi::OsStr) -> io::Result<std::os::unix::net::SocketAddr> {
    match value.as_encoded_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
        }
        None => std::os::unix::net::SocketAddr::from_pathname(value),
    }
}

/// A socket to `NOTIFY_SOCKET` made once and kept, for messages sent from
/// a serving event loop (watchdog pings, degraded reports): it never
/// blocks — a full receive queue (a stalled supervisor) fails the send
/// with `WouldBlock` instead of freezing the sender — and, made at start,
/// it still works when the process has run out of descriptors.
#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
}

impl Notifier {
    /// Connects to `NOTIFY_SOCKET`; `Ok(None)` when none is configured.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        std::env::var_os(env::NOTIFY_SOCKET)
            .map(|path| Notifier::connect(&path))
            .transpose()
    }

    /// Connects, non-blocking, to the socket a `NOTIFY_SOCKET` value names.
    pub fn connect(value: &std::ffi::OsStr) -> io::Result<Notifier> {
        let sock = UnixDatagram::unbound()?;
        sock.connect_addr(&notify_addr(value)?)?;
        sock.set_nonblocking(true)?;
        Ok(Notifier { sock })
    }

    /// Sends one state string; never blocks (`WouldBlock` when the
    /// receiver's queue is full).
    pub fn send(&self, state: &str) -> io::Result<()> {
        self.sock.send(state.as_bytes()).map(|_| ())
    }
}

/// The watchdog interval this process must ping within, as systemd's
/// `sd_watchdog_enabled(3)` reads it: `WATCHDOG_USEC` set to a positive
/// number and `WATCHDOG_PID`, if set, equal to our pid. `None` means no
/// watchdog: the process never pings, and nothing watches it.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    watchdog_from(
        std::env::var(env::WATCHDOG_USEC).ok().as_deref(),
        std::env::var(env::WATCHDOG_PID).ok().as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_interval`] on given values (pure, for tests).
pub fn watchdog_from(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Option<std::time::Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| std::time::Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notifier_never_blocks_on_a_full_queue() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("heartalk-test-notifier-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::connect(std::ffi::OsStr::new(&format!("@{name}"))).unwrap();
        // Nobody reads: the queue fills, and the send fails instead of
        // blocking this thread.
        let mut sent = 0;
        let err = loop {
            match n.send("WATCHDOG=1") {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 100_000, "the queue never filled");
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(sent >= 1);
        let mut buf = [0u8; 64];
        let got = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..got], b"WATCHDOG=1");
    }

    #[test]
    fn the_watchdog_is_read_as_systemd_reads_it() {
        let ten = Some(std::time::Duration::from_secs(10));
        assert_eq!(watchdog_from(Some("10000000"), None, 7), ten);
        assert_eq!(watchdog_from(Some("10000000"), Some("7"), 7), ten);
        // meant for another process (a worker's child inherited it)
        assert_eq!(watchdog_from(Some("10000000"), Some("8"), 7), None);
        assert_eq!(watchdog_from(Some("10000000"), Some("x"), 7), None);
        // off, or not a number
        assert_eq!(watchdog_from(None, Some("7"), 7), None);
        assert_eq!(watchdog_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_from(Some("soon"), None, 7), None);
    }

    #[test]
    fn notify_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("heartalk-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        // SAFETY: this test is the only one touching NOTIFY_SOCKET.
        unsafe { std::env::set_var(env::NOTIFY_SOCKET, format!("@{name}")) };
        assert!(notify("READY=1").unwrap());
        unsafe { std::env::remove_var(env::NOTIFY_SOCKET) };
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(
            !notify("READY=1").unwrap(),
            "no socket configured → Ok(false)"
        );
    }
}
