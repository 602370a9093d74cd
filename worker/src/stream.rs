//! Server-Sent Events to the client (API.md §5.3): the frame formats, the
//! 15-second `: ping` heartbeat, exactly one final `complete` (or `error`)
//! frame, and cancellation of the upstream call when the client leaves.
//!
//! A spawned task pumps upstream deltas into a bounded channel that backs
//! the response body. It waits on three things at once: the next upstream
//! event, the heartbeat timer, and the channel closing (hyper drops the
//! body when the client disconnects). On the last, it drops the upstream
//! stream at once, which aborts the upstream HTTP request — so a client
//! that goes away stops costing tokens within milliseconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::provider::{EventStream, StreamEvent, Usage};
use crate::reasoning::Strategy;
use crate::response::{Body, BoxError};
use crate::state::AppState;
use crate::telemetry;

/// Frames buffered between the pump and the socket. Small: a slow client
/// should slow the pump (and so the upstream read), not grow memory.
const CHANNEL_FRAMES: usize = 16;

/// What the frames need to say besides the deltas.
pub struct Meta {
    pub provider: String,
    pub conversation_id: String,
    pub route: String,
    pub strategy: Strategy,
    pub show_reasoning: bool,
    /// Estimated prompt tokens, for a stream without upstream usage.
    pub prompt_estimate: u64,
    pub heartbeat: Duration,
    /// Legacy body: a finished turn invalidates the history cache.
    pub legacy: bool,
    pub started: Instant,
    /// `X-Cache`: `HIT`, `MISS` or `COALESCED`.
    pub x_cache: &'static str,
    pub format: Format,
}

/// The wire format of the events.
pub enum Format {
    /// API.md §5.3: `type` frames, one final `complete` frame.
    HearTalk,
    /// API.md §5.4: `chat.completion.chunk` events, then `data: [DONE]`.
    OpenAi(OpenAiStream),
}

/// What every OpenAI chunk repeats.
pub struct OpenAiStream {
    pub id: String,
    pub created: u64,
    pub model: String,
    /// `stream_options.include_usage`: a `choices:[]` usage chunk at the end.
    pub include_usage: bool,
}

impl OpenAiStream {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Bytes {
        frame(&json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }))
    }

    fn usage(&self, usage: &Value) -> Bytes {
        frame(&json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage,
        }))
    }
}

/// An OpenAI-shaped error object (`{"error":{message,type,param,code}}`).
pub fn openai_error(message: &str, kind: &str, code: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

impl Format {
    /// Frames sent before any delta.
    fn opening(&self) -> Option<Bytes> {
        match self {
            Format::HearTalk => None,
            Format::OpenAi(o) => Some(o.chunk(json!({"role": "assistant", "content": ""}), None)),
        }
    }

    fn content(&self, delta: &str, provider: &str) -> Bytes {
        match self {
            Format::HearTalk => content_frame(delta, provider),
            Format::OpenAi(o) => o.chunk(json!({"content": delta}), None),
        }
    }

    fn reasoning(&self, delta: &str) -> Bytes {
        match self {
            Format::HearTalk => reasoning_frame(delta),
            Format::OpenAi(o) => o.chunk(json!({"reasoning_content": delta}), None),
        }
    }

    fn error(&self, message: &str, code: &str) -> Bytes {
        match self {
            Format::HearTalk => error_frame(message, code),
            Format::OpenAi(_) => {
                let kind = if code == "UPSTREAM_RATE_LIMITED" {
                    "rate_limit_error"
                } else {
                    "api_error"
                };
                frame(&openai_error(message, kind, code))
            }
        }
    }

    fn complete(&self, meta: &Meta, usage: &Value, finish_reason: &str, endpoint: &str) -> Bytes {
        match self {
            Format::HearTalk => complete_frame(meta, usage, finish_reason, endpoint),
            Format::OpenAi(o) => {
                let mut out = o.chunk(json!({}), Some(finish_reason)).to_vec();
                if o.include_usage {
                    out.extend_from_slice(&o.usage(usage));
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                Bytes::from(out)
            }
        }
    }
}

/// `data: <compact JSON>\n\n`.
pub fn frame(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

pub const PING: &[u8] = b": ping\n\n";

/// The final frame of a stream cut by the drain deadline (a restart or
/// reload): the client should retry, and will reach a live worker.
pub const SHUTDOWN_MESSAGE: &str = "Service restarting; please retry";
pub const SHUTDOWN_CODE: &str = "SERVICE_UNAVAILABLE";

pub fn content_frame(delta: &str, provider: &str) -> Bytes {
    frame(&json!({"type": "content", "content": delta, "done": false, "provider": provider}))
}

pub fn reasoning_frame(delta: &str) -> Bytes {
    frame(&json!({"type": "reasoning", "reasoning": delta, "done": false}))
}

pub fn error_frame(message: &str, code: &str) -> Bytes {
    frame(&json!({"type": "error", "error": message, "code": code, "done": true}))
}

/// The one final frame of a successful stream.
pub fn complete_frame(meta: &Meta, usage: &Value, finish_reason: &str, endpoint: &str) -> Bytes {
    frame(&json!({
        "type": "complete",
        "done": true,
        "usage": usage,
        "finish_reason": finish_reason,
        "provider": meta.provider,
        "metadata": {
            "conversation_id": meta.conversation_id,
            "endpoint": endpoint,
            "route": meta.route,
            "reasoning": meta.strategy.label(),
            // A replay from the cache.
            "cached": meta.x_cache == "HIT",
        }
    }))
}

/// Usage from the upstream, or the §8 estimate marked `estimated:true`.
pub fn final_usage(
    upstream: Option<Usage>,
    prompt_estimate: u64,
    content: &str,
    reasoning: &str,
) -> Value {
    match upstream {
        Some(u) => serde_json::to_value(u).unwrap_or_else(|_| json!({})),
        None => {
            let completion = crate::tokens::estimate(content) + crate::tokens::estimate(reasoning);
            json!({
                "prompt_tokens": prompt_estimate,
                "completion_tokens": completion,
                "total_tokens": prompt_estimate + completion,
                "estimated": true,
            })
        }
    }
}

/// Starts the pump and returns the 200 `text/event-stream` response.
pub fn respond(
    state: Arc<AppState>,
    upstream: EventStream,
    meta: Meta,
    http1: bool,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_FRAMES);
    let x_cache = meta.x_cache;
    tokio::spawn(pump(state, upstream, meta, tx));
    let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
    }));
    let mut resp = Response::new(BodyExt::boxed(body));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    if http1 {
        // A connection-specific header: legal (and expected) on HTTP/1.1 only.
        h.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("keep-alive"),
        );
    }
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    h.insert("x-cache", HeaderValue::from_static(x_cache));
    resp
}

/// Why the pump stopped.
enum End {
    Completed,
    Failed,
    ClientGone,
    /// The drain deadline passed (restart or reload).
    Shutdown,
}

async fn pump(
    state: Arc<AppState>,
    mut upstream: EventStream,
    meta: Meta,
    tx: mpsc::Sender<Bytes>,
) {
    let mut content = String::new();
    let mut reasoning = String::new();
    let heartbeat = meta.heartbeat.max(Duration::from_millis(100));
    let mut shutdown = state.shutdown_signal();
    // Measured from our last *output*, not the upstream's: hidden reasoning
    // deltas arrive but write nothing, and proxies time out on silence.
    let mut ping_at = tokio::time::Instant::now() + heartbeat;
    if let Some(first) = meta.format.opening() {
        if !send(&tx, first).await {
            return;
        }
    }
    let end = loop {
        let next = tokio::select! {
            biased;
            () = tx.closed() => break End::ClientGone,
            _ = shutdown.wait_for(|now| *now) => break End::Shutdown,
            () = tokio::time::sleep_until(ping_at) => Err(()),
            item = upstream.next() => Ok(item),
        };
        let out = match next {
            // No output for a heartbeat interval: keep proxies from timing out.
            Err(()) => Bytes::from_static(PING),
            Ok(None) => {
                // The provider ends every good stream with Done; a bare end is an error.
                let _ = send(
                    &tx,
                    meta.format.error(
                        "Response processing error: stream ended unexpectedly",
                        "AI_PROVIDER_ERROR",
                    ),
                )
                .await;
                break End::Failed;
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "upstream stream failed after it started");
                let _ = send(&tx, meta.format.error(&e.to_string(), e.code())).await;
                break End::Failed;
            }
            Ok(Some(Ok(StreamEvent::Content(delta)))) => {
                content.push_str(&delta);
                meta.format.content(&delta, &meta.provider)
            }
            Ok(Some(Ok(StreamEvent::Reasoning(delta)))) => {
                reasoning.push_str(&delta);
                if !meta.show_reasoning {
                    continue;
                }
                meta.format.reasoning(&delta)
            }
            Ok(Some(Ok(StreamEvent::Done {
                finish_reason,
                usage,
                model,
            }))) => {
                // Tokens are counted where the upstream call is made (once per
                // call, not per coalesced listener or cache replay).
                let usage_value = final_usage(usage, meta.prompt_estimate, &content, &reasoning);
                let endpoint = model.as_deref().unwrap_or("unknown");
                let fin = meta.format.complete(
                    &meta,
                    &usage_value,
                    finish_reason.as_deref().unwrap_or("stop"),
                    endpoint,
                );
                if send(&tx, fin).await {
                    break End::Completed;
                }
                break End::ClientGone;
            }
        };
        ping_at = tokio::time::Instant::now() + heartbeat;
        if !send(&tx, out).await {
            break End::ClientGone;
        }
    };
    // Dropping the upstream stream here aborts the upstream request.
    drop(upstream);
    if matches!(end, End::Shutdown) {
        let _ = send(&tx, meta.format.error(SHUTDOWN_MESSAGE, SHUTDOWN_CODE)).await;
    }
    if meta.x_cache == "MISS" {
        telemetry::reasoning(meta.strategy.label(), meta.started.elapsed());
    }
    match end {
        End::Completed => {
            if meta.legacy {
                state.services.history.invalidate(&meta.conversation_id);
            }
        }
        End::ClientGone => {
            tracing::info!(conversation_id = %meta.conversation_id, "client left mid-stream; upstream cancelled")
        }
        End::Failed | End::Shutdown => {}
    }
}

/// Sends one frame unless the client has gone; false when it has.
async fn send(tx: &mpsc::Sender<Bytes>, frame: Bytes) -> bool {
    tokio::select! {
        biased;
        () = tx.closed() => false,
        r = tx.send(frame) => r.is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_compact_json_lines() {
        assert_eq!(
            content_frame("你好", "byteplus"),
            Bytes::from(
                "data: {\"type\":\"content\",\"content\":\"你好\",\"done\":false,\"provider\":\"byteplus\"}\n\n"
            )
        );
        assert_eq!(
            error_frame("Upstream timeout after 5 ms", "TIMEOUT_ERROR"),
            Bytes::from(
                "data: {\"type\":\"error\",\"error\":\"Upstream timeout after 5 ms\",\"code\":\"TIMEOUT_ERROR\",\"done\":true}\n\n"
            )
        );
    }

    #[test]
    fn usage_is_estimated_and_marked_without_upstream_usage() {
        let u = final_usage(None, 10, "hello world", "");
        assert_eq!(
            u,
            json!({"prompt_tokens":10,"completion_tokens":2,"total_tokens":12,"estimated":true})
        );
        let real = Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
            total_tokens: 3,
            ..Usage::default()
        };
        assert_eq!(
            final_usage(Some(real), 10, "x", ""),
            json!({"prompt_tokens":1,"completion_tokens":2,"total_tokens":3})
        );
    }
}
