//! Building responses: the body type every handler returns, JSON helpers,
//! and the error bodies in each [`ErrorFormat`] (HearTalk's E1/E2 of
//! API.md §1, OpenAI's of §5.4; [`openai_error`] is also the object the SSE
//! error frames carry). The headers every response carries are added later,
//! at the edge ([`crate::http::headers`]).
//!
//! Error bodies are built once, in the request's format, where the error
//! is decided: nothing re-reads a body to reshape it.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use serde::Serialize;

use crate::runtime::clock;

/// Error type of response bodies. Boxed so that later streaming bodies
/// (SSE) can report their own errors through the same type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the worker sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// `Content-Type` of every JSON body.
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

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

/// Which error body a request gets, decided once per request (by the
/// router, from its path) and handed to everything that builds its errors,
/// so each error is built in its final shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorFormat {
    /// HearTalk's own bodies (API.md §1): E1, or E2 for the auth
    /// middleware's refusals.
    #[default]
    HearTalk,
    /// OpenAI's `{"error":{message, type, param:null, code}}` (API.md
    /// §5.4), for `/v1/*`, so the official SDKs read our errors. It keeps
    /// the status and the contract's `code`; the E1 extras (`retryAfter`,
    /// `upstream`) have no place in it and are left out.
    OpenAi,
}

impl ErrorFormat {
    /// An error response: E1 `{success:false, error, code, requestId,
    /// timestamp}` (plus `message` when given), or OpenAI's body whose
    /// `message` is the more specific of `message` and `error` (a 404's
    /// `Route GET /v1/x not found` rather than `Not Found`).
    pub fn error(
        self,
        status: StatusCode,
        code: &str,
        error: &str,
        message: Option<&str>,
        request_id: &str,
    ) -> Response<Body> {
        self.error_with(
            status,
            code,
            error,
            message,
            request_id,
            serde_json::Map::new(),
        )
    }

    /// [`ErrorFormat::error`] with E1's extra keys (`retryAfter`,
    /// `upstream`, ...), which the OpenAI body does not carry.
    pub fn error_with(
        self,
        status: StatusCode,
        code: &str,
        error: &str,
        message: Option<&str>,
        request_id: &str,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Response<Body> {
        match self {
            ErrorFormat::HearTalk => json(
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
            ),
            ErrorFormat::OpenAi => openai(status, code, message.unwrap_or(error)),
        }
    }

    /// The auth middleware's refusal: E2 `{success:false, error, code,
    /// requestId}` (no timestamp), or OpenAI's body.
    pub fn error_e2(
        self,
        status: StatusCode,
        code: &str,
        error: &str,
        request_id: &str,
    ) -> Response<Body> {
        match self {
            ErrorFormat::HearTalk => json(
                status,
                &serde_json::json!({"success": false, "error": error, "code": code, "requestId": request_id}),
            ),
            ErrorFormat::OpenAi => openai(status, code, error),
        }
    }

    /// The production User-Agent filter's refusal (API.md §2), which
    /// predates the request id: `{success:false, error, code}`, or OpenAI's
    /// body.
    pub fn error_bare(self, status: StatusCode, code: &str, error: &str) -> Response<Body> {
        match self {
            ErrorFormat::HearTalk => json(
                status,
                &serde_json::json!({"success": false, "error": error, "code": code}),
            ),
            ErrorFormat::OpenAi => openai(status, code, error),
        }
    }
}

/// OpenAI's error `type` for one of our statuses (API.md §5.4).
pub fn openai_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 => "authentication_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// An OpenAI-shaped error response; the object is the one the SSE error
/// frames carry ([`openai_error`]), so the two cannot drift.
fn openai(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        &openai_error(message, openai_error_type(status), code),
    )
}

/// An OpenAI-shaped error object (`{"error":{message,type,param,code}}`),
/// serialised as it stands (no JSON tree), keys in OpenAI's order.
pub fn openai_error<'a>(message: &'a str, kind: &'a str, code: &'a str) -> OpenAiError<'a> {
    OpenAiError {
        error: OpenAiErrorFields {
            message,
            kind,
            param: None,
            code,
        },
    }
}

/// See [`openai_error`].
#[derive(Serialize)]
pub struct OpenAiError<'a> {
    error: OpenAiErrorFields<'a>,
}

#[derive(Serialize)]
struct OpenAiErrorFields<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    /// Always `null`: no error here is about one parameter.
    param: Option<&'a str>,
    code: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_shape() {
        let resp =
            ErrorFormat::HearTalk.error(StatusCode::NOT_FOUND, "X", "Nope", Some("m"), "req_1_a");
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

    fn body_of(resp: Response<Body>) -> serde_json::Value {
        let bytes = ready(resp.into_body().collect()).unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// A `Full` body is ready at once: one poll completes it.
    fn ready<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("a full body is never pending"),
        }
    }

    #[test]
    fn openai_format_keeps_status_and_code() {
        let f = ErrorFormat::OpenAi;
        let mut extra = serde_json::Map::new();
        extra.insert("retryAfter".into(), 60.into());
        let resp = f.error_with(
            StatusCode::TOO_MANY_REQUESTS,
            "X_LIMIT",
            "Slow down",
            None,
            "r",
            extra,
        );
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[CONTENT_TYPE], JSON_CONTENT_TYPE);
        assert_eq!(
            body_of(resp),
            serde_json::json!({"error": {"message": "Slow down", "type": "rate_limit_error",
                                         "param": null, "code": "X_LIMIT"}})
        );
        let resp = f.error(
            StatusCode::NOT_FOUND,
            "NF",
            "Not Found",
            Some("detail"),
            "r",
        );
        assert_eq!(body_of(resp)["error"]["message"], "detail");
        let resp = f.error_e2(StatusCode::UNAUTHORIZED, "BAD", "no", "r");
        assert_eq!(body_of(resp)["error"]["type"], "authentication_error");
        let resp = f.error_bare(StatusCode::BAD_GATEWAY, "UP", "down");
        assert_eq!(body_of(resp)["error"]["type"], "api_error");

        let e2 = ErrorFormat::HearTalk.error_e2(StatusCode::UNAUTHORIZED, "BAD", "no", "r");
        assert_eq!(
            body_of(e2),
            serde_json::json!({"success": false, "error": "no", "code": "BAD", "requestId": "r"})
        );
    }

    #[test]
    fn openai_error_types() {
        let t = openai_error_type;
        assert_eq!(t(StatusCode::UNAUTHORIZED), "authentication_error");
        assert_eq!(t(StatusCode::FORBIDDEN), "authentication_error");
        assert_eq!(t(StatusCode::TOO_MANY_REQUESTS), "rate_limit_error");
        assert_eq!(t(StatusCode::BAD_REQUEST), "invalid_request_error");
        assert_eq!(t(StatusCode::BAD_GATEWAY), "api_error");
    }
}
