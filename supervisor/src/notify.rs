//! The receiving end of sd_notify: one datagram socket for all workers.
//!
//! Workers find it through `NOTIFY_SOCKET` (an abstract-namespace name, so
//! nothing is created on a possibly read-only filesystem). The kernel stamps
//! each datagram with the sender's pid (SO_PASSCRED), which is how a
//! `READY=1` is matched to its slot and how messages from anything other
//! than a worker's main process are told apart and ignored. Besides
//! readiness it carries the watchdog's pings (`WATCHDOG=1`) and our own
//! `X_HEARTALK_DEGRADED=1|0` (a worker that cannot accept connections).

use std::io;
use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::unistd::Pid;
use shared::activation::NOTIFY_DEGRADED;
use tokio::io::Interest;
use tokio::net::UnixDatagram;

/// Largest datagram read; sd_notify messages are a few short lines.
const MAX_MESSAGE: usize = 4096;

/// A bound notify socket and the `NOTIFY_SOCKET` value that reaches it.
pub struct NotifySocket {
    socket: UnixDatagram,
    pub env_value: String,
}

/// One sd_notify message: its sender and its `KEY=VALUE` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub pid: Pid,
    pub ready: bool,
    pub stopping: bool,
    pub status: Option<String>,
    /// `WATCHDOG=1`: the sender's event loop is alive (arms its watchdog).
    pub watchdog: bool,
    /// `WATCHDOG=trigger`: the sender asks to be treated as hung now.
    pub watchdog_trigger: bool,
    /// `X_HEARTALK_DEGRADED=1|0`: the sender cannot accept connections (its
    /// connection budget or descriptors are exhausted), or can again.
    pub degraded: Option<bool>,
}

impl NotifySocket {
    pub fn bind() -> io::Result<NotifySocket> {
        let name = format!("heartalk/{}/{:x}", std::process::id(), nonce());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        let std_sock = std::os::unix::net::UnixDatagram::bind_addr(&addr)?;
        setsockopt(&std_sock, sockopt::PassCred, &true).map_err(io::Error::from)?;
        std_sock.set_nonblocking(true)?;
        Ok(NotifySocket {
            socket: UnixDatagram::from_std(std_sock)?,
            env_value: format!("@{name}"),
        })
    }

    /// Waits for the next datagram that carries sender credentials.
    pub async fn recv(&self) -> io::Result<Message> {
        loop {
            let got = self
                .socket
                .async_io(Interest::READABLE, || self.read_one())
                .await?;
            if let (Some(pid), body) = got {
                return Ok(parse(pid, &body));
            }
        }
    }

    /// The next datagram already queued, without waiting: `None` when the
    /// queue is empty (or on an error, which the next `recv` reports). The
    /// event loop empties the queue this way before it judges a worker's
    /// silence, so pings that arrived while it was busy count.
    pub fn try_recv(&self) -> Option<Message> {
        loop {
            match self.socket.try_io(Interest::READABLE, || self.read_one()) {
                Ok((Some(pid), body)) => return Some(parse(pid, &body)),
                Ok((None, _)) => continue,
                Err(_) => return None,
            }
        }
    }

    /// One `recvmsg` with the sender's credentials (non-blocking).
    fn read_one(&self) -> io::Result<(Option<Pid>, Vec<u8>)> {
        let mut buf = [0u8; MAX_MESSAGE];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
        let msg = recvmsg::<()>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        let pid = msg.cmsgs().map_err(io::Error::from)?.find_map(|c| match c {
            ControlMessageOwned::ScmCredentials(cred) => Some(Pid::from_raw(cred.pid())),
            _ => None,
        });
        let len = msg.bytes;
        Ok((pid, buf[..len].to_vec()))
    }
}

/// Parses the newline-separated `KEY=VALUE` assignments of one datagram.
pub fn parse(pid: Pid, body: &[u8]) -> Message {
    let text = String::from_utf8_lossy(body);
    let mut m = Message {
        pid,
        ready: false,
        stopping: false,
        status: None,
        watchdog: false,
        watchdog_trigger: false,
        degraded: None,
    };
    for line in text.lines() {
        match line.split_once('=') {
            Some(("READY", "1")) => m.ready = true,
            Some(("STOPPING", "1")) => m.stopping = true,
            Some(("STATUS", s)) => m.status = Some(s.to_string()),
            Some(("WATCHDOG", "1")) => m.watchdog = true,
            Some(("WATCHDOG", "trigger")) => m.watchdog_trigger = true,
            Some((NOTIFY_DEGRADED, "1")) => m.degraded = Some(true),
            Some((NOTIFY_DEGRADED, "0")) => m.degraded = Some(false),
            _ => {}
        }
    }
    m
}

fn nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_known_assignments() {
        let m = parse(Pid::from_raw(7), b"READY=1\nSTATUS=serving on :8001\nX=y");
        assert!(m.ready);
        assert!(!m.stopping);
        assert_eq!(m.status.as_deref(), Some("serving on :8001"));
        assert!(!parse(Pid::from_raw(7), b"READY=0").ready);
        assert!(!m.watchdog && m.degraded.is_none());
    }

    #[test]
    fn parse_reads_watchdog_and_degraded() {
        let m = parse(Pid::from_raw(7), b"WATCHDOG=1");
        assert!(m.watchdog && !m.watchdog_trigger && !m.ready);
        assert!(parse(Pid::from_raw(7), b"WATCHDOG=trigger").watchdog_trigger);
        let m = parse(
            Pid::from_raw(7),
            b"X_HEARTALK_DEGRADED=1\nSTATUS=degraded: at budget",
        );
        assert_eq!(m.degraded, Some(true));
        assert_eq!(m.status.as_deref(), Some("degraded: at budget"));
        assert_eq!(
            parse(Pid::from_raw(7), b"X_HEARTALK_DEGRADED=0").degraded,
            Some(false)
        );
        assert_eq!(
            parse(Pid::from_raw(7), b"X_HEARTALK_DEGRADED=yes").degraded,
            None
        );
    }

    #[tokio::test]
    async fn try_recv_takes_what_is_queued_without_waiting() {
        let sock = NotifySocket::bind().unwrap();
        assert!(sock.try_recv().is_none(), "empty queue");
        let tx = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let name = sock.env_value.trim_start_matches('@');
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        tx.send_to_addr(b"WATCHDOG=1", &addr).unwrap();
        tx.send_to_addr(b"READY=1", &addr).unwrap();
        // Readiness is learnt by tokio's reactor; poll until it has.
        let first = loop {
            if let Some(m) = sock.try_recv() {
                break m;
            }
            tokio::task::yield_now().await;
        };
        assert!(first.watchdog);
        assert!(sock.try_recv().expect("second message").ready);
        assert!(sock.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_datagram_arrives_with_the_senders_pid() {
        let sock = NotifySocket::bind().unwrap();
        let tx = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let name = sock.env_value.trim_start_matches('@');
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        tx.send_to_addr(b"READY=1", &addr).unwrap();
        let m = sock.recv().await.unwrap();
        assert!(m.ready);
        assert_eq!(m.pid.as_raw() as u32, std::process::id());
    }
}
