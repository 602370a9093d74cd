//! Building responses: the body type every handler returns, JSON helpers,
//! the E1 error body (API.md §1), and the headers every response carries
//! (API.md §1 and §11): `X-Worker-Id`, `X-Request-ID`, the fixed security
//! headers and, under `/api/`, the no-store caching headers.
//!
//! Headers are added in one place, [`finish`], after the handler ran, so no
//! handler can forget them and error paths get them too.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, EXPIRES, PRAGMA};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use serde::Serialize;

use crate::clock;

/// Error type of response bodies. Boxed so that later streaming bodies
/// (SSE) can report their own errors through the same type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the worker sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// `Content-Type` of every JSON body.
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// The fixed security headers of API.md §11 (the helmet defaults the
/// Node.js service sent, minus `X-Powered-By`). The environment-dependent
/// ones (CSP, CORP, COOP, HSTS) come with the CORS milestone.
const SECURITY_HEADERS: [(&str, &str); 9] = [
    (
        "referrer-policy",
        "no-referrer,strict-origin-when-cross-origin",
    ),
    ("x-dns-prefetch-control", "off"),
    ("x-download-options", "noopen"),
    ("origin-agent-cluster", "?1"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("x-xss-protection", "1; mode=block"),
    ("x-api-version", "1.0"),
    ("x-service-name", "HearTalk-AI-MVP"),
];

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A JSON response. Serialising the worker's own types cannot fail in
/// practice; if it ever did, the client gets a bare 500 rather than a
/// panic taking the connection down.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    let (status, bytes) = match serde_json::to_vec(value) {
        Ok(v) => (status, v),
        Err(e) => {
            tracing::error!(error = %e, "serialising a response body failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                br#"{"success":false,"error":"Internal server error","code":"INTERNAL_ERROR"}"#
                    .to_vec(),
            )
        }
    };
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON_CONTENT_TYPE));
    resp
}

/// The E1 error body: `{success:false, error, code, requestId, timestamp}`
/// plus `message` when given (§5.7's 404 has one) and any `extra` keys
/// (e.g. `retryAfter` on a 429).
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub success: bool,
    pub error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
    pub code: &'a str,
    #[serde(rename = "requestId")]
    pub request_id: &'a str,
    pub timestamp: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// An E1 error response.
pub fn error(
    status: StatusCode,
    code: &str,
    error: &str,
    message: Option<&str>,
    request_id: &str,
) -> Response<Body> {
    error_with(
        status,
        code,
        error,
        message,
        request_id,
        serde_json::Map::new(),
    )
}

/// An E1 error response with extra keys (`retryAfter`, `upstream`, ...).
pub fn error_with(
    status: StatusCode,
    code: &str,
    error: &str,
    message: Option<&str>,
    request_id: &str,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Response<Body> {
    json(
        status,
        &ErrorBody {
            success: false,
            error,
            message,
            code,
            request_id,
            timestamp: clock::now_iso8601(),
            extra,
        },
    )
}

/// An E2 error response (auth middleware): no timestamp.
pub fn error_e2(status: StatusCode, code: &str, error: &str, request_id: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({"success": false, "error": error, "code": code, "requestId": request_id}),
    )
}

/// Adds the headers every response carries. `path` decides the `/api/`
/// caching headers; a handler's own `Cache-Control` is kept.
pub fn finish(resp: &mut Response<Body>, path: &str, request_id: &str, worker_id: &HeaderValue) {
    let headers = resp.headers_mut();
    headers.insert(HeaderName::from_static("x-worker-id"), worker_id.clone());
    // A resolved request id is `[A-Za-z0-9_-]` only, so this cannot fail;
    // the guard keeps a future bug from becoming a panic.
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(HeaderName::from_static("x-request-id"), v);
    }
    add_security_headers(headers);
    if path.starts_with("/api/") && !headers.contains_key(CACHE_CONTROL) {
        headers.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("no-store, no-cache, must-revalidate, private"),
        );
        headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        headers.insert(EXPIRES, HeaderValue::from_static("0"));
    }
}

fn add_security_headers(headers: &mut HeaderMap) {
    for (name, value) in SECURITY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
}

/// Whether `Accept-Encoding` accepts `name` (a `q=0` refuses it).
pub fn accepts_encoding(header: &str, name: &str) -> bool {
    header.split(',').any(|item| {
        let mut parts = item.split(';');
        let token = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        token.eq_ignore_ascii_case(name) && q > 0.0
    })
}

/// Bodies smaller than this are sent as they are (§11).
const COMPRESS_MIN: u64 = 1024;

/// gzip (or deflate) a complete body of at least 1 KiB when the client
/// accepts it. Streams (`text/event-stream`) and bodies of unknown length
/// are never touched, so SSE frames reach the client as they are written.
pub async fn compress(resp: &mut Response<Body>, accept_encoding: &str) {
    use std::io::Write;

    use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, VARY};
    use http_body_util::BodyExt;

    let is_stream = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if is_stream || resp.headers().contains_key(CONTENT_ENCODING) {
        return;
    }
    let size = hyper::body::Body::size_hint(resp.body()).exact();
    if size.is_none_or(|n| n < COMPRESS_MIN) {
        return;
    }
    let accepts = |name: &str| accepts_encoding(accept_encoding, name);
    let encoding = if accepts("gzip") {
        "gzip"
    } else if accepts("deflate") {
        "deflate"
    } else {
        return;
    };
    let body = std::mem::replace(resp.body_mut(), full(Bytes::new()));
    let Ok(collected) = body.collect().await else {
        return;
    };
    let raw = collected.to_bytes();
    let compressed = if encoding == "gzip" {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&raw).and_then(|_| e.finish())
    } else {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&raw).and_then(|_| e.finish())
    };
    match compressed {
        Ok(bytes) => {
            *resp.body_mut() = full(bytes);
            let h = resp.headers_mut();
            h.remove(CONTENT_LENGTH);
            h.insert(CONTENT_ENCODING, HeaderValue::from_static(encoding));
            h.append(VARY, HeaderValue::from_static("Accept-Encoding"));
        }
        Err(_) => *resp.body_mut() = full(raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_shape() {
        let resp = error(StatusCode::NOT_FOUND, "X", "Nope", Some("m"), "req_1_a");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()[CONTENT_TYPE], JSON_CONTENT_TYPE);
        let body = ErrorBody {
            success: false,
            error: "e",
            message: None,
            code: "C",
            request_id: "r",
            timestamp: "t".into(),
            extra: serde_json::Map::new(),
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"success":false,"error":"e","code":"C","requestId":"r","timestamp":"t"}"#
        );
    }

    #[test]
    fn finish_adds_common_and_api_headers() {
        let wid = HeaderValue::from_static("2");
        let mut api = json(StatusCode::OK, &serde_json::json!({}));
        finish(&mut api, "/api/v1/health", "rid", &wid);
        let h = api.headers();
        assert_eq!(h["x-worker-id"], "2");
        assert_eq!(h["x-request-id"], "rid");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(
            h[CACHE_CONTROL],
            "no-store, no-cache, must-revalidate, private"
        );
        assert_eq!(h[PRAGMA], "no-cache");
        assert_eq!(h[EXPIRES], "0");
        assert!(!h.contains_key("server"));

        let mut plain = json(StatusCode::OK, &serde_json::json!({}));
        finish(&mut plain, "/health", "rid", &wid);
        assert!(!plain.headers().contains_key(CACHE_CONTROL));
        assert_eq!(plain.headers()["x-service-name"], "HearTalk-AI-MVP");
    }

    #[test]
    fn accept_encoding_honours_q_zero() {
        assert!(accepts_encoding("gzip, deflate", "gzip"));
        assert!(accepts_encoding("deflate, GZIP;q=0.5", "gzip"));
        assert!(!accepts_encoding("gzip;q=0", "gzip"));
        assert!(!accepts_encoding("gzip; q=0.0, deflate", "gzip"));
        assert!(!accepts_encoding("br", "gzip"));
    }
}
