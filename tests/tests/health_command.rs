//! `heartalk health` (the container HEALTHCHECK probe) against real
//! sockets: exit 0 on the running service's 200 (healthy, and degraded
//! too), with `--url` or the `$PORT` default; exit 1 with one line on
//! stderr for a closed port, a 503, a server that never answers (within
//! `--timeout`) and a bad URL; and the request it sends is a plain
//! HTTP/1.1 GET with `Connection: close`.

mod helper;

use std::process::{Command, Output};
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

/// Exit 0 (stderr shown otherwise).
#[track_caller]
fn assert_healthy(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Exit 1 and exactly one line on stderr containing `needle`.
fn assert_unhealthy(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr:?}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
}

/// The head of the first request `stub` reads (waits for it).
fn first_request(stub: &StubHttp) -> String {
    wait_for("the probe's request", DEADLINE, || {
        stub.requests().first().map(|r| r.head.clone())
    })
}

#[test]
fn exit_0_against_the_running_service() {
    let svc = Service::start(1, &[]);
    let out = health(&["--url", &health_url(svc.addr)], None);
    assert_healthy(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("200"), "{stdout}");

    // Without --url: http://127.0.0.1:$PORT/api/v1/health.
    let port = svc.addr.port().to_string();
    let out = health(&[], Some(&port));
    assert_healthy(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!(":{port}/api/v1/health")));
}

#[test]
fn degraded_is_still_healthy() {
    // Simulated provider under NODE_ENV=production: `degraded`, HTTP 200.
    let svc = Service::start(1, &[("NODE_ENV", "production")]);
    let body = http_get(svc.addr, "/api/v1/health", DEADLINE).unwrap();
    assert_eq!(body.status, 200);
    assert_eq!(body.json()["data"]["status"], "degraded", "{}", body.body);
    let out = health(&["--url", &health_url(svc.addr)], None);
    assert_healthy(&out);
}

#[test]
fn exit_1_against_a_closed_port() {
    let closed = free_addr();
    assert_unhealthy(
        &health(&["--url", &health_url(closed)], None),
        "cannot connect",
    );
    // The $PORT default reaches the same closed port.
    let out = health(&[], Some(&closed.port().to_string()));
    assert_unhealthy(&out, &format!("127.0.0.1:{}", closed.port()));
}

#[test]
fn exit_1_on_503_and_the_request_is_plain() {
    let stub = StubHttp::start(|_| {
        Some(http_answer(
            "503 Service Unavailable",
            r#"{"data":{"status":"unhealthy"}}"#,
        ))
    });
    let addr = stub.addr;
    let out = health(&["--url", &health_url(addr)], None);
    assert_unhealthy(&out, "503 Service Unavailable");
    let req = first_request(&stub);
    assert!(req.starts_with("GET /api/v1/health HTTP/1.1\r\n"), "{req}");
    assert!(req.contains(&format!("\r\nHost: {addr}\r\n")), "{req}");
    assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
}

#[test]
fn exit_1_when_nothing_answers_within_the_timeout() {
    // Reads the request, never answers.
    let stub = StubHttp::start(|_| None);
    let start = Instant::now();
    let out = health(
        &["--url", &health_url(stub.addr), "--timeout", "300ms"],
        None,
    );
    let took = start.elapsed();
    assert_unhealthy(&out, "no answer");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // It did connect and send its request before giving up.
    assert!(first_request(&stub).starts_with("GET "));
}

#[test]
fn exit_1_on_a_bad_url_and_64_on_a_bad_timeout() {
    assert_unhealthy(&health(&["--url", "https://127.0.0.1/"], None), "bad URL");
    assert_unhealthy(&health(&["--url", "127.0.0.1:8001"], None), "bad URL");
    assert_unhealthy(&health(&[], Some("not-a-port")), "PORT");
    let out = health(&["--timeout", "soon"], None);
    assert_eq!(out.status.code(), Some(64));
}
