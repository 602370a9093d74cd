//! Request-body validation for the chat and translation endpoints
//! (API.md §5.2, §5.5): which fields are required, in which order they are
//! checked, and the exact message of the first failure.
//!
//! Validation stops at the first failure, like the Node.js service, and
//! the messages are the contract's word for word, because the HearTalk
//! backend and its clients match on them. "Truthy" and "length" follow
//! JavaScript (`""`, `0`, `false`, `null` are falsy; lengths are UTF-16
//! code units) for the same reason.

use serde_json::Value;

use crate::provider::tokens::js_len;
use crate::provider::{ChatMessage, EndpointKind};

/// Longest accepted chat message, in UTF-16 units.
pub const MAX_MESSAGE_LEN: usize = 10_000;
/// Longest accepted text to translate.
pub const MAX_TRANSLATE_LEN: usize = 5_000;
/// Longest accepted target language.
pub const MAX_LANGUAGE_LEN: usize = 50;

/// A validation failure: 400 `VALIDATION_ERROR` with this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

fn invalid<T>(msg: &str) -> Result<T, Invalid> {
    Err(Invalid(msg.to_string()))
}

/// Which body shape the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{conversation_id, message, user_id, options}`: history comes from
    /// the backend.
    Legacy,
    /// `{messages: [...]}`: the client sends the whole conversation.
    OpenAi,
}

/// A validated chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatInput {
    pub shape: Shape,
    pub conversation_id: String,
    /// The request sent no conversation id (`temp-<epoch-ms>` was made up):
    /// a cache hit may answer with the original request's id.
    pub conversation_id_defaulted: bool,
    pub user_id: String,
    /// The latest user message (legacy: `message`; OpenAI: the content of
    /// the last `user` item, or `""`).
    pub message: String,
    /// OpenAI shape: every message as sent. Legacy: empty.
    pub messages: Vec<ChatMessage>,
    /// OpenAI shape: index of the latest user message in `messages`.
    pub latest_user: Option<usize>,
    pub endpoint_override: Option<EndpointKind>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub history_length: Option<u64>,
    /// `JSON(options)` as received (`{}` when absent), for the route cache key.
    pub options_json: String,
}

/// JavaScript truthiness of a JSON value.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

fn non_empty_str<'a>(body: &'a Value, key: &str) -> Option<&'a str> {
    body.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Validates a `/api/v1/chat/generate` or `/api/v1/chat/stream` body.
/// `token_user` is the authenticated user id (default `user_id`);
/// `now_ms` makes the `temp-<epoch-ms>` default conversation id.
pub fn chat(body: &Value, token_user: Option<&str>, now_ms: u64) -> Result<ChatInput, Invalid> {
    let mut input = if body.get("messages").is_some_and(Value::is_array) {
        openai(body, token_user, now_ms)?
    } else {
        legacy(body)?
    };
    let options = body.get("options").filter(|o| o.is_object());
    input.options_json = options.map_or_else(|| "{}".to_string(), |o| o.to_string());
    if let Some(o) = options {
        read_options(o, &mut input)?;
    }
    if input.shape == Shape::OpenAi {
        // Top-level OpenAI parameters; `options.modelParams` wins when both are given.
        let t = temperature(body.get("temperature"), "temperature")?;
        let m = max_tokens(body.get("max_tokens"), "max_tokens")?;
        input.temperature = input.temperature.or(t);
        input.max_tokens = input.max_tokens.or(m);
    }
    Ok(input)
}

fn legacy(body: &Value) -> Result<ChatInput, Invalid> {
    let Some(conversation_id) = non_empty_str(body, "conversation_id") else {
        return invalid("conversation_id is required and must be a string");
    };
    let Some(message) = non_empty_str(body, "message") else {
        return invalid("message is required and must be a string");
    };
    let Some(user_id) = non_empty_str(body, "user_id") else {
        return invalid("user_id is required and must be a string");
    };
    if js_len(message) > MAX_MESSAGE_LEN {
        return invalid("message too long (max 10000 characters)");
    }
    Ok(ChatInput {
        shape: Shape::Legacy,
        conversation_id: conversation_id.to_string(),
        conversation_id_defaulted: false,
        user_id: user_id.to_string(),
        message: message.to_string(),
        messages: Vec::new(),
        latest_user: None,
        endpoint_override: None,
        temperature: None,
        max_tokens: None,
        history_length: None,
        options_json: String::new(),
    })
}

fn openai(body: &Value, token_user: Option<&str>, now_ms: u64) -> Result<ChatInput, Invalid> {
    let items = body["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if items.is_empty() {
        return invalid("messages array cannot be empty");
    }
    let mut messages = Vec::with_capacity(items.len());
    for item in items {
        let role = item.get("role").filter(|v| truthy(v));
        let content = item.get("content").filter(|v| truthy(v));
        let (Some(role), Some(content)) = (role, content) else {
            return invalid("each message must have role and content");
        };
        let Some(content) = content.as_str() else {
            return invalid("message content must be a string");
        };
        if js_len(content) > MAX_MESSAGE_LEN {
            return invalid("message content too long (max 10000 characters)");
        }
        let role = match role {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        messages.push(ChatMessage::new(&role, content));
    }
    let latest_user = messages.iter().rposition(|m| m.role == "user");
    let message = latest_user
        .map(|i| messages[i].content.clone())
        .unwrap_or_default();
    let given = body.get("conversation_id").filter(|v| truthy(v));
    let conversation_id = match given {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => format!("temp-{now_ms}"),
    };
    let user_id = non_empty_str(body, "user_id")
        .or(token_user.filter(|u| !u.is_empty()))
        .unwrap_or("anonymous")
        .to_string();
    Ok(ChatInput {
        shape: Shape::OpenAi,
        conversation_id_defaulted: given.is_none(),
        conversation_id,
        user_id,
        message,
        messages,
        latest_user,
        endpoint_override: None,
        temperature: None,
        max_tokens: None,
        history_length: None,
        options_json: String::new(),
    })
}

fn read_options(o: &Value, input: &mut ChatInput) -> Result<(), Invalid> {
    if let Some(t) = o.get("endpointType").filter(|v| !v.is_null()) {
        input.endpoint_override = Some(match t.as_str() {
            Some("chat") => EndpointKind::Chat,
            Some("work_assistant") => EndpointKind::WorkAssistant,
            _ => return invalid("options.endpointType must be \"chat\" or \"work_assistant\""),
        });
    }
    if let Some(p) = o.get("modelParams").filter(|p| p.is_object()) {
        input.temperature = temperature(p.get("temperature"), "options.modelParams.temperature")?;
        input.max_tokens = max_tokens(p.get("max_tokens"), "options.modelParams.max_tokens")?;
    }
    if let Some(h) = o.get("history_length").filter(|v| !v.is_null()) {
        match integer(h) {
            Some(n) if n >= 0 => input.history_length = Some(n as u64),
            _ => return invalid("options.history_length must be a non-negative integer"),
        }
    }
    Ok(())
}

/// `Number.isInteger` on a JSON value (`5.0` counts), as i64.
fn integer(v: &Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    let f = v.as_f64()?;
    (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}

/// A temperature in 0..=2, when present (`null` counts as absent).
pub fn temperature(v: Option<&Value>, name: &str) -> Result<Option<f64>, Invalid> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(t) if (0.0..=2.0).contains(&t) => Ok(Some(t)),
            _ => Err(Invalid(format!("{name} must be a number between 0 and 2"))),
        },
    }
}

/// A max_tokens integer in 1..=8192, when present.
pub fn max_tokens(v: Option<&Value>, name: &str) -> Result<Option<u32>, Invalid> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match integer(v) {
            Some(n) if (1..=8192).contains(&n) => Ok(Some(n as u32)),
            _ => Err(Invalid(format!(
                "{name} must be an integer between 1 and 8192"
            ))),
        },
    }
}

/// A validated `/api/v1/translate` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateInput {
    pub text: String,
    pub target_language: String,
}

/// Validates a `/api/v1/translate` body (§5.5).
pub fn translate(body: &Value) -> Result<TranslateInput, Invalid> {
    let Some(text) = non_empty_str(body, "text") else {
        return invalid("text is required and must be a string");
    };
    let Some(target) = non_empty_str(body, "target_language") else {
        return invalid("target_language is required and must be a string");
    };
    if js_len(text) > MAX_TRANSLATE_LEN {
        return invalid("text too long (max 5000 characters)");
    }
    if js_len(target) > MAX_LANGUAGE_LEN {
        return invalid("target_language too long (max 50 characters)");
    }
    Ok(TranslateInput {
        text: text.to_string(),
        target_language: target.to_string(),
    })
}

/// Validates a `/api/v1/translate/detect` body: a non-empty `text`.
pub fn detect(body: &Value) -> Result<String, Invalid> {
    match non_empty_str(body, "text") {
        Some(t) => Ok(t.to_string()),
        None => invalid("text is required and must be a string"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn err(body: Value) -> String {
        chat(&body, Some("tok-user"), 42).unwrap_err().0
    }

    #[test]
    fn legacy_fields_in_order() {
        assert_eq!(
            err(json!({"message":"hi","user_id":"u1"})),
            "conversation_id is required and must be a string"
        );
        assert_eq!(
            err(json!({"conversation_id":123,"message":"hi","user_id":"u1"})),
            "conversation_id is required and must be a string",
            "numbers are rejected"
        );
        assert_eq!(
            err(json!({"conversation_id":"c","user_id":"u1"})),
            "message is required and must be a string"
        );
        assert_eq!(
            err(json!({"conversation_id":"c","message":""})),
            "message is required and must be a string"
        );
        assert_eq!(
            err(json!({"conversation_id":"c","message":"hi"})),
            "user_id is required and must be a string"
        );
        assert_eq!(
            err(json!({"conversation_id":"c","message":"hi","user_id":7})),
            "user_id is required and must be a string"
        );
        let long = "a".repeat(10_001);
        assert_eq!(
            err(json!({"conversation_id":"c","message":long,"user_id":"u"})),
            "message too long (max 10000 characters)"
        );
        // 5,000 astral characters are 10,000 UTF-16 units: allowed; one more is not.
        let astral = "😀".repeat(5_000);
        assert!(
            chat(
                &json!({"conversation_id":"c","message":astral,"user_id":"u"}),
                None,
                0
            )
            .is_ok()
        );
        let astral = "😀".repeat(5_001);
        assert!(
            chat(
                &json!({"conversation_id":"c","message":astral,"user_id":"u"}),
                None,
                0
            )
            .is_err()
        );
    }

    #[test]
    fn legacy_ok() {
        let i = chat(&json!({"conversation_id":"c1","message":"你好","user_id":"u1","options":{"history_length":4}}), None, 0).unwrap();
        assert_eq!(i.shape, Shape::Legacy);
        assert_eq!(i.message, "你好");
        assert_eq!(i.history_length, Some(4));
        assert_eq!(i.options_json, r#"{"history_length":4}"#);
    }

    #[test]
    fn openai_messages() {
        assert_eq!(
            err(json!({"messages":[]})),
            "messages array cannot be empty"
        );
        assert_eq!(
            err(json!({"messages":[{"role":"user"}]})),
            "each message must have role and content"
        );
        assert_eq!(
            err(json!({"messages":[{"role":"user","content":""}]})),
            "each message must have role and content"
        );
        assert_eq!(
            err(json!({"messages":[{"content":"x"}]})),
            "each message must have role and content"
        );
        assert_eq!(
            err(json!({"messages":[{"role":"user","content":[{"type":"text"}]}]})),
            "message content must be a string"
        );
        assert_eq!(
            err(json!({"messages":[{"role":"user","content":"x".repeat(10_001)}]})),
            "message content too long (max 10000 characters)"
        );
        let i = chat(
            &json!({"messages":[{"role":"system","content":"s"},{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"c"}]}),
            Some("tok-user"),
            42,
        )
        .unwrap();
        assert_eq!(i.message, "c");
        assert_eq!(i.latest_user, Some(3));
        assert_eq!(i.conversation_id, "temp-42");
        assert_eq!(i.user_id, "tok-user");
        let anon = chat(
            &json!({"messages":[{"role":"assistant","content":"b"}]}),
            None,
            1,
        )
        .unwrap();
        assert_eq!(anon.message, "");
        assert_eq!(anon.user_id, "anonymous");
    }

    #[test]
    fn options_and_params() {
        let base = json!({"conversation_id":"c","message":"m","user_id":"u"});
        let with = |opts: Value| {
            let mut b = base.clone();
            b["options"] = opts;
            chat(&b, None, 0)
        };
        assert_eq!(
            with(json!({"modelParams":{"temperature":3}}))
                .unwrap_err()
                .0,
            "options.modelParams.temperature must be a number between 0 and 2"
        );
        assert_eq!(
            with(json!({"modelParams":{"temperature":"0.5"}}))
                .unwrap_err()
                .0,
            "options.modelParams.temperature must be a number between 0 and 2"
        );
        assert_eq!(
            with(json!({"modelParams":{"max_tokens":0}})).unwrap_err().0,
            "options.modelParams.max_tokens must be an integer between 1 and 8192"
        );
        assert_eq!(
            with(json!({"modelParams":{"max_tokens":1.5}}))
                .unwrap_err()
                .0,
            "options.modelParams.max_tokens must be an integer between 1 and 8192"
        );
        assert_eq!(
            with(json!({"endpointType":"admin"})).unwrap_err().0,
            "options.endpointType must be \"chat\" or \"work_assistant\""
        );
        assert_eq!(
            with(json!({"history_length":-1})).unwrap_err().0,
            "options.history_length must be a non-negative integer"
        );
        let ok = with(json!({"endpointType":"work_assistant","modelParams":{"temperature":0,"max_tokens":8192.0}})).unwrap();
        assert_eq!(ok.endpoint_override, Some(EndpointKind::WorkAssistant));
        assert_eq!(ok.temperature, Some(0.0));
        assert_eq!(ok.max_tokens, Some(8192));
    }

    #[test]
    fn openai_top_level_params_and_precedence() {
        let b = json!({"messages":[{"role":"user","content":"x"}],"temperature":2.5});
        assert_eq!(err(b), "temperature must be a number between 0 and 2");
        let b = json!({"messages":[{"role":"user","content":"x"}],"max_tokens":9000});
        assert_eq!(err(b), "max_tokens must be an integer between 1 and 8192");
        let b = json!({"messages":[{"role":"user","content":"x"}],"temperature":0.2,"max_tokens":10,
            "options":{"modelParams":{"temperature":0.9}}});
        let i = chat(&b, None, 0).unwrap();
        assert_eq!(i.temperature, Some(0.9), "modelParams wins");
        assert_eq!(i.max_tokens, Some(10));
    }

    #[test]
    fn translate_rules() {
        assert_eq!(
            translate(&json!({})).unwrap_err().0,
            "text is required and must be a string"
        );
        assert_eq!(
            translate(&json!({"text":"hi"})).unwrap_err().0,
            "target_language is required and must be a string"
        );
        assert_eq!(
            translate(&json!({"text":"x".repeat(5001),"target_language":"en"}))
                .unwrap_err()
                .0,
            "text too long (max 5000 characters)"
        );
        assert_eq!(
            translate(&json!({"text":"x","target_language":"y".repeat(51)}))
                .unwrap_err()
                .0,
            "target_language too long (max 50 characters)"
        );
        assert_eq!(
            detect(&json!({"text":""})).unwrap_err().0,
            "text is required and must be a string"
        );
        assert_eq!(
            detect(&json!({"text":"x".repeat(20000)})).unwrap().len(),
            20000
        );
    }

    #[test]
    fn truthiness_is_javascripts() {
        for v in [json!(null), json!(false), json!(0), json!(""), json!(0.0)] {
            assert!(!truthy(&v), "{v}");
        }
        for v in [json!(true), json!(1), json!("a"), json!([]), json!({})] {
            assert!(truthy(&v), "{v}");
        }
    }
}
