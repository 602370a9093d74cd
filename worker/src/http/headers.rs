//! What every response gets on its way out (API.md §1 and §11):
//! `X-Worker-Id`, `X-Request-ID`, the fixed security headers and, under
//! `/api/`, the no-store caching headers; and gzip or deflate for a
//! complete body the client accepts compressed.
//!
//! Headers are added in one place, [`finish`], after the handler ran, so no
//! handler can forget them and error paths get them too.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, EXPIRES, PRAGMA};
use http::{HeaderMap, HeaderName, HeaderValue, Response};

use crate::pipeline::response::{Body, full};

/// The fixed security headers of API.md §11 (the helmet defaults the
/// Node.js service sent, minus `X-Powered-By`). The environment-dependent
/// ones (CSP, CORP, COOP, HSTS) come with the CORS milestone. Built at
/// compile time: every response carries them, and a name made at run time
/// is parsed and checked each time.
const SECURITY_HEADERS: [(HeaderName, HeaderValue); 9] = [
    header(
        "referrer-policy",
        "no-referrer,strict-origin-when-cross-origin",
    ),
    header("x-dns-prefetch-control", "off"),
    header("x-download-options", "noopen"),
    header("origin-agent-cluster", "?1"),
    header("x-content-type-options", "nosniff"),
    header("x-frame-options", "DENY"),
    header("x-xss-protection", "1; mode=block"),
    header("x-api-version", "1.0"),
    header("x-service-name", "HearTalk-AI-MVP"),
];

const fn header(name: &'static str, value: &'static str) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(name),
        HeaderValue::from_static(value),
    )
}

const X_WORKER_ID: HeaderName = HeaderName::from_static("x-worker-id");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Adds the headers every response carries. `path` decides the `/api/`
/// caching headers; a handler's own `Cache-Control` is kept.
pub fn finish(resp: &mut Response<Body>, path: &str, request_id: &str, worker_id: &HeaderValue) {
    let headers = resp.headers_mut();
    // Room for what is added here and by the router (CORS, rate limits),
    // so the map grows once rather than rehashing on the way.
    headers.reserve(32);
    headers.insert(X_WORKER_ID, worker_id.clone());
    // A resolved request id is `[A-Za-z0-9_-]` only, so this cannot fail;
    // the guard keeps a future bug from becoming a panic.
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(X_REQUEST_ID, v);
    }
    add_security_headers(headers);
    if crate::http::endpoints::under_api(path) && !headers.contains_key(CACHE_CONTROL) {
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
        headers.insert(name, value);
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
    use http::StatusCode;

    use super::*;
    use crate::pipeline::response::json;

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
