//! Legacy bodies take their history from the HearTalk backend (API.md §8):
//! sent with a service JWT and the API key, retried once on a 5xx, never
//! failing the chat when the backend is down, and a finished turn is
//! visible to the next request.

mod helper;

use heartalk_e2e::mock_ark::MockArk;
use heartalk_e2e::mock_backend::MockBackend;
use helper::*;
use serde_json::{Value, json};

fn service(ark: &MockArk, backend: &MockBackend) -> Service {
    live_service(
        &ark.base_url(),
        &[
            ("HEARTALK_BACKEND_URL", &backend.base_url()),
            ("HEARTALK_API_KEY", "backend-key"),
            ("HEALTH_CHECK_INTERVAL", "600000"),
        ],
    )
}

fn legacy(message: &str) -> Value {
    json!({"conversation_id": "42", "message": message, "user_id": "u1"})
}

fn sent_messages(ark: &MockArk) -> Vec<Value> {
    ark.last_body().unwrap()["messages"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn history_is_fetched_with_service_credentials_and_sent_upstream() {
    let ark = MockArk::start();
    let backend = MockBackend::start();
    backend.set_history(
        "42",
        vec![
            json!({"role": "user", "content": "我们团队下周有个项目要交付"}),
            json!({"role": "assistant", "content": "好的，需要我帮你做什么？"}),
        ],
    );
    let svc = service(&ark, &backend);
    let r = svc.post("/api/v1/chat/generate", &legacy("你好"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["data"]["conversation_id"], "42");

    let req = backend
        .requests()
        .into_iter()
        .find(|r| r.path.contains("/history"))
        .expect("history fetched");
    assert_eq!(req.path, "/internal/api/v1/conversations/42/history");
    assert_eq!(req.api_key.as_deref(), Some("backend-key"));
    assert_eq!(req.user_agent.as_deref(), Some("HearTalk-AI-MVP/1.0.0"));
    let bearer = req
        .authorization
        .as_deref()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string();
    let claims = jsonwebtoken::dangerous::insecure_decode::<Value>(&bearer)
        .unwrap()
        .claims;
    assert_eq!(claims["service"], "ai-service");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        300
    );

    let sent = sent_messages(&ark);
    assert_eq!(sent.len(), 3, "history + the wrapped turn: {sent:?}");
    assert_eq!(sent[0]["content"], "我们团队下周有个项目要交付");
    assert_eq!(sent[1]["role"], "assistant");
    assert!(sent[2]["content"].as_str().unwrap().contains("问题：你好"));

    // A new turn is visible to the next request: the finished turn dropped
    // the cached history, so the backend is asked again.
    backend.append("42", json!({"role": "user", "content": "你好"}));
    let calls = backend.history_calls();
    let r = svc.post("/api/v1/chat/generate", &legacy("然后呢"));
    assert_eq!(r.status, 200);
    assert_eq!(backend.history_calls(), calls + 1);
    assert_eq!(sent_messages(&ark).len(), 4);
}

#[test]
fn a_backend_error_is_retried_once() {
    let ark = MockArk::start();
    let backend = MockBackend::start();
    backend.set_history("42", vec![json!({"role": "user", "content": "之前的话"})]);
    backend.fail_next(1, 500);
    let svc = service(&ark, &backend);
    let r = svc.post("/api/v1/chat/generate", &legacy("你好"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(backend.history_calls(), 2, "one retry after the 500");
    assert_eq!(sent_messages(&ark).len(), 2, "the retried history is used");
}

#[test]
fn a_4xx_is_not_retried_and_the_chat_goes_on() {
    let ark = MockArk::start();
    let backend = MockBackend::start();
    backend.fail_next(5, 404);
    let svc = service(&ark, &backend);
    let r = svc.post("/api/v1/chat/generate", &legacy("你好"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(backend.history_calls(), 1);
    assert_eq!(sent_messages(&ark).len(), 1);
}

#[test]
fn a_backend_that_is_down_gives_an_empty_history_not_an_error() {
    let ark = MockArk::start();
    let backend = MockBackend::start();
    backend.set_down(true);
    let svc = service(&ark, &backend);
    let r = svc.post("/api/v1/chat/generate", &legacy("你好"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(sent_messages(&ark).len(), 1, "only the user turn");
    let r = svc.post("/api/v1/chat/stream", &legacy("你好"));
    assert_eq!(r.status, 200);
    assert_eq!(sse_json(&r.body).last().unwrap()["type"], "complete");
}
