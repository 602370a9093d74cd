//! Where the worker's listening sockets come from: inherited from the
//! supervisor (or systemd) through `LISTEN_FDS`, or, when none were passed,
//! bound from `HOST`:`PORT` so the worker also runs on its own.
//!
//! Inherited sockets are already bound and listening (with `SO_REUSEPORT`,
//! one per worker slot); the worker only adopts them. The supervisor keeps
//! its own copy of each, so when this worker closes its fds on drain,
//! connections still queued in the kernel backlog wait for the next worker
//! instead of being reset.
//!
//! Sockets are taken in two steps because the fds must be claimed before
//! any thread starts (the activation variables are removed from the
//! environment) while tokio listeners can only be built inside a runtime.

use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};

use anyhow::{Context, bail};
use tokio::net::TcpListener;

use crate::settings::Settings;

/// The sockets to serve on, not yet registered with a runtime.
#[derive(Debug)]
pub struct Sockets {
    pub listeners: Vec<StdListener>,
    /// True when they came from the parent, false when self-bound.
    pub inherited: bool,
}

/// Takes the inherited sockets, or binds `HOST:PORT` when there are none.
/// Must run before the runtime starts any thread (see module docs).
pub fn take_or_bind(settings: &Settings) -> anyhow::Result<Sockets> {
    let inherited = shared::activation::take_listen_fds()
        .context("reading the socket-activation environment (LISTEN_FDS)")?;
    if inherited.is_empty() {
        return Ok(Sockets {
            listeners: bind(&settings.host, settings.port)?,
            inherited: false,
        });
    }
    let mut listeners = Vec::with_capacity(inherited.len());
    for sock in inherited {
        let listener = StdListener::from(sock.fd);
        // local_addr fails (ENOTSOCK, or an unsupported family) when the
        // parent passed something other than a TCP socket.
        let addr = listener.local_addr().with_context(|| {
            format!(
                "inherited fd {:?} is not a TCP socket",
                sock.name.as_deref().unwrap_or("(unnamed)")
            )
        })?;
        tracing::debug!(%addr, name = sock.name.as_deref(), "adopted inherited socket");
        listeners.push(listener);
    }
    Ok(Sockets {
        listeners,
        inherited: true,
    })
}

/// Binds every address `host` resolves to (for `localhost`, usually both
/// `127.0.0.1` and `::1`, so clients reach the worker whichever they try
/// first). Addresses that cannot be bound (e.g. IPv6 disabled) are skipped
/// with a warning; it is an error only if none can be.
pub fn bind(host: &str, port: u16) -> anyhow::Result<Vec<StdListener>> {
    let mut addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving HOST={host}"))?
        .collect();
    addrs.dedup();
    let mut listeners = Vec::new();
    let mut last_err = None;
    for addr in &addrs {
        match StdListener::bind(addr) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot bind; skipping this address");
                last_err = Some((addr, e));
            }
        }
    }
    if listeners.is_empty() {
        match last_err {
            Some((addr, e)) => {
                return Err(e).with_context(|| format!("binding {addr}"));
            }
            None => bail!("HOST={host} resolved to no address"),
        }
    }
    Ok(listeners)
}

/// Registers the sockets with the running tokio reactor.
pub fn into_tokio(listeners: Vec<StdListener>) -> anyhow::Result<Vec<TcpListener>> {
    listeners
        .into_iter()
        .map(|l| {
            l.set_nonblocking(true)
                .context("making a listening socket non-blocking")?;
            TcpListener::from_std(l).context("registering a listening socket with tokio")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_loopback() {
        let ls = bind("127.0.0.1", 0).unwrap();
        assert_eq!(ls.len(), 1);
        assert!(ls[0].local_addr().unwrap().ip().is_loopback());
    }
}
