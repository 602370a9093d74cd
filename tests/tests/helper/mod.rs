//! Shared plumbing for the end-to-end tests: start the real `heartalk`
//! binary on a temp config, follow its JSON event log, talk HTTP to it, and
//! make sure every process a test started is killed and reaped at the end.
#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[allow(unused_imports)] // each test file uses a different subset
pub use heartalk_e2e::{free_addr, free_port, repo};

/// Generous deadline for things that normally take milliseconds.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A built binary of this workspace (`heartalk`, `heartalk-worker`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not built: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The misbehaving test worker of this crate.
pub fn test_worker() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_test-worker"))
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    wait_until(what, timeout, || f().ok_or_else(String::new))
}

/// Like [`wait_for`], but `f` says what is still wrong (`Err`), and the
/// panic after `timeout` says it too (its last answer).
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        let wrong = match f() {
            Ok(v) => return v,
            Err(wrong) => wrong,
        };
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}{}{wrong}",
            if wrong.is_empty() { "" } else { ": " }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running supervisor and everything it logged.
pub struct Supervisor {
    pub child: Child,
    pub dir: tempfile::TempDir,
    events: Arc<Mutex<Vec<Value>>>,
    /// Every line the supervisor printed on stdout that is not its own event.
    other_stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Supervisor {
    /// Writes `config` to a temp dir and runs `heartalk run -c` on it.
    pub fn start(config: &str) -> Supervisor {
        Self::start_with(config, |_| {})
    }

    /// Like [`Supervisor::start`]; `tweak` may wrap or adjust the command.
    pub fn start_with(config: &str, tweak: impl FnOnce(&mut Command)) -> Supervisor {
        Self::spawn(config, None, tweak)
    }

    /// Runs the supervisor under a wrapper program (taskset, unshare ...).
    pub fn start_wrapped(config: &str, wrapper: &[&str]) -> Supervisor {
        Self::spawn(config, Some(wrapper), |_| {})
    }

    /// Runs `heartalk run -c <file>` on an existing config file.
    pub fn run_file(file: &Path, tweak: impl FnOnce(&mut Command)) -> Supervisor {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::spawn_file(file.to_path_buf(), dir, None, tweak)
    }

    fn spawn(
        config: &str,
        wrapper: Option<&[&str]>,
        tweak: impl FnOnce(&mut Command),
    ) -> Supervisor {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("ecosystem.toml");
        // Every test supervisor gets its own control socket in its temp dir.
        let config = if config.contains("[supervisor]") || config.is_empty() {
            config.to_string()
        } else {
            format!(
                "[supervisor]\ncontrol_socket = {:?}\n\n{config}",
                dir.path().join("control.sock").display().to_string()
            )
        };
        std::fs::write(&file, config).expect("write config");
        Self::spawn_file(file, dir, wrapper, tweak)
    }

    fn spawn_file(
        file: PathBuf,
        dir: tempfile::TempDir,
        wrapper: Option<&[&str]>,
        tweak: impl FnOnce(&mut Command),
    ) -> Supervisor {
        let heartalk = workspace_bin("heartalk");
        let mut cmd = match wrapper {
            Some(w) => {
                let mut c = Command::new(w[0]);
                c.args(&w[1..]).arg(&heartalk);
                c
            }
            None => Command::new(&heartalk),
        };
        cmd.arg("run")
            .arg("-c")
            .arg(&file)
            .env_remove("PORT")
            .env("HEARTALK_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tweak(&mut cmd);
        let mut child = cmd.spawn().expect("spawn heartalk");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("stdout");
        let ev = events.clone();
        let other_stdout = Arc::new(Mutex::new(Vec::new()));
        let others = other_stdout.clone();
        let out_reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                // Worker output shares this stream; keep the supervisor's
                // own events (target `heartalk` or `heartalk::*`).
                let own = serde_json::from_str::<Value>(&line).ok().filter(|v| {
                    let target = v["target"].as_str().unwrap_or("");
                    target == "heartalk" || target.starts_with("heartalk::")
                });
                match own {
                    Some(v) => ev.lock().unwrap().push(v),
                    None => others.lock().unwrap().push(line),
                }
            }
        });
        let err = child.stderr.take().expect("stderr");
        let se = stderr.clone();
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(err).read_to_string(&mut s);
            se.lock().unwrap().push_str(&s);
        });
        Supervisor {
            child,
            dir,
            events,
            other_stdout,
            stderr,
            readers: vec![out_reader, err_reader],
            status: None,
        }
    }

    /// Every event logged so far with this `event` name.
    pub fn events(&self, name: &str) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["event"] == name)
            .cloned()
            .collect()
    }

    /// Waits for the `n`-th (1-based) event called `name` that satisfies `pred`.
    pub fn wait_event_n(&mut self, name: &str, n: usize, pred: impl Fn(&Value) -> bool) -> Value {
        let what = format!("event {name} #{n}");
        wait_for(&what, DEADLINE, || {
            let matching: Vec<Value> = self.events(name).into_iter().filter(|v| pred(v)).collect();
            matching.get(n - 1).cloned()
        })
    }

    pub fn wait_event(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_event_n(name, 1, pred)
    }

    /// The address the fleet listens on (from the `listening` event).
    pub fn addr(&mut self) -> SocketAddr {
        let ev = self.wait_event("listening", |_| true);
        ev["addr"]
            .as_str()
            .expect("addr")
            .parse()
            .expect("socket addr")
    }

    /// Waits until `n` workers have reported ready; returns their pids.
    pub fn wait_ready(&mut self, n: usize) -> Vec<i32> {
        self.wait_event("fleet_ready", |_| true);
        let ready = self.events("worker_ready");
        assert!(ready.len() >= n, "expected {n} ready workers: {ready:?}");
        ready
            .iter()
            .map(|v| v["pid"].as_i64().unwrap() as i32)
            .collect()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig)
            .expect("kill supervisor");
    }

    /// Waits for the supervisor to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let status = wait_for("supervisor exit", timeout, || {
            self.child.try_wait().expect("try_wait")
        });
        self.status = Some(status);
        // Everything the supervisor wrote is read once its pipes close. A
        // worker that outlives it would hold them open, hence the deadline.
        let deadline = std::time::Instant::now() + DEADLINE;
        for r in std::mem::take(&mut self.readers) {
            while !r.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if r.is_finished() {
                let _ = r.join();
            }
        }
        status
    }

    /// Stdout lines that are not the supervisor's own events (mirrored
    /// worker lines, with `[log] stdout = true`).
    pub fn other_stdout(&self) -> Vec<String> {
        self.other_stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Every worker pid the supervisor ever spawned.
    pub fn spawned_pids(&self) -> Vec<i32> {
        self.events("worker_spawned")
            .iter()
            .filter_map(|v| v["pid"].as_i64())
            .map(|p| p as i32)
            .collect()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill, killpg};
        use nix::unistd::Pid;
        if self.status.is_none() {
            let _ = kill(Pid::from_raw(self.pid()), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        // Workers are in their own process groups; leave none behind. (Pids
        // logged from inside a pid namespace are not ours to kill.)
        if self
            .events("supervisor_start")
            .iter()
            .all(|v| v["pid1"] != true)
        {
            for pid in self.spawned_pids() {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of the header `name` (any case), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// A response from its head (status line and header lines, as curl's
    /// `-D` writes them) and a body that is already decoded (taken as is,
    /// never de-chunked). An error when there is no status line.
    pub fn from_head(head: &str, body: String) -> std::io::Result<Response> {
        let (status, headers) = parse_head(head)?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// One request on a fresh connection (`Connection: close`).
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<Response> {
    read_answer(send_get(addr, path, timeout)?)
}

/// The first half of [`http_get`]: sends the request on a fresh connection
/// and returns the connection, for [`read_answer`].
pub fn send_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    Ok(s)
}

/// The second half of [`http_get`]: the whole answer, read to the end.
pub fn read_answer(mut s: TcpStream) -> std::io::Result<Response> {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// A raw HTTP/1.1 response, head and body (de-chunked if it is chunked).
pub fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("incomplete response: {text:?}")))?;
    let (status, headers) = parse_head(head)?;
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// The status and headers of a response head (its status line first).
fn parse_head(head: &str) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok((status, headers))
}

/// Reads one HTTP/1.1 message head: its first line and header lines, each
/// with its line ending, up to the blank line (read, not returned).
/// `Ok(None)` when the peer closed before sending a byte; an
/// `UnexpectedEof` error when it closed in the middle of the head.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut head = String::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed after {} bytes of the head", head.len()),
            ));
        }
        if line == b"\r\n" {
            return Ok(Some(head));
        }
        let line = String::from_utf8(line)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        head.push_str(&line);
    }
}

/// The `Content-Length` of a message head, if it has one that parses.
fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Whether the server has accepted the connection of `client` (a local
/// TCP connection): in `/proc/net/tcp`, the server's end of a connection
/// still in the listen backlog has no socket inode yet.
pub fn accepted(client: &TcpStream) -> bool {
    let (ours, theirs) = (
        client.local_addr().expect("local address").port(),
        client.peer_addr().expect("peer address").port(),
    );
    let port = |addr: &str| {
        addr.rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .any(|table| {
            table.lines().skip(1).any(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                // sl, local, remote, st, queues, timer, retransmits, uid,
                // timeout, inode
                f.len() > 9 && port(f[1]) == Some(theirs) && port(f[2]) == Some(ours) && f[9] != "0"
            })
        })
}

/// Sends `POST /api/v1/chat/stream` with `body` as `token`'s user and
/// reads until the first content frame has arrived: the stream is under
/// way. Returns the connection (`Connection: close`) and what was read.
pub fn stream_until_content(addr: SocketAddr, token: &str, body: &str) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "POST /api/v1/chat/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send the stream request");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"type\":\"content\"") {
        let n = s.read(&mut buf).expect("read the stream");
        assert!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    (s, got)
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => proc_state(&stat) != Some('Z'),
        Err(_) => false,
    }
}

/// The state letter of a `/proc/PID/stat` line.
pub fn proc_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The parent pid of a `/proc/PID/stat` line.
pub fn proc_ppid(stat: &str) -> Option<i32> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A config with one app of the test worker.
pub fn test_worker_config(instances: u32, mode: &str, extra: &str) -> String {
    format!(
        "[[apps]]\nname = \"tw\"\nscript = \"{}\"\nargs = [\"{mode}\"]\ninstances = {instances}\nlisten = \"127.0.0.1:0\"\n{extra}\n",
        test_worker().display()
    )
}

/// A config with one app of the real worker.
pub fn real_worker_config(instances: &str, extra: &str) -> String {
    format!(
        "[[apps]]\nname = \"heartalk\"\nscript = \"{}\"\ninstances = {instances}\nlisten = \"127.0.0.1:0\"\n{extra}\n",
        workspace_bin("heartalk-worker").display()
    )
}

/// The JWT secret every pipeline test configures.
pub const SECRET: &str = "test-secret";

/// An HS256 token for `claims`, signed with `secret`.
pub fn jwt(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("hmac key"),
    )
    .expect("encode jwt")
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// API.md §15's `T`: `{userId:"test-user-123", exp:now+3600}`.
pub fn user_token() -> String {
    jwt(
        &serde_json::json!({"userId": "test-user-123", "exp": now_unix() + 3600}),
        SECRET,
    )
}

/// A supervisor running the real worker with `env` in `[apps.env]`, ready.
pub struct Service {
    pub sup: Supervisor,
    pub addr: SocketAddr,
}

impl Service {
    pub fn start(instances: u32, env: &[(&str, &str)]) -> Service {
        let mut extra = String::from("[apps.env]\n");
        for (k, v) in env {
            extra.push_str(&format!("{k} = {v:?}\n"));
        }
        let keywords = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/keywords.json");
        if !env.iter().any(|(k, _)| *k == "KEYWORDS_CONFIG") {
            extra.push_str(&format!(
                "KEYWORDS_CONFIG = {:?}\n",
                keywords.display().to_string()
            ));
        }
        if !env.iter().any(|(k, _)| *k == "JWT_SECRET") {
            extra.push_str(&format!("JWT_SECRET = {SECRET:?}\n"));
        }
        let mut sup = Supervisor::start(&real_worker_config(&instances.to_string(), &extra));
        let addr = sup.addr();
        sup.wait_ready(instances as usize);
        Service { sup, addr }
    }

    /// Env for live mode against `ark` (the §15 set-up).
    pub fn live_env(base_url: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AI_PROVIDER_MODE", "live".into()),
            ("BYTEPLUS_API_KEY", "test-key".into()),
            ("BYTEPLUS_BASE_URL", base_url.to_string()),
            ("BYTEPLUS_AMI_CHAT_EP", "ep-chat".into()),
            ("BYTEPLUS_AMI_WORK_ASSISTANT_EP", "ep-work".into()),
        ]
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        post_json(self.addr, path, Some(&user_token()), body)
    }

    /// `POST /api/v1/chat/generate` with one user message (any status).
    pub fn generate(&self, text: &str) -> Response {
        self.post(
            "/api/v1/chat/generate",
            &json!({"messages":[{"role":"user","content":text}]}),
        )
    }

    /// [`Service::generate`], asserting a 200.
    pub fn ask(&self, text: &str) -> Response {
        let r = self.generate(text);
        assert_eq!(r.status, 200, "{}", r.body);
        r
    }

    /// `data.services.cache` of `/api/v1/health` (200 whether healthy or
    /// degraded: asserted).
    pub fn cache_health(&self) -> Value {
        let r = http_get(self.addr, "/api/v1/health", Duration::from_secs(5)).expect("health");
        assert_eq!(r.status, 200, "degraded is still 200: {}", r.body);
        r.json()["data"]["services"]["cache"].clone()
    }

    /// `ai_redis_up` on `/metrics` (`None`: no such series).
    pub fn redis_up(&self) -> Option<f64> {
        metric(self.addr, "ai_redis_up", "")
    }

    /// The supervisor's log file so far (raw: a line may be half written).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.sup.log_dir().join("heartalk.log")).unwrap_or_default()
    }
}

/// Starts a live-mode service on `ark`, plus `more` env.
pub fn live_service(ark_url: &str, more: &[(&str, &str)]) -> Service {
    let mut env = Service::live_env(ark_url);
    env.extend(more.iter().map(|(k, v)| (*k, v.to_string())));
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Service::start(1, &refs)
}

/// One raw HTTP/1.1 request on a fresh connection; `headers` are added as given.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let timeout = Duration::from_secs(30);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    // A server may answer (413) and close before reading a large body; the
    // answer is still there to read.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// POST a JSON body with an optional bearer token.
pub fn post_json(addr: SocketAddr, path: &str, token: Option<&str>, body: &Value) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    request(addr, "POST", path, &headers, body.to_string().as_bytes()).expect("POST")
}

/// GET with a bearer token.
pub fn get_auth(addr: SocketAddr, path: &str, token: &str) -> Response {
    let auth = format!("Bearer {token}");
    request(addr, "GET", path, &[("Authorization", &auth)], b"").expect("GET")
}

/// The SSE events of a body, each as its raw text (`data: ...` or `: ping`),
/// without the blank-line terminator.
pub fn sse_events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

/// The JSON payloads of the `data:` events.
pub fn sse_json(body: &str) -> Vec<Value> {
    sse_events(body)
        .iter()
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|err| panic!("bad frame {d}: {err}")))
        .collect()
}

impl Supervisor {
    /// The config file the supervisor was started with (tests rewrite it
    /// before a reload).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("ecosystem.toml")
    }

    /// The control socket of a supervisor started from a generated config.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    /// Runs a `heartalk` CLI verb against this supervisor.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(workspace_bin("heartalk"))
            .args(args)
            .arg("--socket")
            .arg(self.control_socket())
            .output()
            .expect("run heartalk")
    }

    /// `heartalk status --json`, parsed.
    pub fn status(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// Waits until the workers that exited with `reason` are exactly `pids`.
    pub fn wait_exited(&self, reason: &str, pids: &std::collections::HashSet<i64>) {
        wait_for(
            &format!("workers {pids:?} exited ({reason})"),
            DEADLINE,
            || {
                let exited: std::collections::HashSet<i64> = self
                    .events("worker_exited")
                    .iter()
                    .filter(|e| e["reason"] == reason)
                    .filter_map(|e| e["pid"].as_i64())
                    .collect();
                (&exited == pids).then_some(())
            },
        );
    }

    /// Every event so far, in order, with these names.
    pub fn timeline(&self, names: &[&str]) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|v| names.iter().any(|n| v["event"] == *n))
            .cloned()
            .collect()
    }
}

/// A minimal HTTP/1.1 keep-alive client: reuses its connection until the
/// server answers `Connection: close`, then reconnects. It never retries:
/// a request lost on a reused connection is an error, which is exactly
/// what a graceful drain must not cause.
pub struct KeepAlive {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive { addr, conn: None }
    }

    pub fn get(&mut self, path: &str) -> std::io::Result<Response> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(10))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            self.conn = Some(BufReader::new(s));
        }
        let result = self.exchange(path);
        match &result {
            Ok(r)
                if r.header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close")) =>
            {
                self.conn = None
            }
            Ok(_) => {}
            Err(_) => self.conn = None,
        }
        result
    }

    fn exchange(&mut self, path: &str) -> std::io::Result<Response> {
        let conn = self.conn.as_mut().expect("connected");
        write!(
            conn.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n",
            self.addr
        )?;
        let head = read_head(conn)?.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before the response",
            )
        })?;
        let length = content_length(&head)
            .ok_or_else(|| std::io::Error::other(format!("no content-length in {head:?}")))?;
        let mut body = vec![0u8; length];
        conn.read_exact(&mut body)?;
        let mut raw = head.into_bytes();
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(&body);
        parse_response(&raw)
    }
}

impl Supervisor {
    /// The log directory of a supervisor started from a generated config.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }
}

/// Every JSON line in a log directory: the current file, rotated plain
/// files and gzipped ones (each must decompress completely).
pub fn read_logs(dir: &Path) -> Vec<Value> {
    read_log_files(dir)
        .into_iter()
        .flat_map(|(path, text)| {
            text.lines()
                .map(|line| {
                    serde_json::from_str(line).unwrap_or_else(|e| {
                        panic!("torn line in {}: {e}: {line:?}", path.display())
                    })
                })
                .collect::<Vec<Value>>()
        })
        .collect()
}

/// Every line in a log directory as stored, oldest first (see [`read_logs`]).
pub fn read_log_lines(dir: &Path) -> Vec<String> {
    read_log_files(dir)
        .iter()
        .flat_map(|(_, text)| text.lines().map(str::to_string))
        .collect()
}

/// Each log file of `dir`, oldest first, with its (decompressed) text.
fn read_log_files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("log dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("heartalk") && (n.ends_with(".log") || n.ends_with(".log.gz"))
        })
        .collect();
    names.sort();
    let mut out = Vec::new();
    for path in names {
        let mut text = String::new();
        let file = std::fs::File::open(&path).expect("open log");
        if path.extension().is_some_and(|e| e == "gz") {
            flate2::read::GzDecoder::new(file)
                .read_to_string(&mut text)
                .unwrap_or_else(|e| panic!("{} is not valid gzip: {e}", path.display()));
        } else {
            BufReader::new(file)
                .read_to_string(&mut text)
                .expect("read log");
        }
        out.push((path, text));
    }
    out
}

/// Continuous GET load from several client threads: even ones reuse a
/// keep-alive connection, odd ones open a connection per request. Every
/// failure is recorded; [`Load::finish`] stops the clients and returns them.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    served: Arc<std::sync::atomic::AtomicUsize>,
    clients: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize, path: &'static str) -> Load {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let clients = (0..clients)
            .map(|i| {
                let (stop, served) = (stop.clone(), served.clone());
                std::thread::spawn(move || {
                    let mut errors = Vec::new();
                    let mut keep_alive = KeepAlive::new(addr);
                    while !stop.load(Ordering::Relaxed) {
                        let r = if i % 2 == 0 {
                            keep_alive.get(path)
                        } else {
                            http_get(addr, path, Duration::from_secs(30))
                        };
                        match r {
                            Ok(r) if r.status == 200 => {
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                            other => errors.push(format!("client {i}: {other:?}")),
                        }
                    }
                    errors
                })
            })
            .collect();
        Load {
            stop,
            served,
            clients,
        }
    }

    /// Requests answered with 200 so far.
    pub fn served(&self) -> usize {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `n` more requests than now have been served.
    pub fn wait_more(&self, n: usize) {
        let target = self.served() + n;
        wait_for("more traffic", DEADLINE, || {
            (self.served() >= target).then_some(())
        });
    }

    /// Stops the clients and fails the test if any request failed.
    pub fn finish_clean(self) {
        let served = self.served();
        let errors = self.finish();
        assert!(
            errors.is_empty(),
            "{} failed of {served}: {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
    }

    /// Stops the clients; returns every failure they saw.
    pub fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    }
}

/// Rate-limit windows are fixed and aligned to the minute: when the current
/// one ends within 10 s, waits for the next to begin, so a test's requests
/// all land in one window.
pub fn stay_in_one_window() {
    let into_window = now_unix() % 60;
    if into_window > 50 {
        std::thread::sleep(Duration::from_secs(61 - into_window));
    }
}

// ------------------------------------------------------------- metrics

/// `addr`'s `/metrics` exposition: the body of a 200 answered within 5 s.
pub fn scrape(addr: SocketAddr) -> Option<String> {
    let r = http_get(addr, "/metrics", Duration::from_secs(5)).ok()?;
    (r.status == 200).then_some(r.body)
}

/// The value of the first series of `name` on `addr`'s `/metrics` whose
/// labels contain `labels` (e.g. `endpoint="chat"`): [`sample`] of one
/// [`scrape`]. `None`: no answer, or no such series.
pub fn metric(addr: SocketAddr, name: &str, labels: &str) -> Option<f64> {
    sample(&scrape(addr)?, name, labels)
}

/// The samples of a Prometheus text exposition, in order, as (series,
/// value): the series as written (`name` or `name{labels}`), the value
/// parsed. Comments, blank lines and lines whose value is not a number are
/// skipped.
pub fn samples(text: &str) -> impl Iterator<Item = (&str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series, value.parse().ok()?))
        })
}

/// The metric name of a series: `name{labels}` → `name`.
pub fn series_name(series: &str) -> &str {
    series.split('{').next().unwrap_or(series)
}

/// The [`samples`] of the metric `name` (exactly: `x` is not `x_total`)
/// whose series contains `labels` (e.g. `endpoint="chat"`; `""`: all).
pub fn samples_of<'a>(
    text: &'a str,
    name: &'a str,
    labels: &'a str,
) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    samples(text).filter(move |(series, _)| series_name(series) == name && series.contains(labels))
}

/// The value of the first of [`samples_of`]`(text, name, labels)`.
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    samples_of(text, name, labels).next().map(|(_, v)| v)
}

/// The sum of [`samples_of`]`(text, name, labels)` (0 when there is none).
pub fn sample_sum(text: &str, name: &str, labels: &str) -> f64 {
    samples_of(text, name, labels).map(|(_, v)| v).sum()
}

/// Every metric name of a text exposition, from its `# TYPE` lines
/// (histograms and summaries with their `_bucket` / `_sum` / `_count`
/// series) and its sample lines.
pub fn exposition_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_string());
            let suffixes: &[&str] = match kind {
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["_sum", "_count"],
                _ => &[],
            };
            for s in suffixes {
                names.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

// ----------------------------------------------------------- processes

/// A child process that is stopped and reaped when the guard is dropped,
/// whatever happens to the test. A child still running then is sent
/// SIGKILL (or, made with [`ChildGuard::graceful`], first the given signal
/// and the given time to exit); a child that led its own process group at
/// spawn (`process_group(0)`) has that whole group SIGKILLed too, so none
/// of its own children outlives the test. Dropping always ends in `wait`.
pub struct ChildGuard {
    pub child: Child,
    name: &'static str,
    /// Signal and grace period tried before SIGKILL.
    stop: Option<(nix::sys::signal::Signal, Duration)>,
    group: bool,
}

impl ChildGuard {
    /// Guards `child` (called `name` in messages); SIGKILL on drop.
    pub fn new(name: &'static str, child: Child) -> ChildGuard {
        Self::guard(name, child, None)
    }

    /// Like [`ChildGuard::new`], but on drop a running child is sent
    /// `signal` first and given `grace` to exit before SIGKILL.
    pub fn graceful(
        name: &'static str,
        child: Child,
        signal: nix::sys::signal::Signal,
        grace: Duration,
    ) -> ChildGuard {
        Self::guard(name, child, Some((signal, grace)))
    }

    fn guard(
        name: &'static str,
        child: Child,
        stop: Option<(nix::sys::signal::Signal, Duration)>,
    ) -> ChildGuard {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        // Spawned with `process_group(0)`: the child leads its own group.
        let group = nix::unistd::getpgid(Some(pid)) == Ok(pid);
        ChildGuard {
            child,
            name,
            stop,
            group,
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill, killpg};
        if self.child.try_wait().ok().flatten().is_none() {
            if let Some((signal, grace)) = self.stop {
                let _ = kill(self.pid(), signal);
                let deadline = Instant::now() + grace;
                while Instant::now() < deadline {
                    if self.child.try_wait().ok().flatten().is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            // Ok without a signal when the child has exited meanwhile.
            let _ = self.child.kill();
        }
        if self.group {
            // ESRCH when everything in the group has exited.
            let _ = killpg(self.pid(), Signal::SIGKILL);
        }
        if let Err(e) = self.child.wait() {
            eprintln!("reaping {}: {e}", self.name);
        }
    }
}

/// Waits up to `timeout` for `child` to exit and returns its status; a
/// child still running then is killed and reaped, and `None` is returned.
pub fn wait_or_kill(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server program run for a test (Prometheus, Alertmanager ...): its
/// stdout and stderr go to `<dir>/<name>.log`, and it is killed and reaped
/// on drop (a [`ChildGuard`]), before its temp dir is removed.
pub struct Daemon {
    guard: ChildGuard,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    name: &'static str,
}

impl Daemon {
    /// Runs `cmd` (stdin null, output to the log in `dir`), which is to
    /// serve HTTP on `addr`, and waits up to [`DEADLINE`] until
    /// `GET ready_path` answers 200. Panics, with the log, when the
    /// program exits first.
    pub fn start(
        name: &'static str,
        cmd: &mut Command,
        dir: tempfile::TempDir,
        addr: SocketAddr,
        ready_path: &str,
    ) -> Daemon {
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("run {name} (scripts/deps.sh installs it): {e}"));
        let mut daemon = Daemon {
            guard: ChildGuard::new(name, child),
            addr,
            dir,
            name,
        };
        wait_for(&format!("{name} ready"), DEADLINE, || {
            if let Some(status) = daemon.guard.child.try_wait().expect("try_wait") {
                panic!("{name} exited ({status}):\n{}", daemon.log());
            }
            let r = http_get(addr, ready_path, Duration::from_secs(2)).ok()?;
            (r.status == 200).then_some(())
        });
        daemon
    }

    /// Everything the program has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.name)))
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------- stub server

/// One request a [`StubHttp`] read.
#[derive(Clone, Debug)]
pub struct StubRequest {
    /// The request line and header lines as sent, each with its `\r\n`.
    pub head: String,
    /// The request target: path and query.
    pub target: String,
    /// The body (as many bytes as `Content-Length` said), as text.
    pub body: String,
}

impl StubRequest {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("request body not JSON ({e}): {}", self.body))
    }
}

/// A stub HTTP/1.1 server on 127.0.0.1 for the programs under test to call
/// (health probes, webhooks, a fake engine's health endpoint). Each
/// connection is served on its own thread: each request on it is read
/// whole (head, and the body its `Content-Length` gives), recorded, and
/// answered with `answer(n)` as raw bytes, `n` counting requests from 0 in
/// the order they were read. After an answer with `Connection: close` the
/// connection is closed, after any other the next request is read from it;
/// a `None` answer holds the connection open, silent, until the client
/// closes it. The threads live as long as the test process: dropping this
/// stops nothing.
pub struct StubHttp {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<StubRequest>>>,
}

impl StubHttp {
    pub fn start(answer: impl Fn(usize) -> Option<String> + Send + Sync + 'static) -> StubHttp {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a stub server");
        let addr = listener.local_addr().expect("stub server address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let kept = requests.clone();
        let answer = Arc::new(answer);
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let (kept, answer) = (kept.clone(), answer.clone());
                std::thread::spawn(move || {
                    let _ = stub_serve(conn, &kept, &*answer);
                });
            }
        });
        StubHttp { addr, requests }
    }

    /// Every request read so far, in order.
    pub fn requests(&self) -> Vec<StubRequest> {
        self.requests.lock().unwrap().clone()
    }
}

fn stub_serve(
    conn: TcpStream,
    kept: &Mutex<Vec<StubRequest>>,
    answer: &(dyn Fn(usize) -> Option<String> + Send + Sync),
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn);
    while let Some(head) = read_head(&mut reader)? {
        let mut body = vec![0; content_length(&head).unwrap_or(0)];
        reader.read_exact(&mut body)?;
        let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let n = {
            let mut kept = kept.lock().unwrap();
            kept.push(StubRequest {
                head,
                target,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            kept.len() - 1
        };
        let Some(a) = answer(n) else {
            // Silent: hold the connection until the client closes it.
            let _ = reader.read_to_end(&mut Vec::new());
            return Ok(());
        };
        reader.get_mut().write_all(a.as_bytes())?;
        let close = parse_response(a.as_bytes()).is_ok_and(|r| {
            r.header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        });
        if close {
            return Ok(());
        }
    }
    Ok(())
}

/// `http://<addr>/api/v1/health`: the service's health endpoint at `addr`.
pub fn health_url(addr: SocketAddr) -> String {
    format!("http://{addr}/api/v1/health")
}

/// A whole HTTP/1.1 answer for a [`StubHttp`]: `status` (`"200 OK"`), a
/// JSON content type, `body` with its exact `Content-Length`, and
/// `Connection: close`.
pub fn http_answer(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// An empty 200 that keeps the connection open (a webhook receiver's).
pub const EMPTY_200: &str = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

// -------------------------------------------------------------- configs

/// `config` with `sections` (top-level tables such as `[log]` or
/// `[supervisor]`, with their keys) put ahead of its first `[[apps]]`,
/// where TOML reads them as tables of their own rather than keys of an app.
/// Panics when `config` has no `[[apps]]`.
pub fn before_apps(config: &str, sections: &str) -> String {
    assert!(config.contains("[[apps]]"), "no [[apps]] in {config:?}");
    config.replacen(
        "[[apps]]",
        &format!("{}\n\n[[apps]]", sections.trim_end()),
        1,
    )
}
