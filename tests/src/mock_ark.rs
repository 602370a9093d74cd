//! A mock BytePlus ModelArk server for the end-to-end tests: REAL HTTP on
//! 127.0.0.1:0, speaking the OpenAI-compatible chat completions API at any
//! `POST …/chat/completions` path (the worker is pointed at
//! [`MockArk::base_url`], `http://127.0.0.1:PORT/api/v3`).
//!
//! It runs a hyper 1 server (HTTP/1 and HTTP/2) on its own OS thread with
//! its own single-threaded tokio runtime, so plain `#[test]` functions can
//! use it, and it stops when the [`MockArk`] is dropped.
//!
//! **Behaviour dial.** [`MockArk::set`] chooses the [`Behavior`] of every
//! following call; [`MockArk::push`] queues one-off behaviours that the
//! next calls consume in order before falling back to the default. A
//! behaviour is either a success (content derived deterministically from
//! the request: `mock answer to: <last user message> (t=<temperature>)`) or
//! a fault: HTTP error with raw body and `Retry-After`, malformed JSON,
//! stream cut off before `[DONE]`, hang forever, empty content, no choices.
//! Timing knobs: latency before the headers, delay between SSE frames, and
//! splitting every SSE frame into network writes of N bytes.
//!
//! **Streams** (`"stream": true` in the request) use real SSE framing:
//! `data: <chat.completion.chunk>\n\n` frames — a role delta, reasoning
//! deltas (if any), content deltas of 4 characters, a `finish_reason`
//! chunk, a `choices: []` usage chunk when the request asked
//! `stream_options.include_usage` — then `data: [DONE]\n\n`.
//!
//! **Records.** [`MockArk::requests`] returns every received request as
//! `{"method", "path", "version", "headers": {authorization, content-type,
//! accept, x-request-id}, "body"}` (`version` is `HTTP/1.1` or `HTTP/2.0`;
//! `body` is the parsed JSON, or a string if it did not parse);
//! [`MockArk::bodies`] just the bodies. [`MockArk::connections`] counts the
//! TCP connections accepted (one HTTP/2 connection carries many calls);
//! [`MockArk::start_tls`] serves over TLS with ALPN, and [`MockArk::alpn`]
//! tells which protocol each connection agreed on.
//! [`MockArk::cancelled`] counts calls whose client went away before the
//! mock finished answering (a stream's body channel closed, or the handler
//! dropped while waiting or hanging).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

/// What a call does besides succeeding or failing.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 200 with a (streamed or whole) answer.
    Success,
    /// `status` with `body` verbatim (and `Retry-After: retry_after` if set).
    HttpError {
        status: u16,
        body: String,
        retry_after: Option<String>,
    },
    /// 200 whose JSON is broken. Whole answers get a truncated body;
    /// streams get one `data: {broken` frame before the normal frames.
    MalformedJson,
    /// Streams end (clean EOF) without `[DONE]`: after the `finish_reason`
    /// chunk if `finish_reason`, else after the first content delta.
    /// Whole answers behave as [`Outcome::Success`].
    CutOff { finish_reason: bool },
    /// Never answer (not even headers).
    Hang,
    /// 200 whose content is `""`.
    EmptyContent,
    /// 200 with `choices: []`.
    NoChoices,
}

/// One call's behaviour. Build with the constructors and `with_*` methods.
#[derive(Debug, Clone, PartialEq)]
pub struct Behavior {
    pub outcome: Outcome,
    /// Delay before the response headers.
    pub latency: Duration,
    /// Delay before each SSE frame after the first.
    pub chunk_delay: Duration,
    /// Split every SSE frame into writes of this many bytes (best effort:
    /// the mock yields between writes so hyper flushes each one).
    pub write_size: Option<usize>,
    /// Overrides the derived content.
    pub content: Option<String>,
    /// `reasoning_content` to send.
    pub reasoning: Option<String>,
    /// Send `usage` (whole answers; streams also need `include_usage`).
    pub usage: bool,
    /// The top-level `model`; `None` echoes the request's `model`.
    pub model: Option<String>,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior::success()
    }
}

impl Behavior {
    /// A normal answer, with usage, no reasoning, no delays.
    pub fn success() -> Self {
        Behavior {
            outcome: Outcome::Success,
            latency: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            write_size: None,
            content: None,
            reasoning: None,
            usage: true,
            model: None,
        }
    }

    fn with_outcome(outcome: Outcome) -> Self {
        Behavior {
            outcome,
            ..Behavior::success()
        }
    }

    /// `status` with a raw `body`.
    pub fn http_error(status: u16, body: impl Into<String>) -> Self {
        Behavior::with_outcome(Outcome::HttpError {
            status,
            body: body.into(),
            retry_after: None,
        })
    }

    /// An Ark-shaped error `{"error":{code,message,param:null,type}}`.
    pub fn ark_error(status: u16, code: &str, message: &str) -> Self {
        let body = json!({"error": {"code": code, "message": message, "param": null, "type": "BadRequest"}});
        Behavior::http_error(status, body.to_string())
    }

    /// 429 `QuotaExceeded` (never retried by the worker).
    pub fn quota_exceeded() -> Self {
        Behavior::ark_error(429, "QuotaExceeded", "You have exceeded your free quota.")
    }

    /// 429 `RateLimitExceeded.EndpointRPMExceeded` (retried).
    pub fn rate_limited() -> Self {
        Behavior::ark_error(
            429,
            "RateLimitExceeded.EndpointRPMExceeded",
            "Too many requests per minute.",
        )
    }

    /// 500 `InternalServiceError` (retried).
    pub fn server_error() -> Self {
        Behavior::ark_error(
            500,
            "InternalServiceError",
            "The service encountered an unexpected internal error.",
        )
    }

    pub fn malformed_json() -> Self {
        Behavior::with_outcome(Outcome::MalformedJson)
    }

    pub fn cut_off(finish_reason: bool) -> Self {
        Behavior::with_outcome(Outcome::CutOff { finish_reason })
    }

    pub fn hang() -> Self {
        Behavior::with_outcome(Outcome::Hang)
    }

    pub fn empty_content() -> Self {
        Behavior::with_outcome(Outcome::EmptyContent)
    }

    pub fn no_choices() -> Self {
        Behavior::with_outcome(Outcome::NoChoices)
    }

    /// Adds `Retry-After: <value>` to an HTTP error.
    pub fn with_retry_after(mut self, value: impl Into<String>) -> Self {
        if let Outcome::HttpError { retry_after, .. } = &mut self.outcome {
            *retry_after = Some(value.into());
        }
        self
    }

    pub fn with_latency(mut self, d: Duration) -> Self {
        self.latency = d;
        self
    }

    pub fn with_chunk_delay(mut self, d: Duration) -> Self {
        self.chunk_delay = d;
        self
    }

    pub fn with_write_size(mut self, n: usize) -> Self {
        self.write_size = Some(n.max(1));
        self
    }

    pub fn with_content(mut self, c: impl Into<String>) -> Self {
        self.content = Some(c.into());
        self
    }

    pub fn with_reasoning(mut self, r: impl Into<String>) -> Self {
        self.reasoning = Some(r.into());
        self
    }

    pub fn without_usage(mut self) -> Self {
        self.usage = false;
        self
    }

    pub fn with_model(mut self, m: impl Into<String>) -> Self {
        self.model = Some(m.into());
        self
    }
}

#[derive(Default)]
struct State {
    default: Behavior,
    queue: VecDeque<Behavior>,
    /// Calls received, recorded or not.
    calls: usize,
    /// Keep every request in `requests` (off for long benchmark runs).
    forget_requests: bool,
    requests: Vec<Value>,
    cancelled: usize,
    completed: usize,
    /// TCP connections accepted since the start.
    connections: usize,
    /// Over TLS: the protocol each connection's handshake agreed on by ALPN
    /// (`h2`, `http/1.1`, or `none`), in order.
    alpn: Vec<String>,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    // A panicking test thread must not wedge the mock for the others.
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running mock Ark server; dropping it stops the server and aborts
/// every open connection.
pub struct MockArk {
    addr: SocketAddr,
    /// `https` when serving TLS ([`MockArk::start_tls`]).
    scheme: &'static str,
    state: Shared,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MockArk {
    /// Binds 127.0.0.1:0 and serves on a dedicated thread.
    ///
    /// # Panics
    /// If the socket or the runtime cannot be created (a test setup failure).
    pub fn start() -> MockArk {
        Self::start_on("127.0.0.1:0")
    }

    /// Like [`MockArk::start`] on a given address (the benchmark's fixed port).
    pub fn start_on(addr: &str) -> MockArk {
        Self::start_with(addr, None)
    }

    /// Like [`MockArk::start`], over TLS with the certificate chain and key
    /// in these PEM files, offering `h2` and `http/1.1` by ALPN, as Ark's
    /// endpoint does; [`MockArk::alpn`] tells what each client chose.
    pub fn start_tls(cert_pem: &std::path::Path, key_pem: &std::path::Path) -> MockArk {
        Self::start_with("127.0.0.1:0", Some(tls_acceptor(cert_pem, key_pem)))
    }

    fn start_with(addr: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> MockArk {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let std_listener = listen(addr);
        std_listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = std_listener.local_addr().expect("mock ark address");
        let state: Shared = Arc::default();
        let (tx, rx) = oneshot::channel();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("mock-ark".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("mock ark runtime");
                rt.block_on(serve(std_listener, st, rx, tls));
                // Dropping `rt` here cancels every connection task.
            })
            .expect("spawn mock ark thread");
        MockArk {
            addr,
            scheme,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/api/v3` (`https` over TLS), the value for
    /// `BYTEPLUS_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("{}://{}/api/v3", self.scheme, self.addr)
    }

    /// Over TLS: the protocol each accepted connection agreed on by ALPN.
    pub fn alpn(&self) -> Vec<String> {
        lock(&self.state).alpn.clone()
    }

    /// The behaviour of every following call (after the queued ones).
    pub fn set(&self, b: Behavior) {
        lock(&self.state).default = b;
    }

    /// Queues a one-off behaviour for the next call not yet served.
    pub fn push(&self, b: Behavior) {
        lock(&self.state).queue.push_back(b);
    }

    /// Every `/chat/completions` request received so far, in order.
    /// Stops recording request bodies (calls are still counted), so a long
    /// load test does not grow the mock's memory.
    pub fn forget_requests(&self) {
        lock(&self.state).forget_requests = true;
    }

    pub fn requests(&self) -> Vec<Value> {
        lock(&self.state).requests.clone()
    }

    /// The JSON bodies of [`MockArk::requests`].
    pub fn bodies(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .map(|r| r["body"].clone())
            .collect()
    }

    /// The body of the latest request, if any.
    pub fn last_body(&self) -> Option<Value> {
        lock(&self.state).requests.last().map(|r| r["body"].clone())
    }

    /// How many `/chat/completions` requests were received.
    pub fn calls(&self) -> usize {
        lock(&self.state).calls
    }

    /// Calls whose client went away before the mock finished answering.
    pub fn cancelled(&self) -> usize {
        lock(&self.state).cancelled
    }

    /// Calls the mock answered in full.
    pub fn completed(&self) -> usize {
        lock(&self.state).completed
    }

    /// TCP connections accepted since the start (not cleared by `reset`).
    pub fn connections(&self) -> usize {
        lock(&self.state).connections
    }

    /// Forgets the records (requests, cancelled, completed) and the queue.
    pub fn reset(&self) {
        let mut s = lock(&self.state);
        s.requests.clear();
        s.calls = 0;
        s.queue.clear();
        s.cancelled = 0;
        s.completed = 0;
    }

    /// Polls until [`MockArk::cancelled`] ≥ `n`; false on timeout.
    pub fn wait_for_cancelled(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.cancelled() >= n)
    }

    /// Polls until [`MockArk::calls`] ≥ `n`; false on timeout.
    pub fn wait_for_calls(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.calls() >= n)
    }

    fn wait_until(&self, timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if f() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for MockArk {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A listener with a production-sized accept queue. std's `bind` listens
/// with a backlog of 128: a burst of new connections from two workers
/// (200 in flight against a slow mock) overflowed it, the dropped SYNs were
/// retried after a second, and the requests waiting for those connections
/// took a whole extra mock round (~+200 ms at p99.5 in the benchmark) —
/// a fault of the mock, not of the provider it stands for.
fn listen(addr: &str) -> std::net::TcpListener {
    let addr: SocketAddr = addr.parse().expect("mock ark address");
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .expect("mock ark socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket.bind(&addr.into()).expect("bind mock ark");
    socket.listen(4096).expect("listen mock ark");
    socket.into()
}

async fn serve(
    listener: std::net::TcpListener,
    state: Shared,
    mut shutdown: oneshot::Receiver<()>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let conn = tokio::select! {
            _ = &mut shutdown => return,
            c = listener.accept() => c,
        };
        let Ok((stream, _)) = conn else { continue };
        let _ = stream.set_nodelay(true);
        lock(&state).connections += 1;
        let st = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, st).await,
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let agreed = stream.get_ref().1.alpn_protocol().map_or_else(
                        || "none".to_string(),
                        |p| String::from_utf8_lossy(p).into_owned(),
                    );
                    lock(&st).alpn.push(agreed);
                    serve_connection(stream, st).await;
                }
            }
        });
    }
}

/// Serves one connection: HTTP/1.1, or HTTP/2 (h2c with prior knowledge,
/// or `h2` agreed by ALPN over TLS).
async fn serve_connection<S>(stream: S, st: Shared)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(req, st.clone()));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // One HTTP/2 connection may carry every stream a worker has open (the
    // streams benchmark).
    builder.http2().max_concurrent_streams(MAX_H2_STREAMS);
    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
}

/// A TLS acceptor for the PEM chain and key, offering `h2` then `http/1.1`.
fn tls_acceptor(
    cert_pem: &std::path::Path,
    key_pem: &std::path::Path,
) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_pem)
        .expect("mock ark certificate file")
        .collect::<Result<_, _>>()
        .expect("mock ark certificate");
    let key = PrivateKeyDer::from_pem_file(key_pem).expect("mock ark key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("mock ark TLS config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

type Body = BoxBody<Bytes, Infallible>;

/// Concurrent streams the mock allows on one HTTP/2 connection.
pub const MAX_H2_STREAMS: u32 = 100_000;

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Counts a call as cancelled if dropped before it is disarmed.
struct CancelGuard {
    state: Shared,
    armed: bool,
}

impl CancelGuard {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.state).cancelled += 1;
        }
    }
}

async fn handle(req: Request<Incoming>, state: Shared) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    if method != "POST" || !path.ends_with("/chat/completions") {
        return Ok(full(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":{"code":"NotFound","message":"no such route"}}"#,
        ));
    }
    let mut headers = serde_json::Map::new();
    for name in ["authorization", "content-type", "accept", "x-request-id"] {
        let v = req.headers().get(name).and_then(|v| v.to_str().ok());
        headers.insert(
            name.into(),
            v.map_or(Value::Null, |v| Value::String(v.to_string())),
        );
    }
    let raw = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(full(StatusCode::BAD_REQUEST, "text/plain", "bad body")),
    };
    let body: Value = serde_json::from_slice(&raw)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into_owned()));
    let behavior = {
        let mut s = lock(&state);
        s.calls += 1;
        if !s.forget_requests {
            s.requests.push(
                json!({"method": method, "path": path, "version": version, "headers": headers, "body": body.clone()}),
            );
        }
        let b = s.queue.pop_front();
        b.unwrap_or_else(|| s.default.clone())
    };
    let call = lock(&state).requests.len();

    let guard = CancelGuard {
        state: state.clone(),
        armed: true,
    };
    if !behavior.latency.is_zero() {
        // The slow upstream a test asked for: behaviour, not a wait.
        tokio::time::sleep(behavior.latency).await;
    }
    let resp = match &behavior.outcome {
        Outcome::Hang => std::future::pending().await,
        Outcome::HttpError {
            status,
            body,
            retry_after,
        } => {
            let mut r = full(
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "application/json",
                body.clone(),
            );
            if let Some(v) = retry_after.as_deref().and_then(|v| v.parse().ok()) {
                r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
            }
            lock(&state).completed += 1;
            r
        }
        _ if body["stream"] == json!(true) => {
            let frames = stream_frames(&behavior, &body, call);
            guard.disarm();
            return Ok(stream_response(frames, behavior, state));
        }
        _ => {
            lock(&state).completed += 1;
            full(
                StatusCode::OK,
                "application/json",
                whole_body(&behavior, &body, call),
            )
        }
    };
    guard.disarm();
    Ok(resp)
}

/// The derived answer: `mock answer to: <last user message> (t=<temperature>)`.
pub fn derived_content(request: &Value) -> String {
    let last_user = request["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let t = &request["temperature"];
    format!("mock answer to: {last_user} (t={t})")
}

fn content_of(b: &Behavior, request: &Value) -> String {
    match (&b.outcome, &b.content) {
        (Outcome::EmptyContent, _) => String::new(),
        (_, Some(c)) => c.clone(),
        _ => derived_content(request),
    }
}

fn model_of(b: &Behavior, request: &Value) -> String {
    b.model.clone().unwrap_or_else(|| {
        request["model"]
            .as_str()
            .unwrap_or("mock-model")
            .to_string()
    })
}

/// Deterministic token counts: characters of the messages / the answer.
fn usage_of(request: &Value, content: &str, reasoning: Option<&str>) -> Value {
    let prompt: usize = request["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| m["content"].as_str().unwrap_or("").chars().count())
                .sum()
        })
        .unwrap_or(0);
    let reasoning_tokens = reasoning.map_or(0, |r| r.chars().count());
    let completion = content.chars().count() + reasoning_tokens;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
    })
}

const CREATED: u64 = 1_700_000_000;

fn whole_body(b: &Behavior, request: &Value, call: usize) -> String {
    if b.outcome == Outcome::MalformedJson {
        return r#"{"id":"chatcmpl-mock","object":"chat.completion","choices":[{"index":0,"message":{"role":"assist"#.to_string();
    }
    let content = content_of(b, request);
    let model = model_of(b, request);
    let mut message = json!({"role": "assistant", "content": content});
    if let Some(r) = &b.reasoning {
        message["reasoning_content"] = json!(r);
    }
    let choices = if b.outcome == Outcome::NoChoices {
        json!([])
    } else {
        json!([{"index": 0, "message": message, "finish_reason": "stop", "logprobs": null}])
    };
    let mut v = json!({
        "id": format!("chatcmpl-mock-{call}"),
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": choices,
    });
    if b.usage {
        v["usage"] = usage_of(request, &content, b.reasoning.as_deref());
    }
    v.to_string()
}

/// The SSE frames of a streamed answer (each a complete `data: …\n\n`).
fn stream_frames(b: &Behavior, request: &Value, call: usize) -> Vec<String> {
    let id = format!("chatcmpl-mock-{call}");
    let model = model_of(b, request);
    let chunk = |choices: Value| {
        let v = json!({"id": id, "object": "chat.completion.chunk", "created": CREATED, "model": model, "choices": choices});
        format!("data: {v}\n\n")
    };
    let delta =
        |d: Value, finish: Value| chunk(json!([{"index": 0, "delta": d, "finish_reason": finish}]));
    let pieces = |s: &str| -> Vec<String> {
        let cs: Vec<char> = s.chars().collect();
        cs.chunks(4).map(|c| c.iter().collect()).collect()
    };
    let content = content_of(b, request);
    let mut frames = vec![delta(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    if b.outcome == Outcome::MalformedJson {
        frames.push("data: {broken\n\n".into());
    }
    if b.outcome == Outcome::NoChoices {
        frames.push(chunk(json!([])));
        frames.push("data: [DONE]\n\n".into());
        return frames;
    }
    if let Some(r) = &b.reasoning {
        for p in pieces(r) {
            frames.push(delta(json!({"reasoning_content": p}), Value::Null));
        }
    }
    for p in pieces(&content) {
        frames.push(delta(json!({"content": p}), Value::Null));
        if b.outcome
            == (Outcome::CutOff {
                finish_reason: false,
            })
        {
            return frames;
        }
    }
    frames.push(delta(json!({"content": ""}), json!("stop")));
    if matches!(b.outcome, Outcome::CutOff { .. }) {
        return frames;
    }
    if b.usage && request["stream_options"]["include_usage"] == json!(true) {
        let usage = usage_of(request, &content, b.reasoning.as_deref());
        let v = json!({"id": id, "object": "chat.completion.chunk", "created": CREATED, "model": model, "choices": [], "usage": usage});
        frames.push(format!("data: {v}\n\n"));
    }
    frames.push("data: [DONE]\n\n".into());
    frames
}

/// A 200 SSE response fed by a task that writes `frames` with the
/// behaviour's delays and write size; a closed channel (the client went
/// away) counts as cancelled.
fn stream_response(frames: Vec<String>, b: Behavior, state: Shared) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    tokio::spawn(async move {
        let mut ok = true;
        'frames: for (i, frame) in frames.into_iter().enumerate() {
            if i > 0 && !b.chunk_delay.is_zero() {
                // Pacing the frames as a test asked: behaviour, not a wait.
                tokio::select! {
                    _ = tokio::time::sleep(b.chunk_delay) => {}
                    _ = tx.closed() => { ok = false; break 'frames; }
                }
            }
            let bytes = Bytes::from(frame);
            let size = b.write_size.unwrap_or(bytes.len()).max(1);
            let mut at = 0;
            while at < bytes.len() {
                let end = (at + size).min(bytes.len());
                if tx.send(bytes.slice(at..end)).await.is_err() {
                    ok = false;
                    break 'frames;
                }
                at = end;
                if b.write_size.is_some() {
                    // Let the connection task take and flush this piece.
                    for _ in 0..4 {
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
        let mut s = lock(&state);
        if ok {
            s.completed += 1;
        } else {
            s.cancelled += 1;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn post(mock: &MockArk, body: &Value, extra: &str) -> String {
        let body = body.to_string();
        let mut s = TcpStream::connect(mock.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "POST /api/v3/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    fn chat(stream: bool) -> Value {
        json!({"model": "ep-1", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
               "temperature": 0.7, "max_tokens": 100, "stream": stream, "stream_options": {"include_usage": true}})
    }

    #[test]
    fn answers_and_records_a_whole_completion() {
        let mock = MockArk::start();
        let out = post(&mock, &chat(false), "authorization: Bearer k\r\n");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        let body: Value = serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "mock answer to: hi (t=0.7)"
        );
        assert_eq!(body["model"], "ep-1");
        assert_eq!(body["usage"]["total_tokens"], 3 + 26);
        assert_eq!(mock.calls(), 1);
        let r = &mock.requests()[0];
        assert_eq!(r["headers"]["authorization"], "Bearer k");
        assert_eq!(r["body"]["max_tokens"], 100);
        assert_eq!(mock.last_body().unwrap()["temperature"], 0.7);
    }

    #[test]
    fn streams_real_sse_frames() {
        let mock = MockArk::start();
        mock.set(
            Behavior::success()
                .with_reasoning("think")
                .with_write_size(3),
        );
        let out = post(&mock, &chat(true), "");
        assert!(out.contains("text/event-stream"));
        let (head, rest) = out.split_once("\r\n\r\n").unwrap();
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked")
        );
        // Undo the chunked encoding; with 3-byte writes most chunks are tiny.
        let (mut sse, mut rest, mut chunks) = (String::new(), rest, 0);
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size, 16).unwrap();
            if n == 0 {
                break;
            }
            sse.push_str(&tail[..n]);
            rest = &tail[n + 2..];
            chunks += 1;
        }
        assert!(
            sse.starts_with("data: {") && sse.ends_with("data: [DONE]\n\n"),
            "{sse}"
        );
        assert!(
            sse.contains(r#""reasoning_content":"thin""#) && sse.contains(r#""content":"mock""#)
        );
        assert!(
            chunks > sse.len() / 6,
            "{chunks} chunks for {} bytes",
            sse.len()
        );
        assert!(mock.wait_until(Duration::from_secs(2), || mock.completed() == 1));
        let frames = stream_frames(&Behavior::success().with_reasoning("think"), &chat(true), 1);
        assert!(frames[0].contains(r#""role":"assistant""#));
        assert!(frames[1].contains(r#""reasoning_content":"thin""#));
        assert!(
            frames
                .iter()
                .any(|f| f.contains(r#""finish_reason":"stop""#))
        );
        assert!(
            frames[frames.len() - 2].contains(r#""choices":[]"#)
                && frames[frames.len() - 2].contains("total_tokens")
        );
        assert_eq!(frames.last().unwrap(), "data: [DONE]\n\n");
        let cut = stream_frames(&Behavior::cut_off(false), &chat(true), 1);
        assert_eq!(cut.len(), 2);
    }

    #[test]
    fn queued_behaviours_come_first_and_errors_are_raw() {
        let mock = MockArk::start();
        mock.push(Behavior::quota_exceeded().with_retry_after("3"));
        mock.push(Behavior::no_choices());
        let out = post(&mock, &chat(false), "");
        assert!(out.starts_with("HTTP/1.1 429"), "{out}");
        assert!(out.to_ascii_lowercase().contains("retry-after: 3"));
        assert!(out.contains(r#""code":"QuotaExceeded""#));
        assert!(post(&mock, &chat(false), "").contains(r#""choices":[]"#));
        assert!(post(&mock, &chat(false), "").contains("mock answer to: hi"));
        assert_eq!(mock.calls(), 3);
    }

    #[test]
    fn a_client_leaving_a_stream_is_counted_as_cancelled() {
        let mock = MockArk::start();
        mock.set(
            Behavior::success()
                .with_chunk_delay(Duration::from_millis(50))
                .with_content("x".repeat(200)),
        );
        let body = chat(true).to_string();
        let mut s = TcpStream::connect(mock.addr()).unwrap();
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        drop(s);
        assert!(mock.wait_for_cancelled(1, Duration::from_secs(5)));
        assert_eq!(mock.completed(), 0);
        // A hanging call whose client leaves is counted too.
        mock.set(Behavior::hang());
        let mut s = TcpStream::connect(mock.addr()).unwrap();
        write!(
            s,
            "POST /chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        assert!(mock.wait_for_calls(2, Duration::from_secs(5)));
        drop(s);
        assert!(mock.wait_for_cancelled(2, Duration::from_secs(5)));
    }
}
