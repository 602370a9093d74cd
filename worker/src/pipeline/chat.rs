//! The chat pipeline behind `/api/v1/chat/generate` and
//! `/api/v1/chat/stream` (API.md §5.2, §5.3): context → route → strategy →
//! provider → respond.
//!
//! Both endpoints share [`prepare`] (validation already done by the
//! caller): history or client messages, one routing decision on the raw
//! latest user message, the strategy, and the upstream message list with
//! the latest user turn replaced by its wrapped form (sent once, §13 d).
//!
//! The OpenAI-compatible API (`crate::pipeline::openai`) runs on the same
//! two paths: [`answer`] for a whole answer and [`stream_prepared`] for a
//! stream, which differs between the APIs only in its frame format.

use std::sync::Arc;
use std::time::Instant;

use http::{Response, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};

use futures_util::StreamExt;

use crate::cache::{self, Begin, Policy};
use crate::pipeline::context::Pipeline;
use crate::pipeline::history::Outcome;
use crate::pipeline::reasoning::{self, Plan, Strategy, Switches};
use crate::pipeline::response::{self, Body};
use crate::pipeline::routing::{self, Decision};
use crate::pipeline::stream::Format;
use crate::pipeline::validate::{ChatInput, Shape};
use crate::provider::{ChatMessage, CompletionRequest, EventStream, StreamEvent, UpstreamError};
use crate::telemetry;

/// Everything decided before the first upstream byte.
pub struct Prepared {
    pub input: ChatInput,
    /// History (legacy) or the client messages before the latest user turn.
    pub context: Vec<ChatMessage>,
    pub decision: Decision,
    pub plan: Plan,
}

impl Prepared {
    /// The first (for SC: sample 0's) upstream request of the plan: the
    /// latest user turn wrapped for the strategy, in its context.
    pub fn first_request(&self) -> CompletionRequest {
        self.plan
            .first_request(&self.input.message, |turn| self.build(turn))
    }

    /// The upstream message list for a given (wrapped) user turn.
    pub fn build(&self, user_turn: String) -> Vec<ChatMessage> {
        match self.input.shape {
            Shape::Legacy => {
                let mut m = self.context.clone();
                m.push(ChatMessage::new("user", user_turn));
                m
            }
            Shape::OpenAi => {
                let mut m = self.input.messages.clone();
                if let Some(i) = self.input.latest_user {
                    m[i].content = user_turn;
                }
                m
            }
        }
    }
}

/// Context, routing and strategy for a validated request.
pub async fn prepare(ctx: &Pipeline, input: ChatInput, streaming: bool) -> Prepared {
    let svc = &ctx.services;
    let context: Vec<ChatMessage> = match input.shape {
        Shape::Legacy => {
            let (messages, outcome) = svc
                .history
                .fetch(&input.conversation_id, input.history_length)
                .await;
            match outcome {
                Outcome::Cached => telemetry::cache_lookup("history", "hit"),
                other => {
                    telemetry::cache_lookup("history", "miss");
                    telemetry::history(other.label());
                }
            }
            messages
        }
        Shape::OpenAi => match input.latest_user {
            Some(i) => input.messages[..i].to_vec(),
            None => input.messages.clone(),
        },
    };
    let context_text: Vec<String> = context.iter().map(|m| m.content.clone()).collect();
    let key = routing::cache_key(&input.message, &input.options_json, &context_text);
    let now = Instant::now();
    let decision = match svc.decisions.get(&key, now) {
        Some(d) => {
            telemetry::cache_lookup("route", "hit");
            d
        }
        None => {
            telemetry::cache_lookup("route", "miss");
            let d = svc.router.select(&input.message, &context_text);
            svc.decisions.insert(key, d.clone(), now);
            d
        }
    };
    telemetry::route_decision(&decision.route);

    let endpoint = input
        .endpoint_override
        .unwrap_or_else(|| decision.endpoint());
    let (model, timeout) = svc.endpoint(&ctx.settings, endpoint);
    let r = &ctx.settings.reasoning;
    let switches = Switches {
        chain_of_thought: r.chain_of_thought,
        self_consistency: r.self_consistency,
        samples: r.samples,
        show_reasoning: r.show_reasoning_process,
    };
    let complex = decision.is_complex_route() || routing::is_complex(&input.message);
    let strategy = reasoning::choose(complex, streaming, &switches);
    tracing::debug!(
        route = %decision.route,
        confidence = decision.confidence,
        reason = decision.reason,
        endpoint = endpoint.label(),
        strategy = strategy.label(),
        "routed"
    );
    let plan = Plan {
        strategy,
        endpoint,
        model,
        timeout,
        temperature: input.temperature,
        max_tokens: input.max_tokens,
        switches,
    };
    Prepared {
        input,
        context,
        decision,
        plan,
    }
}

/// The response-cache key of a prepared request (§9): its first upstream
/// request (sample 0's for SC), the strategy and sample count, and
/// `SHOW_REASONING_PROCESS`.
pub fn cache_key(ctx: &Pipeline, prepared: &Prepared, first: &CompletionRequest) -> cache::Key {
    let plan = &prepared.plan;
    let samples = match plan.strategy {
        Strategy::SelfConsistency => reasoning::sample_count(&plan.switches),
        _ => 0,
    };
    cache::key::key(&cache::KeyParts::for_request(
        "chat",
        ctx.services.provider.name(),
        first,
        plan.strategy.label(),
        samples,
        plan.switches.show_reasoning,
    ))
}

/// Runs the whole (non-streamed) pipeline for a leader: the entry to share
/// and store. `first` is the plan's first upstream request, the one the
/// cache key was made from; the call sends it as it is. Counts reasoning
/// time and tokens once per upstream answer.
fn generate_work(
    ctx: &Pipeline,
    prepared: Arc<Prepared>,
    first: CompletionRequest,
) -> impl std::future::Future<Output = Result<cache::Entry, UpstreamError>> + Send + 'static {
    let provider = ctx.services.provider.clone();
    async move {
        let started = Instant::now();
        let build = |turn: String| prepared.build(turn);
        let result = reasoning::run(
            provider.as_ref(),
            &prepared.plan,
            &prepared.input.message,
            first,
            &build,
        )
        .await;
        match result {
            Ok(answer) => {
                telemetry::reasoning(answer.used.label(), started.elapsed());
                crate::provider::tokens::count(answer.completion.usage.as_ref());
                let c = answer.completion;
                Ok(cache::Entry {
                    content: c.content,
                    reasoning_content: c.reasoning_content.filter(|r| !r.is_empty()),
                    finish_reason: c.finish_reason,
                    usage: c.usage,
                    model: c.model,
                    reasoning: answer.reasoning,
                    conversation_id: Some(prepared.input.conversation_id.clone()),
                    deltas: Vec::new(),
                })
            }
            Err(e) => {
                telemetry::reasoning(prepared.plan.strategy.label(), started.elapsed());
                Err(e)
            }
        }
    }
}

/// A whole answer for `prepared`: from the cache, a call in flight, or a
/// new call. Returns the `X-Cache` value with it.
///
/// The first upstream request is built once, here: the cache key is read
/// from it, and on a miss the call sends it.
pub async fn answer(
    ctx: &Arc<Pipeline>,
    prepared: Arc<Prepared>,
    policy: Policy,
) -> (&'static str, Result<Arc<cache::Entry>, UpstreamError>) {
    let first = prepared.first_request();
    ctx.services
        .cache
        .answer(
            first,
            |first| cache_key(ctx, &prepared, first),
            policy,
            |first| generate_work(ctx, prepared.clone(), first),
        )
        .await
}

/// The generate body of §5.2 for an answer. `conversation_id` is the
/// request's (or, for a request that sent none, the answer's original).
/// Serialised straight from the entry (fields in the order of §5.2), not
/// through a `serde_json::Value` tree: this runs for every answer.
#[derive(Serialize)]
pub struct GenerateBody<'a> {
    success: bool,
    data: GenerateData<'a>,
    provider: &'a str,
    endpoint: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning: Option<&'a Value>,
}

#[derive(Serialize)]
struct GenerateData<'a> {
    content: &'a str,
    conversation_id: &'a str,
    finish_reason: &'a str,
    usage: UsageOrDefault<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
}

/// The answer's usage, or zeros when the upstream reported none.
pub struct UsageOrDefault<'a>(pub Option<&'a crate::provider::Usage>);

impl Serialize for UsageOrDefault<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(u) => u.serialize(s),
            None => crate::provider::Usage::default().serialize(s),
        }
    }
}

/// The [`GenerateBody`] of `entry`; `show` is `SHOW_REASONING_PROCESS`.
pub fn generate_body<'a>(
    entry: &'a cache::Entry,
    conversation_id: &'a str,
    provider: &'a str,
    show: bool,
) -> GenerateBody<'a> {
    GenerateBody {
        success: true,
        data: GenerateData {
            content: &entry.content,
            conversation_id,
            finish_reason: entry.finish_reason.as_deref().unwrap_or("stop"),
            usage: UsageOrDefault(entry.usage.as_ref()),
            reasoning_content: entry
                .reasoning_content
                .as_deref()
                .filter(|r| show && !r.is_empty()),
        },
        provider,
        endpoint: entry.model.as_deref().unwrap_or("unknown"),
        reasoning: entry.reasoning.as_ref(),
    }
}

/// `POST /api/v1/chat/generate` after validation.
pub async fn generate(
    ctx: &Arc<Pipeline>,
    input: ChatInput,
    request_id: &str,
    policy: Policy,
) -> Response<Body> {
    let prepared = Arc::new(prepare(ctx, input, false).await);
    let (x_cache, outcome) = answer(ctx, prepared.clone(), policy).await;
    match outcome {
        Ok(entry) => {
            let input = &prepared.input;
            if input.shape == Shape::Legacy {
                ctx.services.history.invalidate(&input.conversation_id);
            }
            let conversation_id = match (&entry.conversation_id, input.conversation_id_defaulted) {
                (Some(original), true) => original.as_str(),
                _ => input.conversation_id.as_str(),
            };
            let body = generate_body(
                &entry,
                conversation_id,
                ctx.services.provider.name(),
                prepared.plan.switches.show_reasoning,
            );
            let mut resp = response::json(StatusCode::OK, &body);
            resp.headers_mut()
                .insert("x-cache", http::HeaderValue::from_static(x_cache));
            resp
        }
        Err(e) => upstream_error(&e, request_id, response::ErrorFormat::HearTalk),
    }
}

/// The error response for an upstream failure (§10.3): its status, code
/// and message in the request's `format` (E1 adds `upstream` and
/// `retryAfter` when known), and `Retry-After` when the upstream gave one.
pub fn upstream_error(
    e: &UpstreamError,
    request_id: &str,
    format: response::ErrorFormat,
) -> Response<Body> {
    tracing::warn!(error = %e, code = e.code(), "upstream call failed");
    let mut extra = serde_json::Map::new();
    if let Some(u) = e.upstream_info() {
        extra.insert("upstream".into(), u);
    }
    if e.status() == StatusCode::TOO_MANY_REQUESTS {
        let secs = e.retry_after().map_or(60, |d| d.as_secs().max(1));
        extra.insert("retryAfter".into(), json!(secs));
    }
    let mut resp = format.error_with(
        e.status(),
        e.code(),
        &e.to_string(),
        None,
        request_id,
        extra,
    );
    if let Some(d) = e.retry_after() {
        if let Ok(v) = http::HeaderValue::from_str(&d.as_secs().max(1).to_string()) {
            resp.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
    }
    resp
}

/// Opens the upstream stream for a leader and publishes it to the flight:
/// the entry at the end (deltas in order, copied from the flight's log, so
/// an open stream keeps one record of its answer, not two), or the error.
fn stream_work(
    ctx: &Pipeline,
    flight: Arc<cache::Flight>,
    request: crate::provider::CompletionRequest,
    reasoning_key: Option<Value>,
) -> impl std::future::Future<Output = Result<cache::Entry, UpstreamError>> + Send + 'static {
    let provider = ctx.services.provider.clone();
    async move {
        use futures_util::StreamExt;
        let mut upstream = provider.stream(request).await?;
        flight.start();
        while let Some(item) = upstream.next().await {
            match item? {
                StreamEvent::Content(d) => flight.push(cache::Delta::Content(d)),
                StreamEvent::Reasoning(d) => flight.push(cache::Delta::Reasoning(d)),
                StreamEvent::Done {
                    finish_reason,
                    usage,
                    model,
                } => {
                    crate::provider::tokens::count(usage.as_ref());
                    return Ok(cache::Entry::from_stream(
                        flight.deltas(),
                        finish_reason,
                        usage,
                        model,
                        reasoning_key,
                    ));
                }
            }
        }
        Err(UpstreamError::InvalidResponse(
            "stream ended unexpectedly".to_string(),
        ))
    }
}

/// An opened stream: its events and where they come from.
pub struct Opened {
    /// `X-Cache`: `HIT`, `MISS` or `COALESCED`.
    pub x_cache: &'static str,
    pub events: EventStream,
    /// The events are this request's own upstream call (see
    /// [`crate::pipeline::stream::Meta::own_call`]).
    pub own_call: bool,
}

/// A stream for `prepared` whose first upstream request is `first`: from
/// the cache (replayed), a call in flight (from its start), or a new call.
/// `Err` is a failure before the upstream answered 2xx: an ordinary JSON
/// error for the caller.
///
/// With nothing to share or store ([`Begin::Alone`]: the cache off, or
/// `no-store`) the stream is the upstream call itself, with no flight and
/// no task between: that is what an open stream then holds while it
/// waits. A panic while opening it is the error a flight's panic gives.
pub async fn open_stream(
    ctx: &Arc<Pipeline>,
    prepared: &Prepared,
    first: CompletionRequest,
    policy: Policy,
) -> Result<Opened, UpstreamError> {
    let svc = &ctx.services;
    let opened = |x_cache, events, own_call| Opened {
        x_cache,
        events,
        own_call,
    };
    match svc
        .cache
        .begin_with(|| cache_key(ctx, prepared, &first), policy)
        .await
    {
        Begin::Alone => {
            let call = svc.provider.stream(first);
            let events = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(call))
                .await
                .unwrap_or_else(|_| Err(cache::panicked()))?;
            Ok(opened("MISS", events, true))
        }
        Begin::Hit(e) => Ok(opened(
            "HIT",
            futures_util::stream::iter(e.replay()).boxed(),
            false,
        )),
        Begin::Join(mut s) => {
            s.started().await?;
            Ok(opened("COALESCED", s.into_events(), false))
        }
        Begin::Lead(flight, mut s, lead) => {
            let reasoning_key = prepared.plan.strategy.body_key();
            let work = stream_work(ctx, flight.clone(), first, reasoning_key);
            svc.cache.drive(flight, lead, work);
            s.started().await?;
            Ok(opened(s.leader_x_cache(), s.into_events(), false))
        }
    }
}

/// The estimated prompt tokens of a request (§8), for a stream whose
/// upstream reports no usage.
fn prompt_estimate(req: &CompletionRequest) -> u64 {
    req.messages
        .iter()
        .map(|m| crate::provider::tokens::estimate(&m.content))
        .sum()
}

/// `POST /api/v1/chat/stream` after validation: a JSON error until the
/// upstream answers 2xx, then Server-Sent Events (see [`crate::pipeline::stream`]).
pub async fn stream(
    ctx: Arc<Pipeline>,
    input: ChatInput,
    request_id: &str,
    http1: bool,
    policy: Policy,
) -> Response<Body> {
    let prepared = prepare(&ctx, input, true).await;
    stream_prepared(&ctx, &prepared, Format::HearTalk, request_id, http1, policy).await
}

/// The one streaming path of both APIs (`/api/v1/chat/stream`, and
/// `/v1/chat/completions` with `stream:true`): the first upstream request
/// built once (for the cache key, the prompt estimate and the call), the
/// stream opened from the cache, a flight or a call ([`open_stream`]), and
/// answered in `format`. The two APIs differ only in `format`, which also
/// decides the shape of an error before the stream opened.
///
/// A failed open still records the strategy's reasoning time, so failures
/// are not missing from `ai_reasoning_duration_seconds`.
pub async fn stream_prepared(
    ctx: &Arc<Pipeline>,
    prepared: &Prepared,
    format: Format,
    request_id: &str,
    http1: bool,
    policy: Policy,
) -> Response<Body> {
    let started = Instant::now();
    let first = prepared.first_request();
    let estimate = prompt_estimate(&first);
    match open_stream(ctx, prepared, first, policy).await {
        Err(e) => {
            telemetry::reasoning(prepared.plan.strategy.label(), started.elapsed());
            upstream_error(&e, request_id, format.error_format())
        }
        Ok(opened) => {
            let meta = stream_meta(ctx, prepared, started, &opened, estimate, format);
            crate::pipeline::stream::respond(ctx.clone(), opened.events, meta, http1)
        }
    }
}

/// The frames' metadata for a prepared, opened stream.
fn stream_meta(
    ctx: &Pipeline,
    prepared: &Prepared,
    started: Instant,
    opened: &Opened,
    prompt_estimate: u64,
    format: Format,
) -> crate::pipeline::stream::Meta {
    let plan = &prepared.plan;
    let show = plan.switches.show_reasoning;
    crate::pipeline::stream::Meta {
        conversation_id: prepared.input.conversation_id.clone(),
        route: prepared.decision.route.clone(),
        strategy: plan.strategy,
        show_reasoning: show,
        prompt_estimate,
        heartbeat: ctx.settings.pipeline.sse_heartbeat,
        legacy: prepared.input.shape == Shape::Legacy,
        started,
        x_cache: opened.x_cache,
        own_call: opened.own_call,
        format,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generate body's exact bytes: the key order of API.md §5.2 (and of
    /// the Node.js service), `reasoning_content` only when shown, usage
    /// zeros when the upstream gave none, `reasoning` last.
    #[test]
    fn the_generate_body_is_byte_exact() {
        let mut entry = cache::Entry {
            content: "你好".into(),
            reasoning_content: Some("想".into()),
            finish_reason: None,
            usage: Some(crate::provider::Usage {
                prompt_tokens: 1,
                completion_tokens: 2,
                total_tokens: 3,
                ..Default::default()
            }),
            model: Some("ep-chat".into()),
            reasoning: Some(json!({"type": "chain-of-thought", "enhanced": true})),
            ..Default::default()
        };
        let bytes = |e: &cache::Entry, show: bool| {
            String::from_utf8(
                serde_json::to_vec(&generate_body(e, "c1", "byteplus", show)).unwrap(),
            )
            .unwrap()
        };
        assert_eq!(
            bytes(&entry, true),
            r#"{"success":true,"data":{"content":"你好","conversation_id":"c1","finish_reason":"stop","usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3},"reasoning_content":"想"},"provider":"byteplus","endpoint":"ep-chat","reasoning":{"type":"chain-of-thought","enhanced":true}}"#
        );
        entry.usage = None;
        entry.reasoning = None;
        entry.model = None;
        assert_eq!(
            bytes(&entry, false),
            r#"{"success":true,"data":{"content":"你好","conversation_id":"c1","finish_reason":"stop","usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}},"provider":"byteplus","endpoint":"unknown"}"#
        );
    }
}
