//! `heartalk health`: the container health probe.
//!
//! The runtime image has no shell and no curl, so Docker's `HEALTHCHECK`
//! (and anything else that can only run a program) calls this instead: one
//! blocking HTTP/1.1 `GET` over `std::net` with `Connection: close`, no TLS,
//! no redirects, no new dependencies. Only the status line is read.
//!
//! The default target is the local `/api/v1/health` (API.md §5.1) on port
//! 8001, or on `$PORT` when it is set (the same variable that moves the
//! service's port). That endpoint answers 200 for `healthy` and `degraded`
//! and 503 only for `unhealthy`, so the verdict is the status code alone:
//! 200 is healthy (exit 0); anything else, including no answer within the
//! timeout, is not (exit 1, one line on stderr).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::exit::Exit;

/// The path probed when no `--url` is given.
pub const DEFAULT_PATH: &str = "/api/v1/health";
/// The service port when `$PORT` is not set: the config's default.
pub use shared::config::DEFAULT_PORT;
/// The longest status line (and whatever precedes its end) we read.
const MAX_STATUS_LINE: usize = 8 * 1024;

/// Why the probe did not see a 200.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("bad URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("bad PORT environment variable `{0}`: expected a port number 1-65535")]
    BadPort(String),
    #[error("cannot resolve {target}: {reason}")]
    Resolve { target: String, reason: String },
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("no answer from {target} within {timeout:?}")]
    Timeout { target: String, timeout: Duration },
    #[error("{target}: {source}")]
    Io {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("unreadable answer from {target}: {reason}")]
    Protocol { target: String, reason: String },
    #[error("{url} answered {status} (expected 200)")]
    Unhealthy { url: String, status: String },
}

/// A parsed `http://host[:port][/path]` URL: all the probe needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host name or IP literal, IPv6 without its brackets.
    pub host: String,
    pub port: u16,
    /// Path and query, always starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses a plain-HTTP URL. `https`, credentials and empty hosts are
    /// refused; a missing port is 80, a missing path `/`, a fragment dropped.
    pub fn parse(text: &str) -> Result<HttpUrl, HealthError> {
        let bad = |reason: &str| HealthError::BadUrl {
            url: text.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("expected http://host[:port]/path"))?;
        if scheme.eq_ignore_ascii_case("https") {
            return Err(bad(
                "https is not supported: probe the service's plain-HTTP port directly",
            ));
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(bad("only http:// URLs are supported"));
        }
        let rest = rest.split('#').next().unwrap_or_default();
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        if path.chars().any(|c| c.is_ascii_control() || c == ' ') {
            return Err(bad("the path contains spaces or control characters"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed `[` in the host"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("unexpected text after `]`"))?,
                ),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if host.contains(':') && !authority.starts_with('[') {
            return Err(bad(
                "an IPv6 address must be in brackets: http://[::1]:8001/",
            ));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("the port must be a number 1-65535"))?,
        };
        Ok(HttpUrl {
            host: host.to_string(),
            port,
            path,
        })
    }

    /// `host:port` as it goes in the `Host` header (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

/// The URL probed without `--url`: `/api/v1/health` on 127.0.0.1, port
/// `$PORT` if it is set (pass its value), else 8001.
pub fn default_url(port_env: Option<&str>) -> Result<String, HealthError> {
    let port = match port_env.map(str::trim) {
        None | Some("") => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| HealthError::BadPort(p.to_string()))?,
    };
    Ok(format!("http://127.0.0.1:{port}{DEFAULT_PATH}"))
}

/// Parses `HTTP/1.x NNN [reason]` into the status code and the rest of the
/// line (`"503 Service Unavailable"`), for messages.
pub fn parse_status_line(line: &str) -> Result<(u16, String), String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let rest = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))
        .ok_or_else(|| format!("not an HTTP/1.x status line: {line:?}"))?;
    let code = rest
        .get(..3)
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()));
    let code = match (code, rest.as_bytes().get(3)) {
        (Some(c), None | Some(b' ')) => c,
        _ => return Err(format!("no 3-digit status code in {line:?}")),
    };
    let status: u16 = code
        .parse()
        .map_err(|_| format!("bad status in {line:?}"))?;
    if !(100..=599).contains(&status) {
        return Err(format!("status {status} out of range in {line:?}"));
    }
    Ok((status, rest.trim().to_string()))
}

/// GETs `url` and returns the status code and status text, all within
/// `timeout` (resolution, connection, request and status line together).
pub fn probe(url: &HttpUrl, timeout: Duration) -> Result<(u16, String), HealthError> {
    let deadline = Instant::now() + timeout;
    let target = url.authority();
    let timed_out = || HealthError::Timeout {
        target: target.clone(),
        timeout,
    };
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| HealthError::Resolve {
            target: target.clone(),
            reason: e.to_string(),
        })?
        .collect();
    let mut last_err = None;
    let mut stream = None;
    for addr in &addrs {
        let Some(left) = remaining() else {
            return Err(timed_out());
        };
        match TcpStream::connect_timeout(addr, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let mut stream = match (stream, last_err) {
        (Some(s), _) => s,
        (None, Some(e)) if is_timeout(&e) => return Err(timed_out()),
        (None, Some(e)) => {
            return Err(HealthError::Connect {
                target: target.clone(),
                source: e,
            });
        }
        (None, None) => {
            return Err(HealthError::Resolve {
                target: target.clone(),
                reason: "no address".into(),
            });
        }
    };
    let io_err = |e: io::Error| {
        if is_timeout(&e) {
            timed_out()
        } else {
            HealthError::Io {
                target: target.clone(),
                source: e,
            }
        }
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: heartalk-health/{}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        url.path,
        url.authority(),
        env!("CARGO_PKG_VERSION")
    );
    stream
        .set_write_timeout(Some(remaining().ok_or_else(timed_out)?))
        .map_err(io_err)?;
    stream.write_all(request.as_bytes()).map_err(io_err)?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while !head.contains(&b'\n') {
        if head.len() >= MAX_STATUS_LINE {
            return Err(HealthError::Protocol {
                target,
                reason: format!("no status line in the first {MAX_STATUS_LINE} bytes"),
            });
        }
        stream
            .set_read_timeout(Some(remaining().ok_or_else(timed_out)?))
            .map_err(io_err)?;
        match stream.read(&mut buf) {
            Ok(0) => {
                return Err(HealthError::Protocol {
                    target,
                    reason: "the connection was closed without an answer".into(),
                });
            }
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    let end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..end]);
    parse_status_line(&line).map_err(|reason| HealthError::Protocol { target, reason })
}

/// Parses `url`, probes it, and succeeds only on a 200; returns the
/// status text for the success line.
pub fn check(url: &str, timeout: Duration) -> Result<String, HealthError> {
    let parsed = HttpUrl::parse(url)?;
    match probe(&parsed, timeout)? {
        (200, text) => Ok(text),
        (_, text) => Err(HealthError::Unhealthy {
            url: parsed.to_string(),
            status: text,
        }),
    }
}

/// The `heartalk health` verb: probes `url` (else [`default_url`] from
/// `$PORT`); one line on stdout when healthy, one on stderr when not.
pub fn command(url: Option<&str>, timeout: Duration) -> Exit {
    let url = match url {
        Some(u) => Ok(u.to_string()),
        None => default_url(std::env::var("PORT").ok().as_deref()),
    };
    match url.and_then(|u| check(&u, timeout).map(|status| (u, status))) {
        Ok((url, status)) => {
            println!("healthy: {url} answered {status}");
            Exit::Clean
        }
        Err(e) => {
            eprintln!("heartalk health: {e}");
            Exit::Forced
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(host: &str, port: u16, path: &str) -> HttpUrl {
        HttpUrl {
            host: host.into(),
            port,
            path: path.into(),
        }
    }

    #[test]
    fn parses_plain_http_urls() {
        assert_eq!(
            HttpUrl::parse("http://127.0.0.1:8001/api/v1/health").unwrap(),
            url("127.0.0.1", 8001, "/api/v1/health")
        );
        assert_eq!(
            HttpUrl::parse("HTTP://Example.com").unwrap(),
            url("Example.com", 80, "/")
        );
        assert_eq!(
            HttpUrl::parse("http://localhost:9/").unwrap(),
            url("localhost", 9, "/")
        );
        assert_eq!(
            HttpUrl::parse("http://h:1/p?x=1&y=2#frag").unwrap(),
            url("h", 1, "/p?x=1&y=2")
        );
        assert_eq!(
            HttpUrl::parse("http://h?x=1").unwrap(),
            url("h", 80, "/?x=1")
        );
        let v6 = HttpUrl::parse("http://[::1]:8001/api/v1/health").unwrap();
        assert_eq!(v6, url("::1", 8001, "/api/v1/health"));
        assert_eq!(v6.authority(), "[::1]:8001");
        assert_eq!(v6.to_string(), "http://[::1]:8001/api/v1/health");
        assert_eq!(HttpUrl::parse("http://[::1]").unwrap().port, 80);
    }

    #[test]
    fn refuses_what_the_probe_cannot_do() {
        for bad in [
            "127.0.0.1:8001/api/v1/health",
            "https://127.0.0.1/api/v1/health",
            "ftp://h/",
            "http://",
            "http:///path",
            "http://:8001/",
            "http://h:0/",
            "http://h:65536/",
            "http://h:port/",
            "http://h:/",
            "http://user:pw@h/",
            "http://::1/",
            "http://[::1/",
            "http://[::1]x/",
            "http://h/a b",
            "http://h/a\r\nX: y",
            "",
        ] {
            match HttpUrl::parse(bad) {
                Err(HealthError::BadUrl { .. }) => {}
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn default_url_follows_port() {
        assert_eq!(
            default_url(None).unwrap(),
            "http://127.0.0.1:8001/api/v1/health"
        );
        assert_eq!(
            default_url(Some("")).unwrap(),
            "http://127.0.0.1:8001/api/v1/health"
        );
        assert_eq!(
            default_url(Some("9000")).unwrap(),
            "http://127.0.0.1:9000/api/v1/health"
        );
        for bad in ["0", "70000", "http", "-1"] {
            assert!(
                matches!(default_url(Some(bad)), Err(HealthError::BadPort(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn parses_status_lines() {
        assert_eq!(
            parse_status_line("HTTP/1.1 200 OK\r\n").unwrap(),
            (200, "200 OK".into())
        );
        assert_eq!(
            parse_status_line("HTTP/1.0 503 Service Unavailable").unwrap(),
            (503, "503 Service Unavailable".into())
        );
        // the reason phrase is optional
        assert_eq!(parse_status_line("HTTP/1.1 204").unwrap().0, 204);
        assert_eq!(parse_status_line("HTTP/1.1 200 \r").unwrap().0, 200);
        for bad in [
            "",
            "HTTP/1.1",
            "HTTP/1.1 ",
            "HTTP/1.1 20 OK",
            "HTTP/1.1 2000 OK",
            "HTTP/1.1 abc OK",
            "HTTP/1.1 099 Low",
            "HTTP/1.1 600 High",
            "HTTP/2 200",
            "SSH-2.0-OpenSSH_9.2",
            "200 OK",
        ] {
            assert!(parse_status_line(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn status_other_than_200_is_unhealthy() {
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for answer in ["HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 204 No Content\r\n\r\n"] {
                let (mut s, _) = listener.accept().unwrap();
                let mut req = [0u8; 1024];
                let _ = s.read(&mut req);
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        let u = format!("http://{addr}/api/v1/health");
        assert_eq!(check(&u, Duration::from_secs(10)).unwrap(), "200 OK");
        match check(&u, Duration::from_secs(10)) {
            Err(HealthError::Unhealthy { status, .. }) => assert_eq!(status, "204 No Content"),
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
    }
}
