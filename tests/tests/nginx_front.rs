//! The shipped `compose/nginx.conf`, run by a real nginx (Debian's) in front
//! of a real `heartalk run`: plain HTTP is redirected to HTTPS, JSON chat
//! works over TLS, SSE frames go through one by one (not buffered until the
//! stream ends), X-Request-ID is passed on (the client's, or one nginx
//! generates), HSTS is sent once and `/metrics` is not public. Owned by the
//! deployment assets (issue #8).
//!
//! The test takes the file as shipped and replaces only ports, the upstream
//! address, the certificate directory and scratch paths (each replacement
//! must match, so a renamed directive fails here instead of silently testing
//! something else). The certificate is self-signed, made by `openssl` in the
//! temp dir; the HTTPS client is `curl -k` (this crate has no TLS client).

mod helper;

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use helper::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// nginx on the shipped config, in front of `svc`.
struct Front {
    // Dropped in this order: nginx, the service, then the temp dir.
    _nginx: ChildGuard,
    svc: Service,
    http: SocketAddr,
    https: SocketAddr,
    dir: tempfile::TempDir,
}

/// The repository's `compose/nginx.conf`.
fn shipped_conf() -> String {
    let path = repo().join("compose/nginx.conf");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replaces every `from` by `to`; `from` must occur.
fn substitute(conf: String, from: &str, to: &str) -> String {
    assert!(
        conf.contains(from),
        "compose/nginx.conf no longer contains {from:?}: keep it substitution-friendly"
    );
    conf.replace(from, to)
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Front {
    fn start() -> Front {
        let svc = Service::start(
            2,
            &[
                ("NODE_ENV", "production"),
                // ~40-80 tokens at 20/s: every stream lasts 2-4 s.
                ("SIMULATED_LATENCY_MS", "50"),
                ("SIMULATED_TOKENS_PER_SEC", "20"),
                ("TRUST_PROXY", "true"),
                ("TRUSTED_PROXIES", "127.0.0.1/32"),
            ],
        );
        let dir = tempfile::tempdir().expect("tempdir");
        // Run as root, nginx's workers switch to `nobody`: let them in.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod tempdir");
        let path = |p: &str| dir.path().join(p);
        for sub in ["ssl", "cache", "log"] {
            std::fs::create_dir(path(sub)).expect("mkdir");
        }
        run_ok(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args(["-subj", "/CN=localhost", "-keyout"])
                .arg(path("ssl/key.pem"))
                .arg("-out")
                .arg(path("ssl/cert.pem")),
        );

        let http = free_addr();
        let https = free_addr();
        let d = dir.path().display();
        let mut conf = shipped_conf();
        conf = substitute(conf, "listen 80;", &format!("listen {http};"));
        conf = substitute(conf, "listen 443 ssl", &format!("listen {https} ssl"));
        conf = substitute(
            conf,
            "server heartalk:8001",
            &format!("server {}", svc.addr),
        );
        conf = substitute(conf, "/etc/nginx/ssl/", &format!("{d}/ssl/"));
        conf = substitute(conf, "/var/cache/nginx/", &format!("{d}/cache/"));
        conf = substitute(conf, "/var/log/nginx/", &format!("{d}/log/"));
        std::fs::write(path("nginx.conf"), conf).expect("write nginx.conf");

        let stderr = std::fs::File::create(path("log/stderr.log")).expect("stderr file");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(format!("{d}/"))
            .arg("-e")
            .arg(path("log/error.log"))
            .arg("-c")
            .arg(path("nginx.conf"))
            .arg("-g")
            .arg(format!("daemon off; pid {d}/nginx.pid;"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .expect("spawn nginx (Debian package `nginx`; scripts/deps.sh installs it)");
        // SIGTERM is nginx's fast shutdown (the master stops its workers
        // and exits); the group is killed after it (workers of a master
        // that died).
        let mut nginx =
            ChildGuard::graceful("nginx", child, Signal::SIGTERM, Duration::from_secs(5));
        wait_for("nginx listening on both ports", DEADLINE, || {
            if let Some(status) = nginx.child.try_wait().expect("try_wait nginx") {
                panic!(
                    "nginx exited ({status}) at start: {}\n{}",
                    read(&path("log/error.log")),
                    read(&path("log/stderr.log"))
                );
            }
            let up = |a: &SocketAddr| TcpStream::connect_timeout(a, Duration::from_secs(1)).is_ok();
            (up(&http) && up(&https)).then_some(())
        });
        Front {
            _nginx: nginx,
            svc,
            http,
            https,
            dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.https)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// One HTTPS request with curl: (status, response headers, body).
    fn curl(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Response {
        let head = self.file(&format!("curl-{}.head", unique()));
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-k", "--max-time", "30", "-X", method])
            .arg("-D")
            .arg(&head);
        for (k, v) in headers {
            cmd.arg("-H").arg(format!("{k}: {v}"));
        }
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(b.to_string());
        }
        let out = run_ok(cmd.arg(self.url(path)));
        curl_response(
            &read(&head),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn auth(&self) -> String {
        format!("Bearer {}", user_token())
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A response as curl saw it: its `-D` head (the last header block: there
/// are no 1xx here) and its output.
fn curl_response(head: &str, body: String) -> Response {
    Response::from_head(head, body).unwrap_or_else(|e| panic!("curl's head {head:?}: {e}"))
}

#[test]
fn plain_http_is_redirected_and_https_carries_ids_hsts_and_no_metrics() {
    let front = Front::start();

    // Plain HTTP: a permanent redirect to the same path over HTTPS, for the
    // API as for anything else; nothing is proxied in clear text.
    for path in ["/api/v1/health", "/api/v1/chat/stream?x=1"] {
        let r = http_get(front.http, path, Duration::from_secs(10)).expect("GET over HTTP");
        assert_eq!(r.status, 301, "{path}: {r:?}");
        assert_eq!(
            r.header("location"),
            Some(format!("https://127.0.0.1{path}").as_str()),
            "{path}: {r:?}"
        );
        assert!(
            r.header("x-worker-id").is_none(),
            "proxied over HTTP: {r:?}"
        );
    }

    // HTTPS: the service answers (X-Worker-Id), HSTS is sent exactly once
    // (nginx's; the service's own production copy is hidden).
    let r = front.curl("GET", "/api/v1/health", &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["data"]["service"], "ai-service");
    assert!(
        r.header("x-worker-id").is_some(),
        "not from the service: {:?}",
        r.headers
    );
    assert_eq!(
        r.all("strict-transport-security"),
        ["max-age=63072000; includeSubDomains"],
        "{:?}",
        r.headers
    );
    // No X-Request-ID from the client: nginx generates one ($request_id, 32
    // hex digits), the service adopts it and sends it back.
    let id = r.header("x-request-id").expect("X-Request-ID");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "expected nginx's $request_id, got {id:?}"
    );
    // The client's X-Request-ID is kept end to end.
    let r = front.curl(
        "GET",
        "/api/v1/health",
        &[("X-Request-ID", "front-test-42")],
        None,
    );
    assert_eq!(
        r.header("x-request-id"),
        Some("front-test-42"),
        "{:?}",
        r.headers
    );
    assert_eq!(r.all("x-request-id").len(), 1, "{:?}", r.headers);

    // /metrics is served by the service itself but never through the edge.
    let direct =
        http_get(front.svc.addr, "/metrics", Duration::from_secs(10)).expect("direct /metrics");
    assert_eq!(
        direct.status, 200,
        "the service should serve /metrics directly"
    );
    let r = front.curl("GET", "/metrics", &[], None);
    assert_eq!(
        r.status, 404,
        "/metrics is public through nginx: {}",
        r.body
    );
    assert!(
        r.header("x-worker-id").is_none(),
        "/metrics reached the service"
    );
}

#[test]
fn json_chat_works_over_https() {
    let front = Front::start();
    let auth = front.auth();
    let r = front.curl(
        "POST",
        "/api/v1/chat/generate",
        &[("Authorization", &auth), ("X-Request-ID", "front-chat-1")],
        Some(&json!({"messages":[{"role":"user","content":"你好"}]})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["provider"], "simulated", "{body}");
    assert!(
        body["data"]["content"]
            .as_str()
            .is_some_and(|c| c.contains("你好")),
        "{body}"
    );
    assert_eq!(r.header("x-request-id"), Some("front-chat-1"));
    assert!(r.header("x-worker-id").is_some(), "{:?}", r.headers);

    // Without a token the service's own 401 comes through unchanged.
    let r = front.curl(
        "POST",
        "/api/v1/chat/generate",
        &[],
        Some(&json!({"messages":[{"role":"user","content":"你好"}]})),
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["code"], "MISSING_TOKEN");
}

/// A stream read through nginx with `curl -N`: the response head and every
/// `data:` payload with the time it reached curl's stdout.
struct Stream {
    head: Response,
    frames: Vec<(Duration, String)>,
}

impl Front {
    fn stream(&self, path: &str, body: &Value, request_id: &str) -> Stream {
        let head = self.file(&format!("stream-{}.head", unique()));
        let (status, err, frames) = curl_sse(
            Command::new("curl")
                // -N: curl writes what it gets at once. --compressed: the
                // client accepts gzip, which a stream must still not get
                // (compressing buffers it).
                .args(["-sS", "-k", "-N", "--compressed", "--max-time", "30"])
                .args(["-X", "POST", "-D"])
                .arg(&head)
                .args(["-H", "Content-Type: application/json", "-H"])
                .arg(format!("Authorization: {}", self.auth()))
                .arg("-H")
                .arg(format!("X-Request-ID: {request_id}"))
                .arg("--data-binary")
                .arg(body.to_string())
                .arg(self.url(path)),
        );
        assert!(status.success(), "curl failed ({status}): {err}");
        let head = curl_response(&read(&head), String::new());
        assert_eq!(head.status, 200, "{:?}", head.headers);
        assert_eq!(
            head.header("content-type"),
            Some("text/event-stream"),
            "{:?}",
            head.headers
        );
        assert!(
            head.header("content-encoding").is_none(),
            "{:?}",
            head.headers
        );
        assert_eq!(head.header("x-request-id"), Some(request_id));
        Stream { head, frames }
    }
}

impl Stream {
    fn assert_incremental(&self) {
        let times: Vec<Duration> = self.frames.iter().map(|(t, _)| *t).collect();
        assert_incremental(&times);
    }
}

#[test]
fn sse_frames_arrive_one_by_one_through_nginx() {
    let front = Front::start();
    let s = front.stream(
        "/api/v1/chat/stream",
        &json!({"messages":[{"role":"user","content":"你好"}]}),
        "front-sse-1",
    );
    let frames: Vec<Value> = s
        .frames
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap_or_else(|e| panic!("bad frame {d}: {e}")))
        .collect();
    let kinds: Vec<&str> = frames
        .iter()
        .map(|v| v["type"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(kinds.last(), Some(&"complete"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "complete").count(),
        1,
        "{kinds:?}"
    );
    let contents = kinds.iter().filter(|k| **k == "content").count();
    assert!(contents >= 5, "expected several content frames: {kinds:?}");
    assert_eq!(s.head.header("cache-control"), Some("no-cache"));
    s.assert_incremental();
}

#[test]
fn openai_compatible_stream_flows_through_nginx() {
    let front = Front::start();
    let s = front.stream(
        "/v1/chat/completions",
        &json!({"model":"chat","stream":true,"messages":[{"role":"user","content":"你好"}]}),
        "front-openai-1",
    );
    let data: Vec<&str> = s.frames.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{data:?}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("bad chunk {d}: {e}")))
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"),
        "{data:?}"
    );
    let contents = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["content"].is_string())
        .count();
    assert!(contents >= 5, "expected several content chunks: {data:?}");
    s.assert_incremental();
}
