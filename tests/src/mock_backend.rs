//! A mock HearTalk backend for end-to-end tests: real HTTP/1.1 on
//! `127.0.0.1:0`, serving the two routes the worker calls (API.md §8, §12):
//!
//! - `GET /internal/api/v1/conversations/{id}/history` →
//!   `200 {success:true, data:[...]}` with the messages set for `{id}`
//!   (percent-decoded), or an empty `data` for an unknown id;
//! - `GET /health` → `200 {status:"healthy"}`.
//!
//! Anything else is `404` (`405` for a known path with another method).
//! Faults are dialled in while it runs: [`MockBackend::fail_next`] answers
//! the next history requests with an error status, [`MockBackend::set_down`]
//! drops every connection without a response (the client sees a network
//! error), and [`MockBackend::set_latency`] delays every answer. Every
//! request that reaches a handler is recorded with the headers the
//! contract cares about, so tests can check what the worker sent.
//!
//! The server runs on its own OS thread with its own tokio runtime, so
//! plain synchronous `#[test]`s can use it; dropping the [`MockBackend`]
//! stops the server and joins the thread.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// The history route's prefix, as the worker builds it from the default
/// `BACKEND_API_PREFIX` and `BACKEND_CONVERSATION_PATH`.
pub const HISTORY_PREFIX: &str = "/internal/api/v1/conversations/";

/// One request as the mock saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// The path as sent, still percent-encoded, without the query.
    pub path: String,
    pub authorization: Option<String>,
    /// `X-API-Key`.
    pub api_key: Option<String>,
    pub user_agent: Option<String>,
    pub content_type: Option<String>,
}

#[derive(Default)]
struct State {
    conversations: HashMap<String, Vec<Value>>,
    fail_remaining: usize,
    fail_status: u16,
    down: bool,
    latency: Duration,
    requests: Vec<RecordedRequest>,
    history_calls: usize,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    // A panicking test thread must not wedge the server for the others.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The mock backend; see the module docs. Dropping it stops the server.
pub struct MockBackend {
    addr: SocketAddr,
    state: Shared,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MockBackend {
    /// Binds `127.0.0.1:0` and starts serving. The socket is listening when
    /// this returns.
    ///
    /// Panics if the socket or the runtime cannot be set up: this is test
    /// support, and a test cannot proceed without its backend.
    pub fn start() -> MockBackend {
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("binding the mock backend");
        let addr = listener.local_addr().expect("mock backend address");
        listener
            .set_nonblocking(true)
            .expect("non-blocking mock backend socket");
        let state: Shared = Arc::default();
        let (tx, rx) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("mock backend runtime");
        let served = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("mock-backend".into())
            .spawn(move || runtime.block_on(serve(listener, served, rx)))
            .expect("spawning the mock backend thread");
        MockBackend {
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`, for `HEARTALK_BACKEND_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the stored messages of `conversation_id` (served, in this
    /// order, as the history's `data`).
    pub fn set_history(&self, conversation_id: &str, messages: Vec<Value>) {
        lock(&self.state)
            .conversations
            .insert(conversation_id.to_string(), messages);
    }

    /// Appends one message to `conversation_id`'s history (creating it).
    pub fn append(&self, conversation_id: &str, message: Value) {
        lock(&self.state)
            .conversations
            .entry(conversation_id.to_string())
            .or_default()
            .push(message);
    }

    /// The stored messages of `conversation_id`.
    pub fn history(&self, conversation_id: &str) -> Vec<Value> {
        lock(&self.state)
            .conversations
            .get(conversation_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Answers the next `n` history requests with `status` and an error
    /// body. `/health` is unaffected (use [`set_down`](Self::set_down)).
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut s = lock(&self.state);
        s.fail_remaining = n;
        s.fail_status = status;
    }

    /// While down, new connections are closed as soon as they are accepted
    /// and requests on open keep-alive connections are dropped unanswered:
    /// clients see a network error. Such requests are not recorded.
    pub fn set_down(&self, down: bool) {
        lock(&self.state).down = down;
    }

    /// Delays every answer (after recording the request) by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.state).latency = latency;
    }

    /// Every request recorded so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state).requests.clone()
    }

    /// How many history requests were answered (errors included).
    pub fn history_calls(&self) -> usize {
        lock(&self.state).history_calls
    }

    /// Forgets recorded requests and the history call count.
    pub fn clear_requests(&self) {
        let mut s = lock(&self.state);
        s.requests.clear();
        s.history_calls = 0;
    }
}

impl Drop for MockBackend {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts until `shutdown` fires; returning drops the runtime, which
/// cancels the connection tasks.
async fn serve(listener: StdTcpListener, state: Shared, mut shutdown: oneshot::Receiver<()>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                if lock(&state).down {
                    drop(stream);
                    continue;
                }
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(Arc::clone(&state), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

/// The service's error: makes hyper close the connection unanswered.
#[derive(Debug)]
struct Down;

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mock backend is down")
    }
}

impl std::error::Error for Down {}

async fn handle(state: Shared, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Down> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let recorded = RecordedRequest {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        authorization: header("authorization"),
        api_key: header("x-api-key"),
        user_agent: header("user-agent"),
        content_type: header("content-type"),
    };
    let latency = {
        let mut s = lock(&state);
        if s.down {
            return Err(Down);
        }
        s.requests.push(recorded);
        s.latency
    };
    if !latency.is_zero() {
        // The slow backend a test asked for: behaviour, not a wait.
        tokio::time::sleep(latency).await;
    }
    let path = req.uri().path();
    let get = req.method() == Method::GET;
    if path == "/health" {
        return Ok(if get {
            json_response(StatusCode::OK, &json!({"status": "healthy"}))
        } else {
            method_not_allowed()
        });
    }
    let Some(id) = path
        .strip_prefix(HISTORY_PREFIX)
        .and_then(|rest| rest.strip_suffix("/history"))
        .filter(|id| !id.is_empty() && !id.contains('/'))
    else {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            &json!({"success": false, "error": "Not found"}),
        ));
    };
    if !get {
        return Ok(method_not_allowed());
    }
    let id = percent_decode(id);
    let mut s = lock(&state);
    s.history_calls += 1;
    if s.fail_remaining > 0 {
        s.fail_remaining -= 1;
        let status =
            StatusCode::from_u16(s.fail_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(json_response(
            status,
            &json!({"success": false, "error": "mock failure", "code": "MOCK_FAILURE"}),
        ));
    }
    let data = s.conversations.get(&id).cloned().unwrap_or_default();
    Ok(json_response(
        StatusCode::OK,
        &json!({"success": true, "data": data}),
    ))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

fn method_not_allowed() -> Response<Full<Bytes>> {
    json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"success": false, "error": "Method not allowed"}),
    )
}

/// Decodes `%XX` escapes (invalid escapes are kept as they are); the
/// result is read as UTF-8, lossily.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// A one-shot HTTP/1.1 GET; `None` when the connection is dropped
    /// without a response.
    fn get(base: &str, path: &str, headers: &[(&str, &str)]) -> Option<(u16, Value)> {
        let addr = base.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).ok()?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw).ok()?;
        let (head, body) = raw.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
    }

    #[test]
    fn serves_history_and_records_requests() {
        let mock = MockBackend::start();
        let base = mock.base_url();
        mock.set_history("42", vec![json!({"role": "user", "content": "hi"})]);
        mock.append("42", json!({"role": "assistant", "content": "hello"}));
        mock.append("a b", json!({"role": "user", "content": "spaced"}));

        let (status, body) = get(
            &base,
            "/internal/api/v1/conversations/42/history",
            &[
                ("Authorization", "Bearer t"),
                ("X-API-Key", "k"),
                ("User-Agent", "ua"),
            ],
        )
        .unwrap();
        assert_eq!(status, 200);
        assert_eq!(body["success"], true);
        assert_eq!(body["data"].as_array().unwrap().len(), 2);
        assert_eq!(body["data"][1]["content"], "hello");

        let (_, body) = get(&base, "/internal/api/v1/conversations/a%20b/history", &[]).unwrap();
        assert_eq!(body["data"][0]["content"], "spaced");
        let (_, body) = get(&base, "/internal/api/v1/conversations/7/history", &[]).unwrap();
        assert_eq!(body["data"], json!([]));

        assert_eq!(get(&base, "/health", &[]).unwrap().0, 200);
        assert_eq!(get(&base, "/nope", &[]).unwrap().0, 404);
        assert_eq!(mock.history_calls(), 3);

        let reqs = mock.requests();
        assert_eq!(reqs.len(), 5);
        assert_eq!(reqs[0].path, "/internal/api/v1/conversations/42/history");
        assert_eq!(reqs[0].authorization.as_deref(), Some("Bearer t"));
        assert_eq!(reqs[0].api_key.as_deref(), Some("k"));
        assert_eq!(reqs[0].user_agent.as_deref(), Some("ua"));
        assert_eq!(reqs[1].authorization, None);
        assert_eq!(reqs[1].path, "/internal/api/v1/conversations/a%20b/history");
    }

    #[test]
    fn fault_dials() {
        let mock = MockBackend::start();
        let base = mock.base_url();
        let path = "/internal/api/v1/conversations/1/history";

        mock.fail_next(2, 503);
        assert_eq!(get(&base, path, &[]).unwrap().0, 503);
        assert_eq!(get(&base, "/health", &[]).unwrap().0, 200);
        assert_eq!(get(&base, path, &[]).unwrap().0, 503);
        assert_eq!(get(&base, path, &[]).unwrap().0, 200);
        assert_eq!(mock.history_calls(), 3);

        mock.set_down(true);
        assert_eq!(get(&base, path, &[]), None);
        assert_eq!(get(&base, "/health", &[]), None);
        assert_eq!(mock.history_calls(), 3);
        mock.set_down(false);
        assert_eq!(get(&base, "/health", &[]).unwrap().0, 200);

        mock.set_latency(Duration::from_millis(200));
        let t0 = std::time::Instant::now();
        assert_eq!(get(&base, "/health", &[]).unwrap().0, 200);
        assert!(t0.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn drop_stops_the_server() {
        let mock = MockBackend::start();
        let addr = mock.addr();
        drop(mock);
        assert!(TcpStream::connect(addr).is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2Fc"), "a b/c");
        assert_eq!(percent_decode("%E4%BD%A0"), "你");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
