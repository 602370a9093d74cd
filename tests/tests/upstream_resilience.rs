//! Upstream resilience (API.md §10, issue [edge]) through the real
//! supervisor and worker against the mock Ark: retries with backoff that
//! the client never sees, counted in `ai_upstream_retries_total`; no retry
//! on a quota error; a circuit breaker that opens after consecutive
//! failures (then fails fast without upstream calls), probes when half-open
//! and closes on recovery; and a route's fallback endpoint.

mod helper;

use std::time::{Duration, Instant};

use heartalk_e2e::mock_ark::{Behavior, MockArk};
use helper::*;
use serde_json::{Value, json};

fn providers_status(svc: &Service) -> Value {
    let r = http_get(svc.addr, "/api/v1/health", Duration::from_secs(5)).unwrap();
    r.json()["data"]["services"]["providers"]["status"].clone()
}

#[test]
fn transient_failures_are_retried_and_counted_quota_is_not() {
    let ark = MockArk::start();
    ark.push(Behavior::http_error(503, "busy"));
    ark.push(Behavior::http_error(503, "busy"));
    let svc = live_service(&ark.base_url(), &[]);
    let r = svc.generate("重试一下");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(ark.calls(), 3, "two retries, then the answer");
    wait_for("retries in /metrics", Duration::from_secs(10), || {
        (metric(svc.addr, "ai_upstream_retries_total", "endpoint=\"chat\"")? >= 2.0).then_some(())
    });

    ark.reset();
    ark.push(Behavior::quota_exceeded());
    let r = svc.generate("没有额度了");
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["code"], "UPSTREAM_RATE_LIMITED");
    assert_eq!(ark.calls(), 1, "a quota error is not retried");
}

#[test]
fn the_breaker_opens_fails_fast_and_closes_after_a_probe() {
    let ark = MockArk::start();
    ark.set(Behavior::server_error());
    let svc = live_service(
        &ark.base_url(),
        &[
            ("UPSTREAM_MAX_RETRIES", "0"),
            ("CIRCUIT_FAILURE_THRESHOLD", "3"),
            ("CIRCUIT_OPEN_SECS", "2"),
        ],
    );
    for i in 0..3 {
        let r = svc.generate(&format!("失败 {i}"));
        assert_eq!(r.status, 502, "{}", r.body);
    }
    // The third failure opened the breaker before it was answered.
    let opened = Instant::now();
    assert_eq!(ark.calls(), 3);
    // Open: fast failures, no upstream calls.
    for i in 0..3 {
        let r = svc.generate(&format!("熔断 {i}"));
        assert_eq!(r.status, 502, "{}", r.body);
        let error = r.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains("Circuit open"), "{error}");
        assert!(r.header("retry-after").is_some());
    }
    assert_eq!(ark.calls(), 3, "no upstream call while open");
    assert_eq!(providers_status(&svc), "degraded");
    assert_eq!(
        metric(svc.addr, "ai_circuit_state", "endpoint=\"chat\""),
        Some(2.0)
    );

    // The endpoint recovers; after the open period one probe closes it.
    ark.set(Behavior::success());
    // The open period is the behaviour under test, not a synchronisation:
    // wait it out, counted from the opening.
    std::thread::sleep((opened + Duration::from_secs(2)).saturating_duration_since(Instant::now()));
    let r = svc.generate("恢复了吗");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(ark.calls(), 4);
    assert_eq!(
        metric(svc.addr, "ai_circuit_state", "endpoint=\"chat\""),
        Some(0.0)
    );
    assert_eq!(svc.generate("一切正常").status, 200);
    assert_eq!(ark.calls(), 5, "closed: calls go upstream again");
}

#[test]
fn a_failing_endpoint_falls_back_to_the_routes_second_endpoint() {
    let ark = MockArk::start();
    let svc = live_service(
        &ark.base_url(),
        &[
            ("UPSTREAM_MAX_RETRIES", "0"),
            ("CHAT_FALLBACK_EP", "ep-chat-backup"),
        ],
    );
    ark.push(Behavior::server_error());
    let r = svc.generate("主节点挂了");
    assert_eq!(r.status, 200, "{}", r.body);
    let bodies = ark.bodies();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0]["model"], "ep-chat");
    assert_eq!(bodies[1]["model"], "ep-chat-backup");

    // Streams fall back too (before the first byte reached the client).
    ark.reset();
    ark.push(Behavior::server_error());
    let r = svc.post(
        "/api/v1/chat/stream",
        &json!({"messages":[{"role":"user","content":"流式也要备用"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(sse_json(&r.body).last().unwrap()["type"], "complete");
    assert_eq!(ark.last_body().unwrap()["model"], "ep-chat-backup");
    wait_for("fallbacks in /metrics", Duration::from_secs(10), || {
        (metric(svc.addr, "ai_upstream_fallbacks_total", "endpoint=\"chat\"")? >= 2.0).then_some(())
    });

    // A client error is not the endpoint's fault: no fallback.
    ark.reset();
    ark.push(Behavior::ark_error(400, "InvalidParameter", "bad"));
    let r = svc.generate("参数错误");
    assert_eq!(r.status, 502);
    assert_eq!(ark.calls(), 1);
}
