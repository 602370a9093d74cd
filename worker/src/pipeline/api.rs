//! The smaller endpoints (API.md §2, §5.5, §5.6): translation, language
//! detection and list, the static provider and model catalogue, the
//! `/api/v1/metrics` stub and the internal authentication test.

use http::{Response, StatusCode};
use serde_json::{Value, json};

use std::sync::Arc;

use crate::cache::Policy;
use crate::pipeline::context::Pipeline;
use crate::pipeline::response::{self, Body};
use crate::pipeline::validate::TranslateInput;
use crate::provider::tokens::js_len;
use crate::provider::{CompletionRequest, EndpointKind};
use crate::runtime::clock;

/// `POST /api/v1/translate` after validation: one chat-endpoint call, no
/// routing, temperature 0.3, top_p 0.9.
pub async fn translate(
    ctx: &Arc<Pipeline>,
    input: TranslateInput,
    request_id: &str,
    policy: Policy,
) -> Response<Body> {
    let svc = &ctx.services;
    let (model, timeout) = svc.endpoint(&ctx.settings, EndpointKind::Chat);
    let request = CompletionRequest {
        endpoint: EndpointKind::Chat,
        model,
        messages: translation_messages(&input.text, &input.target_language).into(),
        temperature: 0.3,
        max_tokens: (2 * js_len(&input.text)).clamp(500, 8192) as u32,
        top_p: 0.9,
        timeout,
    };
    // Translations are cacheable (§5.5, §9) under their own kind.
    let key = |request: &CompletionRequest| {
        crate::cache::key::key(&crate::cache::KeyParts::for_request(
            "translate",
            svc.provider.name(),
            request,
            "direct",
            0,
            false,
        ))
    };
    let provider = svc.provider.clone();
    let (x_cache, outcome) = svc
        .cache
        .answer(request, key, policy, |request| async move {
            let c = provider.complete(request).await?;
            crate::provider::tokens::count(c.usage.as_ref());
            Ok(crate::cache::Entry {
                content: c.content,
                finish_reason: c.finish_reason,
                usage: c.usage,
                model: c.model,
                ..crate::cache::Entry::default()
            })
        })
        .await;
    match outcome {
        Ok(entry) => {
            let mut resp = response::json(
                StatusCode::OK,
                &json!({
                    "success": true,
                    "data": {
                        "original_text": input.text,
                        "translated_text": entry.content,
                        "target_language": input.target_language,
                        "detected_language": detect_for_translation(&input.text),
                        "confidence": 0.9,
                    },
                    "provider": svc.provider.name(),
                }),
            );
            resp.headers_mut()
                .insert("x-cache", http::HeaderValue::from_static(x_cache));
            resp
        }
        Err(e) => crate::pipeline::chat::upstream_error(
            &e,
            request_id,
            crate::pipeline::response::ErrorFormat::HearTalk,
        ),
    }
}

/// The translator prompts: a system prompt casting a professional
/// translator, and a user prompt that asks for the target language, keeps
/// formatting exactly and wants only the translation.
pub fn translation_messages(text: &str, target: &str) -> Vec<crate::provider::ChatMessage> {
    use crate::provider::ChatMessage;
    vec![
        ChatMessage::new(
            "system",
            "你是一名专业翻译，准确传达原文的含义、语气和风格，译文自然流畅。",
        ),
        ChatMessage::new(
            "user",
            format!(
                "请将以下文本翻译成{target}。完全保留原文的格式、标点和结构，只输出译文，不要任何解释。\n\n{text}"
            ),
        ),
    ]
}

fn has(text: &str, range: std::ops::RangeInclusive<char>) -> bool {
    text.chars().any(|c| range.contains(&c))
}

/// The translation endpoint's language guess (§5.5): the first script found.
pub fn detect_for_translation(text: &str) -> &'static str {
    if has(text, '\u{4E00}'..='\u{9FFF}') {
        "zh"
    } else if has(text, '\u{3040}'..='\u{30FF}') {
        "ja"
    } else if has(text, '\u{AC00}'..='\u{D7AF}') {
        "ko"
    } else if has(text, '\u{0600}'..='\u{06FF}') {
        "ar"
    } else if has(text, '\u{0400}'..='\u{04FF}') {
        "ru"
    } else if text.chars().any(|c| c.is_ascii_alphabetic()) {
        "en"
    } else {
        "unknown"
    }
}

/// The detect endpoint's guess and confidence (§5.5; no `ar`/`ru`, as before).
pub fn detect_language(text: &str) -> (&'static str, f64) {
    if has(text, '\u{4E00}'..='\u{9FFF}') {
        ("zh", 0.9)
    } else if has(text, '\u{3040}'..='\u{30FF}') {
        ("ja", 0.85)
    } else if has(text, '\u{AC00}'..='\u{D7AF}') {
        ("ko", 0.85)
    } else if text.chars().any(|c| c.is_ascii_alphabetic()) {
        ("en", 0.8)
    } else {
        ("unknown", 0.1)
    }
}

/// `POST /api/v1/translate/detect` after validation.
pub fn detect(text: String) -> Response<Body> {
    let (lang, confidence) = detect_language(&text);
    response::json(
        StatusCode::OK,
        &json!({"success": true, "data": {"text": text, "detected_language": lang, "confidence": confidence, "possible_languages": []}}),
    )
}

/// `GET /api/v1/translate/languages`.
pub fn languages() -> Response<Body> {
    const LANGS: [(&str, &str, &str); 12] = [
        ("zh", "中文", "中文"),
        ("en", "English", "English"),
        ("ja", "Japanese", "日本語"),
        ("ko", "Korean", "한국어"),
        ("fr", "French", "Français"),
        ("de", "German", "Deutsch"),
        ("es", "Spanish", "Español"),
        ("it", "Italian", "Italiano"),
        ("ru", "Russian", "Русский"),
        ("pt", "Portuguese", "Português"),
        ("ar", "Arabic", "العربية"),
        ("hi", "Hindi", "हिन्दी"),
    ];
    let list: Vec<Value> = LANGS
        .iter()
        .map(|(code, name, native)| json!({"code": code, "name": name, "nativeName": native}))
        .collect();
    response::json(
        StatusCode::OK,
        &json!({"success": true, "data": {"languages": list, "total": 12}}),
    )
}

/// `GET /api/v1/providers` (§5.6): the original payload, or the simulated entry.
pub fn providers(simulated: bool) -> Response<Body> {
    let provider = if simulated {
        json!({
            "id": "simulated",
            "name": "Simulated provider",
            "description": "Simulated mode: answers are generated locally and no model is called",
            "endpoints": endpoints(),
            "status": "simulated",
            "version": "1.0.0",
        })
    } else {
        json!({
            "id": "byteplus",
            "name": "Byteplus AI",
            "description": "Byteplus AI service with dual endpoints",
            "endpoints": endpoints(),
            "status": "active",
            "version": "1.0.0",
        })
    };
    response::json(
        StatusCode::OK,
        &json!({"success": true, "data": {"providers": [provider], "total": 1, "simulated": simulated}}),
    )
}

fn endpoints() -> Value {
    json!([
        {"id": "chat", "name": "通用对话", "model": "skylark-pro-250415", "capabilities": ["chat", "completion"]},
        {"id": "work_assistant", "name": "工作助理", "model": "skylark-pro-250415-work", "capabilities": ["work_tasks", "analysis"]}
    ])
}

/// `GET /api/v1/models` (§5.6, hard-coded).
pub fn models() -> Response<Body> {
    let common = |id: &str, name: &str, kind: &str, caps: [&str; 4]| {
        json!({
            "id": id, "name": name, "type": kind, "capabilities": caps,
            "provider": "byteplus", "context_length": 32768, "max_tokens": 4096,
            "pricing": {"input": "0.001/1k tokens", "output": "0.002/1k tokens"}, "status": "active",
        })
    };
    let m1 = common(
        "skylark-pro-250415",
        "Skylark Pro Chat",
        "chat",
        [
            "text_generation",
            "conversation",
            "content_creation",
            "question_answering",
        ],
    );
    let m2 = common(
        "skylark-pro-250415-work",
        "Skylark Pro Work Assistant",
        "work_assistant",
        [
            "work_analysis",
            "task_planning",
            "document_processing",
            "professional_writing",
        ],
    );
    response::json(
        StatusCode::OK,
        &json!({"success": true, "data": {"models": [m1, m2], "total": 2}}),
    )
}

/// `GET /api/v1/metrics`: the unchanged stub.
pub fn metrics_stub() -> Response<Body> {
    response::json(
        StatusCode::OK,
        &json!({"timestamp": clock::now_iso8601(), "service": "ai-service", "version": "1.0.0", "message": "Metrics endpoint available"}),
    )
}

/// `GET /internal/api/v1/test` after internal authentication.
pub fn internal_test(claims: Value, request_id: &str) -> Response<Body> {
    response::json(
        StatusCode::OK,
        &json!({
            "success": true,
            "message": "Internal service authentication test successful",
            "serviceAuth": claims,
            "timestamp": clock::now_iso8601(),
            "requestId": request_id,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_guesses() {
        assert_eq!(detect_for_translation("hello 你好"), "zh");
        assert_eq!(detect_for_translation("こんにちは"), "ja");
        assert_eq!(detect_for_translation("안녕"), "ko");
        assert_eq!(detect_for_translation("مرحبا"), "ar");
        assert_eq!(detect_for_translation("привет"), "ru");
        assert_eq!(detect_for_translation("hello"), "en");
        assert_eq!(detect_for_translation("123 !"), "unknown");
        assert_eq!(
            detect_language("привет"),
            ("unknown", 0.1),
            "detect has no ru"
        );
        assert_eq!(detect_language("hi"), ("en", 0.8));
        assert_eq!(detect_language("中文"), ("zh", 0.9));
    }

    #[test]
    fn translation_prompt_carries_target_and_text() {
        let m = translation_messages("Hello\nWorld", "日本語");
        assert_eq!(m[0].role, "system");
        assert!(m[1].content.contains("日本語"));
        assert!(m[1].content.ends_with("\n\nHello\nWorld"));
    }
}
