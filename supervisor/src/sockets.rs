//! The listening sockets, owned by the supervisor.
//!
//! One SO_REUSEPORT socket per worker slot, bound once and kept for the
//! slot's whole life, and handed to each worker that fills the slot. The
//! kernel spreads new connections across the slots' sockets; while a slot's
//! worker is being replaced, connections hashed to it wait in its accept
//! queue for the successor instead of being reset (closing a reuseport
//! socket resets its queue, which is how PM2 and gunicorn drop requests).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// The accept backlog requested per slot socket (the kernel caps it at
/// `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// A bound, listening slot socket.
#[derive(Debug)]
pub struct SlotSocket {
    socket: Socket,
    pub addr: SocketAddr,
}

impl SlotSocket {
    /// Binds `addr` with SO_REUSEPORT. Port 0 picks a free port; pass the
    /// resulting address for the other slots so they share it.
    pub fn bind(addr: SocketAddr) -> io::Result<SlotSocket> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        if addr.is_ipv6() {
            // "[::]" serves IPv4 too, as most users expect.
            socket.set_only_v6(false)?;
        }
        // Left blocking, as systemd passes sockets: O_NONBLOCK lives on the
        // shared file description, so setting it here would change every
        // worker's socket; each worker picks its own mode.
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        let addr = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("bound socket has no IP address"))?;
        Ok(SlotSocket { socket, addr })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// Binds `count` sockets on the same address (resolving port 0 once).
pub fn bind_slots(addr: SocketAddr, count: usize) -> io::Result<Vec<SlotSocket>> {
    let mut out: Vec<SlotSocket> = Vec::with_capacity(count);
    for _ in 0..count {
        let target = out.first().map_or(addr, |s| s.addr);
        out.push(SlotSocket::bind(target)?);
    }
    Ok(out)
}

const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Turns on `net.ipv4.tcp_migrate_req` where we may (root in our network
/// namespace), so that connections queued on a slot socket we close are
/// moved to a sibling socket instead of reset. Returns the resulting state:
/// `None` when the kernel has no such knob.
pub fn enable_tcp_migrate_req() -> Option<bool> {
    let now = std::fs::read_to_string(MIGRATE_REQ).ok()?;
    if now.trim() != "1" {
        let _ = std::fs::write(MIGRATE_REQ, "1");
    }
    std::fs::read_to_string(MIGRATE_REQ)
        .ok()
        .map(|s| s.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_share_one_port() {
        let slots = bind_slots("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_eq!(slots.len(), 3);
        assert_ne!(slots[0].addr.port(), 0);
        assert!(slots.iter().all(|s| s.addr == slots[0].addr));
        // and the port really accepts connections
        std::net::TcpStream::connect(slots[0].addr).unwrap();
    }
}
