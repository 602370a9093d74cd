//! Request dispatch: the route table, 404/405 handling (API.md §5.7), and
//! the per-request wrapper that resolves the request id and adds the common
//! headers to whatever the handler returned.
//!
//! Routes are one static table of (method, exact path, endpoint) rows, so a
//! new endpoint is one row plus one `match` arm in [`dispatch`], and the
//! `Allow` header of a 405 is derived from the same rows and cannot drift.
//! Paths match exactly, with no trailing-slash normalisation (§1).

use http::header::ALLOW;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde::Serialize;

use crate::clock;
use crate::health;
use crate::request_id;
use crate::response::{self, Body};
use crate::state::AppState;

/// What a matched route runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Index,
    Health,
    Ready,
    ApiHealth,
}

/// The route table, in the order `Allow` lists methods.
static ROUTES: &[(Method, &str, Endpoint)] = &[
    (Method::GET, "/", Endpoint::Index),
    (Method::GET, "/health", Endpoint::Health),
    (Method::GET, "/ready", Endpoint::Ready),
    (Method::GET, "/api/v1/health", Endpoint::ApiHealth),
];

/// The outcome of matching a request line against [`ROUTES`].
#[derive(Debug, PartialEq, Eq)]
pub enum Match {
    Found(Endpoint),
    /// The path exists for other methods; the value is the `Allow` list.
    MethodNotAllowed(String),
    NotFound,
}

/// Matches a method and exact path.
pub fn lookup(method: &Method, path: &str) -> Match {
    let mut allowed: Vec<&str> = Vec::new();
    for (m, p, endpoint) in ROUTES {
        if *p != path {
            continue;
        }
        if m == method {
            return Match::Found(*endpoint);
        }
        if !allowed.contains(&m.as_str()) {
            allowed.push(m.as_str());
        }
    }
    if allowed.is_empty() {
        Match::NotFound
    } else {
        Match::MethodNotAllowed(allowed.join(", "))
    }
}

/// Serves one request: resolves its id, dispatches, and adds the common
/// headers. Never fails: every outcome is an HTTP response.
pub async fn handle<B>(req: Request<B>, state: &AppState) -> Response<Body> {
    let request_id =
        request_id::resolve(req.headers().get("x-request-id").map(HeaderValue::as_bytes));
    let path = req.uri().path().to_owned();
    let mut resp = dispatch(&req, &path, &request_id, state).await;
    response::finish(&mut resp, &path, &request_id, &state.worker_id_header);
    resp
}

async fn dispatch<B>(
    req: &Request<B>,
    path: &str,
    request_id: &str,
    state: &AppState,
) -> Response<Body> {
    match lookup(req.method(), path) {
        Match::Found(Endpoint::Index) => index(state, request_id),
        Match::Found(Endpoint::Health) => health::liveness(state),
        Match::Found(Endpoint::Ready) => health::readiness(state),
        Match::Found(Endpoint::ApiHealth) => health::components(state),
        Match::MethodNotAllowed(allow) => {
            let message = format!("Method {} not allowed for {path}", req.method());
            let mut resp = response::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                &message,
                None,
                request_id,
            );
            if let Ok(v) = HeaderValue::from_str(&allow) {
                resp.headers_mut().insert(ALLOW, v);
            }
            resp
        }
        Match::NotFound => {
            let message = format!("Route {} {path} not found", req.method());
            response::error(
                StatusCode::NOT_FOUND,
                "ROUTE_NOT_FOUND",
                "Not Found",
                Some(&message),
                request_id,
            )
        }
    }
}

/// `GET /`: the service banner.
fn index(state: &AppState, request_id: &str) -> Response<Body> {
    #[derive(Serialize)]
    struct Banner<'a> {
        message: &'static str,
        version: &'a str,
        status: &'static str,
        environment: &'a str,
        #[serde(rename = "requestId")]
        request_id: &'a str,
        timestamp: String,
    }
    response::json(
        StatusCode::OK,
        &Banner {
            message: "HearTalk AI MVP Service",
            version: &state.settings.service_version,
            status: "running",
            environment: &state.settings.node_env,
            request_id,
            timestamp: clock::now_iso8601(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;
    use crate::state::Phase;
    use http_body_util::BodyExt;

    fn state() -> AppState {
        let settings = Settings::from_lookup(|k| (k == "HEARTALK_WORKER_ID").then(|| "7".into()));
        AppState::new(settings, std::time::Instant::now(), true)
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn call(state: &AppState, method: Method, path: &str) -> (Response<()>, serde_json::Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("x-request-id", "test-id")
            .body(())
            .unwrap();
        block_on(async {
            let (parts, body) = handle(req, state).await.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            (
                Response::from_parts(parts, ()),
                serde_json::from_slice(&bytes).unwrap(),
            )
        })
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
            Match::MethodNotAllowed("GET".into())
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
        assert_eq!(resp.headers()[ALLOW], "GET");
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
}
