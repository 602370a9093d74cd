//! The OpenAI-compatible surface (API.md §5.4): `POST /v1/chat/completions`
//! and `GET /v1/models`, so the official OpenAI SDKs work unchanged with
//! `base_url` pointing here and the user's JWT as the API key.
//!
//! It is a different wire shape over the same pipeline: validation as for
//! OpenAI-style generate bodies, one routing decision, the response cache
//! and coalescing, the same limits and metrics. `model` picks the endpoint
//! (`chat`, `work_assistant`, or a configured endpoint id); anything else
//! (`auto`, a model name we do not serve) routes by keywords. Every error
//! on these paths is rewritten into OpenAI's `{error:{message, type, param,
//! code}}` shape by [`error_shape`], with the contract's status and code.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::cache::Policy;
use crate::chat;
use crate::provider::EndpointKind;
use crate::response::{self, Body};
use crate::state::AppState;
use crate::stream::{Format, OpenAiStream};
use crate::validate;

/// A validated completions request.
#[derive(Debug)]
pub struct CompletionsInput {
    pub chat: validate::ChatInput,
    pub stream: bool,
    pub include_usage: bool,
}

/// §5.4 request rules on top of §5.2's OpenAI-style validation. `Err` is
/// the `VALIDATION_ERROR` message.
pub fn validate(
    body: &Value,
    token_user: Option<&str>,
    now_ms: u64,
    settings: &crate::settings::Settings,
) -> Result<CompletionsInput, String> {
    if !body.get("messages").is_some_and(Value::is_array) {
        return Err("messages is required and must be an array".into());
    }
    if let Some(n) = body.get("n").filter(|v| !v.is_null()) {
        if n.as_u64() != Some(1) {
            return Err("n must be 1".into());
        }
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("stream must be a boolean".into()),
    };
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // `max_completion_tokens` is the newer name of `max_tokens`; HearTalk's
    // own `options` are not part of this API (ignored, not validated).
    let mut body = body.clone();
    if let Some(o) = body.as_object_mut() {
        o.remove("options");
    }
    if body.get("max_tokens").is_none_or(Value::is_null) {
        if let Some(v) = body.get("max_completion_tokens").cloned() {
            body["max_tokens"] = v;
        }
    }
    let user = body
        .get("user")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty());
    let mut input = validate::chat(&body, token_user, now_ms).map_err(|e| e.0)?;
    if let Some(u) = user {
        input.user_id = u.to_string();
    }
    if let Some(e) = body
        .get("model")
        .and_then(Value::as_str)
        .and_then(|m| endpoint_for_model(m, settings))
    {
        input.endpoint_override = Some(e);
    }
    Ok(CompletionsInput {
        chat: input,
        stream,
        include_usage,
    })
}

/// `model` → a forced endpoint, or `None` for keyword routing.
pub fn endpoint_for_model(
    model: &str,
    settings: &crate::settings::Settings,
) -> Option<EndpointKind> {
    let p = &settings.pipeline;
    match model {
        "chat" => Some(EndpointKind::Chat),
        "work_assistant" => Some(EndpointKind::WorkAssistant),
        m if m == p.chat_endpoint => Some(EndpointKind::Chat),
        m if m == p.work_endpoint => Some(EndpointKind::WorkAssistant),
        _ => None,
    }
}

/// `POST /v1/chat/completions` after validation.
pub async fn completions(
    state: &Arc<AppState>,
    input: CompletionsInput,
    request_id: &str,
    policy: Policy,
    http1: bool,
) -> Response<Body> {
    let id = format!("chatcmpl-{request_id}");
    let created = crate::clock::unix_secs();
    let prepared = chat::prepare(state, input.chat, input.stream).await;
    if input.stream {
        let started = Instant::now();
        let first = prepared.first_request();
        let estimate = chat::prompt_estimate(&first);
        return match chat::open_stream(state, &prepared, first, policy).await {
            Err(e) => chat::upstream_error(&e, request_id),
            Ok((x_cache, events)) => {
                let format = Format::OpenAi(OpenAiStream {
                    id,
                    created,
                    model: prepared.plan.model.clone(),
                    include_usage: input.include_usage,
                });
                let meta = chat::stream_meta(state, &prepared, started, x_cache, estimate, format);
                crate::stream::respond(state.clone(), events, meta, http1)
            }
        };
    }
    let prepared = Arc::new(prepared);
    let (x_cache, outcome) = chat::answer(state, prepared.clone(), policy).await;
    match outcome {
        Err(e) => chat::upstream_error(&e, request_id),
        Ok(entry) => {
            let mut message = json!({"role": "assistant", "content": entry.content});
            if let Some(r) = entry
                .reasoning_content
                .as_ref()
                .filter(|r| prepared.plan.switches.show_reasoning && !r.is_empty())
            {
                message["reasoning_content"] = json!(r);
            }
            let body = json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": entry.model.as_deref().unwrap_or(&prepared.plan.model),
                "choices": [{
                    "index": 0,
                    "message": message,
                    "finish_reason": entry.finish_reason.as_deref().unwrap_or("stop"),
                }],
                "usage": entry.usage.clone().unwrap_or_default(),
            });
            let mut resp = response::json(StatusCode::OK, &body);
            resp.headers_mut()
                .insert("x-cache", HeaderValue::from_static(x_cache));
            resp
        }
    }
}

/// `GET /v1/models`: what `model` accepts.
pub fn models(state: &AppState) -> Response<Body> {
    let p = &state.settings.pipeline;
    let owner = state.services.provider.name();
    let mut ids = vec!["auto", "chat", "work_assistant"];
    for ep in [p.chat_endpoint.as_str(), p.work_endpoint.as_str()] {
        if !ids.contains(&ep) {
            ids.push(ep);
        }
    }
    let data: Vec<Value> = ids
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": owner}))
        .collect();
    response::json(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// OpenAI's error `type` for one of our statuses.
pub fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 => "authentication_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// Rewrites an E1/E2 error response into OpenAI's shape, keeping the
/// status, the headers and the contract's `code`.
pub async fn error_shape(resp: Response<Body>) -> Response<Body> {
    let status = resp.status();
    if status.as_u16() < 400 {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, response::full(bytes));
    };
    let message = v
        .get("message")
        .filter(|_| status == StatusCode::NOT_FOUND)
        .or_else(|| v.get("error"))
        .and_then(Value::as_str)
        .unwrap_or("error");
    let code = v.get("code").and_then(Value::as_str).unwrap_or("ERROR");
    let out = crate::stream::openai_error(message, error_type(status), code);
    let bytes = Bytes::from(serde_json::to_vec(&out).unwrap_or_default());
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, response::full(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> crate::settings::Settings {
        crate::settings::Settings::from_lookup(|k| match k {
            "BYTEPLUS_AMI_CHAT_EP" => Some("ep-chat".into()),
            "BYTEPLUS_AMI_WORK_ASSISTANT_EP" => Some("ep-work".into()),
            _ => None,
        })
    }

    #[test]
    fn models_select_endpoints() {
        let s = settings();
        assert_eq!(endpoint_for_model("chat", &s), Some(EndpointKind::Chat));
        assert_eq!(
            endpoint_for_model("ep-work", &s),
            Some(EndpointKind::WorkAssistant)
        );
        assert_eq!(endpoint_for_model("auto", &s), None);
        assert_eq!(endpoint_for_model("gpt-4o", &s), None);
    }

    #[test]
    fn request_rules() {
        let s = settings();
        let ok = json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}],
                        "stream": true, "stream_options": {"include_usage": true},
                        "max_completion_tokens": 50, "n": 1, "user": "u-9"});
        let i = validate(&ok, Some("tok"), 1, &s).unwrap();
        assert!(i.stream && i.include_usage);
        assert_eq!(i.chat.max_tokens, Some(50));
        assert_eq!(i.chat.user_id, "u-9");
        assert_eq!(i.chat.endpoint_override, None);
        let bad = |b: Value| validate(&b, None, 1, &s).unwrap_err();
        assert_eq!(
            bad(json!({"message": "hi"})),
            "messages is required and must be an array"
        );
        let with_options = json!({"messages": [{"role": "user", "content": "x"}],
                                   "options": {"modelParams": {"temperature": 9}}});
        assert!(
            validate(&with_options, None, 1, &s).is_ok(),
            "options are ignored"
        );
        assert_eq!(
            bad(json!({"messages": [{"role": "user", "content": "x"}], "n": 2})),
            "n must be 1"
        );
        assert_eq!(
            bad(json!({"messages": []})),
            "messages array cannot be empty"
        );
        assert_eq!(
            bad(json!({"messages": [{"role": "user", "content": "x"}], "temperature": 3})),
            "temperature must be a number between 0 and 2"
        );
    }

    #[test]
    fn error_types() {
        assert_eq!(error_type(StatusCode::UNAUTHORIZED), "authentication_error");
        assert_eq!(
            error_type(StatusCode::TOO_MANY_REQUESTS),
            "rate_limit_error"
        );
        assert_eq!(error_type(StatusCode::BAD_REQUEST), "invalid_request_error");
        assert_eq!(error_type(StatusCode::BAD_GATEWAY), "api_error");
    }
}
