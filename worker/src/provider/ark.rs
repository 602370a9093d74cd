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
use crate::settings::{Secret, UpstreamHttp2};

/// How the live provider is set up (API.md §14). `Debug` masks the key
/// (a [`Secret`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArkConfig {
    /// `BYTEPLUS_BASE_URL`, e.g. `https://ark.ap-southeast.bytepluses.com/api/v3`.
    pub base_url: String,
    /// `BYTEPLUS_API_KEY`; empty means no `Authorization` header.
    pub api_key: Secret,
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
        let auth = if cfg.api_key.0.is_empty() {
            None
        } else {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", cfg.api_key.0))
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

/// What §10.1 reads from a 2xx body, whichever way it was read: the first
/// choice (when it is an object), `usage` and `model`. Strings are as
/// sent (empty ones included); [`Read::completion`] interprets them.
struct Read {
    choice: Option<ReadChoice>,
    usage: Option<Usage>,
    model: Option<String>,
}

struct ReadChoice {
    content: Option<String>,
    reasoning_content: Option<String>,
    text: Option<String>,
    finish_reason: Option<String>,
}

impl Read {
    /// The one interpretation of an answer (§10.1 "Result"): a first
    /// choice is required, the message's content (else the legacy `text`)
    /// must be non-empty, and every other empty string counts as absent.
    fn completion(self) -> Result<Completion, UpstreamError> {
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        let choice = self.choice.ok_or_else(|| {
            UpstreamError::InvalidResponse("Invalid response format: no valid choices found".into())
        })?;
        Ok(Completion {
            content: non_empty(choice.content)
                .or_else(|| non_empty(choice.text))
                .ok_or(UpstreamError::Empty)?,
            reasoning_content: non_empty(choice.reasoning_content),
            finish_reason: non_empty(choice.finish_reason),
            usage: self.usage,
            model: non_empty(self.model),
        })
    }
}

/// Extracts the result of a 2xx JSON body (§10.1 "Result"): read typed in
/// one pass when the body has the common shape, else from its JSON tree
/// ([`parse_completion_value`]); both readings feed [`Read::completion`].
pub fn parse_completion(body: &[u8]) -> Result<Completion, UpstreamError> {
    let Ok(Obj(wire)) = serde_json::from_slice::<Obj<WireCompletion>>(body) else {
        return parse_completion_value(body);
    };
    let choice = wire
        .choices
        .and_then(|c| c.into_iter().next())
        .map(|Obj(c)| {
            let (content, reasoning_content) = match c.message {
                Some(Obj(m)) => (m.content, m.reasoning_content),
                None => (None, None),
            };
            ReadChoice {
                content,
                reasoning_content,
                text: c.text,
                finish_reason: c.finish_reason,
            }
        });
    Read {
        choice,
        usage: wire.usage,
        model: wire.model,
    }
    .completion()
}

/// [`parse_completion`] for bodies off the common shape: every field read
/// leniently from the JSON tree (a field of the wrong type counts as absent).
fn parse_completion_value(body: &[u8]) -> Result<Completion, UpstreamError> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        UpstreamError::InvalidResponse(format!("Invalid response format: malformed JSON ({e})"))
    })?;
    let string = |v: Option<&serde_json::Value>| v.and_then(|s| s.as_str()).map(str::to_string);
    let choice = v
        .get("choices")
        .and_then(|c| c.as_array())
        .and_then(|c| c.first())
        .filter(|c| c.is_object())
        .map(|c| {
            let message = c.get("message");
            ReadChoice {
                content: string(message.and_then(|m| m.get("content"))),
                reasoning_content: string(message.and_then(|m| m.get("reasoning_content"))),
                text: string(c.get("text")),
                finish_reason: string(c.get("finish_reason")),
            }
        });
    Read {
        choice,
        usage: v
            .get("usage")
            .filter(|u| u.is_object())
            .and_then(|u| serde_json::from_value::<Usage>(u.clone()).ok()),
        model: string(v.get("model")),
    }
    .completion()
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
#[path = "ark_tests.rs"]
mod tests;
