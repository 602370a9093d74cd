//! CORS and the environment-dependent security headers (API.md §11).
//!
//! The origin policy is the Node.js service's, with one fix: in production
//! an origin outside the list gets 403 `CORS_ORIGIN_DENIED` instead of a
//! 500. The allowed origin is always reflected (never `*`), with
//! credentials, so the SSE stream works from a browser with cookies.

use http::{HeaderMap, HeaderName, HeaderValue};

const BASE_ORIGINS: [&str; 6] = [
    "http://localhost:3000",
    "http://localhost:3001",
    "http://localhost:8080",
    "http://127.0.0.1:3000",
    "http://127.0.0.1:3001",
    "http://127.0.0.1:8080",
];
const DEV_EXTRA_ORIGINS: [&str; 3] = [
    "http://localhost:5173",
    "http://localhost:4200",
    "http://localhost:8000",
];

const ALLOW_METHODS: &str = "GET,POST,PUT,DELETE,PATCH,OPTIONS";
const ALLOW_HEADERS: &str = "Content-Type,Authorization,X-Requested-With,X-API-Key,Accept,Origin,\
Access-Control-Request-Method,Access-Control-Request-Headers,X-Request-ID";
const EXPOSE_HEADERS: &str = "X-RateLimit-Limit,X-RateLimit-Remaining,X-RateLimit-Reset,X-Request-ID,\
X-Response-Time,RateLimit-Limit,RateLimit-Remaining,RateLimit-Reset,RateLimit-Policy,Retry-After,X-Cache";

/// The origin policy for one process.
#[derive(Debug, Clone)]
pub struct Cors {
    env: String,
    list: Vec<String>,
}

/// What to do with a request's `Origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No `Origin` header: allowed, no CORS headers.
    NoOrigin,
    /// Reflect this origin.
    Allow(String),
    /// Allowed although not listed (development / other environments);
    /// the caller logs a warning.
    AllowWithWarning(String),
    /// Production, not listed: 403 `CORS_ORIGIN_DENIED`.
    Deny,
}

impl Cors {
    /// `allowed` is `ALLOWED_ORIGINS` (replaces the built-in list when set).
    pub fn new(node_env: &str, allowed: Option<&[String]>) -> Cors {
        let list = match allowed {
            Some(l) => l.to_vec(),
            None => {
                let mut l: Vec<String> = BASE_ORIGINS.iter().map(|s| s.to_string()).collect();
                if node_env == "development" {
                    l.extend(DEV_EXTRA_ORIGINS.iter().map(|s| s.to_string()));
                }
                l
            }
        };
        Cors {
            env: node_env.to_string(),
            list,
        }
    }

    pub fn decide(&self, origin: Option<&str>) -> Decision {
        let Some(origin) = origin else {
            return Decision::NoOrigin;
        };
        let listed = self.list.iter().any(|o| o == origin);
        match self.env.as_str() {
            "development" if listed || origin.contains("localhost") => {
                Decision::Allow(origin.to_string())
            }
            "development" => Decision::AllowWithWarning(origin.to_string()),
            "production" if listed => Decision::Allow(origin.to_string()),
            "production" => Decision::Deny,
            _ if listed => Decision::Allow(origin.to_string()),
            _ => Decision::AllowWithWarning(origin.to_string()),
        }
    }

    /// Preflight cache time: a day in production, 10 minutes otherwise.
    pub fn max_age(&self) -> u32 {
        if self.env == "production" {
            86_400
        } else {
            600
        }
    }

    /// Adds the CORS response headers for an allowed origin.
    pub fn apply(&self, headers: &mut HeaderMap, origin: &str, preflight: bool) {
        let Ok(origin) = HeaderValue::from_str(origin) else {
            return;
        };
        headers.insert("access-control-allow-origin", origin);
        headers.insert(
            "access-control-allow-credentials",
            HeaderValue::from_static("true"),
        );
        headers.append(http::header::VARY, HeaderValue::from_static("Origin"));
        headers.insert(
            "access-control-expose-headers",
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
        if preflight {
            headers.insert(
                "access-control-allow-methods",
                HeaderValue::from_static(ALLOW_METHODS),
            );
            headers.insert(
                "access-control-allow-headers",
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            headers.insert("access-control-max-age", HeaderValue::from(self.max_age()));
        }
    }
}

/// The security headers that depend on `NODE_ENV` (CSP, CORP, COOP, HSTS).
pub fn environment_headers(node_env: &str) -> Vec<(HeaderName, HeaderValue)> {
    let dev = node_env == "development";
    let prod = node_env == "production";
    let mut csp = String::from("default-src 'self'; script-src 'self' 'unsafe-inline'");
    if dev {
        csp.push_str(" 'unsafe-eval'");
    }
    csp.push_str(
        "; style-src 'self' 'unsafe-inline'; img-src 'self' data: https:; \
         connect-src 'self' https://ark.ap-southeast.bytepluses.com https://*.volcengineapi.com",
    );
    if dev {
        csp.push_str(" http://localhost:* ws://localhost:*");
    }
    csp.push_str(
        "; font-src 'self' https: data:; object-src 'none'; media-src 'self'; frame-src 'none'",
    );
    let csp_name = if dev {
        "content-security-policy-report-only"
    } else {
        "content-security-policy"
    };
    let mut out = vec![
        (
            HeaderName::from_static(csp_name),
            HeaderValue::from_str(&csp).unwrap_or(HeaderValue::from_static("default-src 'self'")),
        ),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static(if prod { "same-origin" } else { "cross-origin" }),
        ),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ];
    if prod {
        out.push((
            HeaderName::from_static("strict-transport-security"),
            HeaderValue::from_static("max-age=31536000; includeSubDomains; preload"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_allows_localhost_and_warns_otherwise() {
        let c = Cors::new("development", None);
        assert_eq!(c.decide(None), Decision::NoOrigin);
        assert_eq!(
            c.decide(Some("http://localhost:9999")),
            Decision::Allow("http://localhost:9999".into())
        );
        assert_eq!(
            c.decide(Some("http://localhost:5173")),
            Decision::Allow("http://localhost:5173".into())
        );
        assert_eq!(
            c.decide(Some("https://evil.example")),
            Decision::AllowWithWarning("https://evil.example".into())
        );
        assert_eq!(c.max_age(), 600);
    }

    #[test]
    fn production_denies_unlisted_origins() {
        let c = Cors::new("production", None);
        assert_eq!(
            c.decide(Some("http://localhost:3000")),
            Decision::Allow("http://localhost:3000".into())
        );
        assert_eq!(
            c.decide(Some("http://localhost:5173")),
            Decision::Deny,
            "dev-only origin"
        );
        assert_eq!(c.decide(Some("https://evil.example")), Decision::Deny);
        assert_eq!(c.max_age(), 86_400);
        let listed = Cors::new(
            "production",
            Some(&["https://app.heartalk.example".to_string()]),
        );
        assert_eq!(
            listed.decide(Some("http://localhost:3000")),
            Decision::Deny,
            "the list is replaced"
        );
        assert!(matches!(
            listed.decide(Some("https://app.heartalk.example")),
            Decision::Allow(_)
        ));
    }

    #[test]
    fn other_environments_check_the_list_and_warn() {
        let c = Cors::new("test", None);
        assert!(matches!(
            c.decide(Some("http://127.0.0.1:8080")),
            Decision::Allow(_)
        ));
        assert!(matches!(
            c.decide(Some("https://x.example")),
            Decision::AllowWithWarning(_)
        ));
    }

    #[test]
    fn headers_reflect_never_star() {
        let c = Cors::new("production", None);
        let mut h = HeaderMap::new();
        c.apply(&mut h, "http://localhost:3000", true);
        assert_eq!(h["access-control-allow-origin"], "http://localhost:3000");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-max-age"], "86400");
        assert!(
            h["access-control-expose-headers"]
                .to_str()
                .unwrap()
                .contains("X-Cache")
        );
    }

    #[test]
    fn environment_headers_differ() {
        let dev = environment_headers("development");
        assert!(
            dev.iter()
                .any(|(n, v)| n == "content-security-policy-report-only"
                    && v.to_str().unwrap().contains("unsafe-eval"))
        );
        assert!(!dev.iter().any(|(n, _)| n == "strict-transport-security"));
        let prod = environment_headers("production");
        assert!(
            prod.iter()
                .any(|(n, v)| n == "cross-origin-resource-policy" && v == "same-origin")
        );
        assert!(prod.iter().any(|(n, _)| n == "strict-transport-security"));
        assert!(
            prod.iter().any(|(n, v)| n == "content-security-policy"
                && !v.to_str().unwrap().contains("localhost"))
        );
    }
}
