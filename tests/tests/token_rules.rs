//! The token rules through the real binaries (docs/api.md "Token rules",
//! docs/security.md): with `NODE_ENV=production` a token without `exp` is
//! `401 TOKEN_EXP_REQUIRED` (development keeps accepting it, as the
//! Node.js service did); `JWT_MAX_AGE` refuses a token issued too long ago
//! or living too long with `401 TOKEN_TOO_OLD`; `JWT_CLOCK_TOLERANCE`
//! accepts a token that expired within it; a bad rule stops the start
//! with exit 64.

mod helper;

use helper::*;
use serde_json::{Value, json};

fn languages(svc: &Service, claims: Value) -> Response {
    get_auth(
        svc.addr,
        "/api/v1/translate/languages",
        &jwt(&claims, SECRET),
    )
}

/// The auth middleware's body (API.md §1 E2): exactly these four keys.
fn assert_refused(r: &Response, code: &str, error: &str) {
    assert_eq!(r.status, 401, "{}", r.body);
    let body = r.json();
    let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["code", "error", "requestId", "success"], "{body}");
    assert_eq!(body["success"], false);
    assert_eq!(body["code"], code);
    assert_eq!(body["error"], error);
    assert!(body["requestId"].as_str().is_some_and(|s| !s.is_empty()));
}

#[test]
fn production_requires_exp_and_development_keeps_accepting_tokens_without_it() {
    let prod = Service::start(1, &[("NODE_ENV", "production")]);
    let r = languages(&prod, json!({"userId": "u1"}));
    assert_refused(&r, "TOKEN_EXP_REQUIRED", "Token has no expiry");
    let r = languages(&prod, json!({"userId": "u1", "exp": now_unix() + 60}));
    assert_eq!(r.status, 200, "{}", r.body);

    let dev = Service::start(1, &[]);
    let r = languages(&dev, json!({"userId": "u1"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let off = Service::start(
        1,
        &[("NODE_ENV", "production"), ("JWT_REQUIRE_EXP", "false")],
    );
    let r = languages(&off, json!({"userId": "u1"}));
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn max_age_and_clock_tolerance_bound_a_token() {
    let svc = Service::start(1, &[("JWT_MAX_AGE", "1h"), ("JWT_CLOCK_TOLERANCE", "30s")]);
    let now = now_unix();
    let too_old = "Token exceeds the maximum age";
    let r = languages(
        &svc,
        json!({"userId": "u", "iat": now - 7200, "exp": now + 600}),
    );
    assert_refused(&r, "TOKEN_TOO_OLD", too_old);
    let r = languages(
        &svc,
        json!({"userId": "u", "iat": now - 60, "exp": now + 7 * 86_400}),
    );
    assert_refused(&r, "TOKEN_TOO_OLD", too_old);
    let r = languages(
        &svc,
        json!({"userId": "u", "iat": now - 60, "exp": now + 600}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Expired 5 s ago: within the 30 s tolerance. Two minutes ago: not.
    let r = languages(
        &svc,
        json!({"userId": "u", "iat": now - 600, "exp": now - 5}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = languages(
        &svc,
        json!({"userId": "u", "iat": now - 600, "exp": now - 120}),
    );
    assert_refused(&r, "TOKEN_EXPIRED", "Token expired");
}

#[test]
fn a_bad_token_rule_stops_the_start_with_exit_64() {
    let config = real_worker_config(
        "1",
        "[apps.env]\nJWT_MAX_AGE = \"soon\"\nJWT_CLOCK_TOLERANCE = \"1h\"\n",
    );
    let mut sup = Supervisor::start(&config);
    let status = sup.wait_exit(DEADLINE);
    let stderr = sup.stderr();
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("JWT_MAX_AGE=\"soon\""), "{stderr}");
    assert!(stderr.contains("JWT_CLOCK_TOLERANCE=\"1h\""), "{stderr}");
    assert!(sup.spawned_pids().is_empty());
}
