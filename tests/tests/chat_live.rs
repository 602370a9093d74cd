//! The chat pipeline in live mode against the mock Ark server, through the
//! real supervisor and worker: API.md §15 HTTP vectors #6–#8, what exactly
//! is sent upstream (wrapping once, Self-Consistency temperatures, summed
//! usage), byte-exact SSE frames, and reasoning visibility.

mod helper;

use heartalk_e2e::mock_ark::{Behavior, MockArk, derived_content};
use helper::*;
use serde_json::{Value, json};

fn hello() -> Value {
    json!({"messages":[{"role":"user","content":"你好"}]})
}

#[test]
fn generate_uses_chain_of_thought_on_the_chat_endpoint() {
    let ark = MockArk::start();
    let svc = live_service(&ark.base_url(), &[]);
    let r = svc.post("/api/v1/chat/generate", &hello());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-cache"), Some("MISS"));
    let b = r.json();
    assert_eq!(b["success"], true);
    assert_eq!(b["endpoint"], "ep-chat");
    assert_eq!(b["provider"], "byteplus");
    assert_eq!(
        b["reasoning"],
        json!({"type":"chain-of-thought","enhanced":true})
    );
    assert_eq!(b["data"]["finish_reason"], "stop");
    assert!(b["data"].get("reasoning_content").is_none());

    assert_eq!(ark.calls(), 1);
    let req = &ark.requests()[0];
    assert_eq!(req["headers"]["authorization"], "Bearer test-key");
    let sent = &req["body"];
    assert_eq!(
        b["data"]["content"],
        derived_content(sent),
        "the upstream content is returned as is"
    );
    assert_eq!(sent["model"], "ep-chat");
    assert_eq!(sent["temperature"], 0.7);
    assert_eq!(sent["max_tokens"], 2000);
    assert_eq!(sent["top_p"], 1.0);
    assert_eq!(sent["frequency_penalty"], 0);
    assert_eq!(sent["presence_penalty"], 0);
    assert!(sent.get("stream").is_none());
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(
        messages.len(),
        1,
        "the user turn is sent once, wrapped: {messages:?}"
    );
    let turn = messages[0]["content"].as_str().unwrap();
    assert!(
        turn.contains("问题：你好") && turn.len() > "你好".len() * 4,
        "{turn}"
    );
    let usage = &b["data"]["usage"];
    assert!(
        usage["prompt_tokens"].as_u64().unwrap() > 0,
        "the upstream's usage: {usage}"
    );
}

#[test]
fn self_consistency_samples_three_times_and_sums_usage() {
    let ark = MockArk::start();
    // Different lengths, so the median pick is observable: sample 0 long,
    // sample 1 short, sample 2 medium.
    ark.push(Behavior::success().with_content("这是第一个比较长的回答，内容最多。"));
    ark.push(Behavior::success().with_content("短回答"));
    ark.push(Behavior::success().with_content("中等长度的回答"));
    let svc = live_service(&ark.base_url(), &[]);
    let r = svc.post(
        "/api/v1/chat/generate",
        &json!({"messages":[{"role":"user","content":"帮我制定一个工作计划"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let b = r.json();
    assert_eq!(b["endpoint"], "ep-work");
    let reasoning = &b["reasoning"];
    assert_eq!(reasoning["type"], "self-consistency");
    assert_eq!(reasoning["enhanced"], true);
    assert_eq!(reasoning["samples_count"], 3);
    assert_eq!(ark.calls(), 3);
    // The three requests are in flight together; match them by temperature.
    let mut temps: Vec<f64> = ark
        .bodies()
        .iter()
        .map(|b| b["temperature"].as_f64().unwrap())
        .collect();
    temps.sort_by(f64::total_cmp);
    assert_eq!(temps, [0.7, 0.8, 0.9]);
    assert!(ark.bodies().iter().all(|b| b["model"] == "ep-work"));
    assert_eq!(b["data"]["content"], "中等长度的回答", "median by length");
    let selected = reasoning["selected_sample"].as_u64().unwrap();
    assert!(selected <= 2);
    // usage: the sum over the three samples
    let usage = &b["data"]["usage"];
    assert!(usage["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    let single = svc.post(
        "/api/v1/chat/generate",
        &json!({"messages":[{"role":"user","content":"你好"}],
        "options":{"endpointType":"work_assistant"}}),
    );
    let one = single.json()["data"]["usage"]["prompt_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        usage["prompt_tokens"].as_u64().unwrap() > 2 * one,
        "three samples' prompts summed: {usage} vs {one}"
    );
}

#[test]
fn all_samples_failing_falls_back_to_one_direct_call() {
    let ark = MockArk::start();
    for _ in 0..3 {
        ark.push(Behavior::empty_content());
    }
    let svc = live_service(&ark.base_url(), &[("UPSTREAM_MAX_RETRIES", "0")]);
    let r = svc.post(
        "/api/v1/chat/generate",
        &json!({"messages":[{"role":"user","content":"分析一下React和Vue的优缺点"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let b = r.json();
    assert!(b.get("reasoning").is_none(), "{b}");
    assert_eq!(ark.calls(), 4);
    let last = ark
        .bodies()
        .into_iter()
        .find(|b| b["messages"][0]["content"] == "分析一下React和Vue的优缺点");
    assert!(last.is_some(), "the fallback sends the raw message");
}

/// The frames our stream must produce for what the mock sent, byte for byte.
fn expected_frames(sent: &Value, usage: &Value, show: Option<&str>) -> Vec<String> {
    let content = derived_content(sent);
    let chars: Vec<char> = content.chars().collect();
    let mut out = Vec::new();
    if let Some(r) = show {
        let rc: Vec<char> = r.chars().collect();
        for piece in rc.chunks(4) {
            let p: String = piece.iter().collect();
            out.push(format!(
                "data: {}",
                json!({"type":"reasoning","reasoning":p,"done":false})
            ));
        }
    }
    for piece in chars.chunks(4) {
        let p: String = piece.iter().collect();
        out.push(format!(
            "data: {}",
            json!({"type":"content","content":p,"done":false,"provider":"byteplus"})
        ));
    }
    out.push(format!(
        "data: {}",
        json!({"type":"complete","done":true,"usage":usage,"finish_reason":"stop","provider":"byteplus",
               "metadata":{"conversation_id":"c-1","endpoint":"ep-chat","route":"chat","reasoning":"chain-of-thought","cached":false}})
    ));
    out
}

#[test]
fn stream_frames_are_byte_exact() {
    let ark = MockArk::start();
    let svc = live_service(&ark.base_url(), &[]);
    let body = json!({"messages":[{"role":"user","content":"你好"}], "conversation_id": "c-1"});
    let r = svc.post("/api/v1/chat/stream", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(r.header("x-accel-buffering"), Some("no"));
    assert!(r.header("content-encoding").is_none());
    let sent = ark.last_body().unwrap();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    let frames = sse_json(&r.body);
    let usage = frames.last().unwrap()["usage"].clone();
    assert!(usage["total_tokens"].as_u64().unwrap() > 0);
    assert!(
        usage.get("estimated").is_none(),
        "the upstream's usage is used"
    );
    assert_eq!(sse_events(&r.body), expected_frames(&sent, &usage, None));
}

#[test]
fn a_stream_split_at_every_byte_is_reassembled() {
    let ark = MockArk::start();
    ark.set(Behavior::success().with_write_size(1));
    let svc = live_service(&ark.base_url(), &[]);
    let body = json!({"messages":[{"role":"user","content":"你好"}], "conversation_id": "c-1"});
    let r = svc.post("/api/v1/chat/stream", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let sent = ark.last_body().unwrap();
    let usage = sse_json(&r.body).last().unwrap()["usage"].clone();
    assert_eq!(sse_events(&r.body), expected_frames(&sent, &usage, None));
    // and the worker is still healthy
    assert_eq!(http_get(svc.addr, "/health", DEADLINE).unwrap().status, 200);
}

#[test]
fn reasoning_is_hidden_unless_shown() {
    let ark = MockArk::start();
    ark.set(Behavior::success().with_reasoning("先想一想再回答"));
    let hidden = live_service(&ark.base_url(), &[]);
    let r = hidden.post("/api/v1/chat/generate", &hello());
    assert!(
        r.json()["data"].get("reasoning_content").is_none(),
        "{}",
        r.body
    );
    // Another temperature, so the stream really goes upstream instead of
    // replaying the generate call's cached answer.
    let warmer = json!({"messages":[{"role":"user","content":"你好"}], "temperature": 0.9});
    let r = hidden.post("/api/v1/chat/stream", &warmer);
    let frames = sse_json(&r.body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        frames.last().map(|f| f["type"].clone()),
        Some(json!("complete")),
        "{frames:?}"
    );
    assert!(frames.iter().all(|f| f["type"] != "reasoning"));
    let turn = ark.last_body().unwrap()["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();

    let shown = live_service(&ark.base_url(), &[("SHOW_REASONING_PROCESS", "true")]);
    let r = shown.post("/api/v1/chat/generate", &hello());
    assert_eq!(
        r.json()["data"]["reasoning_content"],
        "先想一想再回答",
        "{}",
        r.body
    );
    let shown_turn = ark.last_body().unwrap()["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(
        turn, shown_turn,
        "the five-stage prompt replaces the silent one"
    );
    // Another temperature: a fresh upstream stream, not the cached answer
    // of the generate call above.
    let body = json!({"messages":[{"role":"user","content":"你好"}], "conversation_id": "c-1", "temperature": 0.9});
    let r = shown.post("/api/v1/chat/stream", &body);
    let sent = ark.last_body().unwrap();
    let usage = sse_json(&r.body).last().unwrap()["usage"].clone();
    assert_eq!(
        sse_events(&r.body),
        expected_frames(&sent, &usage, Some("先想一想再回答"))
    );
}

#[test]
fn hidden_reasoning_still_gets_heartbeats() {
    let ark = MockArk::start();
    // 2.4 s of reasoning (12 pieces × 200 ms) that is not shown, then content.
    ark.set(
        Behavior::success()
            .with_reasoning("思".repeat(48))
            .with_chunk_delay(std::time::Duration::from_millis(200)),
    );
    let svc = live_service(&ark.base_url(), &[("SSE_HEARTBEAT_SECS", "1")]);
    let r = svc.post("/api/v1/chat/stream", &hello());
    assert_eq!(r.status, 200, "{}", r.body);
    let events = sse_events(&r.body);
    let first_content = events
        .iter()
        .position(|e| e.contains("\"type\":\"content\""))
        .unwrap();
    let pings = events[..first_content]
        .iter()
        .filter(|e| *e == ": ping")
        .count();
    assert!(
        pings >= 1,
        "no heartbeat during 2.4 s of hidden reasoning: {events:?}"
    );
    assert!(events.iter().all(|e| !e.contains("\"type\":\"reasoning\"")));
}

#[test]
fn metrics_on_the_service_port_come_from_the_supervisor() {
    let ark = MockArk::start();
    let svc = live_service(&ark.base_url(), &[]);
    assert_eq!(svc.post("/api/v1/chat/generate", &hello()).status, 200);
    // an invented method must not become a label of its own
    let _ = request(svc.addr, "FROBNICATE", "/x", &[], b"");
    let text = http_get(svc.addr, "/metrics", DEADLINE).unwrap().body;
    for needle in [
        "http_requests_total{method=\"POST\",route=\"/api/v1/chat/generate\",status=\"200\"} 1",
        "ai_upstream_requests_total{endpoint=\"chat\",outcome=\"success\",provider=\"byteplus\"} 1",
        "ai_route_decisions_total{route=\"chat\"} 1",
        "method=\"OTHER\"",
        "# TYPE http_request_duration_seconds histogram",
        "heartalk_worker_up{app=\"heartalk\",slot=\"0\"} 1",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    assert!(!text.contains("FROBNICATE"));
}
