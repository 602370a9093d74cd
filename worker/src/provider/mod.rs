//! Model providers behind one trait: what the chat pipeline asks of an
//! upstream model (a whole completion, or a stream of deltas) and the one
//! error type every failure maps to (API.md §10).
//!
//! Two implementations: [`ark`] speaks the OpenAI-compatible chat
//! completions API (BytePlus ModelArk, or any compatible server), and
//! [`simulated`] answers deterministically without a network, so the
//! service runs and benchmarks with no API key. Beside them: [`sse`]
//! (parsing an upstream's event stream), [`tokens`] (the token estimate and
//! count) and [`upstream_health`] (the recent outcomes `/health` reports).

pub mod ark;
pub mod simulated;
pub mod sse;
pub mod tokens;
pub mod upstream_health;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use http::StatusCode;
use serde::{Deserialize, Serialize};

/// One message of a conversation, as sent upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// Which configured upstream endpoint a call goes to (API.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    Chat,
    WorkAssistant,
}

impl EndpointKind {
    /// The metric label (`endpoint`).
    pub fn label(self) -> &'static str {
        match self {
            EndpointKind::Chat => "chat",
            EndpointKind::WorkAssistant => "work_assistant",
        }
    }
}

/// One upstream call, fully resolved: the provider adds only transport
/// concerns (URL, key, retries).
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub endpoint: EndpointKind,
    /// The endpoint id / model name sent as `model`.
    pub model: String,
    /// Shared, never copied: a fallback call sends the same messages to
    /// another endpoint ([`CompletionRequest::for_model`]).
    pub messages: Arc<[ChatMessage]>,
    pub temperature: f64,
    pub max_tokens: u32,
    /// 1 unless stated (translation uses 0.9).
    pub top_p: f64,
    /// Per-attempt timeout: the whole response for JSON calls; connect,
    /// first byte and every idle gap for streams.
    pub timeout: Duration,
}

impl CompletionRequest {
    /// This request for another `model` (a route's fallback endpoint): the
    /// messages shared with this one, the parameters copied.
    pub fn for_model(&self, model: String) -> CompletionRequest {
        CompletionRequest {
            model,
            messages: Arc::clone(&self.messages),
            ..*self
        }
    }
}

/// Token accounting as the upstream reported it. Extra fields the upstream
/// sends (e.g. `prompt_tokens_details`) are kept and passed through.
///
/// Read by hand (see the `Deserialize` impl below) rather than with
/// `#[serde(flatten)]`, which buffers the whole object before reading it:
/// this is read from every upstream answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// An object: the three counts (absent: 0; present: a whole number, or the
/// object is refused) and every other key kept in `extra`.
impl<'de> Deserialize<'de> for Usage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        enum Field {
            Prompt,
            Completion,
            Total,
            Other(String),
        }
        impl<'de> Deserialize<'de> for Field {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Names;
                impl serde::de::Visitor<'_> for Names {
                    type Value = Field;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a usage field name")
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Field, E> {
                        Ok(match v {
                            "prompt_tokens" => Field::Prompt,
                            "completion_tokens" => Field::Completion,
                            "total_tokens" => Field::Total,
                            other => Field::Other(other.to_owned()),
                        })
                    }
                }
                d.deserialize_identifier(Names)
            }
        }
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Usage;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a usage object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Usage, A::Error> {
                let mut u = Usage::default();
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Prompt => u.prompt_tokens = map.next_value()?,
                        Field::Completion => u.completion_tokens = map.next_value()?,
                        Field::Total => u.total_tokens = map.next_value()?,
                        Field::Other(k) => {
                            u.extra.insert(k, map.next_value()?);
                        }
                    }
                }
                Ok(u)
            }
        }
        d.deserialize_map(Fields)
    }
}

impl Usage {
    /// Adds `other` into `self` (Self-Consistency sums all samples, §7).
    /// Numeric extra fields are added too; nested objects are added
    /// field by field; anything else keeps the first value seen.
    pub fn add(&mut self, other: &Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        for (k, v) in &other.extra {
            match self.extra.get_mut(k) {
                Some(mine) => add_json(mine, v),
                None => {
                    self.extra.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

fn add_json(mine: &mut serde_json::Value, other: &serde_json::Value) {
    use serde_json::Value;
    match (mine, other) {
        (Value::Number(a), Value::Number(b)) => {
            if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
                *a = (x + y).into();
            } else if let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) {
                if let Some(n) = serde_json::Number::from_f64(x + y) {
                    *a = n;
                }
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(m) => add_json(m, v),
                    None => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        _ => {}
    }
}

/// A whole (non-streamed) completion.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    pub content: String,
    pub reasoning_content: Option<String>,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    /// The top-level `model` of the upstream body.
    pub model: Option<String>,
}

/// One item of a streamed completion.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A non-empty `delta.content`.
    Content(String),
    /// A non-empty `delta.reasoning_content`.
    Reasoning(String),
    /// The stream ended well (`[DONE]`, or EOF after a `finish_reason`).
    /// Always the last item of a successful stream.
    Done {
        finish_reason: Option<String>,
        usage: Option<Usage>,
        model: Option<String>,
    },
}

/// Every way an upstream call can fail (API.md §10.3).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpstreamError {
    /// A non-2xx answer. `code` is the provider's `error.code`.
    #[error("HTTP {status}: {message}")]
    Http {
        status: u16,
        code: Option<String>,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("Upstream timeout after {ms} ms")]
    Timeout { ms: u64 },
    #[error("Network error: {kind} - {detail}")]
    Network { kind: String, detail: String },
    /// A 2xx body we could not use (no choices, bad JSON, stream cut off).
    #[error("Response processing error: {0}")]
    InvalidResponse(String),
    #[error("Empty completion from provider")]
    Empty,
    /// The client went away; nothing is answered.
    #[error("request cancelled")]
    Cancelled,
    /// The endpoint's circuit breaker is open: failed without a call.
    #[error("Circuit open for endpoint {endpoint}: failing fast after repeated upstream failures")]
    CircuitOpen {
        endpoint: String,
        retry_after: Duration,
    },
}

impl UpstreamError {
    /// Whether a retry may help (§10.1, §10.3): network errors before any
    /// response, 5xx, and 429s other than quota / spending caps.
    /// Timeouts are never retried.
    pub fn retryable(&self) -> bool {
        match self {
            UpstreamError::Http { status, code, .. } => {
                *status >= 500 || (*status == 429 && !is_quota(code.as_deref()))
            }
            UpstreamError::Network { .. } => true,
            _ => false,
        }
    }

    /// The HTTP status we answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Http { status: 429, .. } => StatusCode::TOO_MANY_REQUESTS,
            UpstreamError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// The `code` of our error body.
    pub fn code(&self) -> &'static str {
        match self {
            UpstreamError::Http { status: 429, .. } => "UPSTREAM_RATE_LIMITED",
            UpstreamError::Timeout { .. } => "TIMEOUT_ERROR",
            _ => "AI_PROVIDER_ERROR",
        }
    }

    /// The `outcome` label of `ai_upstream_requests_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            UpstreamError::Http {
                status: 429, code, ..
            } if is_quota(code.as_deref()) => "quota",
            UpstreamError::Http { status: 429, .. } => "rate_limited",
            UpstreamError::Http { status, .. } if *status >= 500 => "http_5xx",
            UpstreamError::Http { .. } => "http_4xx",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Network { .. } => "network",
            UpstreamError::InvalidResponse(_) | UpstreamError::Empty => "invalid_response",
            UpstreamError::Cancelled => "cancelled",
            UpstreamError::CircuitOpen { .. } => "circuit_open",
        }
    }

    /// `upstream:{status, code}` for E1 bodies, when known.
    pub fn upstream_info(&self) -> Option<serde_json::Value> {
        match self {
            UpstreamError::Http { status, code, .. } => {
                Some(serde_json::json!({"status": status, "code": code}))
            }
            _ => None,
        }
    }

    /// How long to wait before trying again: the upstream's `Retry-After`
    /// (a 429's `retryAfter`), or the time left on an open circuit.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            UpstreamError::Http { retry_after, .. } => *retry_after,
            UpstreamError::CircuitOpen { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl UpstreamError {
    /// Whether the failure says the *endpoint* is in trouble (the circuit
    /// breaker counts it, and the route's fallback endpoint may help):
    /// retryable failures, timeouts, unusable bodies, an unknown model.
    /// Not client-side errors (400s), credentials, or quota, which another
    /// call to the same account would hit the same way.
    pub fn endpoint_trouble(&self) -> bool {
        match self {
            UpstreamError::Http { status: 404, .. } => true,
            UpstreamError::Timeout { .. }
            | UpstreamError::InvalidResponse(_)
            | UpstreamError::Empty
            | UpstreamError::CircuitOpen { .. } => true,
            e => e.retryable(),
        }
    }
}

/// Ark quota and spending-cap codes fail fast (§10.3's fallback rule).
pub fn is_quota(code: Option<&str>) -> bool {
    code.is_some_and(|c| c.contains("Quota") || c.contains("SetLimit"))
}

/// A stream of deltas; dropping it cancels the upstream request.
pub type EventStream = BoxStream<'static, Result<StreamEvent, UpstreamError>>;

/// `stream`, calling `on_end` exactly once with how it ended: `Ok(())` after
/// [`StreamEvent::Done`], the error after an error, and
/// [`UpstreamError::Cancelled`] when it is dropped before either. The layers
/// around a provider (metrics, circuit breakers) learn a stream's outcome
/// through this one mechanism.
///
/// A plain struct rather than a `scan` combinator, which would keep a slot
/// for one item (and its future) besides the outcome: each layer wraps every
/// open stream for its whole life.
pub fn on_end<F>(stream: EventStream, on_end: F) -> EventStream
where
    F: FnOnce(Result<(), &UpstreamError>) + Send + 'static,
{
    Box::pin(OnEnd {
        inner: stream,
        outcome: None,
        on_end: Some(on_end),
    })
}

/// See [`on_end`].
struct OnEnd<F: FnOnce(Result<(), &UpstreamError>)> {
    inner: EventStream,
    outcome: Option<Result<(), UpstreamError>>,
    on_end: Option<F>,
}

/// `F` is only ever moved out and called, never pinned.
impl<F: FnOnce(Result<(), &UpstreamError>)> Unpin for OnEnd<F> {}

impl<F: FnOnce(Result<(), &UpstreamError>)> futures_util::Stream for OnEnd<F> {
    type Item = Result<StreamEvent, UpstreamError>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = std::task::ready!(this.inner.as_mut().poll_next(cx));
        match &item {
            Some(Ok(StreamEvent::Done { .. })) => this.outcome = Some(Ok(())),
            Some(Err(e)) => this.outcome = Some(Err(e.clone())),
            _ => {}
        }
        std::task::Poll::Ready(item)
    }
}

impl<F: FnOnce(Result<(), &UpstreamError>)> Drop for OnEnd<F> {
    fn drop(&mut self) {
        // The wrapped stream goes first (aborting the upstream request, and
        // reporting to the layers inside this one), then this layer reports.
        // An empty stream is zero-sized: boxing it does not allocate.
        drop(std::mem::replace(
            &mut self.inner,
            Box::pin(futures_util::stream::empty()),
        ));
        if let Some(f) = self.on_end.take() {
            match self.outcome.take() {
                Some(Ok(())) => f(Ok(())),
                Some(Err(e)) => f(Err(&e)),
                None => f(Err(&UpstreamError::Cancelled)),
            }
        }
    }
}

/// What the pipeline needs from a model provider.
pub trait Provider: Send + Sync {
    /// The `provider` label in bodies and metrics (`AI_PROVIDER_NAME`, or
    /// `"simulated"`).
    fn name(&self) -> &str;

    /// True for the simulated provider (health and /providers say so).
    fn is_simulated(&self) -> bool;

    /// One whole completion, retried as §10.1 allows.
    fn complete(
        &self,
        req: CompletionRequest,
    ) -> BoxFuture<'static, Result<Completion, UpstreamError>>;

    /// Starts a streamed completion. The future resolves once the upstream
    /// has answered 2xx (so earlier failures are ordinary JSON errors, and
    /// are retried as §10.1 allows); the stream then yields deltas and ends
    /// with [`StreamEvent::Done`] or an error.
    fn stream(
        &self,
        req: CompletionRequest,
    ) -> BoxFuture<'static, Result<EventStream, UpstreamError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_with_its_extra_fields() {
        let text = r#"{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8,"prompt_tokens_details":{"cached_tokens":2},"note":"x"}"#;
        let u: Usage = serde_json::from_str(text).unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (5, 3, 8)
        );
        assert_eq!(u.extra["prompt_tokens_details"]["cached_tokens"], 2);
        assert_eq!(u.extra["note"], "x");
        // From a JSON tree, the same; written back, the same document.
        let tree: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::from_value::<Usage>(tree.clone()).unwrap(), u);
        assert_eq!(serde_json::to_value(&u).unwrap(), tree);
        // Absent counts are 0; a count of another type refuses the object.
        let u: Usage = serde_json::from_str(r#"{"total_tokens":1}"#).unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (0, 0, 1)
        );
        for bad in [
            r#"{"prompt_tokens":"5"}"#,
            r#"{"prompt_tokens":-1}"#,
            r#"{"total_tokens":null}"#,
            r#"[1,2,3]"#,
            r#"7"#,
        ] {
            assert!(serde_json::from_str::<Usage>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_fallback_request_shares_the_messages() {
        let req = CompletionRequest {
            endpoint: EndpointKind::Chat,
            model: "ep-chat".into(),
            messages: vec![ChatMessage::new("user", "你好")].into(),
            temperature: 0.3,
            max_tokens: 7,
            top_p: 0.9,
            timeout: Duration::from_secs(2),
        };
        let other = req.for_model("ep-fallback".into());
        assert!(Arc::ptr_eq(&req.messages, &other.messages));
        assert_eq!(
            other,
            CompletionRequest {
                model: "ep-fallback".into(),
                ..req.clone()
            }
        );
    }

    #[test]
    fn error_mapping_follows_the_contract() {
        let quota = UpstreamError::Http {
            status: 429,
            code: Some("QuotaExceeded".into()),
            message: "quota".into(),
            retry_after: None,
        };
        assert!(!quota.retryable());
        assert_eq!(quota.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(quota.code(), "UPSTREAM_RATE_LIMITED");
        assert_eq!(quota.outcome(), "quota");
        let rpm = UpstreamError::Http {
            status: 429,
            code: Some("RateLimitExceeded.EndpointRPMExceeded".into()),
            message: "slow down".into(),
            retry_after: None,
        };
        assert!(rpm.retryable());
        let e503 = UpstreamError::Http {
            status: 503,
            code: None,
            message: "down".into(),
            retry_after: None,
        };
        assert!(e503.retryable());
        assert_eq!(e503.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(e503.to_string(), "HTTP 503: down");
        let auth = UpstreamError::Http {
            status: 401,
            code: Some("AuthenticationError".into()),
            message: "bad key".into(),
            retry_after: None,
        };
        assert!(!auth.retryable());
        assert_eq!(auth.code(), "AI_PROVIDER_ERROR");
        let t = UpstreamError::Timeout { ms: 30000 };
        assert!(!t.retryable());
        assert_eq!(t.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(t.to_string(), "Upstream timeout after 30000 ms");
        assert!(
            UpstreamError::Network {
                kind: "connect".into(),
                detail: "refused".into()
            }
            .retryable()
        );
    }

    #[test]
    fn on_end_reports_once_how_a_stream_ended() {
        use futures_util::StreamExt;
        use std::sync::{Arc, Mutex};
        let run = |items: Vec<Result<StreamEvent, UpstreamError>>, take: usize| {
            let seen: Arc<Mutex<Vec<String>>> = Arc::default();
            let s = seen.clone();
            let stream = on_end(futures_util::stream::iter(items).boxed(), move |r| {
                s.lock().unwrap().push(match r {
                    Ok(()) => "ok".into(),
                    Err(e) => e.outcome().into(),
                })
            });
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(stream.take(take).collect::<Vec<_>>());
            seen.lock().unwrap().clone()
        };
        let done = || {
            Ok(StreamEvent::Done {
                finish_reason: None,
                usage: None,
                model: None,
            })
        };
        let delta = || Ok(StreamEvent::Content("x".into()));
        assert_eq!(run(vec![delta(), done()], 9), ["ok"]);
        assert_eq!(
            run(vec![delta(), Err(UpstreamError::Timeout { ms: 1 })], 9),
            ["timeout"]
        );
        assert_eq!(
            run(vec![delta(), done()], 1),
            ["cancelled"],
            "dropped early"
        );
    }

    #[test]
    fn usage_sums_known_and_extra_fields() {
        let mut a: Usage = serde_json::from_str(
            r#"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"completion_tokens_details":{"reasoning_tokens":2}}"#,
        )
        .unwrap();
        let b: Usage = serde_json::from_str(
            r#"{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"completion_tokens_details":{"reasoning_tokens":4}}"#,
        )
        .unwrap();
        a.add(&b);
        assert_eq!(
            (a.prompt_tokens, a.completion_tokens, a.total_tokens),
            (11, 7, 18)
        );
        assert_eq!(a.extra["completion_tokens_details"]["reasoning_tokens"], 6);
        let missing: Usage = serde_json::from_str("{}").unwrap();
        assert_eq!(missing.total_tokens, 0);
    }
}
