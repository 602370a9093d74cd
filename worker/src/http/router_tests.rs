//! Tests of the router: the route table (exact lookup, `HEAD` as `GET`,
//! 404 and 405 bodies), refusals built in each error format (the token
//! policy's and the secret lists' among them), the body
//! deadline, the User-Agent filter, forwarded-for lines, and the index,
//! `/ready` and health bodies.

use super::*;
use crate::http::endpoints::lookup;
use crate::http::state::Phase;
use crate::settings::Settings;

fn state() -> Arc<AppState> {
    state_with(&[])
}

/// A worker state on the defaults plus `env`.
fn state_with(env: &[(&str, &str)]) -> Arc<AppState> {
    let settings = Settings::from_lookup(|k| match k {
        "HEARTALK_WORKER_ID" => Some("7".into()),
        "KEYWORDS_CONFIG" => {
            Some(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/keywords.json").into())
        }
        _ => env
            .iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| (*v).to_string()),
    });
    let services = crate::pipeline::services::Services::new(&settings).unwrap();
    Arc::new(AppState::new(settings, std::time::Instant::now(), services))
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(f)
}

fn call(state: &Arc<AppState>, method: Method, path: &str) -> (Response<()>, serde_json::Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("x-request-id", "test-id")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    block_on(async {
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (parts, body) = handle(req, state.clone(), peer).await.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            Response::from_parts(parts, ()),
            serde_json::from_slice(&bytes).unwrap(),
        )
    })
}

/// A user JWT for `secret`.
fn user_jwt(secret: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap();
    let claims = serde_json::json!({"userId": "u-1", "exp": clock::unix_secs() + 600});
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// Runs `dispatch` alone, without `handle`'s post-processing: what the
/// route's own error paths built.
fn dispatch_only(
    state: &Arc<AppState>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (Response<()>, serde_json::Value) {
    let mut req = Request::builder().method(method.clone()).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(http_body_util::Empty::<Bytes>::new()).unwrap();
    let mut ex = Exchange {
        request_id: "test-id".into(),
        method,
        path: path.into(),
        errors: error_format(path),
        origin: None,
        preflight: false,
        limit: None,
        accept_encoding: None,
        no_compression: true,
        http1: true,
        started: Instant::now(),
    };
    block_on(async {
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (parts, body) = dispatch(req, state, peer, &mut ex).await.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            Response::from_parts(parts, ()),
            serde_json::from_slice(&bytes).unwrap(),
        )
    })
}

fn openai_error(message: &str, kind: &str, code: &str) -> serde_json::Value {
    serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// Under `/v1/` every refusal is built in OpenAI's shape where it is
/// decided (no later rewrite of an E1 body): 404, 405, 401, the body
/// checks, 429 and the production User-Agent filter.
#[test]
fn v1_errors_are_built_in_openai_shape() {
    let st = state_with(&[("JWT_SECRET", "s"), ("RATE_LIMIT_USER_MAX", "1")]);
    let (resp, body) = dispatch_only(&st, Method::GET, "/v1/nope", &[]);
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let want = openai_error(
        "Route GET /v1/nope not found",
        "invalid_request_error",
        "ROUTE_NOT_FOUND",
    );
    assert_eq!(body, want);

    let (resp, body) = dispatch_only(&st, Method::DELETE, "/v1/models", &[]);
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()[ALLOW], "GET, HEAD");
    let want = openai_error(
        "Method DELETE not allowed for /v1/models",
        "invalid_request_error",
        "METHOD_NOT_ALLOWED",
    );
    assert_eq!(body, want);

    let (resp, body) = dispatch_only(&st, Method::POST, "/v1/chat/completions", &[]);
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let want = openai_error(
        "Authorization header is required",
        "authentication_error",
        "MISSING_TOKEN",
    );
    assert_eq!(body, want);

    let bearer = format!("Bearer {}", user_jwt("s"));
    let auth = [("authorization", bearer.as_str())];
    let (resp, body) = dispatch_only(&st, Method::POST, "/v1/chat/completions", &auth);
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let want = openai_error(
        "Content-Type must be application/json",
        "invalid_request_error",
        "VALIDATION_ERROR",
    );
    assert_eq!(body, want);

    // `RATE_LIMIT_USER_MAX=1`: the second model list is refused.
    let (resp, _) = dispatch_only(&st, Method::GET, "/v1/models", &auth);
    assert_eq!(resp.status(), StatusCode::OK);
    let (resp, body) = dispatch_only(&st, Method::GET, "/v1/models", &auth);
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let want = openai_error(
        "Too many requests from this user, please try again later.",
        "rate_limit_error",
        "USER_RATE_LIMIT_EXCEEDED",
    );
    assert_eq!(body, want);

    let prod = state_with(&[("NODE_ENV", "production")]);
    let ua = [("user-agent", "my-scraper/1.0")];
    let (resp, body) = dispatch_only(&prod, Method::GET, "/v1/models", &ua);
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let want = openai_error(
        "Access denied",
        "authentication_error",
        "USER_AGENT_BLOCKED",
    );
    assert_eq!(body, want);
    let origin = [("origin", "https://evil.example")];
    let (resp, body) = dispatch_only(&prod, Method::GET, "/v1/nope", &origin);
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let want = openai_error(
        "Origin not allowed",
        "authentication_error",
        "CORS_ORIGIN_DENIED",
    );
    assert_eq!(body, want);
}

/// Outside `/v1/` the same refusals keep their E1/E2 bodies.
#[test]
fn other_errors_keep_their_heartalk_shape() {
    let st = state();
    let (resp, body) = dispatch_only(&st, Method::GET, "/api/v1/nope", &[]);
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(body["success"], false);
    assert_eq!(body["code"], "ROUTE_NOT_FOUND");
    assert_eq!(body["message"], "Route GET /api/v1/nope not found");
    let (resp, body) = dispatch_only(&st, Method::POST, "/api/v1/chat/generate", &[]);
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        serde_json::json!({"success": false, "error": "Authorization header is required",
                               "code": "MISSING_TOKEN", "requestId": "test-id"})
    );
}

/// A user JWT for `secret` with exactly `claims`.
fn jwt_with(secret: &str, claims: serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// The token policy's two rows answer 401 with the E2 body, and a token
/// signed with `JWT_SECRET_PREVIOUS` gets past authentication.
#[test]
fn token_policy_refusals_are_e2_401s() {
    let st = state_with(&[
        ("JWT_SECRET", "s-new"),
        ("JWT_SECRET_PREVIOUS", "s-old"),
        ("JWT_REQUIRE_EXP", "true"),
        ("JWT_MAX_AGE", "1h"),
    ]);
    let now = clock::unix_secs();
    let generate = |token: String| {
        let bearer = format!("Bearer {token}");
        dispatch_only(
            &st,
            Method::POST,
            "/api/v1/chat/generate",
            &[("authorization", bearer.as_str())],
        )
    };
    let e2 = |error: &str, code: &str| serde_json::json!({"success": false, "error": error, "code": code, "requestId": "test-id"});

    let (resp, body) = generate(jwt_with("s-new", serde_json::json!({"userId": "u"})));
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body, e2("Token has no expiry", "TOKEN_EXP_REQUIRED"));

    let old = serde_json::json!({"userId": "u", "iat": now - 7200, "exp": now + 600});
    let (resp, body) = generate(jwt_with("s-new", old));
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body, e2("Token exceeds the maximum age", "TOKEN_TOO_OLD"));

    // Signed with the previous secret: authenticated, then refused for
    // its missing body (the next check), not with a 401.
    let fresh = serde_json::json!({"userId": "u", "iat": now, "exp": now + 600});
    let (resp, body) = generate(jwt_with("s-old", fresh.clone()));
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
    // A secret in neither list: INVALID_TOKEN.
    let (resp, body) = generate(jwt_with("s-other", fresh));
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body, e2("Invalid token", "INVALID_TOKEN"));
}

/// The internal path accepts `HEARTALK_API_KEY_PREVIOUS` and a service
/// token signed with `JWT_SECRET_PREVIOUS`; the policy's refusals there
/// are `INVALID_SERVICE_TOKEN`.
#[test]
fn internal_path_accepts_previous_key_and_secret() {
    let st = state_with(&[
        ("JWT_SECRET", "s-new"),
        ("JWT_SECRET_PREVIOUS", "s-old"),
        ("HEARTALK_API_KEY", "k-new"),
        ("HEARTALK_API_KEY_PREVIOUS", "k-old"),
        ("JWT_REQUIRE_EXP", "yes"),
    ]);
    let now = clock::unix_secs();
    let test = |key: &str, token: String| {
        let bearer = format!("Bearer {token}");
        dispatch_only(
            &st,
            Method::GET,
            "/internal/api/v1/test",
            &[("x-api-key", key), ("authorization", bearer.as_str())],
        )
    };
    let old_token = crate::pipeline::auth::service_token(b"s-old", now);
    let (resp, body) = test("k-old", old_token.clone());
    assert_eq!(resp.status(), StatusCode::OK, "{body}");
    assert_eq!(body["serviceAuth"]["service"], "ai-service");
    let (resp, _) = test("k-new", old_token.clone());
    assert_eq!(resp.status(), StatusCode::OK);
    let (resp, body) = test("k-other", old_token);
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "INVALID_API_KEY");
    let no_exp = jwt_with("s-new", serde_json::json!({"service": "ai-service"}));
    let (resp, body) = test("k-new", no_exp);
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "INVALID_SERVICE_TOKEN");
}

/// A body that never completes gets 408 `REQUEST_TIMEOUT` at
/// `BODY_TIMEOUT`, in the request's error format, with `Connection:
/// close`.
#[test]
fn a_body_not_complete_by_its_deadline_is_a_408() {
    use futures_util::StreamExt;
    use http_body_util::StreamBody;
    let st = state_with(&[("JWT_SECRET", "s"), ("BODY_TIMEOUT", "150ms")]);
    let bearer = format!("Bearer {}", user_jwt("s"));
    for (path, openai) in [
        ("/api/v1/chat/generate", false),
        ("/v1/chat/completions", true),
    ] {
        // Six bytes of the 500 announced, then nothing more.
        let frames = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
            hyper::body::Frame::data(Bytes::from_static(b"{\"mess")),
        )])
        .chain(futures_util::stream::pending());
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("x-request-id", "slow-1")
            .header("authorization", &bearer)
            .header("content-type", "application/json")
            .header("content-length", "500")
            .body(StreamBody::new(frames))
            .unwrap();
        let started = std::time::Instant::now();
        let (resp, body) = block_on(async {
            let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
            let (parts, body) = handle(req, st.clone(), peer).await.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            (Response::from_parts(parts, ()), body)
        });
        assert!(started.elapsed() >= std::time::Duration::from_millis(150));
        assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT, "{path}");
        assert_eq!(resp.headers()[http::header::CONNECTION], "close");
        let message = "Request body not received within 150ms";
        if openai {
            assert_eq!(
                body,
                openai_error(message, "invalid_request_error", "REQUEST_TIMEOUT")
            );
        } else {
            assert_eq!(body["success"], false);
            assert_eq!(body["error"], message);
            assert_eq!(body["code"], "REQUEST_TIMEOUT");
            assert_eq!(body["requestId"], "slow-1");
            assert!(body["timestamp"].is_string(), "{body}");
        }
    }
}

#[test]
fn user_agent_filter() {
    assert!(blocked_user_agent(
        "Mozilla/5.0 (compatible; AhrefsBot/7.0)"
    ));
    assert!(blocked_user_agent("my-scraper/1.0"));
    assert!(!blocked_user_agent(
        "Mozilla/5.0 (compatible; Googlebot/2.1)"
    ));
    assert!(!blocked_user_agent("curl/8.0"));
}

#[test]
fn every_forwarded_for_line_counts() {
    let settings = Settings::from_lookup(|k| match k {
        "TRUST_PROXY" => Some("true".into()),
        "TRUSTED_PROXIES" => Some("10.0.0.0/8".into()),
        _ => None,
    });
    let mut h = HeaderMap::new();
    // The client's forged line, then the line the proxy appended.
    h.append("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
    h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
    let peer: SocketAddr = "10.0.0.1:5555".parse().unwrap();
    assert_eq!(client_ip(&h, peer, &settings), "203.0.113.9");
    let outside: SocketAddr = "198.51.100.7:1".parse().unwrap();
    assert_eq!(client_ip(&h, outside, &settings), "198.51.100.7");
}

#[test]
fn head_is_served_where_get_is() {
    assert_eq!(
        lookup(&Method::HEAD, "/health"),
        Match::Found(Endpoint::Health)
    );
    assert_eq!(
        lookup(&Method::HEAD, "/api/v1/chat/generate"),
        Match::MethodNotAllowed("POST".into())
    );
    assert_eq!(
        lookup(&Method::POST, "/ready"),
        Match::MethodNotAllowed("GET, HEAD".into())
    );
}

#[test]
fn lookup_is_exact() {
    assert_eq!(
        lookup(&Method::GET, "/health"),
        Match::Found(Endpoint::Health)
    );
    assert_eq!(lookup(&Method::GET, "/health/"), Match::NotFound);
    assert_eq!(lookup(&Method::GET, "/HEALTH"), Match::NotFound);
    assert_eq!(
        lookup(&Method::POST, "/api/v1/health"),
        Match::MethodNotAllowed("GET, HEAD".into())
    );
}

#[test]
fn not_found_body() {
    let (resp, body) = call(&state(), Method::GET, "/nope");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(body["success"], false);
    assert_eq!(body["code"], "ROUTE_NOT_FOUND");
    assert_eq!(body["error"], "Not Found");
    assert_eq!(body["message"], "Route GET /nope not found");
    assert_eq!(body["requestId"], "test-id");
    assert!(body["timestamp"].is_string());
    assert_eq!(resp.headers()["x-request-id"], "test-id");
    assert_eq!(resp.headers()["x-worker-id"], "7");
}

#[test]
fn method_not_allowed_body() {
    let (resp, body) = call(&state(), Method::DELETE, "/ready");
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()[ALLOW], "GET, HEAD");
    assert_eq!(body["code"], "METHOD_NOT_ALLOWED");
    assert_eq!(body["error"], "Method DELETE not allowed for /ready");
    assert_eq!(body["requestId"], "test-id");
}

#[test]
fn index_and_ready() {
    let st = state();
    let (resp, body) = call(&st, Method::GET, "/");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body["message"], "HearTalk AI MVP Service");
    assert_eq!(body["status"], "running");
    assert_eq!(body["environment"], "development");
    assert_eq!(body["requestId"], "test-id");

    let (resp, body) = call(&st, Method::GET, "/ready");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, serde_json::json!({"status": "starting"}));
    st.set_phase(Phase::Ready);
    let (resp, body) = call(&st, Method::GET, "/ready");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body, serde_json::json!({"status": "ready", "worker_id": 7}));
    st.set_phase(Phase::Draining);
    let (resp, body) = call(&st, Method::GET, "/ready");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, serde_json::json!({"status": "draining"}));
}

#[test]
fn api_health_body() {
    let (resp, body) = call(&state(), Method::GET, "/api/v1/health");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["pragma"], "no-cache");
    let data = &body["data"];
    assert_eq!(data["service"], "ai-service");
    assert_eq!(data["status"], "healthy");
    assert_eq!(data["system"]["worker_id"], 7);
    assert_eq!(data["system"]["pid"], std::process::id());
    assert!(data["memory"]["rss"].as_u64().is_some_and(|r| r > 0));
    assert_eq!(data["services"]["providers"]["simulated"], true);
    assert!(body.get("success").is_none());
}
