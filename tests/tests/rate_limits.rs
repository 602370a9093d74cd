//! The original rate-limit buckets and headers (API.md §4, §15 #10).
//! One worker here: sharing counters across workers is the [edge] work.

mod helper;

use helper::*;
use serde_json::json;

#[test]
fn the_eleventh_stream_request_in_a_window_is_refused() {
    let svc = Service::start(
        1,
        &[
            ("SIMULATED_LATENCY_MS", "0"),
            ("SIMULATED_TOKENS_PER_SEC", "0"),
        ],
    );
    let body = json!({"messages":[{"role":"user","content":"你好"}]});
    stay_in_one_window();
    for i in 1..=10 {
        let r = svc.post("/api/v1/chat/stream", &body);
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(r.header("ratelimit-limit"), Some("10"));
        assert_eq!(
            r.header("ratelimit-remaining"),
            Some((10 - i).to_string().as_str())
        );
    }
    let r = svc.post("/api/v1/chat/stream", &body);
    assert_eq!(r.status, 429, "{}", r.body);
    let b = r.json();
    assert_eq!(b["success"], false);
    assert_eq!(
        b["error"],
        "Too many streaming requests, please try again later."
    );
    assert_eq!(b["code"], "STREAM_RATE_LIMIT_EXCEEDED");
    assert_eq!(b["retryAfter"], 60);
    assert!(b["requestId"].is_string() && b["timestamp"].is_string());
    assert_eq!(r.header("ratelimit-limit"), Some("10"));
    assert_eq!(r.header("x-ratelimit-limit"), Some("10"));
    assert_eq!(r.header("ratelimit-policy"), Some("10;w=60"));
    assert!(r.header("retry-after").is_some());
    // another bucket is unaffected, and exempt paths carry no headers
    let r = svc.post("/api/v1/chat/generate", &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-limit"), Some("30"));
    let r = http_get(svc.addr, "/health", DEADLINE).unwrap();
    assert!(r.header("ratelimit-limit").is_none());
}

#[test]
fn unauthenticated_requests_are_not_counted() {
    let svc = Service::start(
        1,
        &[
            ("RATE_LIMIT_STREAM_MAX", "1"),
            ("SIMULATED_LATENCY_MS", "0"),
        ],
    );
    let body = json!({"messages":[{"role":"user","content":"你好"}]});
    stay_in_one_window();
    for _ in 0..3 {
        assert_eq!(
            post_json(svc.addr, "/api/v1/chat/stream", None, &body).status,
            401
        );
    }
    assert_eq!(svc.post("/api/v1/chat/stream", &body).status, 200);
    // ...but a request that fails validation still counts
    let r = svc.post("/api/v1/chat/stream", &json!({"messages":[]}));
    assert_eq!(r.status, 429, "{}", r.body);
}
