//! Tests of the endpoints table: its order, the exemptions, and every
//! path's rate-limit rule against the Node.js service's path matching
//! (kept here as the reference the table's classes were read from).

use super::*;
use crate::limits::ratelimit::{Bucket, rule};
use crate::settings::RateLimits;

#[test]
fn rows_are_in_endpoint_order() {
    for (i, r) in ROUTES.iter().enumerate() {
        assert_eq!(r.endpoint as usize, i, "{}", r.path);
        assert!(std::ptr::eq(r.endpoint.route(), r));
    }
}

#[test]
fn labels_are_the_paths() {
    assert_eq!(route_label("/health"), "/health");
    assert_eq!(route_label("/v1/chat/completions"), "/v1/chat/completions");
    assert_eq!(route_label("/metrics"), "/metrics");
    assert_eq!(route_label("/health/"), "unmatched");
}

#[test]
fn exemptions() {
    for p in ["/", "/health", "/ready", "/metrics", "/api/v1/health"] {
        let Match::Found(e) = lookup(&Method::GET, p) else {
            panic!("{p} is routed")
        };
        assert_eq!(limited(&Method::GET, e), None, "{p}");
        assert_eq!(limited(&Method::HEAD, e), None, "{p}");
    }
    // Not routed: a 404 before any limit.
    assert_eq!(lookup(&Method::GET, "/favicon.ico"), Match::NotFound);
    assert_eq!(limited(&Method::OPTIONS, Endpoint::Generate), None);
    assert_eq!(
        limited(&Method::POST, Endpoint::Generate),
        Some(PathClass::AiApi)
    );
}

/// Who may call each endpoint, as the router's `match` said before the
/// table did.
#[test]
fn access_is_as_before() {
    for r in &ROUTES {
        let before = match r.endpoint {
            Endpoint::Index
            | Endpoint::Health
            | Endpoint::Ready
            | Endpoint::ApiHealth
            | Endpoint::Metrics => Public,
            Endpoint::Providers | Endpoint::Models => BearerPresent,
            Endpoint::InternalTest => Internal,
            _ => User,
        };
        assert_eq!(r.access, before, "{}", r.path);
    }
}

/// The exemption the service applied before the table: by method and path.
fn reference_exempt(method: &Method, path: &str) -> bool {
    method == Method::OPTIONS
        || matches!(
            path,
            "/" | "/health" | "/ready" | "/metrics" | "/api/v1/health" | "/favicon.ico"
        )
}

/// The bucket and counter key the service chose before the table: §4's
/// first matching row, by substring of the lower-cased path. (A rule's
/// limit, window and message follow from its bucket.)
fn reference_rule(
    path: &str,
    user: Option<&str>,
    ip: &str,
    streaming_completions: bool,
) -> (Bucket, String) {
    let p = path.to_ascii_lowercase();
    let who = user.unwrap_or(ip);
    let completions = p == "/v1/chat/completions";
    if p.contains("/admin/") {
        (Bucket::Admin, format!("admin:{who}"))
    } else if p.contains("/stream") || (completions && streaming_completions) {
        (Bucket::Stream, format!("stream:{who}"))
    } else if p.contains("/api/v1/chat/") || p.contains("/api/v1/translate/") || completions {
        (Bucket::AiApi, format!("ai_api:{who}"))
    } else if let (Some(u), false) = (user, p.starts_with("/internal/")) {
        (Bucket::User, format!("user:{u}"))
    } else {
        (Bucket::Global, ip.to_string())
    }
}

/// For every path and method, the table limits a request exactly as the
/// path matching did: a routed request is exempt, or gets the same rule
/// for every user and `stream` flag; any other request is answered 404 or
/// 405 before the limit (as it was), whatever the reference would say.
#[test]
fn every_path_is_limited_as_the_path_matching_did() {
    let limits = RateLimits::default();
    let mut paths: Vec<&str> = ROUTES.iter().map(|r| r.path).collect();
    paths.extend([
        "/api/v1/admin/users",
        "/API/V1/CHAT/GENERATE",
        "/api/v1/chat/",
        "/api/v1/chat/stream/",
        "/api/v1/translate/",
        "/v1/chat/completions/",
        "/V1/CHAT/COMPLETIONS",
        "/internal/api/v1/other",
        "/favicon.ico",
        "/health/",
        "/HEALTH",
        "/nope",
        "",
    ]);
    let methods = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
    ];
    let mut routed = 0;
    for path in &paths {
        for method in &methods {
            let Match::Found(e) = lookup(method, path) else {
                continue;
            };
            routed += 1;
            let class = limited(method, e);
            assert_eq!(
                class.is_none(),
                reference_exempt(method, path),
                "{method} {path}"
            );
            let Some(class) = class else { continue };
            for user in [None, Some("u-1")] {
                for streaming in [false, true] {
                    // The router reads `stream` only on completions.
                    let streaming = streaming && e == Endpoint::Completions;
                    let r = rule(&limits, class, user, "203.0.113.9", streaming);
                    assert_eq!(
                        (r.bucket, r.key),
                        reference_rule(path, user, "203.0.113.9", streaming),
                        "{method} {path} {user:?} {streaming}"
                    );
                }
            }
        }
    }
    // Every row, plus HEAD on each GET row.
    let gets = ROUTES.iter().filter(|r| r.method == Method::GET).count();
    assert_eq!(routed, ROUTES.len() + gets);
}

#[test]
fn path_families_cover_unknown_paths() {
    assert_eq!(error_format("/v1/nope"), ErrorFormat::OpenAi);
    assert_eq!(error_format("/v1/chat/completions"), ErrorFormat::OpenAi);
    assert_eq!(error_format("/api/v1/chat/stream"), ErrorFormat::HearTalk);
    assert_eq!(error_format("/v1"), ErrorFormat::HearTalk);
    assert!(under_api("/api/v1/nope"));
    assert!(!under_api("/health"));
    assert!(!under_api("/api"));
}
