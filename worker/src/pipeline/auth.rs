//! Authentication (API.md §3): verifying user JWTs, authenticating the
//! internal paths (`X-API-Key` plus a service JWT), and minting the
//! outbound service JWT the worker sends to the HearTalk backend (§8).
//!
//! Everything here is pure: the caller passes the raw header bytes, the
//! secret and the current Unix time, and gets claims or an [`AuthError`]
//! that already carries the status, `code`, `error` text and body shape of
//! the contract's error table. Taking `now` as an argument keeps the
//! `exp`/`nbf` rules testable without a clock.
//!
//! The semantics are those of the Node.js service's `jsonwebtoken.verify`
//! with zero clock tolerance: `nbf` is checked before `exp`, a token is
//! expired once `now >= exp`, not yet active while `nbf > now`, and a
//! present but non-numeric `exp`/`nbf` makes the token invalid. Only HS256
//! is accepted, whatever the header claims.

use http::StatusCode;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Which error body an [`AuthError`] is rendered as (API.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    /// `{success:false, error, code, requestId, timestamp}`.
    E1,
    /// `{success:false, error, code, requestId}`: the auth middleware's
    /// shape, with no timestamp.
    E2,
}

/// One row of API.md §3's error table: everything needed to render the
/// refusal. The constants below are the only values ever produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct AuthError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: &'static str,
    pub shape: ErrorShape,
}

impl AuthError {
    const fn e2(status: StatusCode, code: &'static str, message: &'static str) -> Self {
        AuthError {
            status,
            code,
            message,
            shape: ErrorShape::E2,
        }
    }

    /// User path: no `Authorization` header, or no `Bearer ` prefix.
    pub const MISSING_TOKEN: AuthError = AuthError::e2(
        StatusCode::UNAUTHORIZED,
        "MISSING_TOKEN",
        "Authorization header is required",
    );
    /// Internal path: no `Authorization` header, or no `Bearer ` prefix.
    pub const MISSING_TOKEN_INTERNAL: AuthError = AuthError::e2(
        StatusCode::UNAUTHORIZED,
        "MISSING_TOKEN",
        "Missing or invalid authorization header",
    );
    /// Bad signature, malformed, wrong `alg`, empty token.
    pub const INVALID_TOKEN: AuthError =
        AuthError::e2(StatusCode::UNAUTHORIZED, "INVALID_TOKEN", "Invalid token");
    /// `exp` has passed (user path).
    pub const TOKEN_EXPIRED: AuthError =
        AuthError::e2(StatusCode::UNAUTHORIZED, "TOKEN_EXPIRED", "Token expired");
    /// `nbf` is in the future (user path).
    pub const TOKEN_NOT_ACTIVE: AuthError = AuthError::e2(
        StatusCode::UNAUTHORIZED,
        "TOKEN_NOT_ACTIVE",
        "Token not active",
    );
    /// A valid token with no usable `user_id` / `userId` / `id` claim.
    pub const INVALID_TOKEN_STRUCTURE: AuthError = AuthError::e2(
        StatusCode::UNAUTHORIZED,
        "INVALID_TOKEN_STRUCTURE",
        "Invalid token structure - missing user identifier",
    );
    /// Internal path: `X-API-Key` missing or wrong.
    pub const INVALID_API_KEY: AuthError = AuthError::e2(
        StatusCode::UNAUTHORIZED,
        "INVALID_API_KEY",
        "Invalid API key",
    );
    /// Internal path: the service JWT is invalid, expired, or lacks
    /// `service == "ai-service"`.
    pub const INVALID_SERVICE_TOKEN: AuthError = AuthError::e2(
        StatusCode::UNAUTHORIZED,
        "INVALID_SERVICE_TOKEN",
        "Invalid service token",
    );
    /// Any other verification failure (e.g. `nbf` on the internal path).
    pub const AUTH_ERROR: AuthError = AuthError::e2(
        StatusCode::INTERNAL_SERVER_ERROR,
        "AUTH_ERROR",
        "Authentication error",
    );
    /// `/api/v1/providers` and `/api/v1/models` without a `Bearer ` header
    /// (outside development). The only E1 row.
    pub const AUTHENTICATION_REQUIRED: AuthError = AuthError {
        status: StatusCode::UNAUTHORIZED,
        code: "AUTHENTICATION_ERROR",
        message: "Authentication required",
        shape: ErrorShape::E1,
    };
}

/// A verified user: the id that keys the rate limits and defaults
/// `user_id`, and the token's full claims.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthUser {
    pub user_id: String,
    pub claims: Value,
}

/// The `service` claim the internal paths require and outbound tokens carry.
pub const SERVICE_NAME: &str = "ai-service";

/// Lifetime of an outbound service token, in seconds.
pub const SERVICE_TOKEN_TTL_SECS: u64 = 300;

/// Why a token failed, before it is mapped to a path's error row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JwtFailure {
    /// Malformed, bad signature, wrong algorithm, empty, or a non-numeric
    /// `exp`/`nbf` (Node's `JsonWebTokenError`).
    Invalid,
    /// `now >= exp` (Node's `TokenExpiredError`).
    Expired,
    /// `nbf > now` (Node's `NotBeforeError`).
    NotActive,
}

/// The token after `Bearer ` (case-sensitive, exactly one space), if the
/// header is present and has that prefix.
fn bearer(authorization: Option<&[u8]>) -> Option<&[u8]> {
    authorization?.strip_prefix(b"Bearer ")
}

/// Verifies an HS256 JWT and applies the `nbf`/`exp` rules at `now_unix`.
///
/// The steps are spelled out rather than left to `jsonwebtoken::decode`:
/// the token must have exactly three parts (Node's "jwt malformed"), the
/// header must name HS256 (the algorithm is pinned: `none`, other HMAC
/// sizes and asymmetric algorithms are refused before the key is used),
/// the signature is checked by jsonwebtoken's HMAC verifier, and only then
/// are the claims parsed. `decode` would also parse `sub`/`iss`/`aud` for
/// its own validation and refuse a token whose `sub` is, say, an object;
/// the contract leaves those claims unchecked. The time claims are checked
/// here so that the clock is injectable and the leeway exactly zero.
fn verify_hs256(token: &[u8], secret: &[u8], now_unix: u64) -> Result<Value, JwtFailure> {
    const INVALID: JwtFailure = JwtFailure::Invalid;
    let token = std::str::from_utf8(token).map_err(|_| INVALID)?;
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(INVALID);
    };
    if jsonwebtoken::decode_header(token).map_err(|_| INVALID)?.alg != Algorithm::HS256 {
        return Err(INVALID);
    }
    let key = DecodingKey::from_secret(secret).map_err(|_| INVALID)?;
    let signed = &token[..header.len() + 1 + payload.len()];
    let genuine =
        jsonwebtoken::crypto::verify(signature, signed.as_bytes(), &key, Algorithm::HS256)
            .map_err(|_| INVALID)?;
    if !genuine {
        return Err(INVALID);
    }
    let claims: Value =
        jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|_| INVALID)?;
    if !claims.is_object() {
        return Err(INVALID);
    }
    check_times(&claims, now_unix)?;
    Ok(claims)
}

/// Node's order: `nbf` first, then `exp`; zero tolerance.
fn check_times(claims: &Value, now_unix: u64) -> Result<(), JwtFailure> {
    let now = now_unix as f64;
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_f64().ok_or(JwtFailure::Invalid)?;
        if nbf > now {
            return Err(JwtFailure::NotActive);
        }
    }
    if let Some(exp) = claims.get("exp") {
        let exp = exp.as_f64().ok_or(JwtFailure::Invalid)?;
        if now >= exp {
            return Err(JwtFailure::Expired);
        }
    }
    Ok(())
}

/// The user id: the first truthy claim among `user_id`, `userId`, `id`
/// (JavaScript truthiness: `""`, `0`, `false` and `null` are skipped).
/// Strings are used as they are and numbers become decimal strings. A
/// truthy value of another type (`true`, an object, an array) is not an
/// identifier, so it yields `None` rather than a key like `"true"` that
/// every such token would share.
fn user_id(claims: &Value) -> Option<String> {
    let first = ["user_id", "userId", "id"]
        .iter()
        .filter_map(|k| claims.get(*k))
        .find(|v| truthy(v))?;
    match first {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(u)) => u.to_string(),
            // A float: Rust's shortest round-trip form, which is also what
            // JavaScript prints for ordinary magnitudes (`1.5`, `42`).
            _ => n.as_f64().map(|f| f.to_string()).unwrap_or_default(),
        }),
        _ => None,
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Authenticates a user request from its `Authorization` header value.
///
/// `secret` is `JWT_SECRET`; `now_unix` the current time in whole seconds.
/// An empty secret verifies nothing (every token is `INVALID_TOKEN`), as in
/// the Node.js service.
pub fn verify_user(
    authorization: Option<&[u8]>,
    secret: &[u8],
    now_unix: u64,
) -> Result<AuthUser, AuthError> {
    let token = bearer(authorization).ok_or(AuthError::MISSING_TOKEN)?;
    let claims = verify_hs256(token, secret, now_unix).map_err(|f| match f {
        JwtFailure::Invalid => AuthError::INVALID_TOKEN,
        JwtFailure::Expired => AuthError::TOKEN_EXPIRED,
        JwtFailure::NotActive => AuthError::TOKEN_NOT_ACTIVE,
    })?;
    let user_id = user_id(&claims).ok_or(AuthError::INVALID_TOKEN_STRUCTURE)?;
    Ok(AuthUser { user_id, claims })
}

/// Authenticates an internal-path request: `X-API-Key` first, then a
/// Bearer HS256 service JWT with `service == "ai-service"`. Returns the
/// token's claims (served back as `serviceAuth`).
///
/// Mapping of JWT failures, following the Node.js middleware: a malformed
/// or badly signed token, a wrong algorithm, a missing/wrong `service`
/// claim and an expired token are `INVALID_SERVICE_TOKEN` (401); a token
/// whose `nbf` is in the future falls through to `AUTH_ERROR` (500), as
/// the contract's table states.
pub fn verify_internal(
    api_key: Option<&[u8]>,
    authorization: Option<&[u8]>,
    expected_api_key: &str,
    secret: &[u8],
    now_unix: u64,
) -> Result<Value, AuthError> {
    match api_key {
        Some(k) if !k.is_empty() && constant_time_eq(k, expected_api_key.as_bytes()) => {}
        _ => return Err(AuthError::INVALID_API_KEY),
    }
    let token = bearer(authorization).ok_or(AuthError::MISSING_TOKEN_INTERNAL)?;
    let claims = verify_hs256(token, secret, now_unix).map_err(|f| match f {
        JwtFailure::Invalid | JwtFailure::Expired => AuthError::INVALID_SERVICE_TOKEN,
        JwtFailure::NotActive => AuthError::AUTH_ERROR,
    })?;
    if claims.get("service").and_then(Value::as_str) != Some(SERVICE_NAME) {
        return Err(AuthError::INVALID_SERVICE_TOKEN);
    }
    Ok(claims)
}

/// For `/api/v1/providers` and `/api/v1/models`: a `Bearer ` header must be
/// present (it is not verified).
pub fn require_bearer(authorization: Option<&[u8]>) -> Result<(), AuthError> {
    bearer(authorization)
        .map(|_| ())
        .ok_or(AuthError::AUTHENTICATION_REQUIRED)
}

/// Compares two byte strings in time independent of where they differ:
/// both are hashed first, so neither the content nor the length of the
/// expected key leaks through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (ha, hb) = (Sha256::digest(a), Sha256::digest(b));
    ha.iter()
        .zip(hb.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Mints the outbound service JWT (API.md §3): HS256 over
/// `{service:"ai-service", iat, exp: iat+300}`. Call it for every request,
/// so a token never outlives its request.
///
/// jsonwebtoken refuses an empty HMAC key; with an empty `JWT_SECRET` this
/// returns an empty string, which the backend rejects as it would any
/// missing credential (the Node.js service failed the same call).
pub fn service_token(secret: &[u8], now_unix: u64) -> String {
    let claims = serde_json::json!({
        "service": SERVICE_NAME,
        "iat": now_unix,
        "exp": now_unix + SERVICE_TOKEN_TTL_SECS,
    });
    EncodingKey::from_secret(secret)
        .and_then(|key| jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";
    const NOW: u64 = 1_800_000_000;
    const KEY: &str = "internal-key";

    fn mint_with(alg: Algorithm, claims: &Value, secret: &[u8]) -> String {
        let key = EncodingKey::from_secret(secret).unwrap();
        jsonwebtoken::encode(&Header::new(alg), claims, &key).unwrap()
    }

    fn mint(claims: &Value) -> String {
        mint_with(Algorithm::HS256, claims, SECRET)
    }

    fn b64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    /// A token whose header names `alg`, with the given signature part.
    fn hand_made(alg: &str, claims: &Value, signature: &str) -> String {
        format!("{}.{signature}", signing_input(alg, claims))
    }

    fn signing_input(alg: &str, claims: &Value) -> String {
        let header = json!({"alg": alg, "typ": "JWT"}).to_string();
        format!(
            "{}.{}",
            b64url(header.as_bytes()),
            b64url(claims.to_string().as_bytes())
        )
    }

    /// A token whose header names `alg` but which carries a genuine
    /// HMAC-SHA256 signature (with the right secret) over its exact bytes,
    /// so the header's algorithm is the only thing wrong with it.
    fn hs256_signed_as(alg: &str, claims: &Value) -> String {
        let input = signing_input(alg, claims);
        let key = EncodingKey::from_secret(SECRET).unwrap();
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{input}.{sig}")
    }

    fn bearer_of(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    fn user(token: &str) -> Result<AuthUser, AuthError> {
        verify_user(Some(&bearer_of(token)), SECRET, NOW)
    }

    fn internal(token: &str) -> Result<Value, AuthError> {
        verify_internal(
            Some(KEY.as_bytes()),
            Some(&bearer_of(token)),
            KEY,
            SECRET,
            NOW,
        )
    }

    #[test]
    fn base64url_helper_matches_known_vectors() {
        assert_eq!(b64url(b""), "");
        assert_eq!(b64url(b"f"), "Zg");
        assert_eq!(b64url(b"fo"), "Zm8");
        assert_eq!(b64url(b"foo"), "Zm9v");
        assert_eq!(b64url(b"foob"), "Zm9vYg");
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn valid_user_token_yields_id_and_claims() {
        let claims = json!({"userId": "test-user-123", "exp": NOW + 3600});
        let u = user(&mint(&claims)).unwrap();
        assert_eq!(u.user_id, "test-user-123");
        assert_eq!(u.claims, claims);
    }

    #[test]
    fn backend_token_shape_verifies() {
        let claims = json!({
            "userId": 42, "email": "a@b.c", "iat": NOW - 10, "exp": NOW + 86_400,
            "iss": "heartalk-backend", "aud": "heartalk-frontend"
        });
        let u = user(&mint(&claims)).unwrap();
        assert_eq!(u.user_id, "42");
        assert_eq!(u.claims["email"], "a@b.c");
    }

    #[test]
    fn missing_header_or_prefix_is_missing_token() {
        let t = mint(&json!({"userId": "u"}));
        assert_eq!(
            verify_user(None, SECRET, NOW),
            Err(AuthError::MISSING_TOKEN)
        );
        for header in [
            format!("bearer {t}"),
            format!("BEARER {t}"),
            format!("Bearer{t}"),
            format!("Token {t}"),
            t.clone(),
            "Bearer".to_string(),
            String::new(),
        ] {
            assert_eq!(
                verify_user(Some(header.as_bytes()), SECRET, NOW),
                Err(AuthError::MISSING_TOKEN),
                "{header}"
            );
        }
        let e = AuthError::MISSING_TOKEN;
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        assert_eq!(e.message, "Authorization header is required");
        assert_eq!(e.shape, ErrorShape::E2);
    }

    #[test]
    fn two_spaces_or_garbage_is_invalid_token() {
        let t = mint(&json!({"userId": "u"}));
        for token in [
            format!(" {t}"),
            String::new(),
            "abc".into(),
            "a.b.c".into(),
            "a.b".into(),
            format!("{t}x"),
            format!("{t}."),
            "....".into(),
        ] {
            assert_eq!(user(&token), Err(AuthError::INVALID_TOKEN), "{token:?}");
        }
        let bytes = b"Bearer \xff\xfe.\x00.x";
        assert_eq!(
            verify_user(Some(bytes), SECRET, NOW),
            Err(AuthError::INVALID_TOKEN)
        );
    }

    #[test]
    fn wrong_secret_is_invalid_token() {
        let t = mint_with(Algorithm::HS256, &json!({"userId": "u"}), b"other");
        assert_eq!(user(&t), Err(AuthError::INVALID_TOKEN));
        // An empty configured secret verifies nothing.
        let good = mint(&json!({"userId": "u"}));
        assert_eq!(
            verify_user(Some(&bearer_of(&good)), b"", NOW),
            Err(AuthError::INVALID_TOKEN)
        );
    }

    #[test]
    fn alg_none_is_rejected() {
        let claims = json!({"userId": "u", "exp": NOW + 60});
        // Unsigned, as an attacker would send it: empty signature part.
        assert_eq!(
            user(&hand_made("none", &claims, "")),
            Err(AuthError::INVALID_TOKEN)
        );
        for alg in ["None", "NONE", "nOnE"] {
            assert_eq!(
                user(&hand_made(alg, &claims, "")),
                Err(AuthError::INVALID_TOKEN)
            );
        }
        // Even with a valid HMAC-SHA256 signature over the same bytes.
        assert_eq!(
            user(&hs256_signed_as("none", &claims)),
            Err(AuthError::INVALID_TOKEN)
        );
        assert_eq!(
            internal(&hand_made("none", &json!({"service": "ai-service"}), "")),
            Err(AuthError::INVALID_SERVICE_TOKEN)
        );
    }

    #[test]
    fn other_hmac_sizes_are_rejected() {
        let claims = json!({"userId": "u", "service": "ai-service"});
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            // Correctly signed with the right secret, but the wrong size.
            let t = mint_with(alg, &claims, SECRET);
            assert_eq!(user(&t), Err(AuthError::INVALID_TOKEN), "{alg:?}");
            assert_eq!(internal(&t), Err(AuthError::INVALID_SERVICE_TOKEN));
        }
    }

    #[test]
    fn asymmetric_and_unknown_algorithms_are_rejected() {
        // Headers naming RS*/PS*/ES*/EdDSA (an HMAC-confusion attack signs
        // with the shared secret): refused before any key is used.
        let claims = json!({"userId": "u"});
        for alg in [
            "RS256", "RS384", "RS512", "PS256", "PS512", "ES256", "ES384", "EdDSA", "HS1", "",
        ] {
            assert_eq!(
                user(&hs256_signed_as(alg, &claims)),
                Err(AuthError::INVALID_TOKEN),
                "{alg}"
            );
        }
        // Control: the same construction naming HS256 verifies, so each
        // refusal above is due to the algorithm alone.
        assert_eq!(
            user(&hs256_signed_as("HS256", &claims)).unwrap().user_id,
            "u"
        );
    }

    /// The library behaviour the pinning relies on, checked directly: a
    /// `Validation` naming only HS256 refuses `alg: none` and HS512.
    #[test]
    fn jsonwebtoken_validation_pins_the_algorithm() {
        use jsonwebtoken::Validation;
        let claims = json!({"userId": "u", "exp": NOW * 2});
        let key = DecodingKey::from_secret(SECRET).unwrap();
        let v = Validation::new(Algorithm::HS256);
        let decode = |t: &str| jsonwebtoken::decode::<Value>(t, &key, &v);
        assert!(decode(&mint(&claims)).is_ok());
        assert!(decode(&hand_made("none", &claims, "")).is_err());
        assert!(decode(&hs256_signed_as("none", &claims)).is_err());
        let hs512 = mint_with(Algorithm::HS512, &claims, SECRET);
        let e = decode(&hs512).unwrap_err();
        assert_eq!(e.kind(), &jsonwebtoken::errors::ErrorKind::InvalidAlgorithm);
    }

    #[test]
    fn token_must_have_exactly_three_parts() {
        let t = mint(&json!({"userId": "u"}));
        assert_eq!(user(&format!("{t}.")), Err(AuthError::INVALID_TOKEN));
        assert_eq!(user(&format!("x.{t}")), Err(AuthError::INVALID_TOKEN));
        assert!(user(&t).is_ok());
    }

    #[test]
    fn exp_is_enforced_with_zero_leeway() {
        let at = |exp: Value| user(&mint(&json!({"userId": "u", "exp": exp})));
        assert!(at(json!(NOW + 1)).is_ok());
        assert_eq!(at(json!(NOW)), Err(AuthError::TOKEN_EXPIRED));
        assert_eq!(at(json!(NOW - 1)), Err(AuthError::TOKEN_EXPIRED));
        assert!(at(json!(NOW as f64 + 0.5)).is_ok());
        assert_eq!(at(json!(NOW as f64 - 0.5)), Err(AuthError::TOKEN_EXPIRED));
        // Present but not a number: a malformed token.
        assert_eq!(at(json!("9999999999")), Err(AuthError::INVALID_TOKEN));
        assert_eq!(at(Value::Null), Err(AuthError::INVALID_TOKEN));
        // Absent: never expires.
        assert!(user(&mint(&json!({"userId": "u"}))).is_ok());
        let e = AuthError::TOKEN_EXPIRED;
        assert_eq!(
            (e.status, e.message),
            (StatusCode::UNAUTHORIZED, "Token expired")
        );
    }

    #[test]
    fn nbf_is_enforced_with_zero_leeway() {
        let at = |nbf: Value| user(&mint(&json!({"userId": "u", "nbf": nbf})));
        assert!(at(json!(NOW)).is_ok());
        assert!(at(json!(NOW - 100)).is_ok());
        assert_eq!(at(json!(NOW + 1)), Err(AuthError::TOKEN_NOT_ACTIVE));
        assert_eq!(at(json!("soon")), Err(AuthError::INVALID_TOKEN));
        // nbf is checked before exp, as in Node.
        let both = mint(&json!({"userId": "u", "nbf": NOW + 10, "exp": NOW - 10}));
        assert_eq!(user(&both), Err(AuthError::TOKEN_NOT_ACTIVE));
        assert_eq!(AuthError::TOKEN_NOT_ACTIVE.message, "Token not active");
    }

    #[test]
    fn iss_aud_sub_are_not_checked() {
        let t = mint(&json!({
            "id": "x", "iss": 5, "aud": ["anyone"], "sub": {"weird": true}
        }));
        assert_eq!(user(&t).unwrap().user_id, "x");
    }

    #[test]
    fn user_id_is_first_truthy_claim() {
        let id = |c: Value| user(&mint(&c)).map(|u| u.user_id);
        assert_eq!(
            id(json!({"user_id": "a", "userId": "b", "id": "c"})),
            Ok("a".into())
        );
        assert_eq!(
            id(json!({"user_id": "", "userId": "b", "id": "c"})),
            Ok("b".into())
        );
        assert_eq!(
            id(json!({"user_id": 0, "userId": null, "id": "c"})),
            Ok("c".into())
        );
        assert_eq!(id(json!({"user_id": false, "id": 7})), Ok("7".into()));
        assert_eq!(id(json!({"id": -3})), Ok("-3".into()));
        assert_eq!(
            id(json!({"id": 18_446_744_073_709_551_615u64})),
            Ok("18446744073709551615".into())
        );
        assert_eq!(id(json!({"id": 1.5})), Ok("1.5".into()));
        assert_eq!(id(json!({"id": 42.0})), Ok("42".into()));
        for c in [
            json!({}),
            json!({"user_id": "", "userId": 0, "id": null}),
            json!({"id": false}),
            json!({"id": 0.0}),
            json!({"sub": "someone", "email": "a@b.c"}),
            json!({"id": true}),
            json!({"userId": {"x": 1}}),
            json!({"userId": [1]}),
        ] {
            assert_eq!(
                id(c.clone()),
                Err(AuthError::INVALID_TOKEN_STRUCTURE),
                "{c}"
            );
        }
        let e = AuthError::INVALID_TOKEN_STRUCTURE;
        assert_eq!(
            e.message,
            "Invalid token structure - missing user identifier"
        );
    }

    #[test]
    fn non_object_payload_is_invalid_token() {
        for payload in [json!("str"), json!(5), json!([1, 2]), Value::Null] {
            assert_eq!(
                user(&mint(&payload)),
                Err(AuthError::INVALID_TOKEN),
                "{payload}"
            );
        }
    }

    #[test]
    fn internal_path_accepts_service_token() {
        let t = service_token(SECRET, NOW);
        let claims = internal(&t).unwrap();
        assert_eq!(claims["service"], "ai-service");
        assert_eq!(claims["iat"], NOW);
        assert_eq!(claims["exp"], NOW + 300);
    }

    #[test]
    fn internal_api_key_is_checked_first() {
        let good = bearer_of(&service_token(SECRET, NOW));
        for key in [
            None,
            Some(&b""[..]),
            Some(b"wrong"),
            Some(b"internal-key "),
            Some(b"internal-ke"),
        ] {
            // Even with no Authorization at all, the key is the first refusal.
            assert_eq!(
                verify_internal(key, None, KEY, SECRET, NOW),
                Err(AuthError::INVALID_API_KEY)
            );
            assert_eq!(
                verify_internal(key, Some(&good), KEY, SECRET, NOW),
                Err(AuthError::INVALID_API_KEY)
            );
        }
        // An empty configured key does not let an empty header through.
        assert_eq!(
            verify_internal(Some(b""), Some(&good), "", SECRET, NOW),
            Err(AuthError::INVALID_API_KEY)
        );
        assert_eq!(AuthError::INVALID_API_KEY.message, "Invalid API key");
    }

    #[test]
    fn internal_missing_bearer() {
        for auth in [None, Some(&b"bearer x"[..]), Some(b"Basic abc")] {
            let e = verify_internal(Some(KEY.as_bytes()), auth, KEY, SECRET, NOW).unwrap_err();
            assert_eq!(e, AuthError::MISSING_TOKEN_INTERNAL);
            assert_eq!(e.code, "MISSING_TOKEN");
            assert_eq!(e.message, "Missing or invalid authorization header");
        }
    }

    #[test]
    fn internal_service_claim_is_required() {
        for claims in [
            json!({}),
            json!({"service": "other"}),
            json!({"service": "AI-SERVICE"}),
            json!({"service": ["ai-service"]}),
            json!({"userId": "u", "exp": NOW + 60}),
        ] {
            assert_eq!(
                internal(&mint(&claims)),
                Err(AuthError::INVALID_SERVICE_TOKEN),
                "{claims}"
            );
        }
    }

    #[test]
    fn internal_jwt_failures_map_per_contract() {
        let svc = |extra: Value| {
            let mut c = json!({"service": "ai-service"});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            c
        };
        // Bad signature, malformed, empty: INVALID_SERVICE_TOKEN.
        let bad_sig = mint_with(Algorithm::HS256, &svc(json!({})), b"nope");
        assert_eq!(internal(&bad_sig), Err(AuthError::INVALID_SERVICE_TOKEN));
        assert_eq!(internal("garbage"), Err(AuthError::INVALID_SERVICE_TOKEN));
        assert_eq!(internal(""), Err(AuthError::INVALID_SERVICE_TOKEN));
        // Expired: INVALID_SERVICE_TOKEN (decision, see verify_internal).
        let expired = mint(&svc(json!({"exp": NOW})));
        assert_eq!(internal(&expired), Err(AuthError::INVALID_SERVICE_TOKEN));
        // nbf in the future: 500 AUTH_ERROR.
        let early = mint(&svc(json!({"nbf": NOW + 1})));
        let e = internal(&early).unwrap_err();
        assert_eq!(e, AuthError::AUTH_ERROR);
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            (e.code, e.message, e.shape),
            ("AUTH_ERROR", "Authentication error", ErrorShape::E2)
        );
        // nbf reached: fine.
        assert!(internal(&mint(&svc(json!({"nbf": NOW})))).is_ok());
    }

    #[test]
    fn service_token_is_hs256_with_five_minute_life() {
        let t = service_token(SECRET, NOW);
        let header = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(header.alg, Algorithm::HS256);
        // Valid until exp, not at exp.
        assert!(
            verify_internal(
                Some(KEY.as_bytes()),
                Some(&bearer_of(&t)),
                KEY,
                SECRET,
                NOW + 299
            )
            .is_ok()
        );
        assert_eq!(
            verify_internal(
                Some(KEY.as_bytes()),
                Some(&bearer_of(&t)),
                KEY,
                SECRET,
                NOW + 300
            ),
            Err(AuthError::INVALID_SERVICE_TOKEN)
        );
        // A user path sees no user id in it.
        assert_eq!(
            verify_user(Some(&bearer_of(&t)), SECRET, NOW),
            Err(AuthError::INVALID_TOKEN_STRUCTURE)
        );
        assert_eq!(service_token(b"", NOW), "");
    }

    #[test]
    fn providers_need_only_a_bearer_prefix() {
        assert_eq!(require_bearer(Some(b"Bearer anything")), Ok(()));
        assert_eq!(require_bearer(Some(b"Bearer ")), Ok(()));
        let e = require_bearer(Some(b"Basic x")).unwrap_err();
        assert_eq!(e, AuthError::AUTHENTICATION_REQUIRED);
        assert_eq!(
            (e.code, e.message, e.shape),
            (
                "AUTHENTICATION_ERROR",
                "Authentication required",
                ErrorShape::E1
            )
        );
        assert_eq!(
            require_bearer(None),
            Err(AuthError::AUTHENTICATION_REQUIRED)
        );
    }

    #[test]
    fn constant_time_eq_compares_content() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn error_displays_code_and_message() {
        assert_eq!(
            AuthError::INVALID_TOKEN.to_string(),
            "401 Unauthorized INVALID_TOKEN: Invalid token"
        );
    }
}
