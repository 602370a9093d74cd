//! Which address a request comes from (API.md §4 "Client IP"), when a
//! reverse proxy stands in front.
//!
//! With `TRUST_PROXY=true` and no `TRUSTED_PROXIES`, the first
//! `X-Forwarded-For` entry is believed, as the Node.js service did. With
//! `TRUSTED_PROXIES` (addresses or CIDRs), the header is believed only when
//! the socket peer is one of them, and the client is the right-most entry
//! that is not itself a trusted proxy: a client cannot pick its own
//! rate-limit key by sending a forged header, because every hop it does not
//! control appends to the right. When every entry is a trusted proxy, the
//! left-most one, the farthest address the chain vouches for (as Express's
//! proxy-addr does), not the peer: behind a NAT the proxy's own client can
//! be inside the trusted block, and the peer would put every client on the
//! proxy's key. The blocks themselves ([`Cidr`]) are read with the settings.

use std::net::IpAddr;

use crate::settings::{Cidr, canonical};

/// The client address for rate limits and logs.
pub fn client_ip(
    peer: IpAddr,
    forwarded_for: Option<&str>,
    trust_proxy: bool,
    trusted: &[Cidr],
) -> IpAddr {
    let peer = canonical(peer);
    let Some(header) = forwarded_for.filter(|_| trust_proxy) else {
        return peer;
    };
    let hops = header
        .split(',')
        .map(|h| h.trim().parse::<IpAddr>().ok().map(canonical));
    if trusted.is_empty() {
        // Node.js behaviour: the first entry, if it is an address.
        return hops.into_iter().next().flatten().unwrap_or(peer);
    }
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<Option<IpAddr>> = hops.collect();
    let mut farthest = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) if is_trusted(*ip) => farthest = *ip,
            Some(ip) => return *ip,
            // A garbled entry: nothing left of it can be believed.
            None => return farthest,
        }
    }
    farthest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::parse_list;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.9.9.9")), "mapped v4");
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")));
        assert!(!one.contains(ip("127.0.0.2")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert_eq!(Cidr::parse("10.0.0.0/33"), None);
        let mapped = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(mapped.contains(ip("10.200.0.1")));
        assert!(!mapped.contains(ip("11.0.0.1")), "not a catch-all");
        assert_eq!(Cidr::parse("::ffff:10.0.0.0/64"), None);
        assert_eq!(Cidr::parse("nope"), None);
        assert_eq!(parse_list("10.0.0.0/8, bad ,::1").len(), 2);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = parse_list("10.0.0.0/8");
        let xff = Some("203.0.113.9, 10.0.0.7");
        // Not trusting at all.
        assert_eq!(
            client_ip(ip("10.0.0.1"), xff, false, &trusted),
            ip("10.0.0.1")
        );
        // From a trusted proxy: the right-most untrusted hop.
        assert_eq!(
            client_ip(ip("10.0.0.1"), xff, true, &trusted),
            ip("203.0.113.9")
        );
        // A forged left-most entry does not win.
        let forged = Some("1.2.3.4, 203.0.113.9");
        assert_eq!(
            client_ip(ip("10.0.0.1"), forged, true, &trusted),
            ip("203.0.113.9")
        );
        // From an untrusted peer, the header is ignored.
        assert_eq!(
            client_ip(ip("198.51.100.1"), xff, true, &trusted),
            ip("198.51.100.1")
        );
        // Garbage stops the walk at the last address believed.
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some("junk, 10.0.0.2"), true, &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some("10.0.0.2, junk"), true, &trusted),
            ip("10.0.0.1")
        );
        // Every hop a trusted proxy: the farthest of them, not the peer.
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some("10.0.0.5, 10.0.0.7"), true, &trusted),
            ip("10.0.0.5")
        );
        // No list: Node's first-entry rule.
        assert_eq!(client_ip(ip("10.0.0.1"), forged, true, &[]), ip("1.2.3.4"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some("garbage"), true, &[]),
            ip("10.0.0.1")
        );
    }
}
