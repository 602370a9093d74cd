//! The OpenAI-compatible surface (API.md §5.4): `POST /v1/chat/completions`
//! and `GET /v1/models`, so the official OpenAI SDKs work unchanged with
//! `base_url` pointing here and the user's JWT as the API key.
//!
//! It is a different wire shape over the same pipeline: validation as for
//! OpenAI-style generate bodies, one routing decision, the response cache
//! and coalescing, the same limits and metrics. `model` picks the endpoint
//! (`chat`, `work_assistant`, or a configured endpoint id); anything else
//! (`auto`, a model name we do not serve) routes by keywords. Every error
//! on these paths is OpenAI's `{error:{message, type, param, code}}` with
//! the contract's status and code, built in that shape where it is decided:
//! the router gives `/v1/*` requests [`ErrorFormat::OpenAi`] for its own
//! refusals, and [`completions`] answers upstream failures with it.

use std::sync::Arc;

use http::{HeaderValue, Response, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};

use crate::cache::Policy;
use crate::pipeline::chat;
use crate::pipeline::context::Pipeline;
use crate::pipeline::response::{self, Body, ErrorFormat};
use crate::pipeline::stream::{Format, OpenAiStream};
use crate::pipeline::validate;
use crate::provider::EndpointKind;

/// A validated completions request.
#[derive(Debug)]
pub struct CompletionsInput {
    pub chat: validate::ChatInput,
    pub stream: bool,
    pub include_usage: bool,
}

/// §5.4 request rules on top of §5.2's OpenAI-style validation. `Err` is
/// the `VALIDATION_ERROR` message.
///
/// Takes the body by value: the two §5.4 adjustments (drop `options`, read
/// `max_completion_tokens` as `max_tokens`) are made in place, so a body
/// of any size is never copied.
pub fn validate(
    mut body: Value,
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
    if let Some(o) = body.as_object_mut() {
        o.remove("options");
        if o.get("max_tokens").is_none_or(Value::is_null) {
            if let Some(v) = o.remove("max_completion_tokens") {
                o.insert("max_tokens".into(), v);
            }
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

/// `POST /v1/chat/completions` after validation. A stream takes the one
/// streaming path of both APIs ([`chat::stream_prepared`]) in OpenAI's
/// frame format: a JSON error until the upstream answers 2xx, then
/// `chat.completion.chunk` events.
pub async fn completions(
    ctx: &Arc<Pipeline>,
    input: CompletionsInput,
    request_id: &str,
    policy: Policy,
    http1: bool,
) -> Response<Body> {
    let id = format!("chatcmpl-{request_id}");
    let created = crate::runtime::clock::unix_secs();
    let prepared = chat::prepare(ctx, input.chat, input.stream).await;
    if input.stream {
        let format = Format::OpenAi(OpenAiStream {
            id,
            created,
            model: prepared.plan.model.clone(),
            include_usage: input.include_usage,
        });
        return chat::stream_prepared(ctx, &prepared, format, request_id, http1, policy).await;
    }
    let prepared = Arc::new(prepared);
    let (x_cache, outcome) = chat::answer(ctx, prepared.clone(), policy).await;
    match outcome {
        Err(e) => crate::pipeline::chat::upstream_error(&e, request_id, ErrorFormat::OpenAi),
        Ok(entry) => {
            let body = Completion {
                id: &id,
                object: "chat.completion",
                created,
                model: entry.model.as_deref().unwrap_or(&prepared.plan.model),
                choices: [Choice {
                    index: 0,
                    message: Message {
                        role: "assistant",
                        content: &entry.content,
                        reasoning_content: entry
                            .reasoning_content
                            .as_deref()
                            .filter(|r| prepared.plan.switches.show_reasoning && !r.is_empty()),
                    },
                    finish_reason: entry.finish_reason.as_deref().unwrap_or("stop"),
                }],
                usage: crate::pipeline::chat::UsageOrDefault(entry.usage.as_ref()),
            };
            let mut resp = response::json(StatusCode::OK, &body);
            resp.headers_mut()
                .insert("x-cache", HeaderValue::from_static(x_cache));
            resp
        }
    }
}

/// A whole `chat.completion` object, serialised from the answer without a
/// `serde_json::Value` tree (this runs for every answer), fields in
/// OpenAI's order.
#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: crate::pipeline::chat::UsageOrDefault<'a>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: Message<'a>,
    finish_reason: &'a str,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
}

/// `GET /v1/models`: what `model` accepts.
pub fn models(ctx: &Pipeline) -> Response<Body> {
    let p = &ctx.settings.pipeline;
    let owner = ctx.services.provider.name();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The completion object's bytes: OpenAI's field order, the
    /// reasoning only when given, usage zeros when the upstream gave none.
    #[test]
    fn a_completion_is_byte_exact() {
        let mut body = Completion {
            id: "chatcmpl-r1",
            object: "chat.completion",
            created: 7,
            model: "ep-chat",
            choices: [Choice {
                index: 0,
                message: Message {
                    role: "assistant",
                    content: "你好",
                    reasoning_content: Some("想"),
                },
                finish_reason: "stop",
            }],
            usage: crate::pipeline::chat::UsageOrDefault(None),
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"id":"chatcmpl-r1","object":"chat.completion","created":7,"model":"ep-chat","choices":[{"index":0,"message":{"role":"assistant","content":"你好","reasoning_content":"想"},"finish_reason":"stop"}],"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}"#
        );
        body.choices[0].message.reasoning_content = None;
        assert!(
            !serde_json::to_string(&body)
                .unwrap()
                .contains("reasoning_content")
        );
    }

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
        let i = validate(ok, Some("tok"), 1, &s).unwrap();
        assert!(i.stream && i.include_usage);
        assert_eq!(i.chat.max_tokens, Some(50));
        assert_eq!(i.chat.user_id, "u-9");
        assert_eq!(i.chat.endpoint_override, None);
        let bad = |b: Value| validate(b, None, 1, &s).unwrap_err();
        assert_eq!(
            bad(json!({"message": "hi"})),
            "messages is required and must be an array"
        );
        let with_options = json!({"messages": [{"role": "user", "content": "x"}],
                                   "options": {"modelParams": {"temperature": 9}}});
        assert!(
            validate(with_options, None, 1, &s).is_ok(),
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

    /// Bytes allocated on this thread, counted by [`Counting`].
    mod counting {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            static BYTES: Cell<usize> = const { Cell::new(0) };
        }

        /// The system allocator, counting each thread's allocated bytes
        /// (for the unit-test binary only; the worker binary uses mimalloc).
        pub struct Counting;

        // SAFETY: every call is forwarded unchanged to `System`; the count
        // is a const-initialised thread-local `Cell`, which never allocates.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                let _ = BYTES.try_with(|b| b.set(b.get().saturating_add(layout.size())));
                // SAFETY: the caller's contract is `System::alloc`'s.
                unsafe { System.alloc(layout) }
            }

            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: `ptr` came from `System` with this `layout`.
                unsafe { System.dealloc(ptr, layout) }
            }

            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                let _ = BYTES.try_with(|b| b.set(b.get().saturating_add(new_size)));
                // SAFETY: the caller's contract is `System::realloc`'s.
                unsafe { System.realloc(ptr, layout, new_size) }
            }
        }

        /// Bytes allocated by `f` on the calling thread.
        pub fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
            let before = BYTES.with(Cell::get);
            let out = f();
            (out, BYTES.with(Cell::get) - before)
        }
    }

    #[global_allocator]
    static COUNTING: counting::Counting = counting::Counting;

    /// Validation reads the body in place: a large field it never looks at
    /// (`metadata` here) is not copied, so the allocations stay far below
    /// the body's size.
    #[test]
    fn validation_does_not_copy_the_body() {
        let s = settings();
        let big = "x".repeat(1 << 20);
        let body = json!({"model": "chat", "metadata": {"note": big},
                          "max_completion_tokens": 20,
                          "options": {"modelParams": {"temperature": 9}},
                          "messages": [{"role": "user", "content": "hi"}]});
        let (input, bytes) = counting::allocated_by(|| validate(body, None, 1, &s));
        let input = input.unwrap();
        assert_eq!(input.chat.max_tokens, Some(20));
        assert!(bytes < 64 * 1024, "validation allocated {bytes} bytes");
    }
}
