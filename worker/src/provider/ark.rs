//! The live provider (API.md §10.1, §10.3): BytePlus ModelArk, or any
//! OpenAI-compatible `POST {base_url}/chat/completions`, over one pooled
//! reqwest client. It owns the request body, the per-attempt timeouts, the
//! mapping of every failure to [`UpstreamError`], the retries with backoff,
//! and the turning of an SSE body into [`StreamEvent`]s.
//!
//! The pure parts (body building, error-body and `Retry-After` parsing,
//! result extraction, backoff) are plain functions with their own tests;
//! the I/O paths are tested against a tiny hand-rolled HTTP server.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Serialize;

use super::sse::{SseItem, SseParser, StreamState};
use super::{
    ChatMessage, Completion, CompletionRequest, EventStream, Provider, StreamEvent, UpstreamError,
    Usage,
};

/// How the live provider is set up (API.md §14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArkConfig {
    /// `BYTEPLUS_BASE_URL`, e.g. `https://ark.ap-southeast.bytepluses.com/api/v3`.
    pub base_url: String,
    /// `BYTEPLUS_API_KEY`; empty means no `Authorization` header.
    pub api_key: String,
    /// `AI_PROVIDER_NAME`, the `provider` label.
    pub name: String,
    /// `UPSTREAM_MAX_RETRIES` (default 2): extra attempts for retryable errors.
    pub max_retries: u32,
    /// `UPSTREAM_STREAM_USAGE`: ask streams for a final usage chunk.
    pub stream_usage: bool,
    /// `UPSTREAM_HTTP2`: HTTP/2 by ALPN on `https` (default), also with
    /// prior knowledge on `http`, or never.
    pub http2: UpstreamHttp2,
    /// `UPSTREAM_POOL_IDLE_SECS`: an idle pooled connection is closed after
    /// this long (its buffers are what a finished burst of streams leaves).
    pub pool_idle: Duration,
}

/// How the provider client uses HTTP/2 (`UPSTREAM_HTTP2`). Over HTTP/2 one
/// connection carries many streams, so an open stream costs a stream's
/// state instead of a connection's buffers (docs/benchmarks.md "Open
/// streams").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamHttp2 {
    /// `auto`: offered by ALPN on `https` URLs (what a TLS server such as
    /// Ark chooses); HTTP/1.1 on plain `http`.
    #[default]
    Auto,
    /// `prior-knowledge`: HTTP/2 without negotiation (h2c on `http`); for a
    /// server known to speak it.
    PriorKnowledge,
    /// `off`: HTTP/1.1 only.
    Off,
}

impl UpstreamHttp2 {
    /// Reads the setting; anything unknown silently becomes `auto` (it is
    /// not reported).
    pub fn parse(value: Option<&str>) -> UpstreamHttp2 {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            Some("prior-knowledge" | "prior_knowledge" | "h2c") => UpstreamHttp2::PriorKnowledge,
            Some("off" | "false" | "0" | "http1") => UpstreamHttp2::Off,
            _ => UpstreamHttp2::Auto,
        }
    }
}

/// Why an [`ArkProvider`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ArkInitError {
    #[error("invalid BYTEPLUS_BASE_URL {url:?}: {reason}")]
    BaseUrl { url: String, reason: String },
    #[error("BYTEPLUS_API_KEY is not a valid header value")]
    ApiKey,
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// The upper bound on a `Retry-After` we honour; longer waits fall back to
/// the exponential backoff (§10.1).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
/// First backoff step; doubled per attempt.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// How much of a non-JSON error body ends up in the message.
const ERROR_BODY_CHARS: usize = 200;

/// The live provider. Cheap to share: everything sits behind one `Arc`, and
/// the returned futures and streams own a clone of it.
#[derive(Clone)]
pub struct ArkProvider {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    url: String,
    parsed_url: reqwest::Url,
    auth: Option<HeaderValue>,
    name: String,
    max_retries: u32,
    stream_usage: bool,
}

impl std::fmt::Debug for ArkProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("ArkProvider")
            .field("url", &self.inner.url)
            .field("name", &self.inner.name)
            .field("max_retries", &self.inner.max_retries)
            .field("stream_usage", &self.inner.stream_usage)
            .field("auth", &self.inner.auth.is_some())
            .finish()
    }
}

impl ArkProvider {
    /// Validates the URL and key and builds the pooled client (keep-alive,
    /// `TCP_NODELAY`; no client-wide timeout, as timeouts are per call).
    pub fn new(cfg: ArkConfig) -> Result<ArkProvider, ArkInitError> {
        let url = chat_completions_url(&cfg.base_url)?;
        let auth = if cfg.api_key.is_empty() {
            None
        } else {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", cfg.api_key))
                .map_err(|_| ArkInitError::ApiKey)?;
            v.set_sensitive(true);
            Some(v)
        };
        let builder = reqwest::Client::builder();
        let builder = match cfg.http2 {
            UpstreamHttp2::Auto => builder,
            UpstreamHttp2::PriorKnowledge => builder.http2_prior_knowledge(),
            UpstreamHttp2::Off => builder.http1_only(),
        };
        let client = builder
            .tcp_nodelay(true)
            .pool_idle_timeout(cfg.pool_idle)
            // Keep every connection a burst opened: with N requests in
            // flight per worker, a smaller idle cap closes connections after
            // each burst and the next burst pays for new ones (tail latency).
            .pool_max_idle_per_host(1024)
            .tcp_keepalive(Duration::from_secs(60))
            // A chat-completions POST is never redirected by a real
            // provider; following one would turn it into a GET (301/302)
            // somewhere else. A 3xx is answered as the upstream error it
            // is, and the redirect machinery stays off the request path.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ArkInitError::Client(error_chain(&e)))?;
        Ok(ArkProvider {
            inner: Arc::new(Inner {
                client,
                // Parsed once: reqwest would otherwise re-parse (and IDNA-map)
                // the string on every call.
                parsed_url: reqwest::Url::parse(&url).map_err(|e| ArkInitError::BaseUrl {
                    url: cfg.base_url.clone(),
                    reason: e.to_string(),
                })?,
                url,
                auth,
                name: cfg.name,
                max_retries: cfg.max_retries,
                stream_usage: cfg.stream_usage,
            }),
        })
    }
}

/// `{base_url}/chat/completions`, tolerating a trailing slash.
fn chat_completions_url(base: &str) -> Result<String, ArkInitError> {
    let url = format!("{}/chat/completions", base.trim().trim_end_matches('/'));
    match reqwest::Url::parse(&url) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(url),
        Ok(u) => Err(ArkInitError::BaseUrl {
            url: base.to_string(),
            reason: format!("unsupported scheme {:?}", u.scheme()),
        }),
        Err(e) => Err(ArkInitError::BaseUrl {
            url: base.to_string(),
            reason: e.to_string(),
        }),
    }
}

impl Provider for ArkProvider {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn is_simulated(&self) -> bool {
        false
    }

    fn complete(
        &self,
        req: CompletionRequest,
    ) -> BoxFuture<'static, Result<Completion, UpstreamError>> {
        let inner = self.inner.clone();
        async move {
            let body = build_body(&req, false, false)?;
            let retries = inner.max_retries;
            let labels = (inner.name.as_str(), req.endpoint.label());
            with_retries(retries, labels, || {
                complete_once(&inner, body.clone(), req.timeout)
            })
            .await
        }
        .boxed()
    }

    fn stream(
        &self,
        req: CompletionRequest,
    ) -> BoxFuture<'static, Result<EventStream, UpstreamError>> {
        let inner = self.inner.clone();
        async move {
            let body = build_body(&req, true, inner.stream_usage)?;
            let retries = inner.max_retries;
            let labels = (inner.name.as_str(), req.endpoint.label());
            let resp = with_retries(retries, labels, || {
                open_stream(&inner, body.clone(), req.timeout)
            })
            .await?;
            Ok(event_stream(resp, req.timeout))
        }
        .boxed()
    }
}

/// The request body of §10.1, in its field order.
#[derive(Debug, Serialize)]
struct RequestBody<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    temperature: f64,
    max_tokens: u32,
    top_p: f64,
    frequency_penalty: u8,
    presence_penalty: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Debug, Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// Serializes the upstream body once (it is reused by every retry).
pub fn build_body(
    req: &CompletionRequest,
    stream: bool,
    stream_usage: bool,
) -> Result<Bytes, UpstreamError> {
    let body = RequestBody {
        model: &req.model,
        messages: &req.messages,
        temperature: req.temperature,
        max_tokens: req.max_tokens,
        top_p: req.top_p,
        frequency_penalty: 0,
        presence_penalty: 0,
        stream: stream.then_some(true),
        stream_options: (stream && stream_usage).then_some(StreamOptions {
            include_usage: true,
        }),
    };
    serde_json::to_vec(&body)
        .map(Bytes::from)
        .map_err(|e| UpstreamError::Network {
            kind: "request".into(),
            detail: format!("cannot encode the request body: {e}"),
        })
}

fn request(inner: &Inner, body: Bytes, stream: bool) -> reqwest::RequestBuilder {
    let accept = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let mut rb = inner
        .client
        .post(inner.parsed_url.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, accept)
        .body(body);
    if let Some(auth) = &inner.auth {
        rb = rb.header(header::AUTHORIZATION, auth.clone());
    }
    rb
}

fn timeout_error(t: Duration) -> UpstreamError {
    UpstreamError::Timeout {
        ms: u64::try_from(t.as_millis()).unwrap_or(u64::MAX),
    }
}

/// One non-streaming attempt: the whole response within `timeout`.
async fn complete_once(
    inner: &Inner,
    body: Bytes,
    timeout: Duration,
) -> Result<Completion, UpstreamError> {
    let attempt = async {
        let resp = request(inner, body, false)
            .send()
            .await
            .map_err(|e| map_reqwest(&e, "request", timeout))?;
        let status = resp.status();
        let retry_after = parse_retry_after(resp.headers());
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) if e.is_timeout() => return Err(timeout_error(timeout)),
            // The status already says what happened; a cut-off error body
            // must not turn a 401 or a quota 429 into a retried network error.
            Err(_) if !status.is_success() => Bytes::new(),
            // A response had started: §10.1 retries only failures before
            // any response, so this is final.
            Err(e) => {
                return Err(UpstreamError::InvalidResponse(format!(
                    "Invalid response format: body cut off ({})",
                    error_chain(&e)
                )));
            }
        };
        if !status.is_success() {
            return Err(http_error(status, retry_after, &bytes));
        }
        parse_completion(&bytes)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(timeout_error(timeout)),
    }
}

/// One streaming attempt up to the 2xx headers: connection and first byte
/// within `timeout`. A non-2xx answer is read (same budget) and mapped.
async fn open_stream(
    inner: &Inner,
    body: Bytes,
    timeout: Duration,
) -> Result<reqwest::Response, UpstreamError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let resp = match tokio::time::timeout_at(deadline, request(inner, body, true).send()).await {
        Ok(r) => r.map_err(|e| map_reqwest(&e, "request", timeout))?,
        Err(_) => return Err(timeout_error(timeout)),
    };
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = parse_retry_after(resp.headers());
    match tokio::time::timeout_at(deadline, resp.bytes()).await {
        Ok(Ok(bytes)) => Err(http_error(status, retry_after, &bytes)),
        // The status is what matters; a body we cannot read is no reason
        // to hide it.
        Ok(Err(_)) => Err(http_error(status, retry_after, b"")),
        Err(_) => Err(timeout_error(timeout)),
    }
}

/// Turns a 2xx SSE response into events. Every chunk must arrive within
/// `idle` of the previous one. The response's body is owned by the stream,
/// so dropping the stream aborts the upstream request.
///
/// Only the body is kept, not the whole response: an open stream would
/// otherwise hold the upstream's response headers, URL and extensions for
/// its whole life (about 1 KB), and nothing reads them after the status.
fn event_stream(resp: reqwest::Response, idle: Duration) -> EventStream {
    /// `B` is the response's body as a stream of chunks.
    struct St<B> {
        body: Option<B>,
        parser: SseParser,
        state: StreamState,
        pending: VecDeque<Result<StreamEvent, UpstreamError>>,
        idle: Duration,
    }

    impl<B> St<B> {
        /// Ends the stream with `last` (nothing is read afterwards).
        fn end(&mut self, last: Result<StreamEvent, UpstreamError>) {
            self.body = None;
            self.count_skipped();
            self.pending.push_back(last);
        }

        /// Counts (once) the payloads skipped so far.
        fn count_skipped(&mut self) {
            let skipped = std::mem::take(&mut self.state.skipped);
            crate::telemetry::stream_parse_errors(skipped);
            if skipped > 0 {
                tracing::warn!(skipped, "skipped unparsable upstream stream payloads");
            }
        }
    }

    /// A stream dropped before its end (the client left) still counts
    /// what it skipped.
    impl<B> Drop for St<B> {
        fn drop(&mut self) {
            self.count_skipped();
        }
    }

    impl<B> St<B> {
        fn items(&mut self, items: Vec<SseItem>) {
            for item in items {
                match item {
                    SseItem::Data(d) => match self.state.apply(&d) {
                        Ok(evs) => self.pending.extend(evs.into_iter().map(Ok)),
                        Err(e) => return self.end(Err(e)),
                    },
                    SseItem::Done => return self.end(Ok(self.state.done_event())),
                }
            }
        }

        /// EOF (or a broken body): complete if a finish_reason was seen.
        fn eof(&mut self, err: Option<UpstreamError>) {
            let items = self.parser.finish();
            self.items(items);
            if self.body.is_none() {
                return; // `[DONE]` or an error was in the tail.
            }
            if self.state.finish_reason.is_some() {
                self.end(Ok(self.state.done_event()));
            } else {
                let e = err.unwrap_or_else(|| {
                    UpstreamError::InvalidResponse("stream ended before completion".into())
                });
                self.end(Err(e));
            }
        }
    }

    let st = St {
        body: Some(resp.bytes_stream()),
        parser: SseParser::new(),
        state: StreamState::new(),
        pending: VecDeque::new(),
        idle,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(ev) = st.pending.pop_front() {
                if st.pending.is_empty() {
                    // Its room for a few events is not kept for the
                    // stream's life: the stream waits for its next chunk
                    // far longer than it holds events.
                    st.pending = VecDeque::new();
                }
                return Some((ev, st));
            }
            let body = st.body.as_mut()?;
            match tokio::time::timeout(st.idle, futures_util::StreamExt::next(body)).await {
                Err(_) => st.end(Err(timeout_error(st.idle))),
                Ok(Some(Ok(chunk))) => {
                    let items = st.parser.push(&chunk);
                    st.items(items);
                }
                Ok(None) => st.eof(None),
                Ok(Some(Err(e))) => {
                    let err = map_reqwest(&e, "body", st.idle);
                    st.eof(Some(err));
                }
            }
        }
    });
    futures_util::StreamExt::boxed(stream)
}

/// Runs `attempt` and retries it as §10.1 allows: only
/// [`UpstreamError::retryable`] errors, at most `max_retries` more times,
/// sleeping [`backoff_delay`] in between, each counted in
/// `ai_upstream_retries_total{provider, endpoint}` (`labels`). Dropping the
/// future (the client went away) stops the retries.
async fn with_retries<T, F, Fut>(
    max_retries: u32,
    labels: (&str, &'static str),
    mut attempt: F,
) -> Result<T, UpstreamError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, UpstreamError>>,
{
    let mut rng = XorShift::from_clock();
    let mut n = 0u32;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if n < max_retries && e.retryable() => {
                let delay = backoff_delay(n, e.retry_after(), rng.next_unit());
                tracing::warn!(attempt = n + 1, error = %e, delay_ms = delay.as_millis() as u64, "upstream call failed, retrying");
                tokio::time::sleep(delay).await;
                crate::telemetry::upstream_retry(labels.0, labels.1);
                n += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The wait before retry number `attempt + 1` (attempt counts from 0):
/// the upstream's `Retry-After` when it is at most 10 s, else
/// 0.5 s·2^attempt scaled by a jitter factor in [0.8, 1.2) taken from
/// `unit` ∈ [0, 1).
pub fn backoff_delay(attempt: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
    if let Some(ra) = retry_after.filter(|ra| *ra <= MAX_RETRY_AFTER) {
        return ra;
    }
    let base = BACKOFF_BASE.as_secs_f64() * f64::from(1u32 << attempt.min(16));
    let factor = 0.8 + 0.4 * unit.clamp(0.0, 1.0);
    Duration::from_secs_f64(base * factor)
}

/// A tiny xorshift64 generator for jitter; not for anything secret.
struct XorShift(u64);

impl XorShift {
    fn from_clock() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        // Mix in an address so concurrent calls in the same nanosecond differ.
        let local = 0u8;
        let addr = &local as *const u8 as u64;
        XorShift((nanos ^ addr.rotate_left(32)) | 1)
    }

    /// Uniform in [0, 1).
    fn next_unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `Retry-After` in seconds (integer or decimal); `retry-after-ms`
/// (OpenAI's) wins when present. HTTP dates are not honoured.
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let num = |name: &str| -> Option<f64> {
        let v = headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()?;
        (v.is_finite() && v >= 0.0).then_some(v)
    };
    if let Some(ms) = num("retry-after-ms") {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    num("retry-after").map(Duration::from_secs_f64)
}

/// Maps a non-2xx answer (§10.3): the provider's `{error:{code,message}}`
/// when present, else the body text (first 200 characters), else the
/// status's reason phrase.
pub fn http_error(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> UpstreamError {
    let (code, message) = parse_error_body(body);
    let message = message.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("Unknown error")
                .to_string()
        } else {
            truncate_chars(text, ERROR_BODY_CHARS)
        }
    });
    UpstreamError::Http {
        status: status.as_u16(),
        code,
        message,
        retry_after,
    }
}

/// `(error.code, error.message)` of a provider error body. Also accepts
/// `{"error":"text"}` and a top-level `{"message":…}`.
fn parse_error_body(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (None, None);
    };
    let text = |v: Option<&serde_json::Value>| -> Option<String> {
        match v? {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    match v.get("error") {
        Some(e @ serde_json::Value::Object(_)) => (text(e.get("code")), text(e.get("message"))),
        Some(serde_json::Value::String(s)) if !s.is_empty() => {
            (text(v.get("code")), Some(s.clone()))
        }
        _ => (text(v.get("code")), text(v.get("message"))),
    }
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The shape every well-formed answer has, read without building a
/// `serde_json::Value` tree (the tree's maps and strings were ~6 % of a
/// worker's CPU per request). Anything else (a field of another type, a
/// duplicate key, a non-object choice) fails here and is read by
/// [`parse_completion_value`], so both give the same result. Each level is
/// read through [`Obj`]: derived structs would also accept a JSON array
/// (fields by position), which the tree reading does not.
#[derive(serde::Deserialize)]
struct WireCompletion {
    #[serde(default)]
    choices: Option<Vec<Obj<WireChoice>>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    model: Option<String>,
}

#[derive(serde::Deserialize)]
struct WireChoice {
    #[serde(default)]
    message: Option<Obj<WireMessage>>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(serde::Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
}

/// `T` read from a JSON object only (never from an array).
struct Obj<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Obj<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Objects<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Objects<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Obj)
            }
        }
        d.deserialize_map(Objects(std::marker::PhantomData))
    }
}

/// Extracts the result of a 2xx JSON body (§10.1 "Result").
pub fn parse_completion(body: &[u8]) -> Result<Completion, UpstreamError> {
    let Ok(Obj(wire)) = serde_json::from_slice::<Obj<WireCompletion>>(body) else {
        return parse_completion_value(body);
    };
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    let choice = wire
        .choices
        .and_then(|c| c.into_iter().next())
        .map(|Obj(c)| c)
        .ok_or_else(|| {
            UpstreamError::InvalidResponse("Invalid response format: no valid choices found".into())
        })?;
    let (content, reasoning_content) = match choice.message {
        Some(Obj(m)) => (non_empty(m.content), non_empty(m.reasoning_content)),
        None => (None, None),
    };
    Ok(Completion {
        content: content
            .or_else(|| non_empty(choice.text))
            .ok_or(UpstreamError::Empty)?,
        reasoning_content,
        finish_reason: non_empty(choice.finish_reason),
        usage: wire.usage,
        model: non_empty(wire.model),
    })
}

/// [`parse_completion`] for bodies off the common shape: every field read
/// leniently from the JSON tree (a field of the wrong type counts as absent).
fn parse_completion_value(body: &[u8]) -> Result<Completion, UpstreamError> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        UpstreamError::InvalidResponse(format!("Invalid response format: malformed JSON ({e})"))
    })?;
    let choice = v
        .get("choices")
        .and_then(|c| c.as_array())
        .and_then(|c| c.first())
        .filter(|c| c.is_object())
        .ok_or_else(|| {
            UpstreamError::InvalidResponse("Invalid response format: no valid choices found".into())
        })?;
    let str_at = |v: Option<&serde_json::Value>| {
        v.and_then(|s| s.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let message = choice.get("message");
    let content = str_at(message.and_then(|m| m.get("content")))
        .or_else(|| str_at(choice.get("text")))
        .ok_or(UpstreamError::Empty)?;
    Ok(Completion {
        content,
        reasoning_content: str_at(message.and_then(|m| m.get("reasoning_content"))),
        finish_reason: str_at(choice.get("finish_reason")),
        usage: v
            .get("usage")
            .filter(|u| u.is_object())
            .and_then(|u| serde_json::from_value::<Usage>(u.clone()).ok()),
        model: str_at(v.get("model")),
    })
}

/// Maps a transport error. `phase` names where it happened ("request"
/// before the answer, "body" while reading it); connection failures are
/// "connect" whatever the phase.
fn map_reqwest(e: &reqwest::Error, phase: &str, timeout: Duration) -> UpstreamError {
    if e.is_timeout() {
        return timeout_error(timeout);
    }
    let kind = if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        phase
    };
    UpstreamError::Network {
        kind: kind.to_string(),
        detail: error_chain(e),
    }
}

/// An error and its sources, `: `-joined, without repeating a message.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::EndpointKind;
    use futures_util::StreamExt;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;

    fn req(timeout_ms: u64) -> CompletionRequest {
        CompletionRequest {
            endpoint: EndpointKind::Chat,
            model: "ep-test".into(),
            messages: vec![
                ChatMessage::new("system", "be nice"),
                ChatMessage::new("user", "你好"),
            ],
            temperature: 0.7,
            max_tokens: 2000,
            top_p: 1.0,
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    fn provider(base: &str, key: &str, retries: u32) -> ArkProvider {
        ArkProvider::new(ArkConfig {
            base_url: base.into(),
            api_key: key.into(),
            name: "byteplus".into(),
            max_retries: retries,
            stream_usage: true,
            http2: UpstreamHttp2::Auto,
            pool_idle: Duration::from_secs(15),
        })
        .unwrap()
    }

    #[test]
    fn body_is_exactly_the_contracts() {
        let b = build_body(&req(1000), false, true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"model":"ep-test","messages":[{"role":"system","content":"be nice"},{"role":"user","content":"你好"}],
                "temperature":0.7,"max_tokens":2000,"top_p":1.0,"frequency_penalty":0,"presence_penalty":0})
        );
        let s: serde_json::Value =
            serde_json::from_slice(&build_body(&req(1000), true, true).unwrap()).unwrap();
        assert_eq!(s["stream"], true);
        assert_eq!(
            s["stream_options"],
            serde_json::json!({"include_usage": true})
        );
        let s: serde_json::Value =
            serde_json::from_slice(&build_body(&req(1000), true, false).unwrap()).unwrap();
        assert_eq!(s["stream"], true);
        assert!(s.get("stream_options").is_none());
    }

    #[test]
    fn urls_are_joined_and_checked() {
        assert_eq!(
            chat_completions_url("http://h/api/v3/").unwrap(),
            "http://h/api/v3/chat/completions"
        );
        assert_eq!(
            chat_completions_url("https://h/api/v3").unwrap(),
            "https://h/api/v3/chat/completions"
        );
        assert!(chat_completions_url("not a url").is_err());
        assert!(chat_completions_url("ftp://h").is_err());
        assert!(
            ArkProvider::new(ArkConfig {
                base_url: "http://h".into(),
                api_key: "bad\nkey".into(),
                name: "x".into(),
                max_retries: 0,
                stream_usage: false,
                http2: UpstreamHttp2::Auto,
                pool_idle: Duration::from_secs(15),
            })
            .is_err()
        );
    }

    #[test]
    fn error_bodies_map_to_http_errors() {
        let body = br#"{"error":{"code":"QuotaExceeded","message":"free quota used up","param":null,"type":"TooManyRequests"}}"#;
        let e = http_error(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(3)),
            body,
        );
        assert_eq!(
            e,
            UpstreamError::Http {
                status: 429,
                code: Some("QuotaExceeded".into()),
                message: "free quota used up".into(),
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(e.to_string(), "HTTP 429: free quota used up");
        let e = http_error(StatusCode::BAD_GATEWAY, None, b"<html>bad gateway</html>");
        assert_eq!(e.to_string(), "HTTP 502: <html>bad gateway</html>");
        let e = http_error(StatusCode::SERVICE_UNAVAILABLE, None, b"");
        assert_eq!(e.to_string(), "HTTP 503: Service Unavailable");
        let long = "错".repeat(500);
        let UpstreamError::Http { message, code, .. } =
            http_error(StatusCode::INTERNAL_SERVER_ERROR, None, long.as_bytes())
        else {
            panic!()
        };
        assert_eq!(message.chars().count(), 201);
        assert_eq!(code, None);
        let UpstreamError::Http { message, .. } =
            http_error(StatusCode::UNAUTHORIZED, None, br#"{"error":"bad key"}"#)
        else {
            panic!()
        };
        assert_eq!(message, "bad key");
    }

    #[test]
    fn retry_after_is_parsed_in_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(parse_retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after", HeaderValue::from_static(" 1.5 "));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(1500)));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(parse_retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("-1"));
        assert_eq!(parse_retry_after(&h), None);
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(250)));
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter_or_follows_retry_after() {
        let ms = |d: Duration| d.as_millis();
        assert_eq!(ms(backoff_delay(0, None, 0.5)), 500);
        assert_eq!(ms(backoff_delay(1, None, 0.5)), 1000);
        assert_eq!(ms(backoff_delay(2, None, 0.5)), 2000);
        assert_eq!(ms(backoff_delay(0, None, 0.0)), 400);
        assert!(ms(backoff_delay(0, None, 0.999_999)) < 600);
        assert_eq!(
            backoff_delay(3, Some(Duration::from_secs(2)), 0.1),
            Duration::from_secs(2)
        );
        assert_eq!(
            backoff_delay(0, Some(Duration::from_secs(10)), 0.1),
            Duration::from_secs(10)
        );
        // Too long a Retry-After falls back to the backoff.
        assert_eq!(
            ms(backoff_delay(0, Some(Duration::from_secs(11)), 0.5)),
            500
        );
        // Huge attempt numbers do not overflow.
        assert!(backoff_delay(100, None, 0.5) > Duration::from_secs(1000));
        let mut r = XorShift::from_clock();
        for _ in 0..1000 {
            let u = r.next_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn results_are_extracted() {
        let c = parse_completion(
            br#"{"model":"seed","choices":[{"message":{"role":"assistant","content":"hi","reasoning_content":"hmm"},"finish_reason":"stop"}],
                "usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"prompt_tokens_details":{"cached_tokens":0}}}"#,
        )
        .unwrap();
        assert_eq!(c.content, "hi");
        assert_eq!(c.reasoning_content.as_deref(), Some("hmm"));
        assert_eq!(c.finish_reason.as_deref(), Some("stop"));
        assert_eq!(c.model.as_deref(), Some("seed"));
        let u = c.usage.unwrap();
        assert_eq!(u.total_tokens, 3);
        assert_eq!(u.extra["prompt_tokens_details"]["cached_tokens"], 0);
        assert_eq!(
            parse_completion(br#"{"choices":[{"text":"legacy"}]}"#)
                .unwrap()
                .content,
            "legacy"
        );
        let no_choices = UpstreamError::InvalidResponse(
            "Invalid response format: no valid choices found".into(),
        );
        assert_eq!(
            parse_completion(br#"{"choices":[]}"#),
            Err(no_choices.clone())
        );
        assert_eq!(parse_completion(br#"{"id":"x"}"#), Err(no_choices.clone()));
        assert_eq!(parse_completion(br#"{"choices":[null]}"#), Err(no_choices));
        assert_eq!(
            parse_completion(
                br#"{"choices":[{"message":{"content":""},"finish_reason":"length"}]}"#
            ),
            Err(UpstreamError::Empty)
        );
        assert!(
            matches!(parse_completion(b"{\"choices\":["), Err(UpstreamError::InvalidResponse(m)) if m.contains("malformed JSON"))
        );
    }

    /// The typed reading and the tree reading agree on every body, the
    /// odd ones included (a body the typed reading refuses goes to the
    /// tree, so this checks the typed reading never accepts a body with a
    /// different result).
    #[test]
    fn typed_and_tree_readings_agree() {
        let bodies: &[&[u8]] = &[
            br#"{"model":"m","choices":[{"message":{"content":"a","reasoning_content":"r"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"completion_tokens_details":{"reasoning_tokens":1}}}"#,
            br#"{"choices":[{"message":{"content":"","reasoning_content":""},"text":"t"}]}"#,
            br#"{"choices":[{"message":null,"text":"t"}]}"#,
            br#"{"choices":[{"message":{"content":["part"]},"text":"t"}]}"#,
            br#"{"choices":[{"message":{"content":7},"text":"t"}]}"#,
            br#"{"choices":[{"message":{"content":"a"},"finish_reason":1}]}"#,
            br#"{"choices":[{"message":{"content":"a"}}, null]}"#,
            br#"{"choices":[{"message":{"content":"a"}}],"usage":null}"#,
            br#"{"choices":[{"message":{"content":"a"}}],"usage":7}"#,
            br#"{"choices":[{"message":{"content":"a"}}],"usage":{"prompt_tokens":"1"}}"#,
            br#"{"choices":[{"message":{"content":"a"}}],"usage":{"prompt_tokens":-1}}"#,
            br#"{"choices":[{"message":{"content":"a"}}],"model":""}"#,
            br#"{"choices":[{"message":{"content":"a"}}],"model":["m"]}"#,
            br#"{"choices":[{"message":{"content":"first"},"message":{"content":"last"}}]}"#,
            br#"{"choices":{"0":{"message":{"content":"a"}}}}"#,
            br#"{"choices":"none"}"#,
            br#"{"choices":[]}"#,
            br#"{"choices":[{}]}"#,
            br#"[]"#,
            br#"{"choices":[{"message":{"content":"a"}}]} trailing"#,
            // Arrays where objects belong (derived structs would read them
            // by position).
            br#"{"choices":[{"message":["x"]}]}"#,
            br#"[[[{"content":"x"}]]]"#,
            br#"{"choices":[[null,"t","stop"]]}"#,
            br#"[[{"message":{"content":"x"}}],null,"m"]"#,
        ];
        for body in bodies {
            assert_eq!(
                parse_completion(body),
                parse_completion_value(body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // The common shapes take the typed path (otherwise the comparison
        // above would only compare the tree with itself).
        for body in &bodies[..3] {
            assert!(
                serde_json::from_slice::<Obj<WireCompletion>>(body).is_ok(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // The duplicate key: the tree keeps the last value, and so do we.
        assert_eq!(
            parse_completion(bodies[13]).unwrap().content,
            "last",
            "duplicate keys"
        );
    }

    /// A one-shot-per-connection HTTP server: `reply` gets the raw request
    /// and the socket and writes whatever it likes.
    fn serve<F>(conns: usize, reply: F) -> (String, Arc<AtomicUsize>)
    where
        F: Fn(usize, String, &mut TcpStream) + Send + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/api/v3", l.local_addr().unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let seen2 = seen.clone();
        thread::spawn(move || {
            for i in 0..conns {
                let Ok((mut s, _)) = l.accept() else { return };
                seen2.fetch_add(1, Ordering::SeqCst);
                let reqtext = read_request(&mut s);
                reply(i, reqtext, &mut s);
            }
        });
        (base, seen)
    }

    fn read_request(s: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        loop {
            let n = s.read(&mut tmp).unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&tmp[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(h) = text.find("\r\n\r\n") {
                let len = text[..h]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= h + 4 + len {
                    break;
                }
            }
        }
        String::from_utf8_lossy(&buf).to_string()
    }

    fn respond(s: &mut TcpStream, status: &str, extra: &str, body: &str) {
        let _ = write!(
            s,
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
            body.len()
        );
    }

    #[tokio::test]
    async fn connection_refused_is_a_network_error() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = provider(&format!("http://127.0.0.1:{port}/api/v3"), "", 0);
        let err = p.complete(req(2000)).await.unwrap_err();
        assert!(
            matches!(&err, UpstreamError::Network { kind, .. } if kind == "connect"),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with("Network error: connect - "),
            "{err}"
        );
    }

    #[tokio::test]
    async fn complete_sends_the_key_and_reads_the_answer() {
        let (base, _) = serve(1, |_, r, s| {
            assert!(r.starts_with("POST /api/v3/chat/completions HTTP/1.1"));
            assert!(
                r.to_ascii_lowercase()
                    .contains("authorization: bearer k-123")
            );
            assert!(r.contains(r#""frequency_penalty":0"#));
            respond(
                s,
                "200 OK",
                "",
                r#"{"model":"m","choices":[{"message":{"content":"ok"},"finish_reason":"stop"}]}"#,
            );
        });
        let c = provider(&base, "k-123", 0)
            .complete(req(2000))
            .await
            .unwrap();
        assert_eq!(c.content, "ok");
    }

    #[tokio::test]
    async fn retryable_errors_are_retried_then_succeed() {
        let (base, seen) = serve(3, |i, r, s| {
            assert!(!r.to_ascii_lowercase().contains("authorization"));
            if i < 2 {
                respond(
                    s,
                    "503 Service Unavailable",
                    "retry-after: 0\r\n",
                    r#"{"error":{"code":"InternalServiceError","message":"busy"}}"#,
                );
            } else {
                respond(
                    s,
                    "200 OK",
                    "",
                    r#"{"choices":[{"message":{"content":"third time"}}]}"#,
                );
            }
        });
        let c = provider(&base, "", 2).complete(req(2000)).await.unwrap();
        assert_eq!(c.content, "third time");
        assert_eq!(seen.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn retries_are_bounded_and_quota_fails_fast() {
        let (base, seen) = serve(5, |i, _, s| {
            if i == 0 {
                respond(
                    s,
                    "429 Too Many Requests",
                    "",
                    r#"{"error":{"code":"QuotaExceeded","message":"quota"}}"#,
                );
            } else {
                respond(s, "503 Service Unavailable", "retry-after: 0\r\n", "down");
            }
        });
        let p = provider(&base, "", 1);
        let e = p.complete(req(2000)).await.unwrap_err();
        assert_eq!(e.outcome(), "quota");
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        let e = p.complete(req(2000)).await.unwrap_err();
        assert_eq!(e.to_string(), "HTTP 503: down");
        assert_eq!(seen.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_hanging_upstream_times_out_without_retry() {
        let (base, seen) = serve(2, |_, _, s| {
            thread::sleep(Duration::from_millis(1500));
            let _ = s.flush();
        });
        let p = provider(&base, "", 2);
        let t0 = std::time::Instant::now();
        assert_eq!(
            p.complete(req(200)).await.unwrap_err(),
            UpstreamError::Timeout { ms: 200 }
        );
        assert!(t0.elapsed() < Duration::from_millis(1000));
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        let Err(e) = p.stream(req(200)).await else {
            panic!()
        };
        assert_eq!(e, UpstreamError::Timeout { ms: 200 });
    }

    #[tokio::test]
    async fn a_redirect_is_an_upstream_error_not_followed() {
        // The second connection would be the redirected request.
        let (base, seen) = serve(2, |_, _, s| {
            let _ = write!(
                s,
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: /elsewhere\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        });
        let p = provider(&base, "", 2);
        match p.complete(req(2000)).await.unwrap_err() {
            UpstreamError::Http { status, .. } => assert_eq!(status, 307),
            other => panic!("{other:?}"),
        }
        assert_eq!(seen.load(Ordering::SeqCst), 1, "not followed");
    }

    fn sse_head(s: &mut TcpStream) {
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
        );
    }

    const SSE: &str = concat!(
        "data: {\"model\":\"seed\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\r\n\r\n",
        ": ping\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"你好\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"，世界\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,\"total_tokens\":8}}\n\n",
        "data: [DONE]\n\n",
    );

    async fn collect(s: EventStream) -> Vec<Result<StreamEvent, UpstreamError>> {
        s.collect().await
    }

    #[tokio::test]
    async fn a_byte_split_stream_yields_the_right_events() {
        let (base, _) = serve(1, |_, r, s| {
            assert!(r.contains(r#""stream":true"#) && r.contains(r#""include_usage":true"#));
            let _ = s.set_nodelay(true);
            sse_head(s);
            for b in SSE.as_bytes().chunks(3) {
                let _ = s.write_all(b);
                let _ = s.flush();
                thread::sleep(Duration::from_micros(200));
            }
        });
        let evs = collect(provider(&base, "", 0).stream(req(2000)).await.unwrap()).await;
        assert_eq!(evs.len(), 3, "{evs:?}");
        assert_eq!(evs[0], Ok(StreamEvent::Content("你好".into())));
        assert_eq!(evs[1], Ok(StreamEvent::Content("，世界".into())));
        let Ok(StreamEvent::Done {
            finish_reason,
            usage,
            model,
        }) = &evs[2]
        else {
            panic!()
        };
        assert_eq!(finish_reason.as_deref(), Some("stop"));
        assert_eq!(usage.as_ref().map(|u| u.total_tokens), Some(8));
        assert_eq!(model.as_deref(), Some("seed"));
    }

    #[tokio::test]
    async fn streams_cut_off_complete_only_after_a_finish_reason() {
        let cut = SSE.find("data: {\"choices\":[],").unwrap();
        let no_finish = SSE.find("data: {\"choices\":[{\"delta\":{},").unwrap();
        let (base, _) = serve(2, move |i, _, s| {
            sse_head(s);
            let _ = s.write_all(&SSE.as_bytes()[..if i == 0 { cut } else { no_finish }]);
        });
        let p = provider(&base, "", 0);
        let evs = collect(p.stream(req(2000)).await.unwrap()).await;
        assert!(
            matches!(
                evs.last(),
                Some(Ok(StreamEvent::Done {
                    finish_reason: Some(_),
                    usage: None,
                    ..
                }))
            ),
            "{evs:?}"
        );
        let evs = collect(p.stream(req(2000)).await.unwrap()).await;
        assert_eq!(
            evs.last(),
            Some(&Err(UpstreamError::InvalidResponse(
                "stream ended before completion".into()
            )))
        );
    }

    #[tokio::test]
    async fn stream_errors_before_2xx_are_mapped_and_idle_gaps_time_out() {
        let (base, _) = serve(2, |i, _, s| {
            if i == 0 {
                respond(
                    s,
                    "401 Unauthorized",
                    "",
                    r#"{"error":{"code":"AuthenticationError","message":"bad key"}}"#,
                );
            } else {
                sse_head(s);
                let _ = s.write_all(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n");
                thread::sleep(Duration::from_millis(1500));
            }
        });
        let p = provider(&base, "", 2);
        let Err(e) = p.stream(req(300)).await else {
            panic!()
        };
        assert_eq!(e.to_string(), "HTTP 401: bad key");
        let evs = collect(p.stream(req(300)).await.unwrap()).await;
        assert_eq!(
            evs,
            vec![
                Ok(StreamEvent::Content("a".into())),
                Err(UpstreamError::Timeout { ms: 300 })
            ]
        );
    }

    #[tokio::test]
    async fn dropping_the_stream_closes_the_upstream_socket() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (base, _) = serve(1, move |_, _, s| {
            sse_head(s);
            let _ = s.write_all(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n");
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut b = [0u8; 16];
            // The client sends nothing more: a read returns 0 (FIN) or an
            // error (RST) once it has closed the connection.
            let closed = matches!(s.read(&mut b), Ok(0) | Err(_));
            let _ = tx.send(closed);
        });
        let mut st = provider(&base, "", 0).stream(req(5000)).await.unwrap();
        assert_eq!(st.next().await, Some(Ok(StreamEvent::Content("a".into()))));
        let t0 = std::time::Instant::now();
        drop(st);
        let closed = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(6)))
            .await
            .unwrap();
        assert_eq!(closed, Ok(true));
        assert!(t0.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn futures_and_streams_are_send_and_static() {
        fn is_send<T: Send + 'static>(_: &T) {}
        let p = provider("http://127.0.0.1:1", "", 0);
        is_send(&p.complete(req(10)));
        is_send(&p.stream(req(10)));
    }
}
