//! The chat pipeline behind `/api/v1/chat/generate` and
//! `/api/v1/chat/stream` (API.md §5.2, §5.3): context → route → strategy →
//! provider → respond.
//!
//! Both endpoints share [`prepare`] (validation already done by the
//! caller): history or client messages, one routing decision on the raw
//! latest user message, the strategy, and the upstream message list with
//! the latest user turn replaced by its wrapped form (sent once, §13 d).

use std::sync::Arc;
use std::time::Instant;

use http::{Response, StatusCode};
use serde_json::{Value, json};

use crate::history::Outcome;
use crate::provider::{ChatMessage, UpstreamError};
use crate::reasoning::{self, Plan, Switches};
use crate::response::{self, Body};
use crate::routing::{self, Decision};
use crate::state::AppState;
use crate::telemetry;
use crate::validate::{ChatInput, Shape};

/// Everything decided before the first upstream byte.
pub struct Prepared {
    pub input: ChatInput,
    /// History (legacy) or the client messages before the latest user turn.
    pub context: Vec<ChatMessage>,
    pub decision: Decision,
    pub plan: Plan,
}

impl Prepared {
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
pub async fn prepare(state: &AppState, input: ChatInput, streaming: bool) -> Prepared {
    let svc = &state.services;
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
    let (model, timeout) = svc.endpoint(&state.settings, endpoint);
    let r = &state.settings.reasoning;
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

/// `POST /api/v1/chat/generate` after validation.
pub async fn generate(state: &AppState, input: ChatInput, request_id: &str) -> Response<Body> {
    let prepared = prepare(state, input, false).await;
    let svc = &state.services;
    let started = Instant::now();
    let build = |turn: String| prepared.build(turn);
    let result = reasoning::run(
        svc.provider.as_ref(),
        &prepared.plan,
        &prepared.input.message,
        &build,
    )
    .await;
    match result {
        Ok(answer) => {
            telemetry::reasoning(answer.used.label(), started.elapsed());
            let c = &answer.completion;
            let usage = c.usage.clone().unwrap_or_default();
            telemetry::tokens("prompt", usage.prompt_tokens);
            telemetry::tokens("completion", usage.completion_tokens);
            if let Some(r) = usage
                .extra
                .get("completion_tokens_details")
                .and_then(|d| d.get("reasoning_tokens"))
                .and_then(Value::as_u64)
            {
                telemetry::tokens("reasoning", r);
            }
            if prepared.input.shape == Shape::Legacy {
                svc.history.invalidate(&prepared.input.conversation_id);
            }
            let mut data = json!({
                "content": c.content,
                "conversation_id": prepared.input.conversation_id,
                "finish_reason": c.finish_reason.as_deref().unwrap_or("stop"),
                "usage": usage,
            });
            if let Some(r) = c.reasoning_content.as_ref().filter(|r| !r.is_empty()) {
                data["reasoning_content"] = json!(r);
            }
            let mut body = json!({
                "success": true,
                "data": data,
                "provider": svc.provider.name(),
                "endpoint": c.model.as_deref().unwrap_or("unknown"),
            });
            if let Some(r) = answer.reasoning {
                body["reasoning"] = r;
            }
            let mut resp = response::json(StatusCode::OK, &body);
            resp.headers_mut()
                .insert("x-cache", http::HeaderValue::from_static("MISS"));
            resp
        }
        Err(e) => {
            telemetry::reasoning(prepared.plan.strategy.label(), started.elapsed());
            upstream_error(&e, request_id)
        }
    }
}

/// An E1 error body for an upstream failure (§10.3), with `upstream` and
/// `retryAfter` when known.
pub fn upstream_error(e: &UpstreamError, request_id: &str) -> Response<Body> {
    tracing::warn!(error = %e, code = e.code(), "upstream call failed");
    let mut extra = serde_json::Map::new();
    if let Some(u) = e.upstream_info() {
        extra.insert("upstream".into(), u);
    }
    if e.status() == StatusCode::TOO_MANY_REQUESTS {
        let secs = e.retry_after().map_or(60, |d| d.as_secs().max(1));
        extra.insert("retryAfter".into(), json!(secs));
    }
    let mut resp = response::error_with(
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

/// `POST /api/v1/chat/stream` after validation: a JSON error until the
/// upstream answers 2xx, then Server-Sent Events (see [`crate::stream`]).
pub async fn stream(
    state: Arc<AppState>,
    input: ChatInput,
    request_id: &str,
    http1: bool,
) -> Response<Body> {
    let prepared = prepare(&state, input, true).await;
    let svc = &state.services;
    let show = prepared.plan.switches.show_reasoning;
    let turn = reasoning::wrap(prepared.plan.strategy, 0, &prepared.input.message, show);
    let messages = prepared.build(turn);
    let request = prepared
        .plan
        .request(messages, prepared.plan.base_temperature());
    let prompt_estimate: u64 = request
        .messages
        .iter()
        .map(|m| crate::tokens::estimate(&m.content))
        .sum();
    let started = Instant::now();
    match svc.provider.stream(request).await {
        Err(e) => {
            telemetry::reasoning(prepared.plan.strategy.label(), started.elapsed());
            upstream_error(&e, request_id)
        }
        Ok(upstream) => {
            let meta = crate::stream::Meta {
                provider: svc.provider.name().to_string(),
                conversation_id: prepared.input.conversation_id.clone(),
                route: prepared.decision.route.clone(),
                strategy: prepared.plan.strategy,
                show_reasoning: show,
                prompt_estimate,
                heartbeat: state.settings.pipeline.sse_heartbeat,
                legacy: prepared.input.shape == Shape::Legacy,
                started,
            };
            crate::stream::respond(state.clone(), upstream, meta, http1)
        }
    }
}
