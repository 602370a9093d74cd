//! Runs the built `heartalk-worker` on its own (no supervisor, so it binds
//! `HOST:PORT` itself), checks the health and error endpoints over real
//! HTTP/1.1, then stops it with SIGTERM and expects a clean exit (0).
//!
//! The HTTP client is a few lines over `TcpStream` (`Connection: close`,
//! read to EOF) so the test needs no client crate. Waits poll against a
//! deadline instead of sleeping a fixed time.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Kills and reaps the worker on every path, including a failed assertion.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Worker {
    fn start(port: u16) -> Worker {
        let child = Command::new(env!("CARGO_BIN_EXE_heartalk-worker"))
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("HEARTALK_WORKER_ID", "5")
            .env("SHUTDOWN_GRACE_SECS", "5")
            .env("LOG_LEVEL", "warn")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("BYTEPLUS_API_KEY")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawning heartalk-worker");
        Worker(child)
    }

    fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < end,
                "worker did not exit within {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: serde_json::Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a probe socket");
    l.local_addr().expect("local_addr").port()
}

fn request(port: u16, method: &str, path: &str) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).map_err(std::io::Error::other)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header terminator"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let body = serde_json::from_str(body).map_err(std::io::Error::other)?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn wait_until_serving(port: u16, deadline: Duration) -> Reply {
    let end = Instant::now() + deadline;
    loop {
        match request(port, "GET", "/health") {
            Ok(r) => return r,
            Err(e) => {
                assert!(
                    Instant::now() < end,
                    "worker not serving within {deadline:?}: {e}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn serves_health_and_drains_on_sigterm() {
    let port = free_port();
    let mut worker = Worker::start(port);

    let health = wait_until_serving(port, Duration::from_secs(10));
    assert_eq!(health.status, 200);
    assert_eq!(health.header("x-worker-id"), Some("5"));
    assert!(
        health
            .header("x-request-id")
            .is_some_and(|v| v.starts_with("req_"))
    );
    assert_eq!(
        health.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(health.header("x-content-type-options"), Some("nosniff"));
    assert!(health.header("server").is_none());
    let b = &health.body;
    assert_eq!(b["status"], "healthy");
    assert_eq!(b["version"], "1.0.0");
    assert!(b["uptime"].is_f64());
    assert!(b["memory"]["rss"].as_u64().is_some_and(|r| r > 0));
    for key in ["heapTotal", "heapUsed", "external", "arrayBuffers"] {
        assert!(b["memory"][key].is_u64(), "memory.{key}");
    }
    let ts = b["timestamp"].as_str().expect("timestamp");
    assert!(ts.len() == 24 && ts.ends_with('Z'), "{ts}");
    assert!(b.get("requestId").is_none() && b.get("success").is_none());

    let api = request(port, "GET", "/api/v1/health").expect("/api/v1/health");
    assert_eq!(api.status, 200);
    assert_eq!(api.header("pragma"), Some("no-cache"));
    assert_eq!(api.body["data"]["service"], "ai-service");
    assert_eq!(api.body["data"]["system"]["worker_id"], 5);
    assert_eq!(api.body["data"]["system"]["pid"], worker.0.id());
    assert_eq!(api.body["data"]["services"]["providers"]["simulated"], true);

    let ready = request(port, "GET", "/ready").expect("/ready");
    assert_eq!(ready.status, 200);
    assert_eq!(
        ready.body,
        serde_json::json!({"status": "ready", "worker_id": 5})
    );

    let missing = request(port, "GET", "/nope").expect("/nope");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["success"], false);
    assert_eq!(missing.body["code"], "ROUTE_NOT_FOUND");
    assert!(missing.body["requestId"].is_string() && missing.body["timestamp"].is_string());
    assert_eq!(missing.header("x-worker-id"), Some("5"));

    let wrong = request(port, "POST", "/health").expect("POST /health");
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("GET, HEAD"));
    assert_eq!(wrong.body["code"], "METHOD_NOT_ALLOWED");
    assert_eq!(wrong.body["success"], false);

    let pid = libc::pid_t::try_from(worker.0.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = worker.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// Run alone, a worker whose secret file is readable by every user exits
/// 64 before it binds anything, and says which file (on stdout, its log).
#[test]
fn a_world_readable_secret_file_is_exit_64_with_its_path() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("standalone-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("jwt_secret");
    std::fs::write(&file, "s3cret-standalone\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let port = free_port();
    // Only what the test sets (and no `.env` file in `dir`).
    let out = Command::new(env!("CARGO_BIN_EXE_heartalk-worker"))
        .env_clear()
        .current_dir(&dir)
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("JWT_SECRET_FILE", &file)
        .output()
        .expect("running heartalk-worker");
    let _ = std::fs::remove_dir_all(&dir);
    let log = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(64), "{log}");
    assert!(
        log.contains(&format!(
            "JWT_SECRET_FILE={}: readable by every user",
            file.display()
        )),
        "{log}"
    );
    assert!(!log.contains("s3cret-standalone"), "{log}");
    // The worker logs "starting" once its sockets are bound: never here.
    assert!(
        !log.contains("\"starting\""),
        "the refused worker bound its port: {log}"
    );
}
