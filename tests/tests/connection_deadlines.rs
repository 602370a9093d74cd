//! Connection deadlines (docs/api.md "Connection deadlines"), on the real
//! worker under the real supervisor with small deadlines: a connection
//! that sends nothing, a request head or body that trickles in without end,
//! an idle keep-alive connection (HTTP/1 and HTTP/2) and a client that
//! stops reading its answer are each closed at their deadline — never well
//! before it — while an SSE stream that lasts longer than every idle
//! deadline, and a large answer read slowly but steadily, are not cut.
//!
//! Each test measures from before its own action, so "closed well before
//! the deadline" is a hard failure (the worker cannot close earlier than
//! its deadline after our action); "closed" is allowed [`LATE`] of slack,
//! for a loaded machine.

mod helper;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use heartalk_e2e::mock_ark::{Behavior, MockArk};
use helper::*;
use serde_json::{Value, json};

const FIRST_BYTE: Duration = Duration::from_millis(1500);
const HEADER: Duration = Duration::from_millis(2500);
const BODY: Duration = Duration::from_secs(3);
const KEEP_ALIVE: Duration = Duration::from_millis(3500);
const SEND: Duration = Duration::from_secs(2);

/// A close this much before a deadline is "well before" it: the slack is
/// for a response the client reads a little after the worker wrote it
/// (the keep-alive deadline runs from the worker's side of that).
const EARLY: Duration = Duration::from_millis(300);

/// A close later than this after a deadline means the deadline did not
/// fire (every deadline here is distinct, and each test keeps the
/// connection busy with traffic that must not extend it).
const LATE: Duration = Duration::from_secs(5);

/// The interval of the trickling clients.
const TRICKLE_EVERY: Duration = Duration::from_millis(200);

/// The service, with the five deadlines (in both accepted syntaxes:
/// milliseconds and humantime) and `more` env.
fn service(more: &[(&str, &str)]) -> Service {
    let first_byte = FIRST_BYTE.as_millis().to_string();
    let header = HEADER.as_millis().to_string();
    let keep_alive = KEEP_ALIVE.as_millis().to_string();
    let body = format!("{}s", BODY.as_secs());
    let send = format!("{}s", SEND.as_secs());
    let mut env = vec![
        ("FIRST_BYTE_TIMEOUT", first_byte.as_str()),
        ("HEADER_TIMEOUT", header.as_str()),
        ("BODY_TIMEOUT", body.as_str()),
        ("KEEPALIVE_TIMEOUT", keep_alive.as_str()),
        ("SEND_TIMEOUT", send.as_str()),
    ];
    env.extend_from_slice(more);
    Service::start(1, &env)
}

/// [`service`] in live mode against `ark`.
fn live(ark: &MockArk) -> Service {
    let env = Service::live_env(&ark.base_url());
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    service(&refs)
}

fn connect(svc: &Service) -> TcpStream {
    let s = TcpStream::connect_timeout(&svc.addr, DEADLINE).expect("connect");
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Reads until the worker closes the connection (EOF, or a reset when
/// our bytes were left unread); returns everything read. Panics when it
/// is still open `within` from now.
fn read_until_closed(s: &mut impl Read, tcp: &TcpStream, within: Duration) -> Vec<u8> {
    let end = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "still open after {within:?}; read so far: {:?}",
            String::from_utf8_lossy(&got)
        );
        tcp.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading: {e}"),
        }
    }
}

/// `elapsed` (from before the action that started the deadline to the
/// close) is not well before `deadline` and not much after it.
fn assert_closed_at(elapsed: Duration, deadline: Duration, what: &str) {
    assert!(
        elapsed + EARLY >= deadline,
        "{what}: closed after {elapsed:?}, well before its {deadline:?} deadline"
    );
    assert!(
        elapsed <= deadline + LATE,
        "{what}: closed after {elapsed:?}, long after its {deadline:?} deadline"
    );
}

/// A client thread writing `chunk` every [`TRICKLE_EVERY`] until stopped
/// or until the write fails (the worker closed).
struct Trickle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<usize>>,
}

impl Trickle {
    fn start(mut s: TcpStream, chunk: &'static [u8]) -> Trickle {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut sent = 0;
            while !flag.load(Ordering::Relaxed) {
                // Pacing: the slow trickle is the load under test.
                std::thread::sleep(TRICKLE_EVERY);
                if s.write_all(chunk).is_err() {
                    break;
                }
                sent += 1;
            }
            sent
        });
        Trickle {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the writer; returns how many chunks it wrote.
    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Trickle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one `Content-Length` framed response from a keep-alive connection.
fn read_response(r: &mut BufReader<impl Read>) -> Response {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "closed in the head");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let mut resp = Response::from_head(&head, String::new()).unwrap();
    let length: usize = resp.header("content-length").unwrap().parse().unwrap();
    let mut body = vec![0; length];
    r.read_exact(&mut body).unwrap();
    resp.body = String::from_utf8(body).unwrap();
    resp
}

#[test]
fn a_silent_connection_is_closed_at_the_first_byte_deadline() {
    let svc = service(&[]);
    let started = Instant::now();
    let mut s = connect(&svc);
    let tcp = s.try_clone().unwrap();
    let got = read_until_closed(&mut s, &tcp, FIRST_BYTE + LATE);
    assert_closed_at(
        started.elapsed(),
        FIRST_BYTE,
        "a connection that sent nothing",
    );
    assert!(got.is_empty(), "nothing to answer: {got:?}");
    // The worker carries on.
    assert_eq!(http_get(svc.addr, "/health", DEADLINE).unwrap().status, 200);
}

#[test]
fn a_trickling_request_head_is_closed_at_the_header_deadline() {
    let svc = service(&[]);
    let mut s = connect(&svc);
    let started = Instant::now();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    // A header line every 200 ms, the blank line never: more bytes keep
    // arriving, and must not buy more time (a total deadline).
    let trickle = Trickle::start(s.try_clone().unwrap(), b"X-Slow: y\r\n");
    let tcp = s.try_clone().unwrap();
    let got = read_until_closed(&mut s, &tcp, HEADER + LATE);
    let elapsed = started.elapsed();
    let sent = trickle.stop();
    assert_closed_at(elapsed, HEADER, "a head that never ends");
    assert!(got.is_empty(), "the request never began: {got:?}");
    assert!(sent >= 3, "the head kept trickling in ({sent} lines)");
}

#[test]
fn a_trickling_body_gets_a_408_at_the_body_deadline() {
    let svc = service(&[]);
    let mut s = connect(&svc);
    let started = Instant::now();
    write!(
        s,
        "POST /api/v1/chat/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{{\"mess",
        user_token()
    )
    .unwrap();
    // 6 of the 500 bytes, then one more every 200 ms: it would take 100 s.
    let trickle = Trickle::start(s.try_clone().unwrap(), b" ");
    let tcp = s.try_clone().unwrap();
    let got = read_until_closed(&mut s, &tcp, BODY + LATE);
    let elapsed = started.elapsed();
    let sent = trickle.stop();
    assert_closed_at(elapsed, BODY, "a body that never ends");
    assert!(sent >= 3, "the body kept trickling in ({sent} bytes)");

    let r = parse_response(&got).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 408, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    let b = r.json();
    assert_eq!(b["success"], false, "{b}");
    assert_eq!(b["code"], "REQUEST_TIMEOUT", "{b}");
    assert_eq!(
        b["error"],
        format!("Request body not received within {}s", BODY.as_secs()),
        "{b}"
    );
    assert!(b["requestId"].as_str().unwrap().starts_with("req_"), "{b}");
    assert_eq!(r.header("x-request-id"), b["requestId"].as_str());
    assert!(b["timestamp"].is_string(), "E1 has a timestamp: {b}");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_at_the_keep_alive_deadline() {
    let svc = service(&[]);
    let s = connect(&svc);
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut conn = BufReader::new(s);
    // Two requests on one connection: it is kept alive between them.
    for _ in 0..2 {
        conn.get_mut()
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let r = read_response(&mut conn);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("connection"), None, "{r:?}");
    }
    let idle = Instant::now();
    let tcp = conn.get_ref().try_clone().unwrap();
    let got = read_until_closed(&mut conn, &tcp, KEEP_ALIVE + LATE);
    assert_closed_at(idle.elapsed(), KEEP_ALIVE, "an idle keep-alive connection");
    assert!(got.is_empty(), "{got:?}");
}

/// `POST /api/v1/chat/stream` on the simulated provider made slow: its
/// first token comes after 4.5 s of silence, longer than every idle
/// deadline, and the answer then flows for a few more seconds.
const SLOW_STREAM: [(&str, &str); 2] = [
    ("SIMULATED_LATENCY_MS", "4500"),
    ("SIMULATED_TOKENS_PER_SEC", "20"),
];

fn stream_body(text: &str) -> Value {
    json!({"messages":[{"role":"user","content":text}]})
}

/// The frames of a complete SSE answer (asserted complete).
fn complete_frames(body: &str) -> Vec<Value> {
    let frames = sse_json(body);
    assert!(
        frames.iter().any(|f| f["type"] == "content"),
        "no content: {body}"
    );
    assert_eq!(frames.last().unwrap()["type"], "complete", "{body}");
    frames
}

fn longest_idle_deadline() -> Duration {
    FIRST_BYTE.max(HEADER).max(BODY).max(KEEP_ALIVE).max(SEND)
}

#[test]
fn a_long_stream_outlives_every_idle_deadline() {
    let svc = service(&SLOW_STREAM);
    let started = Instant::now();
    let r = svc.post("/api/v1/chat/stream", &stream_body("讲一个很长的故事"));
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    complete_frames(&r.body);
    assert!(
        took > longest_idle_deadline() + Duration::from_secs(1),
        "the stream must outlast the idle deadlines to prove anything: {took:?}"
    );
}

#[test]
fn http2_streams_outlive_the_idle_deadlines_on_a_reused_connection() {
    let svc = service(&SLOW_STREAM);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let base = format!("http://{}", svc.addr);
        let health = client.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(health.version(), reqwest::Version::HTTP_2);
        assert_eq!(health.status(), 200);
        let started = Instant::now();
        let r = client
            .post(format!("{base}/api/v1/chat/stream"))
            .bearer_auth(user_token())
            .json(&stream_body("用 HTTP/2 讲一个很长的故事"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        let body = r.text().await.unwrap();
        let took = started.elapsed();
        complete_frames(&body);
        assert!(
            took > longest_idle_deadline() + Duration::from_secs(1),
            "the stream must outlast the idle deadlines to prove anything: {took:?}"
        );
        let again = client.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(again.status(), 200);
    });
}

// ------------------------------------------------ clients that read slowly

/// A client socket that takes little at a time, as one across a real
/// network does: a 4 KiB receive buffer, and a 536-byte MSS so that the
/// worker's kernel send buffer, which Linux sizes from the peer's MSS,
/// stays at a few hundred KiB (against loopback's 64 KiB MSS it grows to
/// megabytes before a write blocks). Both are set before connecting.
fn narrow_client(svc: &Service) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(svc.addr), Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.set_tcp_mss(536).unwrap();
    sock.connect_timeout(&svc.addr.into(), DEADLINE)
        .expect("connect");
    let s: TcpStream = sock.into();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Writes a JSON `POST` with the user token on a keep-alive connection.
fn post_on(s: &mut TcpStream, path: &str, body: &Value) {
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        user_token(),
        body.len()
    )
    .unwrap();
}

#[test]
fn a_client_that_stops_reading_is_closed_at_the_send_deadline_and_its_upstream_cancelled() {
    let ark = MockArk::start();
    // An answer of some 21 MB of upstream frames (125 000 deltas), far more
    // than every buffer on its way holds (the worker's socket and hyper's
    // buffer toward the client; both sockets' buffers on the upstream
    // call, under 11 MB with Linux's default limits): it cannot end while
    // the client does not read.
    ark.set(Behavior::success().with_content("x".repeat(500_000)));
    let svc = live(&ark);
    let mut s = narrow_client(&svc);
    post_on(
        &mut s,
        "/api/v1/chat/stream",
        &stream_body("讲一个很长的故事"),
    );
    // The answer begins (peeked at, never read). The worker's writes block
    // a moment later, once the client's and its own socket buffers are
    // full; SEND after that the connection is closed and the stream's
    // upstream call cancelled, as when a client hangs up. Nothing else
    // could end it: the request is in flight, so no idle deadline runs.
    s.peek(&mut [0u8; 1]).expect("the answer begins");
    let began = Instant::now();
    assert!(
        ark.wait_for_cancelled(1, SEND + LATE),
        "the upstream call was not cancelled within {:?}",
        SEND + LATE
    );
    assert_closed_at(began.elapsed(), SEND, "a client that stopped reading");
    assert_eq!(ark.completed(), 0, "the upstream answer was never finished");
    // The connection is closed: what the worker had sent arrives, then
    // the end, without the stream's `complete` frame.
    let tcp = s.try_clone().unwrap();
    let got = read_until_closed(&mut s, &tcp, LATE);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        text.chars().take(300).collect::<String>()
    );
    assert!(text.contains(r#""type":"content""#), "no content was sent");
    assert!(
        !text.contains(r#""type":"complete""#),
        "the stream was not cut"
    );
    // The worker carries on.
    assert_eq!(http_get(svc.addr, "/health", DEADLINE).unwrap().status, 200);
}

/// Reads whatever has arrived every 10 ms (a few KiB each time, what the
/// narrow receive buffer holds): about 350 KB/s on loopback, so the
/// worker's writes keep blocking, each time for well under [`SEND`].
struct SlowSteady(TcpStream);

impl Read for SlowSteady {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // Pacing: the slow reader is the load under test.
        std::thread::sleep(Duration::from_millis(10));
        self.0.read(buf)
    }
}

#[test]
fn a_large_answer_read_slowly_but_steadily_is_not_cut() {
    let ark = MockArk::start();
    // A 2 MB answer, sent whole: hyper has the entire body at once, and
    // the client takes some 5 s to read it — past both the send and the
    // keep-alive deadlines, which must not run from the body's end.
    let content = "y".repeat(2_000_000);
    ark.set(Behavior::success().with_content(content.clone()));
    let svc = live(&ark);
    let mut s = narrow_client(&svc);
    let started = Instant::now();
    post_on(
        &mut s,
        "/api/v1/chat/generate",
        &stream_body("写一篇很长的文章"),
    );
    let mut conn = BufReader::with_capacity(8192, SlowSteady(s.try_clone().unwrap()));
    let r = read_response(&mut conn);
    let took = started.elapsed();
    assert_eq!(
        r.status,
        200,
        "{}",
        r.body.chars().take(300).collect::<String>()
    );
    assert!(r.body.contains(&content), "the whole answer arrived");
    assert!(
        took > KEEP_ALIVE.max(SEND) + Duration::from_secs(1),
        "the read must outlast the deadlines to prove anything: {took:?}"
    );
    // Still open, and kept alive.
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut conn = BufReader::new(s);
    assert_eq!(read_response(&mut conn).status, 200);
}

// ------------------------------------------------ raw HTTP/2 (h2c) frames

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 1;
const ACK: u8 = 1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The next frame: (type, flags, stream id, payload).
fn read_frame(s: &mut TcpStream) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).expect("a frame header");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    s.read_exact(&mut payload).expect("a frame payload");
    (head[3], head[4], stream, payload)
}

#[test]
fn an_idle_http2_connection_is_closed_at_the_keep_alive_deadline_despite_pings() {
    let svc = service(&[]);
    let mut s = connect(&svc);
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(H2_PREFACE).unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
    loop {
        let (kind, flags, _, _) = read_frame(&mut s);
        if kind == SETTINGS && flags & ACK == 0 {
            s.write_all(&frame(SETTINGS, ACK, 0, &[])).unwrap();
            break;
        }
    }
    // GET /health: HPACK static entries 2 (:method GET) and 6 (:scheme
    // http), then literals without indexing for :path (name 4) and
    // :authority (name 1).
    let mut block = vec![0x82, 0x86, 0x04, 7];
    block.extend_from_slice(b"/health");
    block.extend_from_slice(&[0x01, 1, b'x']);
    s.write_all(&frame(HEADERS, END_STREAM | 0x4, 1, &block))
        .unwrap();
    let mut answered = false;
    loop {
        let (kind, flags, stream, payload) = read_frame(&mut s);
        assert_ne!(kind, GOAWAY, "GOAWAY: {payload:?}");
        answered |= kind == HEADERS && stream == 1;
        if stream == 1 && (kind == DATA || kind == HEADERS) && flags & END_STREAM != 0 {
            break;
        }
    }
    assert!(answered, "a response head on stream 1");
    let idle = Instant::now();
    // A PING three quarters of the way: frames on an idle HTTP/2
    // connection are not requests and do not keep it open. (Had it reset
    // the deadline, the close would come KEEP_ALIVE after the PING.)
    // The idle time is the behaviour under test, not a wait for an event.
    let ping_at = KEEP_ALIVE * 3 / 4;
    std::thread::sleep(ping_at);
    let _ = s.write_all(&frame(PING, 0, 0, &[7; 8]));
    let tcp = s.try_clone().unwrap();
    read_until_closed(&mut s, &tcp, KEEP_ALIVE + LATE);
    let elapsed = idle.elapsed();
    assert_closed_at(elapsed, KEEP_ALIVE, "an idle HTTP/2 connection");
    assert!(
        elapsed + EARLY < ping_at + KEEP_ALIVE,
        "the PING extended the keep-alive: closed after {elapsed:?}"
    );
}

#[test]
fn unusable_values_are_logged_as_errors_and_the_defaults_used() {
    let svc = Service::start(
        1,
        &[("FIRST_BYTE_TIMEOUT", "0"), ("KEEPALIVE_TIMEOUT", "soon")],
    );
    let errors = wait_for("the setting errors in the log", DEADLINE, || {
        let errors: Vec<Value> = read_logs(&svc.sup.log_dir())
            .into_iter()
            .filter(|l| l["level"] == "ERROR" && l.to_string().contains("invalid setting"))
            .collect();
        (errors.len() >= 2).then_some(errors)
    });
    let text = Value::Array(errors).to_string();
    assert!(
        text.contains("FIRST_BYTE_TIMEOUT") && text.contains("must be more than zero"),
        "{text}"
    );
    assert!(
        text.contains("KEEPALIVE_TIMEOUT") && text.contains("not a duration"),
        "{text}"
    );
    // The defaults (10 s first byte) are in force: a connection silent for
    // longer than the test's other deadlines is still served.
    let mut s = connect(&svc);
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    // The silence is the behaviour under test, not a wait for an event.
    std::thread::sleep(FIRST_BYTE + Duration::from_millis(500));
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    assert_eq!(
        parse_response(&raw)
            .unwrap_or_else(|e| panic!("{e}"))
            .status,
        200
    );
}
