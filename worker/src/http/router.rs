//! Request dispatch: the order of checks every request goes through
//! (API.md §2): CORS → production User-Agent filter → route match against
//! the endpoints table (404/405, no token needed) → authentication → rate
//! limit → body (content type, size, JSON) → validation → handler. Then
//! [`finish`] adds the common, CORS, security and rate-limit headers,
//! compresses large JSON bodies, records metrics and writes the access log
//! line.
//!
//! Routes are the rows of the endpoints table ([`crate::http::endpoints`]:
//! each endpoint's method, exact path, access and rate-limit class), so a
//! new endpoint is one row plus one `match` arm in [`dispatch`], and the
//! `Allow` header of a 405 is derived from the same rows and cannot drift.
//!
//! The error format of a request ([`ErrorFormat`]: HearTalk's E1/E2, or
//! OpenAI's under `/v1/`) is decided once, from its path, before any check
//! runs, and every refusal is built in it directly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::ALLOW;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Serialize;
use serde_json::Value;

use crate::http::cors::Decision as CorsDecision;
use crate::http::endpoints::{Access, Endpoint, Match, error_format, lookup_with, route_label};
use crate::http::request_id;
use crate::http::state::AppState;
use crate::http::{headers, health};
use crate::limits::ratelimit::{self, Verdict};
use crate::pipeline::auth::{self, ErrorShape};
use crate::pipeline::response::{self, Body, ErrorFormat};
use crate::pipeline::validate;
use crate::pipeline::{api, chat};
use crate::runtime::clock;
use crate::telemetry;

/// Facts about one request that `finish` needs after the handler ran.
struct Exchange {
    request_id: String,
    method: Method,
    path: String,
    /// How this request's errors are built ([`error_format`] of `path`).
    errors: ErrorFormat,
    origin: Option<String>,
    preflight: bool,
    limit: Option<Verdict>,
    accept_encoding: Option<String>,
    no_compression: bool,
    /// HTTP/1.x (streams then say `Connection: keep-alive`; HTTP/2 has no
    /// connection-specific headers).
    http1: bool,
    /// When handling began, the head complete: `BODY_TIMEOUT` runs from
    /// here.
    started: Instant,
}

/// Serves one request. Never fails: every outcome is an HTTP response.
pub async fn handle<B>(req: Request<B>, state: Arc<AppState>, peer: SocketAddr) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let request_id =
        request_id::resolve(req.headers().get("x-request-id").map(HeaderValue::as_bytes));
    let headers = req.headers();
    let path = req.uri().path();
    let mut ex = Exchange {
        request_id,
        method: req.method().clone(),
        path: path.to_owned(),
        errors: error_format(path),
        origin: None,
        preflight: req.method() == Method::OPTIONS,
        limit: None,
        accept_encoding: header_str(headers, "accept-encoding").map(str::to_owned),
        no_compression: headers.contains_key("x-no-compression"),
        http1: req.version() < http::Version::HTTP_2,
        started,
    };
    let mut resp = dispatch(req, &state, peer, &mut ex).await;
    finish(&mut resp, &state, &ex).await;
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    let route = route_label(&ex.path);
    telemetry::http_request(ex.method.as_str(), route, status, elapsed);
    tracing::info!(
        target: "access",
        request_id = %ex.request_id,
        method = %ex.method,
        path = %ex.path,
        route,
        status,
        duration_ms = (elapsed.as_secs_f64() * 1000.0 * 100.0).round() / 100.0,
        worker = state.ctx.settings.worker_id,
        "request"
    );
    resp
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The client address (see [`crate::http::proxy`]).
fn client_ip(
    headers: &HeaderMap,
    peer: SocketAddr,
    settings: &crate::settings::Settings,
) -> String {
    // Every `X-Forwarded-For` line, in order: a proxy may append its own
    // line instead of extending the client's (HAProxy does), and the
    // client's forged line must not count as the last hop.
    let lines: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let joined = lines.join(", ");
    crate::http::proxy::client_ip(
        peer.ip(),
        (!lines.is_empty()).then_some(joined.as_str()),
        settings.pipeline.trust_proxy,
        &settings.pipeline.trusted_proxies,
    )
    .to_string()
}

/// Crawlers (except the big search and chat-preview bots) are refused in production.
pub fn blocked_user_agent(ua: &str) -> bool {
    let ua = ua.to_ascii_lowercase();
    ["bot", "crawler", "spider", "scraper"]
        .iter()
        .any(|w| ua.contains(w))
        && !["googlebot", "bingbot", "slackbot", "twitterbot"]
            .iter()
            .any(|w| ua.contains(w))
}

async fn dispatch<B>(
    req: Request<B>,
    state: &Arc<AppState>,
    peer: SocketAddr,
    ex: &mut Exchange,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let svc = &state.ctx.services;
    let rid = ex.request_id.clone();
    let rid = rid.as_str();
    let errors = ex.errors;
    let settings = &state.ctx.settings;
    // `BODY_TIMEOUT` runs from `started`, when the head was complete: a
    // total deadline for the whole body, however slowly it trickles in.
    let started = ex.started;
    let body_limit = settings.connection.body;

    // (1) CORS; a preflight is answered here.
    match state.cors.decide(header_str(req.headers(), "origin")) {
        CorsDecision::Deny => {
            return errors.error(
                StatusCode::FORBIDDEN,
                "CORS_ORIGIN_DENIED",
                "Origin not allowed",
                None,
                rid,
            );
        }
        CorsDecision::AllowWithWarning(o) => {
            tracing::warn!(origin = %o, "CORS: origin not in the allow-list; allowed outside production");
            ex.origin = Some(o);
        }
        CorsDecision::Allow(o) => ex.origin = Some(o),
        CorsDecision::NoOrigin => {}
    }
    if ex.preflight {
        let mut resp = Response::new(response::full(Bytes::new()));
        *resp.status_mut() = StatusCode::OK;
        return resp;
    }
    // (2) The production User-Agent filter.
    if settings.is_production()
        && header_str(req.headers(), "user-agent").is_some_and(blocked_user_agent)
    {
        return errors.error_bare(StatusCode::FORBIDDEN, "USER_AGENT_BLOCKED", "Access denied");
    }
    // (3) Route match, before any token is looked at.
    let endpoint = match lookup_with(req.method(), &ex.path, settings.control_socket.is_some()) {
        Match::Found(e) => e,
        Match::MethodNotAllowed(allow) => {
            let message = format!("Method {} not allowed for {}", req.method(), ex.path);
            let mut resp = errors.error(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                &message,
                None,
                rid,
            );
            if let Ok(v) = HeaderValue::from_str(&allow) {
                resp.headers_mut().insert(ALLOW, v);
            }
            return resp;
        }
        Match::NotFound => {
            let message = format!("Route {} {} not found", req.method(), ex.path);
            return errors.error(
                StatusCode::NOT_FOUND,
                "ROUTE_NOT_FOUND",
                "Not Found",
                Some(&message),
                rid,
            );
        }
    };
    // (4) Authentication.
    let now = clock::unix_secs();
    let jwt = &settings.pipeline.jwt;
    let authorization = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let mut user: Option<auth::AuthUser> = None;
    let mut service_claims: Option<Value> = None;
    match endpoint.route().access {
        Access::Public => {}
        Access::User => match auth::verify_user(authorization, &jwt.secrets, &jwt.policy, now) {
            Ok(u) => user = Some(u),
            Err(e) => return auth_error(&e, errors, rid),
        },
        Access::BearerPresent => {
            if let (Err(e), false) = (
                auth::require_bearer(authorization),
                settings.node_env == "development",
            ) {
                return auth_error(&e, errors, rid);
            }
        }
        Access::Internal => {
            let key = req.headers().get("x-api-key").map(HeaderValue::as_bytes);
            match auth::verify_internal(
                key,
                authorization,
                &settings.pipeline.heartalk_api_keys,
                &jwt.secrets,
                &jwt.policy,
                now,
            ) {
                Ok(claims) => service_claims = Some(claims),
                Err(e) => return auth_error(&e, errors, rid),
            }
        }
    }
    let policy = crate::cache::Policy::from_header(header_str(req.headers(), "cache-control"));
    let limit_class = crate::http::endpoints::limited(req.method(), endpoint);
    let ip = if limit_class.is_some() {
        client_ip(req.headers(), peer, settings)
    } else {
        String::new()
    };
    let max_body = settings.pipeline.max_body_size;
    let is_post = req.method() == Method::POST;
    // The limit of `/v1/chat/completions` depends on its `stream` flag, so
    // that body alone is read before the rate limit; its errors are still
    // answered after it (§2's order). Every other body is read only once
    // the request has passed the limit.
    let mut pending = Some(req);
    let mut body = None;
    if endpoint == Endpoint::Completions && is_post {
        if let Some(r) = pending.take() {
            body = Some(read_json(r, max_body, started, body_limit).await);
        }
    }
    let streaming_completions =
        matches!(&body, Some(Ok(v)) if v.get("stream") == Some(&Value::Bool(true)));
    // (5) Rate limit (401s above were not counted), in the window of now:
    // after any body read, which may have taken a while.
    let now = clock::unix_secs();
    if let Some(class) = limit_class {
        let rule = ratelimit::rule(
            &settings.pipeline.rate_limits,
            class,
            user.as_ref().map(|u| u.user_id.as_str()),
            &ip,
            streaming_completions,
        );
        let start = ratelimit::window_start(now, rule.window);
        let count = svc.limiter.hit(&rule.key, start, rule.window).await;
        let verdict = ratelimit::verdict(&rule, count, now);
        let refused = !verdict.allowed;
        ex.limit = Some(verdict.clone());
        if refused {
            telemetry::rate_limited(rule.bucket.label());
            let mut extra = serde_json::Map::new();
            // The window of every bucket (900 s admin, 60 s the fixed ones,
            // RATE_LIMIT_WINDOW global) is its `retryAfter`.
            extra.insert("retryAfter".into(), rule.window.into());
            return errors.error_with(
                StatusCode::TOO_MANY_REQUESTS,
                rule.bucket.code(),
                &rule.message,
                None,
                rid,
                extra,
            );
        }
    }
    // (6) The body, for POST: its errors.
    if let (true, Some(r)) = (is_post, pending.take()) {
        body = Some(read_json(r, max_body, started, body_limit).await);
    }
    let body = match body {
        Some(Ok(v)) => Some(v),
        Some(Err(e)) => return with_rid(e, errors, rid),
        None => None,
    };
    // (7) Validation, then the handler.
    let user_id = user.as_ref().map(|u| u.user_id.as_str());
    let now_ms = clock::epoch_millis(SystemTime::now()).max(0) as u64;
    match endpoint {
        Endpoint::Index => index(state, rid),
        Endpoint::Health => health::liveness(state),
        Endpoint::Ready => health::readiness(state),
        Endpoint::ApiHealth => health::components(state),
        Endpoint::ApiMetrics => api::metrics_stub(),
        Endpoint::Languages => api::languages(),
        Endpoint::Providers => api::providers(svc.provider.is_simulated()),
        Endpoint::Models => api::models(),
        Endpoint::InternalTest => api::internal_test(service_claims.unwrap_or_default(), rid),
        Endpoint::Metrics => match &settings.control_socket {
            Some(socket) => fleet_metrics(socket, rid).await,
            None => unreachable!("`/metrics` is only routed under a supervisor"),
        },
        Endpoint::Generate | Endpoint::Stream => {
            let body = body.unwrap_or_default();
            match validate::chat(&body, user_id, now_ms) {
                Err(e) => validation_error(&e.0, errors, rid),
                Ok(input) if endpoint == Endpoint::Generate => {
                    chat::generate(&state.ctx, input, rid, policy).await
                }
                Ok(input) => chat::stream(state.ctx.clone(), input, rid, ex.http1, policy).await,
            }
        }
        Endpoint::Translate => match validate::translate(&body.unwrap_or_default()) {
            Err(e) => validation_error(&e.0, errors, rid),
            Ok(input) => api::translate(&state.ctx, input, rid, policy).await,
        },
        Endpoint::Detect => match validate::detect(&body.unwrap_or_default()) {
            Err(e) => validation_error(&e.0, errors, rid),
            Ok(text) => api::detect(text),
        },
        Endpoint::Completions => {
            match crate::pipeline::openai::validate(
                body.unwrap_or_default(),
                user_id,
                now_ms,
                settings,
            ) {
                Err(message) => validation_error(&message, errors, rid),
                Ok(input) => {
                    crate::pipeline::openai::completions(&state.ctx, input, rid, policy, ex.http1)
                        .await
                }
            }
        }
        Endpoint::OpenAiModels => crate::pipeline::openai::models(&state.ctx),
    }
}

/// `GET /metrics`: the supervisor's fleet-wide exposition.
async fn fleet_metrics(socket: &std::path::Path, rid: &str) -> Response<Body> {
    match crate::http::fleet_metrics::fetch(socket).await {
        Ok(text) => {
            let mut resp = Response::new(response::full(text));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(telemetry::CONTENT_TYPE),
            );
            resp
        }
        Err(e) => {
            tracing::warn!(error = %e, "fleet metrics unavailable");
            ErrorFormat::HearTalk.error(
                StatusCode::SERVICE_UNAVAILABLE,
                "METRICS_UNAVAILABLE",
                "Metrics unavailable",
                None,
                rid,
            )
        }
    }
}

/// A 400 `VALIDATION_ERROR` in the request's format.
fn validation_error(message: &str, errors: ErrorFormat, rid: &str) -> Response<Body> {
    errors.error(
        StatusCode::BAD_REQUEST,
        "VALIDATION_ERROR",
        message,
        None,
        rid,
    )
}

/// An authentication refusal in the request's format; within HearTalk's,
/// the E1 or E2 body its row of §3's table names.
fn auth_error(e: &auth::AuthError, errors: ErrorFormat, rid: &str) -> Response<Body> {
    match e.shape {
        ErrorShape::E1 => errors.error(e.status, e.code, e.message, None, rid),
        ErrorShape::E2 => errors.error_e2(e.status, e.code, e.message, rid),
    }
}

/// Body errors are built here, in the request's format, because
/// `read_json` knows neither the request id nor the format.
fn with_rid(resp: BodyError, errors: ErrorFormat, rid: &str) -> Response<Body> {
    match resp {
        BodyError::ContentType => {
            validation_error("Content-Type must be application/json", errors, rid)
        }
        BodyError::TooLarge(max) => errors.error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            &format!("Request body too large (max {max} bytes)"),
            None,
            rid,
        ),
        BodyError::InvalidJson => validation_error("invalid JSON body", errors, rid),
        BodyError::Read => validation_error("could not read request body", errors, rid),
        BodyError::Timeout(limit) => body_timeout(limit, errors, rid),
    }
}

/// 408 `REQUEST_TIMEOUT` for a body that did not arrive within
/// `BODY_TIMEOUT`, in the request's error format, with `Connection:
/// close`: the rest of the body may still be on its way, so HTTP/1 cannot
/// go on to a next request (hyper closes after this response). On HTTP/2,
/// where the header is not sent, only this request's stream ends.
fn body_timeout(limit: std::time::Duration, errors: ErrorFormat, rid: &str) -> Response<Body> {
    let mut resp = errors.error(
        StatusCode::REQUEST_TIMEOUT,
        "REQUEST_TIMEOUT",
        &format!("Request body not received within {limit:?}"),
        None,
        rid,
    );
    resp.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

enum BodyError {
    ContentType,
    TooLarge(usize),
    InvalidJson,
    Read,
    /// Not complete by the deadline (`BODY_TIMEOUT`, the value given).
    Timeout(std::time::Duration),
}

/// §2 step 6: JSON content type, non-empty, at most `max` bytes, valid
/// UTF-8 JSON. A declared `Content-Length` over the limit is refused
/// before reading; a body not complete `timeout` (`BODY_TIMEOUT`) after
/// `started` (the head complete) is [`BodyError::Timeout`], whatever the
/// rate its bytes came at.
async fn read_json<B>(
    req: Request<B>,
    max: usize,
    started: Instant,
    timeout: std::time::Duration,
) -> Result<Value, BodyError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let is_json = header_str(req.headers(), "content-type")
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(BodyError::ContentType);
    }
    let declared =
        header_str(req.headers(), "content-length").and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(BodyError::TooLarge(max));
    }
    let collect = Limited::new(req.into_body(), max).collect();
    let deadline = tokio::time::Instant::from_std(started + timeout);
    let Ok(collected) = tokio::time::timeout_at(deadline, collect).await else {
        return Err(BodyError::Timeout(timeout));
    };
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(BodyError::TooLarge(max));
        }
        Err(_) => return Err(BodyError::Read),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError::ContentType);
    }
    serde_json::from_slice(&bytes).map_err(|_| BodyError::InvalidJson)
}

/// Adds the headers every response carries and compresses large JSON.
async fn finish(resp: &mut Response<Body>, state: &AppState, ex: &Exchange) {
    headers::finish(resp, &ex.path, &ex.request_id, &state.worker_id_header);
    let headers = resp.headers_mut();
    for (name, value) in &state.env_headers {
        headers.insert(name.clone(), value.clone());
    }
    if let Some(origin) = &ex.origin {
        state.cors.apply(headers, origin, ex.preflight);
    }
    if let Some(v) = &ex.limit {
        for (name, value) in ratelimit::headers(v) {
            headers.insert(name, value);
        }
    }
    if state.draining() {
        // Hyper closes an HTTP/1 connection after a response that says so;
        // the client reconnects and reaches a live worker.
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    if !ex.no_compression {
        if let Some(enc) = ex.accept_encoding.as_deref() {
            headers::compress(resp, enc).await;
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
            version: &state.ctx.settings.service_version,
            status: "running",
            environment: &state.ctx.settings.node_env,
            request_id,
            timestamp: clock::now_iso8601(),
        },
    )
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
