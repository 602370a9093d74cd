//! The endpoints table: the one place an endpoint's path is spelled, with
//! everything the edge decides from it — the method, who may call it, its
//! rate-limit class (or exemption, API.md §4), and its metric route label
//! (the path itself) — plus the two path families whose rules also cover
//! unknown paths: OpenAI's error shape under `/v1/` (§5.4) and the no-store
//! caching headers under `/api/` (§1).
//!
//! The router matches requests against [`ROUTES`] ([`lookup`]), the rate
//! limiter is handed the row's [`Limit`] rather than a path to match
//! substrings in, and the access log, the headers and the metrics listener
//! ask here instead of repeating path strings. Paths match exactly, with no
//! trailing-slash normalisation (§1).

use http::Method;

use crate::limits::ratelimit::PathClass;
use crate::pipeline::response::ErrorFormat;

/// What a matched route runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Index,
    Health,
    Ready,
    ApiHealth,
    ApiMetrics,
    Generate,
    Stream,
    Translate,
    Languages,
    Detect,
    Providers,
    Models,
    InternalTest,
    /// Fleet-wide Prometheus text, under a supervisor.
    Metrics,
    /// OpenAI-compatible chat completions (§5.4).
    Completions,
    /// OpenAI-compatible model list.
    OpenAiModels,
}

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    /// A valid user JWT.
    User,
    /// A `Bearer ` header must be present, not verified (except in development).
    BearerPresent,
    /// `X-API-Key` plus a service JWT.
    Internal,
}

/// Whether an endpoint is rate limited, and in which of §4's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Never limited (probes and the banner).
    Exempt,
    Limited(PathClass),
}

/// One endpoint: its method and exact path, and its properties.
#[derive(Debug)]
pub struct Route {
    pub method: Method,
    /// The exact path; also the `route` label of its metrics and access log.
    pub path: &'static str,
    pub endpoint: Endpoint,
    pub access: Access,
    pub limit: Limit,
}

/// The path of the fleet-wide metrics endpoint, which the worker's own
/// metrics listener (`METRICS_PORT`) also serves.
pub const METRICS_PATH: &str = "/metrics";

/// The prefix of the OpenAI-compatible API (§5.4).
const OPENAI_PREFIX: &str = "/v1/";

/// The prefix of HearTalk's API, whose answers are never cached (§1).
const API_PREFIX: &str = "/api/";

const fn row(
    method: Method,
    path: &'static str,
    endpoint: Endpoint,
    access: Access,
    limit: Limit,
) -> Route {
    Route {
        method,
        path,
        endpoint,
        access,
        limit,
    }
}

use Access::{BearerPresent, Internal, Public, User};
use Limit::{Exempt, Limited};

/// The route table: one row per endpoint, in the order of [`Endpoint`]
/// (so [`Endpoint::route`] is an index), which is also the order `Allow`
/// lists methods. Each rate-limit class is the §4 row the path falls in
/// (the Node.js service matched substrings of the lower-cased path:
/// `/admin/`, then `/stream`, then `/api/v1/chat/` or `/api/v1/translate/`,
/// then any user outside `/internal/`), stated here once per endpoint.
pub static ROUTES: [Route; 16] = [
    row(Method::GET, "/", Endpoint::Index, Public, Exempt),
    row(Method::GET, "/health", Endpoint::Health, Public, Exempt),
    row(Method::GET, "/ready", Endpoint::Ready, Public, Exempt),
    row(
        Method::GET,
        "/api/v1/health",
        Endpoint::ApiHealth,
        Public,
        Exempt,
    ),
    row(
        Method::GET,
        "/api/v1/metrics",
        Endpoint::ApiMetrics,
        User,
        Limited(PathClass::Other),
    ),
    row(
        Method::POST,
        "/api/v1/chat/generate",
        Endpoint::Generate,
        User,
        Limited(PathClass::AiApi),
    ),
    row(
        Method::POST,
        "/api/v1/chat/stream",
        Endpoint::Stream,
        User,
        Limited(PathClass::Stream),
    ),
    // No trailing slash: not under `/api/v1/translate/`, so a user's row.
    row(
        Method::POST,
        "/api/v1/translate",
        Endpoint::Translate,
        User,
        Limited(PathClass::Other),
    ),
    row(
        Method::GET,
        "/api/v1/translate/languages",
        Endpoint::Languages,
        User,
        Limited(PathClass::AiApi),
    ),
    row(
        Method::POST,
        "/api/v1/translate/detect",
        Endpoint::Detect,
        User,
        Limited(PathClass::AiApi),
    ),
    row(
        Method::GET,
        "/api/v1/providers",
        Endpoint::Providers,
        BearerPresent,
        Limited(PathClass::Other),
    ),
    row(
        Method::GET,
        "/api/v1/models",
        Endpoint::Models,
        BearerPresent,
        Limited(PathClass::Other),
    ),
    row(
        Method::GET,
        "/internal/api/v1/test",
        Endpoint::InternalTest,
        Internal,
        Limited(PathClass::Internal),
    ),
    row(Method::GET, METRICS_PATH, Endpoint::Metrics, Public, Exempt),
    row(
        Method::POST,
        "/v1/chat/completions",
        Endpoint::Completions,
        User,
        Limited(PathClass::Completions),
    ),
    row(
        Method::GET,
        "/v1/models",
        Endpoint::OpenAiModels,
        User,
        Limited(PathClass::Other),
    ),
];

impl Endpoint {
    /// The endpoint's row of [`ROUTES`].
    pub fn route(self) -> &'static Route {
        &ROUTES[self as usize]
    }
}

/// The outcome of matching a request line against [`ROUTES`].
#[derive(Debug, PartialEq, Eq)]
pub enum Match {
    Found(Endpoint),
    /// The path exists for other methods; the value is the `Allow` list.
    MethodNotAllowed(String),
    NotFound,
}

/// Matches a method and exact path.
/// `HEAD` is served wherever `GET` is (as Express does; hyper sends no
/// body for it), and listed in `Allow` with it.
pub fn lookup(method: &Method, path: &str) -> Match {
    lookup_with(method, path, true)
}

/// [`lookup`], where `/metrics` exists only when `fleet_metrics` is set:
/// under a supervisor that serves the fleet-wide numbers. A worker alone
/// has no fleet, so there the path is an unknown route like any other.
pub fn lookup_with(method: &Method, path: &str, fleet_metrics: bool) -> Match {
    let mut allowed: Vec<&str> = Vec::new();
    for r in &ROUTES {
        if r.path != path || (r.endpoint == Endpoint::Metrics && !fleet_metrics) {
            continue;
        }
        if r.method == method || (r.method == Method::GET && method == Method::HEAD) {
            return Match::Found(r.endpoint);
        }
        if !allowed.contains(&r.method.as_str()) {
            allowed.push(r.method.as_str());
        }
        if r.method == Method::GET && !allowed.contains(&"HEAD") {
            allowed.push("HEAD");
        }
    }
    if allowed.is_empty() {
        Match::NotFound
    } else {
        Match::MethodNotAllowed(allowed.join(", "))
    }
}

/// The metric label of a path: its row's path whatever the method (a 405
/// is counted under the route it missed), or `unmatched`.
pub fn route_label(path: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|r| r.path == path)
        .map_or("unmatched", |r| r.path)
}

/// Whether a request is rate limited: not a preflight (`OPTIONS`, which
/// the router answers before any route check anyway), and not on an
/// exempt endpoint.
pub fn limited(method: &Method, endpoint: Endpoint) -> Option<PathClass> {
    match endpoint.route().limit {
        Limited(class) if method != Method::OPTIONS => Some(class),
        _ => None,
    }
}

/// The error format of a path: OpenAI's for everything under `/v1/` (the
/// OpenAI-compatible API, §5.4), matched or not, so an SDK reads even a 404
/// or a CORS refusal; HearTalk's elsewhere.
pub fn error_format(path: &str) -> ErrorFormat {
    if path.starts_with(OPENAI_PREFIX) {
        ErrorFormat::OpenAi
    } else {
        ErrorFormat::HearTalk
    }
}

/// Whether a path is under `/api/`, matched or not: its answers get the
/// no-store caching headers (§1).
pub fn under_api(path: &str) -> bool {
    path.starts_with(API_PREFIX)
}

#[cfg(test)]
#[path = "endpoints_tests.rs"]
mod tests;
