//! `heartalk health` (the container HEALTHCHECK probe) against real
//! sockets: exit 0 on the running service's 200 (healthy, and degraded
//! too), with `--url` or the `$PORT` default; exit 1 with one line on
//! stderr for a closed port, a 503, a server that never answers (within
//! `--timeout`) and a bad URL; and the request it sends is a plain
//! HTTP/1.1 GET with `Connection: close`.

mod helper;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use helper::*;

fn health(args: &[&str], port_env: Option<&str>) -> Output {
    let mut cmd = Command::new(workspace_bin("heartalk"));
    cmd.arg("health").args(args).env_remove("PORT");
    if let Some(p) = port_env {
        cmd.env("PORT", p);
    }
    cmd.output().expect("run heartalk health")
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/api/v1/health")
}

/// Exit 1 and exactly one line on stderr containing `needle`.
fn assert_unhealthy(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr:?}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
}

/// A one-shot server: answers the first connection with `answer` (or
/// holds it open, silent, when `answer` is None) and sends back the
/// request it read.
fn one_shot(answer: Option<&'static str>) -> (SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.ends_with(b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&req).into_owned());
        match answer {
            Some(a) => {
                let _ = s.write_all(a.as_bytes());
            }
            // Hold the connection open until the client gives up.
            None => {
                let _ = s.read(&mut buf);
            }
        }
    });
    (addr, rx)
}

#[test]
fn exit_0_against_the_running_service() {
    let svc = Service::start(1, &[]);
    let out = health(&["--url", &url(svc.addr)], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("200"), "{stdout}");

    // Without --url: http://127.0.0.1:$PORT/api/v1/health.
    let port = svc.addr.port().to_string();
    let out = health(&[], Some(&port));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!(":{port}/api/v1/health")));
}

#[test]
fn degraded_is_still_healthy() {
    // Simulated provider under NODE_ENV=production: `degraded`, HTTP 200.
    let svc = Service::start(1, &[("NODE_ENV", "production")]);
    let body = http_get(svc.addr, "/api/v1/health", DEADLINE).unwrap();
    assert_eq!(body.status, 200);
    assert_eq!(body.json()["data"]["status"], "degraded", "{}", body.body);
    let out = health(&["--url", &url(svc.addr)], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn exit_1_against_a_closed_port() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    assert_unhealthy(&health(&["--url", &url(closed)], None), "cannot connect");
    // The $PORT default reaches the same closed port.
    let out = health(&[], Some(&closed.port().to_string()));
    assert_unhealthy(&out, &format!("127.0.0.1:{}", closed.port()));
}

#[test]
fn exit_1_on_503_and_the_request_is_plain() {
    let (addr, request) = one_shot(Some(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 30\r\nConnection: close\r\n\r\n{\"data\":{\"status\":\"unhealthy\"}}",
    ));
    let out = health(&["--url", &url(addr)], None);
    assert_unhealthy(&out, "503 Service Unavailable");
    let req = request.recv_timeout(DEADLINE).unwrap();
    assert!(req.starts_with("GET /api/v1/health HTTP/1.1\r\n"), "{req}");
    assert!(req.contains(&format!("\r\nHost: {addr}\r\n")), "{req}");
    assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
}

#[test]
fn exit_1_when_nothing_answers_within_the_timeout() {
    let (addr, request) = one_shot(None);
    let start = Instant::now();
    let out = health(&["--url", &url(addr), "--timeout", "300ms"], None);
    let took = start.elapsed();
    assert_unhealthy(&out, "no answer");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // It did connect and send its request before giving up.
    assert!(request.recv_timeout(DEADLINE).unwrap().starts_with("GET "));
}

#[test]
fn exit_1_on_a_bad_url_and_64_on_a_bad_timeout() {
    assert_unhealthy(&health(&["--url", "https://127.0.0.1/"], None), "bad URL");
    assert_unhealthy(&health(&["--url", "127.0.0.1:8001"], None), "bad URL");
    assert_unhealthy(&health(&[], Some("not-a-port")), "PORT");
    let out = health(&["--timeout", "soon"], None);
    assert_eq!(out.status.code(), Some(64));
}
