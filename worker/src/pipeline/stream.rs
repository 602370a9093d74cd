//! Server-Sent Events to the client (API.md §5.3): the frame formats, the
//! 15-second `: ping` heartbeat, exactly one final `complete` (or `error`)
//! frame, and cancellation of the upstream call when the client leaves.
//!
//! The response body ([`SseBody`]) polls the upstream stream itself: there
//! is no pump task and no channel between them. An open stream spends most
//! of its life waiting for the next upstream chunk, and a worker holds
//! thousands of them, so what one holds while it waits is what a streaming
//! deployment is sized by (docs/benchmarks.md, "Where a stream's memory
//! goes"). Each poll waits on three things at once: the drain deadline,
//! the heartbeat timer, and the next upstream event. The server drops the
//! body when the client disconnects, which drops the upstream stream at
//! once and so aborts the upstream HTTP request — a client that goes away
//! stops costing tokens within milliseconds.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Frame;
use serde::Serialize;

use crate::pipeline::context::Pipeline;
use crate::pipeline::reasoning::Strategy;
use crate::pipeline::response::{Body, BoxError, ErrorFormat, openai_error};
use crate::provider::{EventStream, StreamEvent, UpstreamError, Usage};
use crate::telemetry;

/// What the frames need to say besides the deltas (the provider's name is
/// read from the context, not copied into every stream).
pub struct Meta {
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
    /// The events are this request's own upstream call, with no flight
    /// between (see [`crate::pipeline::chat::open_stream`]): the stream counts the
    /// call's tokens when its `Done` passes. Elsewhere the flight's call
    /// counts them (once per call, not per listener or replay).
    pub own_call: bool,
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

/// One `chat.completion.chunk` (API.md §5.4), fields in OpenAI's order.
/// `C` is the `choices` array: one [`Choice`] for a delta or the finish,
/// none (`[]`) for the usage chunk, which alone carries `usage`.
#[derive(Serialize)]
struct Chunk<'a, C> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: C,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'a FinalUsage>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    delta: Delta<'a>,
    /// `null` until the last chunk.
    finish_reason: Option<&'a str>,
}

/// A chunk's `delta`: only the keys given, in this order (`{}` on the
/// finishing chunk).
#[derive(Default, Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
}

impl OpenAiStream {
    fn chunk(&self, delta: Delta<'_>, finish_reason: Option<&str>) -> Bytes {
        let choice = Choice {
            index: 0,
            delta,
            finish_reason,
        };
        self.frame([choice], None)
    }

    fn usage(&self, usage: &FinalUsage) -> Bytes {
        self.frame([(); 0], Some(usage))
    }

    /// A chunk of this stream with `choices` (and `usage`).
    fn frame<C: Serialize>(&self, choices: C, usage: Option<&FinalUsage>) -> Bytes {
        frame(&Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage,
        })
    }
}

impl Format {
    /// The error format of a request whose stream did not open (its
    /// upstream failed before answering 2xx): a JSON error in the API's
    /// own shape.
    pub fn error_format(&self) -> ErrorFormat {
        match self {
            Format::HearTalk => ErrorFormat::HearTalk,
            Format::OpenAi(_) => ErrorFormat::OpenAi,
        }
    }

    /// Frames sent before any delta.
    fn opening(&self) -> Option<Bytes> {
        match self {
            Format::HearTalk => None,
            Format::OpenAi(o) => Some(o.chunk(
                Delta {
                    role: Some("assistant"),
                    content: Some(""),
                    ..Delta::default()
                },
                None,
            )),
        }
    }

    fn content(&self, delta: &str, provider: &str) -> Bytes {
        match self {
            Format::HearTalk => content_frame(delta, provider),
            Format::OpenAi(o) => o.chunk(
                Delta {
                    content: Some(delta),
                    ..Delta::default()
                },
                None,
            ),
        }
    }

    fn reasoning(&self, delta: &str) -> Bytes {
        match self {
            Format::HearTalk => reasoning_frame(delta),
            Format::OpenAi(o) => o.chunk(
                Delta {
                    reasoning_content: Some(delta),
                    ..Delta::default()
                },
                None,
            ),
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

    fn complete(
        &self,
        meta: &Meta,
        provider: &str,
        usage: &FinalUsage,
        finish_reason: &str,
        endpoint: &str,
    ) -> Bytes {
        match self {
            Format::HearTalk => complete_frame(meta, provider, usage, finish_reason, endpoint),
            Format::OpenAi(o) => {
                let mut out = o.chunk(Delta::default(), Some(finish_reason)).to_vec();
                if o.include_usage {
                    out.extend_from_slice(&o.usage(usage));
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                Bytes::from(out)
            }
        }
    }
}

/// `data: <compact JSON>\n\n`: `v` serialised straight into the frame's
/// one buffer, with no `serde_json::Value` tree between (this runs for
/// every delta). The buffer is the frame's own, not one kept by the
/// stream: an open stream waits far longer than it writes, and a kept
/// buffer would be held by every waiting stream.
pub fn frame<T: Serialize + ?Sized>(v: &T) -> Bytes {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"data: ");
    // Writing into a `Vec` cannot fail, and every frame is plain data
    // (strings, numbers, maps with string keys), which always serialises.
    if serde_json::to_writer(&mut out, v).is_err() {
        out.truncate(b"data: ".len());
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

pub const PING: &[u8] = b": ping\n\n";

/// The final frame of a stream cut by the drain deadline (a restart or
/// reload): the client should retry, and will reach a live worker.
pub const SHUTDOWN_MESSAGE: &str = "Service restarting; please retry";
pub const SHUTDOWN_CODE: &str = "SERVICE_UNAVAILABLE";

// HearTalk's frames (API.md §5.3), each its own struct: the keys in the
// contract's order, `type` first.

pub fn content_frame(delta: &str, provider: &str) -> Bytes {
    #[derive(Serialize)]
    struct Content<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        content: &'a str,
        done: bool,
        provider: &'a str,
    }
    frame(&Content {
        kind: "content",
        content: delta,
        done: false,
        provider,
    })
}

pub fn reasoning_frame(delta: &str) -> Bytes {
    #[derive(Serialize)]
    struct Reasoning<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        reasoning: &'a str,
        done: bool,
    }
    frame(&Reasoning {
        kind: "reasoning",
        reasoning: delta,
        done: false,
    })
}

pub fn error_frame(message: &str, code: &str) -> Bytes {
    #[derive(Serialize)]
    struct Error<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        error: &'a str,
        code: &'a str,
        done: bool,
    }
    frame(&Error {
        kind: "error",
        error: message,
        code,
        done: true,
    })
}

/// The `complete` frame, keys in the order of §5.3.
#[derive(Serialize)]
struct Complete<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    done: bool,
    usage: &'a FinalUsage,
    finish_reason: &'a str,
    provider: &'a str,
    metadata: CompleteMetadata<'a>,
}

#[derive(Serialize)]
struct CompleteMetadata<'a> {
    conversation_id: &'a str,
    endpoint: &'a str,
    route: &'a str,
    reasoning: &'static str,
    /// A replay from the cache.
    cached: bool,
}

/// The one final frame of a successful stream.
pub fn complete_frame(
    meta: &Meta,
    provider: &str,
    usage: &FinalUsage,
    finish_reason: &str,
    endpoint: &str,
) -> Bytes {
    frame(&Complete {
        kind: "complete",
        done: true,
        usage,
        finish_reason,
        provider,
        metadata: CompleteMetadata {
            conversation_id: &meta.conversation_id,
            endpoint,
            route: &meta.route,
            reasoning: meta.strategy.label(),
            cached: meta.x_cache == "HIT",
        },
    })
}

/// A stream's final usage: the upstream's, or the §8 estimate, which is
/// marked `estimated:true`. Serialised as it stands (no JSON tree).
pub enum FinalUsage {
    Upstream(Usage),
    Estimated { prompt: u64, completion: u64 },
}

impl FinalUsage {
    /// The upstream's usage, else the estimate; `completion` is the
    /// estimate of the content plus that of the reasoning (each estimated
    /// on its own, see [`crate::provider::tokens::Estimator`]).
    pub fn new(upstream: Option<Usage>, prompt_estimate: u64, completion: u64) -> FinalUsage {
        match upstream {
            Some(u) => FinalUsage::Upstream(u),
            None => FinalUsage::Estimated {
                prompt: prompt_estimate,
                completion,
            },
        }
    }
}

impl Serialize for FinalUsage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Estimate {
            prompt_tokens: u64,
            completion_tokens: u64,
            total_tokens: u64,
            estimated: bool,
        }
        match self {
            FinalUsage::Upstream(u) => u.serialize(s),
            FinalUsage::Estimated { prompt, completion } => Estimate {
                prompt_tokens: *prompt,
                completion_tokens: *completion,
                total_tokens: prompt + completion,
                estimated: true,
            }
            .serialize(s),
        }
    }
}

/// The 200 `text/event-stream` response whose body is `upstream` turned
/// into frames (see [`SseBody`]).
pub fn respond(
    ctx: Arc<Pipeline>,
    upstream: EventStream,
    meta: Meta,
    http1: bool,
) -> Response<Body> {
    let x_cache = meta.x_cache;
    let mut resp = Response::new(BodyExt::boxed(SseBody::new(ctx, upstream, meta)));
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

/// Why a stream stopped.
enum End {
    Completed,
    Failed,
    ClientGone,
    /// The drain deadline passed (restart or reload).
    Shutdown,
}

/// The response body of a stream: each poll for the next frame waits on
/// the drain deadline, the heartbeat timer and the upstream, in that
/// order, and answers with the first frame any of them makes.
///
/// The body *is* the stream: no task, no channel. An open stream waiting
/// for its next upstream chunk holds this struct, two small timers and the
/// upstream stream, nothing else (the [`crate::pipeline::stream`] module doc says
/// why that matters). Upstream reads follow the client's pace: the server
/// asks for the next frame only when it has room to write it, so a slow
/// client slows the upstream read instead of growing memory.
///
/// Dropped before its end (the client went away), it drops the upstream
/// stream at once, which aborts the upstream request.
pub struct SseBody {
    /// Behind a mutex only because the boxed response body must be `Sync`
    /// and the upstream stream is `Send` only. It is never locked:
    /// `poll_frame` has `&mut self` and reaches it with `get_mut`.
    pump: Mutex<Pump>,
}

/// The state of an open stream (see [`SseBody`]).
struct Pump {
    ctx: Arc<Pipeline>,
    /// `None` once the stream has ended (dropping it aborts the upstream
    /// request).
    upstream: Option<EventStream>,
    meta: Meta,
    /// A frame to send before anything is polled (the opening chunk).
    queued: Option<Bytes>,
    /// Fires after a heartbeat interval without output. Measured from our
    /// last *output*, not the upstream's: hidden reasoning deltas arrive
    /// but write nothing, and proxies time out on silence. Boxed because a
    /// `Sleep` must stay pinned, and reset (not made anew) after each frame.
    ping: Pin<Box<tokio::time::Sleep>>,
    /// Resolves when the drain deadline passes. It owns the stream's
    /// subscription to the deadline, so [`Pipeline::finish_streams`]
    /// counts this stream until it ends. `None` once ended.
    shutdown: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
    /// Estimated tokens of the content and reasoning so far, for a final
    /// usage without the upstream's (§8); the text itself is not kept.
    content: crate::provider::tokens::Estimator,
    reasoning: crate::provider::tokens::Estimator,
}

impl SseBody {
    fn new(ctx: Arc<Pipeline>, upstream: EventStream, mut meta: Meta) -> SseBody {
        meta.heartbeat = meta.heartbeat.max(Duration::from_millis(100));
        let mut rx = ctx.shutdown_signal();
        let shutdown: Pin<Box<dyn Future<Output = ()> + Send + Sync>> = Box::pin(async move {
            // An error (the sender gone) cannot happen while this stream
            // holds the context that owns the sender; it would mean the same.
            let _ = rx.wait_for(|now| *now).await;
        });
        SseBody {
            pump: Mutex::new(Pump {
                ctx,
                upstream: Some(upstream),
                queued: meta.format.opening(),
                ping: Box::pin(tokio::time::sleep(meta.heartbeat)),
                meta,
                shutdown: Some(shutdown),
                content: crate::provider::tokens::Estimator::default(),
                reasoning: crate::provider::tokens::Estimator::default(),
            }),
        }
    }
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let pump = self
            .get_mut()
            .pump
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pump.poll_next(cx).map(|f| f.map(|b| Ok(Frame::data(b))))
    }
}

impl Pump {
    /// The next frame; `None` after the last.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Some(first) = self.queued.take() {
            return Poll::Ready(Some(first));
        }
        loop {
            let Some(upstream) = self.upstream.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(shutdown) = self.shutdown.as_mut() {
                if shutdown.as_mut().poll(cx).is_ready() {
                    let frame = self.meta.format.error(SHUTDOWN_MESSAGE, SHUTDOWN_CODE);
                    self.end(End::Shutdown);
                    return Poll::Ready(Some(frame));
                }
            }
            if self.ping.as_mut().poll(cx).is_ready() {
                // No output for a heartbeat interval: keep proxies from timing out.
                self.sent();
                return Poll::Ready(Some(Bytes::from_static(PING)));
            }
            // A panic in the upstream stream ends this stream with an
            // error frame, as a panic in a shared call ends its flight.
            let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                upstream.poll_next_unpin(cx)
            }))
            .unwrap_or_else(|_| Poll::Ready(Some(Err(crate::cache::panicked()))));
            let Poll::Ready(item) = polled else {
                return Poll::Pending;
            };
            // The provider ends every good stream with Done; a bare end is an error.
            let item = item.unwrap_or_else(|| {
                Err(UpstreamError::InvalidResponse(
                    "stream ended unexpectedly".to_string(),
                ))
            });
            let frame = match item {
                Err(e) => {
                    tracing::warn!(error = %e, "upstream stream failed after it started");
                    let frame = self.meta.format.error(&e.to_string(), e.code());
                    self.end(End::Failed);
                    return Poll::Ready(Some(frame));
                }
                Ok(StreamEvent::Content(delta)) => {
                    self.content.push(&delta);
                    let provider = self.ctx.services.provider.name();
                    self.meta.format.content(&delta, provider)
                }
                Ok(StreamEvent::Reasoning(delta)) => {
                    self.reasoning.push(&delta);
                    if !self.meta.show_reasoning {
                        continue;
                    }
                    self.meta.format.reasoning(&delta)
                }
                Ok(StreamEvent::Done {
                    finish_reason,
                    usage,
                    model,
                }) => {
                    if self.meta.own_call {
                        // Counted once per upstream call: here only when this
                        // stream is the call (no flight shares it).
                        crate::provider::tokens::count(usage.as_ref());
                    }
                    let completion = self.content.total() + self.reasoning.total();
                    let usage = FinalUsage::new(usage, self.meta.prompt_estimate, completion);
                    let endpoint = model.as_deref().unwrap_or("unknown");
                    let provider = self.ctx.services.provider.name();
                    let frame = self.meta.format.complete(
                        &self.meta,
                        provider,
                        &usage,
                        finish_reason.as_deref().unwrap_or("stop"),
                        endpoint,
                    );
                    self.end(End::Completed);
                    return Poll::Ready(Some(frame));
                }
            };
            self.sent();
            return Poll::Ready(Some(frame));
        }
    }

    /// A frame goes out now: the next ping is a heartbeat interval away.
    fn sent(&mut self) {
        let at = tokio::time::Instant::now() + self.meta.heartbeat;
        self.ping.as_mut().reset(at);
    }

    /// The stream is over: the upstream request is dropped (aborted if
    /// still open), the deadline subscription released, and the end
    /// recorded. The frame that says how it ended, if any, is the caller's.
    fn end(&mut self, end: End) {
        self.upstream = None;
        self.shutdown = None;
        let meta = &self.meta;
        if meta.x_cache == "MISS" {
            telemetry::reasoning(meta.strategy.label(), meta.started.elapsed());
        }
        match end {
            End::Completed => {
                if meta.legacy {
                    self.ctx.services.history.invalidate(&meta.conversation_id);
                }
            }
            End::ClientGone => {
                tracing::info!(conversation_id = %meta.conversation_id, "client left mid-stream; upstream cancelled")
            }
            End::Failed | End::Shutdown => {}
        }
    }
}

/// The server drops the body when the client goes away (or the connection
/// fails): a stream not yet over ends here, and its upstream request with it.
impl Drop for Pump {
    fn drop(&mut self) {
        if self.upstream.is_some() {
            self.end(End::ClientGone);
        }
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
