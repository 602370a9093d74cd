//! Upstream failures (API.md §10.3, §15 #9) through the real binary: each
//! fault gives its documented status and body (or one error frame on a
//! started stream), retries happen exactly where the contract allows, and
//! the worker stays up and healthy.

mod helper;

use std::time::{Duration, Instant};

use heartalk_e2e::mock_ark::{Behavior, MockArk};
use helper::*;
use serde_json::json;

fn hello() -> serde_json::Value {
    json!({"messages":[{"role":"user","content":"你好"}]})
}

/// Same worker pid before and after, and /health answers.
fn assert_still_healthy(svc: &Service, pid_before: i32) {
    let r = http_get(svc.addr, "/api/v1/health", DEADLINE).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["data"]["system"]["pid"],
        pid_before,
        "the worker must not have restarted"
    );
}

fn worker_pid(svc: &Service) -> i32 {
    let r = http_get(svc.addr, "/api/v1/health", DEADLINE).unwrap();
    r.json()["data"]["system"]["pid"].as_i64().unwrap() as i32
}

#[test]
fn quota_429_fails_fast_after_one_call() {
    let ark = MockArk::start();
    ark.set(Behavior::quota_exceeded());
    let svc = live_service(&ark.base_url(), &[]);
    let pid = worker_pid(&svc);
    let r = svc.post("/api/v1/chat/generate", &hello());
    assert_eq!(r.status, 429, "{}", r.body);
    let b = r.json();
    assert_eq!(b["success"], false);
    assert_eq!(b["code"], "UPSTREAM_RATE_LIMITED");
    assert!(
        b["error"].as_str().unwrap().starts_with("HTTP 429: "),
        "{b}"
    );
    assert_eq!(b["upstream"]["status"], 429);
    assert_eq!(b["upstream"]["code"], "QuotaExceeded");
    assert!(b["requestId"].is_string() && b["timestamp"].is_string());
    assert_eq!(ark.calls(), 1, "quota errors are not retried");
    assert_still_healthy(&svc, pid);
}

#[test]
fn retryable_429_is_retried_then_reported() {
    let ark = MockArk::start();
    ark.set(Behavior::rate_limited().with_retry_after("1"));
    let svc = live_service(&ark.base_url(), &[]);
    let r = svc.post("/api/v1/chat/generate", &hello());
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["code"], "UPSTREAM_RATE_LIMITED");
    assert_eq!(r.json()["retryAfter"], 1);
    assert_eq!(ark.calls(), 3, "1 call + UPSTREAM_MAX_RETRIES (2)");
}

#[test]
fn server_error_every_time_gives_502_after_three_calls() {
    let ark = MockArk::start();
    ark.set(Behavior::server_error());
    let svc = live_service(&ark.base_url(), &[]);
    let pid = worker_pid(&svc);
    let started = Instant::now();
    let r = svc.post("/api/v1/chat/generate", &hello());
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["code"], "AI_PROVIDER_ERROR");
    assert_eq!(ark.calls(), 3);
    // backoff 0.5 s then 1 s (±20 %) lies between the attempts
    assert!(
        started.elapsed() >= Duration::from_millis(1100),
        "{:?}",
        started.elapsed()
    );
    assert_still_healthy(&svc, pid);
}

#[test]
fn a_transient_server_error_is_absorbed_by_a_retry() {
    let ark = MockArk::start();
    ark.push(Behavior::server_error());
    let svc = live_service(&ark.base_url(), &[]);
    let r = svc.post("/api/v1/chat/generate", &hello());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(ark.calls(), 2);
}

#[test]
fn a_hanging_upstream_times_out_with_504_and_no_retry() {
    let ark = MockArk::start();
    ark.set(Behavior::hang());
    let svc = live_service(&ark.base_url(), &[("BYTEPLUS_TIMEOUT", "400")]);
    let pid = worker_pid(&svc);
    let r = svc.post("/api/v1/chat/generate", &hello());
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["code"], "TIMEOUT_ERROR");
    assert_eq!(r.json()["error"], "Upstream timeout after 400 ms");
    assert_eq!(ark.calls(), 1);
    let r = svc.post("/api/v1/chat/stream", &hello());
    assert_eq!(
        r.status, 504,
        "a stream that never starts is a JSON error: {}",
        r.body
    );
    assert_still_healthy(&svc, pid);
}

#[test]
fn connection_refused_is_a_network_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = free_port();
    let svc = live_service(
        &format!("http://127.0.0.1:{port}/api/v3"),
        &[("UPSTREAM_MAX_RETRIES", "0")],
    );
    let r = svc.post("/api/v1/chat/generate", &hello());
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["code"], "AI_PROVIDER_ERROR");
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("Network error: connect"),
        "{}",
        r.body
    );
}

#[test]
fn malformed_empty_and_choiceless_answers_are_502_never_an_empty_200() {
    let ark = MockArk::start();
    let svc = live_service(&ark.base_url(), &[]);
    let pid = worker_pid(&svc);
    for (behavior, needle) in [
        (Behavior::malformed_json(), "Response processing error"),
        (Behavior::empty_content(), "Empty completion from provider"),
        (Behavior::no_choices(), "no valid choices found"),
    ] {
        ark.set(behavior);
        let r = svc.post(
            "/api/v1/chat/generate",
            &json!({"messages":[{"role":"user","content":"你好"}],
            "options": {"endpointType": "chat"}}),
        );
        assert_eq!(r.status, 502, "{needle}: {}", r.body);
        assert_eq!(r.json()["code"], "AI_PROVIDER_ERROR");
        assert!(
            r.json()["error"].as_str().unwrap().contains(needle),
            "{}",
            r.body
        );
    }
    assert_still_healthy(&svc, pid);
}

#[test]
fn a_stream_failing_after_it_started_ends_with_one_error_frame() {
    let ark = MockArk::start();
    ark.set(Behavior::cut_off(false));
    let svc = live_service(&ark.base_url(), &[]);
    let pid = worker_pid(&svc);
    let r = svc.post("/api/v1/chat/stream", &hello());
    assert_eq!(r.status, 200, "{}", r.body);
    let frames = sse_json(&r.body);
    assert!(frames.iter().any(|f| f["type"] == "content"));
    let last = frames.last().unwrap();
    assert_eq!(last["type"], "error", "{frames:?}");
    assert_eq!(last["code"], "AI_PROVIDER_ERROR");
    assert_eq!(last["done"], true);
    assert_eq!(
        frames.iter().filter(|f| f["done"] == true).count(),
        1,
        "exactly one terminal frame"
    );
    assert!(frames.iter().all(|f| f["type"] != "complete"));

    // Cut off after a finish_reason counts as complete (§5.3).
    ark.set(Behavior::cut_off(true));
    let r = svc.post("/api/v1/chat/stream", &hello());
    let frames = sse_json(&r.body);
    assert_eq!(frames.last().unwrap()["type"], "complete", "{frames:?}");
    assert_eq!(
        frames.last().unwrap()["usage"]["estimated"],
        true,
        "no upstream usage: estimated"
    );

    // A malformed payload inside a stream is skipped, the rest flows. (A new
    // question: the one above was answered and is now in the cache.)
    // It is counted (the mock sends one unparsable payload per stream).
    let parse_errors = || metric(svc.addr, "ai_upstream_stream_parse_errors_total", "");
    assert_eq!(parse_errors(), Some(0.0), "registered, nothing skipped yet");
    ark.set(Behavior::malformed_json());
    let r = svc.post(
        "/api/v1/chat/stream",
        &json!({"messages":[{"role":"user","content":"坏掉的一行"}]}),
    );
    let frames = sse_json(&r.body);
    assert_eq!(frames.last().unwrap()["type"], "complete", "{frames:?}");
    wait_for("the skipped payload counted", DEADLINE, || {
        (parse_errors() == Some(1.0)).then_some(())
    });
    assert_still_healthy(&svc, pid);
}

#[test]
fn broken_credentials_make_the_health_probe_unhealthy() {
    let ark = MockArk::start();
    ark.set(Behavior::ark_error(
        401,
        "AuthenticationError",
        "invalid api key",
    ));
    let svc = live_service(&ark.base_url(), &[]);
    for _ in 0..5 {
        let r = svc.post(
            "/api/v1/chat/generate",
            &json!({"messages":[{"role":"user","content":"你好"}],
            "options": {"endpointType": "chat"}}),
        );
        assert_eq!(r.status, 502, "{}", r.body);
    }
    let r = http_get(svc.addr, "/api/v1/health", DEADLINE).unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    let d = &r.json()["data"];
    assert_eq!(d["status"], "unhealthy");
    assert_eq!(d["services"]["providers"]["status"], "unhealthy");
    // the liveness probe is unaffected: restarting would not fix a bad key
    assert_eq!(http_get(svc.addr, "/health", DEADLINE).unwrap().status, 200);

    // a success ends the unhealthy verdict; the failure rate still degrades
    ark.set(Behavior::success());
    assert_eq!(svc.post("/api/v1/chat/generate", &hello()).status, 200);
    let r = http_get(svc.addr, "/api/v1/health", DEADLINE).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["data"]["services"]["providers"]["status"],
        "degraded"
    );
}
