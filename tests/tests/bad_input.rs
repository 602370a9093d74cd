//! Bad input gets the documented 4xx with the documented body and nothing
//! reaches the upstream (API.md §2 order of checks, §3, §5.2, §5.7, §15
//! #2–#5).

mod helper;

use heartalk_e2e::mock_ark::MockArk;
use helper::*;
use serde_json::{Value, json};

const GENERATE: &str = "/api/v1/chat/generate";

fn assert_e1(r: &Response, status: u16, code: &str, error: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.body);
    let b = r.json();
    assert_eq!(b["success"], false);
    assert_eq!(b["code"], code, "{b}");
    assert_eq!(b["error"], error, "{b}");
    assert!(b["requestId"].as_str().unwrap().starts_with("req_"), "{b}");
    assert!(b["timestamp"].is_string(), "E1 has a timestamp: {b}");
    assert_eq!(r.header("x-request-id"), b["requestId"].as_str());
    b
}

fn assert_e2(r: &Response, code: &str, error: &str) {
    assert_eq!(r.status, 401, "{}", r.body);
    let b = r.json();
    assert_eq!(
        b,
        json!({"success": false, "error": error, "code": code, "requestId": b["requestId"]})
    );
    assert!(b.get("timestamp").is_none());
}

#[test]
fn authentication_failures() {
    let ark = MockArk::start();
    let svc = live_service(&ark.base_url(), &[]);
    let body = json!({"messages":[{"role":"user","content":"你好"}]});
    let now = now_unix();

    assert_e2(
        &post_json(svc.addr, GENERATE, None, &body),
        "MISSING_TOKEN",
        "Authorization header is required",
    );
    let r = request(
        svc.addr,
        "POST",
        GENERATE,
        &[
            ("Authorization", "Token abc"),
            ("Content-Type", "application/json"),
        ],
        b"{}",
    )
    .unwrap();
    assert_e2(&r, "MISSING_TOKEN", "Authorization header is required");

    // alg: none, signed with nothing
    let b64 = |v: &Value| {
        use std::fmt::Write;
        let raw = v.to_string();
        // base64url without padding, written out to avoid another dependency
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = raw.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                let _ = out.write_char(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg":"none","typ":"JWT"})),
        b64(&json!({"userId":"test-user-123","exp":now + 3600}))
    );
    assert_e2(
        &post_json(svc.addr, GENERATE, Some(&none), &body),
        "INVALID_TOKEN",
        "Invalid token",
    );
    let wrong_sig = jwt(&json!({"userId":"u","exp":now + 3600}), "another-secret");
    assert_e2(
        &post_json(svc.addr, GENERATE, Some(&wrong_sig), &body),
        "INVALID_TOKEN",
        "Invalid token",
    );
    let expired = jwt(&json!({"userId":"u","exp":now - 10}), SECRET);
    assert_e2(
        &post_json(svc.addr, GENERATE, Some(&expired), &body),
        "TOKEN_EXPIRED",
        "Token expired",
    );
    let no_user = jwt(&json!({"email":"a@b","exp":now + 60}), SECRET);
    assert_e2(
        &post_json(svc.addr, GENERATE, Some(&no_user), &body),
        "INVALID_TOKEN_STRUCTURE",
        "Invalid token structure - missing user identifier",
    );
    // a numeric user id claim is a valid identifier
    let numeric = jwt(&json!({"user_id": 42, "exp": now + 60}), SECRET);
    assert_eq!(
        post_json(svc.addr, GENERATE, Some(&numeric), &body).status,
        200
    );
    assert_eq!(
        ark.calls(),
        1,
        "only the valid request reached the upstream"
    );
}

#[test]
fn body_and_field_validation() {
    let ark = MockArk::start();
    let svc = live_service(&ark.base_url(), &[]);
    let auth = format!("Bearer {}", user_token());
    let raw = |ct: &str, body: &[u8]| {
        request(
            svc.addr,
            "POST",
            GENERATE,
            &[("Authorization", &auth), ("Content-Type", ct)],
            body,
        )
        .unwrap()
    };
    assert_e1(
        &raw("application/json", b"{\"messages\":["),
        400,
        "VALIDATION_ERROR",
        "invalid JSON body",
    );
    assert_e1(
        &raw("application/json", b"{\"message\":\"\xff\xfe\"}"),
        400,
        "VALIDATION_ERROR",
        "invalid JSON body",
    );
    assert_e1(
        &raw("text/plain", b"{}"),
        400,
        "VALIDATION_ERROR",
        "Content-Type must be application/json",
    );
    assert_e1(
        &raw("application/json", b""),
        400,
        "VALIDATION_ERROR",
        "Content-Type must be application/json",
    );
    let big = vec![b' '; 2 * 1024 * 1024];
    let r = raw("application/json", &big);
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.json()["code"], "PAYLOAD_TOO_LARGE");

    let post = |b: Value| svc.post(GENERATE, &b);
    assert_e1(
        &post(json!({"message":"hi","user_id":"u1"})),
        400,
        "VALIDATION_ERROR",
        "conversation_id is required and must be a string",
    );
    assert_e1(
        &post(json!({"conversation_id":"c","message":"hi","user_id":7})),
        400,
        "VALIDATION_ERROR",
        "user_id is required and must be a string",
    );
    assert_e1(
        &post(json!({"conversation_id":"c","message":"x".repeat(10_001),"user_id":"u"})),
        400,
        "VALIDATION_ERROR",
        "message too long (max 10000 characters)",
    );
    assert_e1(
        &post(
            json!({"conversation_id":"c","message":"hi","user_id":"u","options":{"modelParams":{"temperature":3}}}),
        ),
        400,
        "VALIDATION_ERROR",
        "options.modelParams.temperature must be a number between 0 and 2",
    );
    assert_e1(
        &post(json!({"messages":[]})),
        400,
        "VALIDATION_ERROR",
        "messages array cannot be empty",
    );
    assert_eq!(ark.calls(), 0, "nothing invalid reached the upstream");
}

#[test]
fn routing_errors_need_no_token() {
    let svc = Service::start(1, &[]);
    let r = request(svc.addr, "GET", GENERATE, &[], b"").unwrap();
    let b = assert_e1(
        &r,
        405,
        "METHOD_NOT_ALLOWED",
        "Method GET not allowed for /api/v1/chat/generate",
    );
    assert_eq!(r.header("allow"), Some("POST"), "{b}");
    let r = request(svc.addr, "GET", "/nope", &[], b"").unwrap();
    let b = assert_e1(&r, 404, "ROUTE_NOT_FOUND", "Not Found");
    assert_eq!(b["message"], "Route GET /nope not found");
    let r = request(svc.addr, "GET", "/health/", &[], b"").unwrap();
    assert_eq!(r.status, 404, "no trailing-slash normalisation");
    let r = request(svc.addr, "HEAD", "/health", &[], b"").unwrap();
    assert_eq!(r.status, 200, "HEAD is served where GET is");
    assert!(r.body.is_empty());
}

#[test]
fn production_rules() {
    let svc = Service::start(1, &[("NODE_ENV", "production")]);
    // CORS: an unlisted origin is refused with 403, a listed one reflected.
    let r = request(
        svc.addr,
        "GET",
        "/api/v1/health",
        &[("Origin", "https://evil.example")],
        b"",
    )
    .unwrap();
    assert_e1(&r, 403, "CORS_ORIGIN_DENIED", "Origin not allowed");
    let r = request(
        svc.addr,
        "GET",
        "/api/v1/health",
        &[("Origin", "http://localhost:3000")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert!(r.header("strict-transport-security").is_some());
    // crawlers are refused, search bots are not
    let r = request(
        svc.addr,
        "GET",
        "/",
        &[("User-Agent", "AhrefsBot/7.0")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json(),
        json!({"success": false, "error": "Access denied", "code": "USER_AGENT_BLOCKED"})
    );
    assert_eq!(
        request(
            svc.addr,
            "GET",
            "/",
            &[("User-Agent", "Googlebot/2.1")],
            b""
        )
        .unwrap()
        .status,
        200
    );
    // providers/models need a Bearer header (not verified) outside development
    let r = request(svc.addr, "GET", "/api/v1/models", &[], b"").unwrap();
    assert_e1(&r, 401, "AUTHENTICATION_ERROR", "Authentication required");
    assert_eq!(
        get_auth(svc.addr, "/api/v1/models", "not-even-a-jwt").status,
        200
    );
    // simulated mode in production is degraded, still 200
    let r = http_get(svc.addr, "/api/v1/health", DEADLINE).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["data"]["services"]["providers"]["status"],
        "degraded"
    );
}
