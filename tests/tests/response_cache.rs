//! The response cache in one service (API.md §9, §15 #6), through the real
//! supervisor and worker against the mock Ark: a repeat is a `HIT` with a
//! byte-identical body and no upstream call; the key ignores JSON key order
//! and whitespace but not the parameters; a streaming hit replays the same
//! frames; `Cache-Control: no-cache` bypasses the lookup, `no-store` the
//! lookup and the store; errors and self-consistency answers behave as
//! documented.

mod helper;

use heartalk_e2e::mock_ark::{Behavior, MockArk};
use helper::*;
use serde_json::{Value, json};

fn post_raw(svc: &Service, path: &str, body: &str, extra: &[(&str, &str)]) -> Response {
    let auth = format!("Bearer {}", user_token());
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Authorization", auth.as_str()),
    ];
    headers.extend_from_slice(extra);
    request(svc.addr, "POST", path, &headers, body.as_bytes()).expect("POST")
}

#[test]
fn a_repeat_is_a_hit_with_the_same_bytes_and_no_upstream_call() {
    let ark = MockArk::start();
    let svc = live_service(&ark.base_url(), &[]);
    let body = json!({"messages":[{"role":"user","content":"你好"}]});
    let first = svc.post("/api/v1/chat/generate", &body);
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    let second = svc.post("/api/v1/chat/generate", &body);
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(second.body, first.body, "byte-identical");
    assert_eq!(ark.calls(), 1, "the hit made no upstream call");

    // Same question, keys reordered and spaced out: still the same key.
    let reordered = r#"{ "messages" : [ { "content" : "你好", "role" : "user" } ] }"#;
    let third = post_raw(&svc, "/api/v1/chat/generate", reordered, &[]);
    assert_eq!(third.header("x-cache"), Some("HIT"), "{}", third.body);
    assert_eq!(third.body, first.body);

    // Different parameters are a different question.
    let warmer = json!({"messages":[{"role":"user","content":"你好"}], "temperature": 1.1});
    let r = svc.post("/api/v1/chat/generate", &warmer);
    assert_eq!(r.header("x-cache"), Some("MISS"));
    let other = json!({"messages":[{"role":"user","content":"你好!"}]});
    assert_eq!(
        svc.post("/api/v1/chat/generate", &other).header("x-cache"),
        Some("MISS")
    );
    assert_eq!(ark.calls(), 3);

    // no-cache skips the lookup (and refreshes the entry).
    let fresh = post_raw(
        &svc,
        "/api/v1/chat/generate",
        &body.to_string(),
        &[("Cache-Control", "no-cache")],
    );
    assert_eq!(fresh.header("x-cache"), Some("MISS"));
    assert_eq!(ark.calls(), 4);
}

#[test]
fn no_store_is_neither_served_from_nor_stored_in_the_cache() {
    let ark = MockArk::start();
    let svc = live_service(&ark.base_url(), &[]);
    let body = json!({"messages":[{"role":"user","content":"讲个故事"}]}).to_string();
    let ask = |cache_control: Option<&str>, upstream_says: Option<&str>| {
        if let Some(content) = upstream_says {
            ark.push(Behavior::success().with_content(content));
        }
        let headers: Vec<(&str, &str)> = cache_control
            .map(|v| ("Cache-Control", v))
            .into_iter()
            .collect();
        let r = post_raw(&svc, "/api/v1/chat/generate", &body, &headers);
        assert_eq!(r.status, 200, "{}", r.body);
        r
    };
    let content = |r: &Response| r.json()["data"]["content"].clone();

    // no-store on a cold key: a call, and its answer is not kept ...
    let first = ask(Some("no-store"), Some("第一个答案"));
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(content(&first), "第一个答案");
    assert_eq!(ark.calls(), 1);
    // ... so a plain request makes the call again (and stores its answer).
    let second = ask(None, Some("第二个答案"));
    assert_eq!(second.header("x-cache"), Some("MISS"), "no-store stored it");
    assert_eq!(content(&second), "第二个答案");
    assert_eq!(ark.calls(), 2);

    // With an entry there, no-store does not read it ...
    let third = ask(Some("no-store"), Some("第三个答案"));
    assert_eq!(third.header("x-cache"), Some("MISS"), "no-store was served");
    assert_eq!(content(&third), "第三个答案");
    assert_eq!(ark.calls(), 3);
    // ... nor replace it (no-cache would): the entry is still the second answer.
    let fourth = ask(None, None);
    assert_eq!(fourth.header("x-cache"), Some("HIT"));
    assert_eq!(ark.calls(), 3, "the hit made no upstream call");
    assert_eq!(
        content(&fourth),
        "第二个答案",
        "no-store replaced the entry"
    );
    assert_eq!(fourth.body, second.body);
}

#[test]
fn an_explicit_conversation_id_is_kept_on_a_hit() {
    let ark = MockArk::start();
    let svc = live_service(&ark.base_url(), &[]);
    let a = json!({"messages":[{"role":"user","content":"早上好"}], "conversation_id": "c-a"});
    let b = json!({"messages":[{"role":"user","content":"早上好"}], "conversation_id": "c-b"});
    let first = svc.post("/api/v1/chat/generate", &a);
    let second = svc.post("/api/v1/chat/generate", &b);
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(second.json()["data"]["conversation_id"], "c-b");
    assert_eq!(
        second.json()["data"]["content"],
        first.json()["data"]["content"]
    );
}

#[test]
fn a_streaming_hit_replays_the_same_frames() {
    let ark = MockArk::start();
    ark.set(Behavior::success().with_reasoning("先想一想"));
    let svc = live_service(&ark.base_url(), &[("SHOW_REASONING_PROCESS", "true")]);
    let body = json!({"messages":[{"role":"user","content":"讲个笑话"}], "conversation_id": "s-1"});
    let live = svc.post("/api/v1/chat/stream", &body);
    assert_eq!(live.status, 200, "{}", live.body);
    assert_eq!(live.header("x-cache"), Some("MISS"));
    let replay = svc.post("/api/v1/chat/stream", &body);
    assert_eq!(replay.header("x-cache"), Some("HIT"));
    assert_eq!(
        replay.header("content-type"),
        Some("text/event-stream"),
        "a hit is still a stream"
    );
    assert_eq!(ark.calls(), 1);
    let (live_frames, replay_frames) = (sse_json(&live.body), sse_json(&replay.body));
    assert_eq!(live_frames.len(), replay_frames.len());
    let n = live_frames.len();
    assert!(
        live_frames.iter().any(|f| f["type"] == "reasoning"),
        "reasoning shown: {live_frames:?}"
    );
    assert_eq!(
        live_frames[..n - 1],
        replay_frames[..n - 1],
        "content and reasoning frames identical"
    );
    let (mut a, mut b) = (live_frames[n - 1].clone(), replay_frames[n - 1].clone());
    assert_eq!(a["metadata"]["cached"], false);
    assert_eq!(b["metadata"]["cached"], true);
    a["metadata"]["cached"] = Value::Null;
    b["metadata"]["cached"] = Value::Null;
    assert_eq!(a, b, "the complete frame differs only in metadata.cached");

    // A generate with the same question is answered from the stream's entry.
    let g = svc.post("/api/v1/chat/generate", &body);
    assert_eq!(g.header("x-cache"), Some("HIT"));
    let content: String = live_frames
        .iter()
        .filter(|f| f["type"] == "content")
        .map(|f| f["content"].as_str().unwrap())
        .collect();
    assert_eq!(g.json()["data"]["content"], content);
    assert_eq!(g.json()["data"]["reasoning_content"], "先想一想");
}

#[test]
fn errors_are_not_cached_and_self_consistency_is() {
    let ark = MockArk::start();
    ark.push(Behavior::quota_exceeded());
    let svc = live_service(&ark.base_url(), &[]);
    let body = json!({"messages":[{"role":"user","content":"你好"}]});
    let failed = svc.post("/api/v1/chat/generate", &body);
    assert_eq!(failed.status, 429, "{}", failed.body);
    let ok = svc.post("/api/v1/chat/generate", &body);
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("x-cache"),
        Some("MISS"),
        "the error was not stored"
    );

    // Self-consistency: 3 calls once, then a hit with the same selection.
    ark.reset();
    let complex = json!({"messages":[{"role":"user","content":"帮我制定一个工作计划"}]});
    let first = svc.post("/api/v1/chat/generate", &complex);
    assert_eq!(first.json()["reasoning"]["type"], "self-consistency");
    assert_eq!(ark.calls(), 3);
    let again = svc.post("/api/v1/chat/generate", &complex);
    assert_eq!(again.header("x-cache"), Some("HIT"));
    assert_eq!(again.body, first.body);
    assert_eq!(ark.calls(), 3);
}

#[test]
fn translations_are_cached_and_the_cache_can_be_turned_off() {
    let ark = MockArk::start();
    let svc = live_service(&ark.base_url(), &[]);
    let body = json!({"text": "你好", "target_language": "English"});
    assert_eq!(
        svc.post("/api/v1/translate", &body).header("x-cache"),
        Some("MISS")
    );
    assert_eq!(
        svc.post("/api/v1/translate", &body).header("x-cache"),
        Some("HIT")
    );
    assert_eq!(ark.calls(), 1);
    drop(svc);

    let off = live_service(&ark.base_url(), &[("CACHE_ENABLED", "false")]);
    ark.reset();
    let hello = json!({"messages":[{"role":"user","content":"你好"}]});
    for _ in 0..2 {
        assert_eq!(
            off.post("/api/v1/chat/generate", &hello).header("x-cache"),
            Some("MISS")
        );
    }
    assert_eq!(ark.calls(), 2);
}
