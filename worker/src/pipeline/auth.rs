//! Authentication (API.md §3): verifying user JWTs, authenticating the
//! internal paths (`X-API-Key` plus a service JWT), and minting the
//! outbound service JWT the worker sends to the HearTalk backend (§8).
//!
//! Everything here is pure: the caller passes the raw header bytes, the
//! secrets, the [`TokenPolicy`] and the current Unix time, and gets claims
//! or an [`AuthError`] that already carries the status, `code`, `error`
//! text and body shape of the contract's error table. Taking `now` as an
//! argument keeps the time rules testable without a clock.
//!
//! The semantics are those of the Node.js service's `jsonwebtoken.verify`
//! with the policy's `clockTolerance` and `maxAge`: `nbf` is checked before
//! `exp`, a token is expired once `now >= exp + tolerance`, not yet active
//! while `nbf > now + tolerance`, and a present but non-numeric
//! `exp`/`nbf` (or `iat`, when a maximum age needs it) makes the token
//! invalid. Two rules are ours: a policy may require `exp`, and a maximum
//! age also bounds `exp` (see [`verify_user`]). Only HS256 is accepted,
//! whatever the header claims.
//!
//! **Rotation.** A token verifies if *any* configured secret verifies its
//! signature, and an `X-API-Key` matches if it equals *any* configured key.
//! That is what lets a secret change without logging anyone out: the new
//! secret is first accepted alongside the old one, then the issuer signs
//! with it, then the old one is kept (verify only) until the tokens it
//! signed have expired, then dropped (docs/configuration.md "Rotating the
//! JWT secret"). Outbound tokens are always signed with the first secret.

use http::StatusCode;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::Value;
use sha2::{Digest, Sha256};
use shared::token_policy::TokenPolicy;

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
    /// The policy requires `exp` (`JWT_REQUIRE_EXP`) and the token has
    /// none; or a maximum age is set and the token has neither `iat` nor
    /// `exp`, so its age cannot be bounded (user path).
    pub const TOKEN_EXP_REQUIRED: AuthError = AuthError::e2(
        StatusCode::UNAUTHORIZED,
        "TOKEN_EXP_REQUIRED",
        "Token has no expiry",
    );
    /// The token is older, or was issued for longer, than `JWT_MAX_AGE`
    /// allows (user path).
    pub const TOKEN_TOO_OLD: AuthError = AuthError::e2(
        StatusCode::UNAUTHORIZED,
        "TOKEN_TOO_OLD",
        "Token exceeds the maximum age",
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
    /// Internal path: the service JWT is invalid, expired, refused by the
    /// token policy (no `exp`, too old), or lacks `service == "ai-service"`.
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
pub const SERVICE_TOKEN_TTL_SECS: u64 = shared::token_policy::SERVICE_TOKEN_TTL.as_secs();

/// Why a token failed, before it is mapped to a path's error row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JwtFailure {
    /// Malformed, bad signature, wrong algorithm, empty, or a non-numeric
    /// `exp`/`nbf`/`iat` (Node's `JsonWebTokenError`).
    Invalid,
    /// `now >= exp + tolerance` (Node's `TokenExpiredError`).
    Expired,
    /// `nbf > now + tolerance` (Node's `NotBeforeError`).
    NotActive,
    /// No `exp` where the policy needs one.
    ExpRequired,
    /// Beyond the policy's maximum age.
    TooOld,
}

/// The token after `Bearer ` (case-sensitive, exactly one space), if the
/// header is present and has that prefix.
fn bearer(authorization: Option<&[u8]>) -> Option<&[u8]> {
    authorization?.strip_prefix(b"Bearer ")
}

/// Verifies an HS256 JWT against a list of secrets and applies the policy's
/// time rules at `now_unix`.
///
/// The steps are spelled out rather than left to `jsonwebtoken::decode`:
/// the token must have exactly three parts (Node's "jwt malformed"), the
/// header must name HS256 (the algorithm is pinned: `none`, other HMAC
/// sizes and asymmetric algorithms are refused before any key is used),
/// the signature is checked by jsonwebtoken's HMAC verifier with each
/// secret in turn until one verifies it, and only then are the claims
/// parsed. `decode` would also parse `sub`/`iss`/`aud` for its own
/// validation and refuse a token whose `sub` is, say, an object; the
/// contract leaves those claims unchecked. The time claims are checked
/// here so that the clock is injectable and the leeway the policy's.
fn verify_hs256<S: AsRef<[u8]>>(
    token: &[u8],
    secrets: &[S],
    policy: &TokenPolicy,
    now_unix: u64,
) -> Result<Value, JwtFailure> {
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
    let signed = &token.as_bytes()[..header.len() + 1 + payload.len()];
    if !secrets
        .iter()
        .any(|secret| signed_with(secret.as_ref(), signature, signed))
    {
        return Err(INVALID);
    }
    let claims: Value =
        jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|_| INVALID)?;
    if !claims.is_object() {
        return Err(INVALID);
    }
    check_times(&claims, policy, now_unix)?;
    Ok(claims)
}

/// Whether `signature` is the HMAC-SHA256 of `signed` under `secret`. An
/// empty secret verifies nothing (jsonwebtoken refuses it as a key), as in
/// the Node.js service.
fn signed_with(secret: &[u8], signature: &str, signed: &[u8]) -> bool {
    DecodingKey::from_secret(secret)
        .ok()
        .and_then(|key| {
            jsonwebtoken::crypto::verify(signature, signed, &key, Algorithm::HS256).ok()
        })
        .unwrap_or(false)
}

/// The time rules, in this order: `nbf`, `exp` (Node's order), then the
/// policy's required `exp`, then its maximum age. Times are compared as
/// numbers of seconds, so fractional claims work as in Node.
fn check_times(claims: &Value, policy: &TokenPolicy, now_unix: u64) -> Result<(), JwtFailure> {
    let now = now_unix as f64;
    let tolerance = policy.clock_tolerance.as_secs_f64();
    // A present claim must be a number; `null` is present.
    let number = |name: &str| match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(JwtFailure::Invalid),
    };
    if let Some(nbf) = number("nbf")? {
        if nbf > now + tolerance {
            return Err(JwtFailure::NotActive);
        }
    }
    let exp = number("exp")?;
    if let Some(exp) = exp {
        if now >= exp + tolerance {
            return Err(JwtFailure::Expired);
        }
    }
    if policy.require_exp && exp.is_none() {
        return Err(JwtFailure::ExpRequired);
    }
    let Some(max_age) = policy.max_age else {
        return Ok(());
    };
    let max_age = max_age.as_secs_f64();
    match (number("iat")?, exp) {
        (Some(iat), exp) => {
            // Node's `maxAge`: too old once `iat + max_age` is as far in the
            // past as an `exp` would be to count as expired.
            if now >= iat + max_age + tolerance {
                return Err(JwtFailure::TooOld);
            }
            // Issued for longer than allowed: it would outlive the bound.
            // An `iat` in the future counts from now, so a token cannot buy
            // itself a later window by claiming to be issued later.
            let issued = if iat > now + tolerance { now } else { iat };
            if exp.is_some_and(|exp| exp - issued > max_age) {
                return Err(JwtFailure::TooOld);
            }
        }
        // No `iat`: a token issued at the latest now (give or take the
        // tolerance) cannot expire later than `now + max_age`.
        (None, Some(exp)) => {
            if exp > now + max_age + tolerance {
                return Err(JwtFailure::TooOld);
            }
        }
        (None, None) => return Err(JwtFailure::ExpRequired),
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
/// `secrets` are `JWT_SECRET`'s and `JWT_SECRET_PREVIOUS`'s: the token is
/// genuine if any of them verifies its signature (an empty secret verifies
/// nothing). `now_unix` is the current time in whole seconds. The checks,
/// in order, and their rows: signature and shape (`INVALID_TOKEN`), `nbf`
/// (`TOKEN_NOT_ACTIVE`), `exp` (`TOKEN_EXPIRED`), then the policy:
/// - `require_exp` and no `exp`: `TOKEN_EXP_REQUIRED`;
/// - `max_age`: `TOKEN_TOO_OLD` when `now >= iat + max_age + tolerance`,
///   when `exp - iat > max_age`, or, without `iat`, when
///   `exp > now + max_age + tolerance`; with neither `iat` nor `exp` the
///   age cannot be bounded: `TOKEN_EXP_REQUIRED`. A non-numeric `iat` is
///   then `INVALID_TOKEN` (without `max_age`, `iat` is not read, as in
///   Node);
///
/// and last the user id (`INVALID_TOKEN_STRUCTURE`).
pub fn verify_user<S: AsRef<[u8]>>(
    authorization: Option<&[u8]>,
    secrets: &[S],
    policy: &TokenPolicy,
    now_unix: u64,
) -> Result<AuthUser, AuthError> {
    let token = bearer(authorization).ok_or(AuthError::MISSING_TOKEN)?;
    let claims = verify_hs256(token, secrets, policy, now_unix).map_err(|f| match f {
        JwtFailure::Invalid => AuthError::INVALID_TOKEN,
        JwtFailure::Expired => AuthError::TOKEN_EXPIRED,
        JwtFailure::NotActive => AuthError::TOKEN_NOT_ACTIVE,
        JwtFailure::ExpRequired => AuthError::TOKEN_EXP_REQUIRED,
        JwtFailure::TooOld => AuthError::TOKEN_TOO_OLD,
    })?;
    let user_id = user_id(&claims).ok_or(AuthError::INVALID_TOKEN_STRUCTURE)?;
    Ok(AuthUser { user_id, claims })
}

/// Authenticates an internal-path request: `X-API-Key` first, then a
/// Bearer HS256 service JWT with `service == "ai-service"`. Returns the
/// token's claims (served back as `serviceAuth`).
///
/// The key matches if it equals any of `api_keys` (`HEARTALK_API_KEY`'s
/// and `HEARTALK_API_KEY_PREVIOUS`'s); every key is compared, in constant
/// time, whichever matches. The token is verified as on the user path,
/// with the same secrets and policy.
///
/// Mapping of JWT failures, following the Node.js middleware: a malformed
/// or badly signed token, a wrong algorithm, a missing/wrong `service`
/// claim, an expired token and a token the policy refuses (no `exp`, too
/// old) are `INVALID_SERVICE_TOKEN` (401); a token whose `nbf` is in the
/// future falls through to `AUTH_ERROR` (500), as the contract's table
/// states.
pub fn verify_internal<K: AsRef<[u8]>, S: AsRef<[u8]>>(
    api_key: Option<&[u8]>,
    authorization: Option<&[u8]>,
    api_keys: &[K],
    secrets: &[S],
    policy: &TokenPolicy,
    now_unix: u64,
) -> Result<Value, AuthError> {
    match api_key {
        Some(k) if !k.is_empty() && matches_any(k, api_keys) => {}
        _ => return Err(AuthError::INVALID_API_KEY),
    }
    let token = bearer(authorization).ok_or(AuthError::MISSING_TOKEN_INTERNAL)?;
    let claims = verify_hs256(token, secrets, policy, now_unix).map_err(|f| match f {
        JwtFailure::NotActive => AuthError::AUTH_ERROR,
        JwtFailure::Invalid
        | JwtFailure::Expired
        | JwtFailure::ExpRequired
        | JwtFailure::TooOld => AuthError::INVALID_SERVICE_TOKEN,
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

/// Whether `given` equals any of `keys`. Every key is compared, without a
/// short cut when one matches, so the time taken says nothing about which
/// key (or whether a key) matched. `given` is hashed once.
fn matches_any<K: AsRef<[u8]>>(given: &[u8], keys: &[K]) -> bool {
    let given = Sha256::digest(given);
    keys.iter().fold(false, |found, key| {
        found | same_digest(&given, &Sha256::digest(key.as_ref()))
    })
}

/// Compares two byte strings in time independent of where they differ:
/// both are hashed first, so neither the content nor the length of the
/// expected key leaks through timing.
#[cfg(test)]
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    same_digest(&Sha256::digest(a), &Sha256::digest(b))
}

/// Two digests compared without an early exit.
fn same_digest(a: &[u8], b: &[u8]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Mints the outbound service JWT (API.md §3): HS256 over
/// `{service:"ai-service", iat, exp: iat+300}`. Call it for every request,
/// so a token never outlives its request. `secret` is the signing secret,
/// the first of the list (`JWT_SECRET`'s first line): during a rotation
/// that is the one the backend is known to accept.
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

    /// The Node.js service's exact rules: no leeway, `exp` optional, no
    /// maximum age. The contract's tests run under it.
    const NODE: TokenPolicy = TokenPolicy {
        require_exp: false,
        max_age: None,
        clock_tolerance: std::time::Duration::ZERO,
    };

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
        verify_user(Some(&bearer_of(token)), &[SECRET], &NODE, NOW)
    }

    fn internal(token: &str) -> Result<Value, AuthError> {
        verify_internal(
            Some(KEY.as_bytes()),
            Some(&bearer_of(token)),
            &[KEY],
            &[SECRET],
            &NODE,
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
            verify_user(None, &[SECRET], &NODE, NOW),
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
                verify_user(Some(header.as_bytes()), &[SECRET], &NODE, NOW),
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
            verify_user(Some(bytes), &[SECRET], &NODE, NOW),
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
            verify_user(Some(&bearer_of(&good)), &[b""], &NODE, NOW),
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
                verify_internal(key, None, &[KEY], &[SECRET], &NODE, NOW),
                Err(AuthError::INVALID_API_KEY)
            );
            assert_eq!(
                verify_internal(key, Some(&good), &[KEY], &[SECRET], &NODE, NOW),
                Err(AuthError::INVALID_API_KEY)
            );
        }
        // An empty configured key does not let an empty header through.
        assert_eq!(
            verify_internal(Some(b""), Some(&good), &[""], &[SECRET], &NODE, NOW),
            Err(AuthError::INVALID_API_KEY)
        );
        assert_eq!(AuthError::INVALID_API_KEY.message, "Invalid API key");
    }

    #[test]
    fn internal_missing_bearer() {
        for auth in [None, Some(&b"bearer x"[..]), Some(b"Basic abc")] {
            let e = verify_internal(Some(KEY.as_bytes()), auth, &[KEY], &[SECRET], &NODE, NOW)
                .unwrap_err();
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
                &[KEY],
                &[SECRET],
                &NODE,
                NOW + 299
            )
            .is_ok()
        );
        assert_eq!(
            verify_internal(
                Some(KEY.as_bytes()),
                Some(&bearer_of(&t)),
                &[KEY],
                &[SECRET],
                &NODE,
                NOW + 300
            ),
            Err(AuthError::INVALID_SERVICE_TOKEN)
        );
        // A user path sees no user id in it.
        assert_eq!(
            verify_user(Some(&bearer_of(&t)), &[SECRET], &NODE, NOW),
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

    /// A policy with `tolerance` seconds of leeway, `exp` optional.
    fn leeway(tolerance: u64) -> TokenPolicy {
        TokenPolicy {
            clock_tolerance: std::time::Duration::from_secs(tolerance),
            ..NODE
        }
    }

    /// `policy` with a maximum age of `secs`.
    fn max_age(policy: TokenPolicy, secs: u64) -> TokenPolicy {
        TokenPolicy {
            max_age: Some(std::time::Duration::from_secs(secs)),
            ..policy
        }
    }

    fn user_under(policy: &TokenPolicy, claims: &Value) -> Result<AuthUser, AuthError> {
        verify_user(Some(&bearer_of(&mint(claims))), &[SECRET], policy, NOW)
    }

    fn code_under(policy: &TokenPolicy, claims: Value) -> Result<String, &'static str> {
        user_under(policy, &claims)
            .map(|u| u.user_id)
            .map_err(|e| e.code)
    }

    #[test]
    fn new_rows_are_e2_401s() {
        let e = AuthError::TOKEN_EXP_REQUIRED;
        assert_eq!(
            (e.status, e.code, e.message, e.shape),
            (
                StatusCode::UNAUTHORIZED,
                "TOKEN_EXP_REQUIRED",
                "Token has no expiry",
                ErrorShape::E2
            )
        );
        let e = AuthError::TOKEN_TOO_OLD;
        assert_eq!(
            (e.status, e.code, e.message, e.shape),
            (
                StatusCode::UNAUTHORIZED,
                "TOKEN_TOO_OLD",
                "Token exceeds the maximum age",
                ErrorShape::E2
            )
        );
    }

    #[test]
    fn exp_tolerance_edges() {
        let p = leeway(5);
        let at = |exp: u64| code_under(&p, json!({"userId": "u", "exp": exp}));
        assert_eq!(at(NOW - 4), Ok("u".into()), "now < exp + 5");
        assert_eq!(at(NOW - 5), Err("TOKEN_EXPIRED"), "now == exp + 5");
        assert_eq!(at(NOW - 6), Err("TOKEN_EXPIRED"));
        // Zero tolerance is Node's: expired at exp itself.
        let z = leeway(0);
        let at = |exp: u64| code_under(&z, json!({"userId": "u", "exp": exp}));
        assert_eq!(at(NOW + 1), Ok("u".into()));
        assert_eq!(at(NOW), Err("TOKEN_EXPIRED"));
    }

    #[test]
    fn nbf_tolerance_edges() {
        let p = leeway(5);
        let at = |nbf: u64| code_under(&p, json!({"userId": "u", "nbf": nbf}));
        assert_eq!(at(NOW + 5), Ok("u".into()), "nbf == now + 5");
        assert_eq!(at(NOW + 6), Err("TOKEN_NOT_ACTIVE"), "nbf > now + 5");
        let z = leeway(0);
        let at = |nbf: u64| code_under(&z, json!({"userId": "u", "nbf": nbf}));
        assert_eq!(at(NOW), Ok("u".into()));
        assert_eq!(at(NOW + 1), Err("TOKEN_NOT_ACTIVE"));
    }

    #[test]
    fn default_policy_has_five_seconds_of_leeway() {
        let p = TokenPolicy::default();
        assert!(!p.require_exp);
        let exp = |exp: u64| code_under(&p, json!({"userId": "u", "exp": exp}));
        assert_eq!(exp(NOW - 4), Ok("u".into()));
        assert_eq!(exp(NOW - 5), Err("TOKEN_EXPIRED"));
        assert_eq!(code_under(&p, json!({"userId": "u"})), Ok("u".into()));
        // Production's defaults require `exp`.
        let prod = TokenPolicy::defaults(true);
        assert_eq!(
            code_under(&prod, json!({"userId": "u"})),
            Err("TOKEN_EXP_REQUIRED")
        );
        assert_eq!(
            code_under(&prod, json!({"userId": "u", "exp": NOW + 60})),
            Ok("u".into())
        );
    }

    #[test]
    fn required_exp() {
        let p = TokenPolicy {
            require_exp: true,
            ..NODE
        };
        assert_eq!(
            user_under(&p, &json!({"userId": "u", "iat": NOW})),
            Err(AuthError::TOKEN_EXP_REQUIRED)
        );
        assert_eq!(
            code_under(&p, json!({"userId": "u", "exp": NOW + 1})),
            Ok("u".into())
        );
        // After the signature and nbf: those rows win.
        let other = mint_with(Algorithm::HS256, &json!({"userId": "u"}), b"other");
        assert_eq!(
            verify_user(Some(&bearer_of(&other)), &[SECRET], &p, NOW),
            Err(AuthError::INVALID_TOKEN)
        );
        assert_eq!(
            code_under(&p, json!({"userId": "u", "nbf": NOW + 1})),
            Err("TOKEN_NOT_ACTIVE")
        );
        // A non-numeric exp is malformed, not missing.
        assert_eq!(
            code_under(&p, json!({"userId": "u", "exp": "never"})),
            Err("INVALID_TOKEN")
        );
        assert_eq!(
            code_under(&p, json!({"userId": "u", "exp": null})),
            Err("INVALID_TOKEN")
        );
        // Before the user id: a token without either is refused for its exp.
        assert_eq!(code_under(&p, json!({})), Err("TOKEN_EXP_REQUIRED"));
        // Not required: the same token passes (control).
        assert_eq!(
            code_under(&NODE, json!({"userId": "u", "iat": NOW})),
            Ok("u".into())
        );
    }

    #[test]
    fn max_age_bounds_iat_with_tolerance() {
        let p = max_age(leeway(5), 3600);
        let at = |iat: u64| code_under(&p, json!({"userId": "u", "iat": iat}));
        assert_eq!(at(NOW), Ok("u".into()));
        assert_eq!(at(NOW - 3604), Ok("u".into()), "now < iat + age + 5");
        assert_eq!(at(NOW - 3605), Err("TOKEN_TOO_OLD"), "now == iat + age + 5");
        assert_eq!(at(NOW - 100_000), Err("TOKEN_TOO_OLD"));
        let z = max_age(leeway(0), 3600);
        let at = |iat: u64| code_under(&z, json!({"userId": "u", "iat": iat}));
        assert_eq!(at(NOW - 3599), Ok("u".into()));
        assert_eq!(at(NOW - 3600), Err("TOKEN_TOO_OLD"), "Node's maxAge edge");
    }

    #[test]
    fn a_future_iat_does_not_stretch_the_max_age() {
        let p = max_age(leeway(5), 3600);
        let year = 365 * 86_400;
        let life =
            |iat: u64, exp: u64| code_under(&p, json!({"userId": "u", "iat": iat, "exp": exp}));
        assert_eq!(life(NOW + year, NOW + year + 3600), Err("TOKEN_TOO_OLD"));
        // A clock a little ahead (within the tolerance) is still fine.
        assert_eq!(life(NOW + 3, NOW + 3603), Ok("u".into()));
    }

    #[test]
    fn max_age_bounds_the_lifetime() {
        let p = max_age(leeway(5), 3600);
        let life =
            |iat: u64, exp: u64| code_under(&p, json!({"userId": "u", "iat": iat, "exp": exp}));
        assert_eq!(life(NOW, NOW + 3600), Ok("u".into()), "exactly the age");
        assert_eq!(life(NOW, NOW + 3601), Err("TOKEN_TOO_OLD"));
        // No tolerance on the lifetime: it is the token's, not the clock's.
        assert_eq!(life(NOW - 10, NOW + 3591), Err("TOKEN_TOO_OLD"));
        // The backend's 24 h tokens under a 7 d bound.
        let week = max_age(leeway(5), 7 * 86_400);
        assert_eq!(
            code_under(
                &week,
                json!({"userId": 42, "iat": NOW - 10, "exp": NOW + 86_390})
            ),
            Ok("42".into())
        );
    }

    #[test]
    fn max_age_without_iat_bounds_exp() {
        let p = max_age(leeway(5), 3600);
        let exp = |exp: u64| code_under(&p, json!({"userId": "u", "exp": exp}));
        assert_eq!(exp(NOW + 3605), Ok("u".into()), "exp == now + age + 5");
        assert_eq!(exp(NOW + 3606), Err("TOKEN_TOO_OLD"));
        assert_eq!(exp(NOW + 1), Ok("u".into()));
        // Neither iat nor exp: the age cannot be bounded.
        assert_eq!(
            code_under(&p, json!({"userId": "u"})),
            Err("TOKEN_EXP_REQUIRED")
        );
        assert_eq!(
            code_under(&p, json!({"userId": "u", "nbf": NOW})),
            Err("TOKEN_EXP_REQUIRED")
        );
    }

    #[test]
    fn non_numeric_iat_is_invalid_when_the_age_is_bounded() {
        let p = max_age(NODE, 3600);
        for iat in [json!("yesterday"), Value::Null, json!([NOW]), json!(true)] {
            let claims = json!({"userId": "u", "iat": iat, "exp": NOW + 60});
            assert_eq!(
                code_under(&p, claims.clone()),
                Err("INVALID_TOKEN"),
                "{claims}"
            );
            // Without a maximum age `iat` is not read, as in Node.
            assert_eq!(code_under(&NODE, claims), Ok("u".into()));
        }
    }

    #[test]
    fn order_signature_nbf_exp_required_age_user() {
        let strict = TokenPolicy {
            require_exp: true,
            ..max_age(NODE, 3600)
        };
        // Expired and too old: TOKEN_EXPIRED (exp is checked first).
        assert_eq!(
            code_under(
                &strict,
                json!({"userId": "u", "iat": NOW - 9000, "exp": NOW - 1})
            ),
            Err("TOKEN_EXPIRED")
        );
        // Not yet active and too old: TOKEN_NOT_ACTIVE.
        assert_eq!(
            code_under(
                &strict,
                json!({"userId": "u", "iat": NOW - 9000, "nbf": NOW + 9, "exp": NOW + 60})
            ),
            Err("TOKEN_NOT_ACTIVE")
        );
        // No exp and too old: TOKEN_EXP_REQUIRED comes before the age.
        assert_eq!(
            code_under(&strict, json!({"userId": "u", "iat": NOW - 9000})),
            Err("TOKEN_EXP_REQUIRED")
        );
        // Too old and no user id: TOKEN_TOO_OLD comes before the user id.
        assert_eq!(
            code_under(&strict, json!({"iat": NOW - 9000, "exp": NOW + 60})),
            Err("TOKEN_TOO_OLD")
        );
        assert_eq!(
            code_under(&strict, json!({"iat": NOW, "exp": NOW + 60})),
            Err("INVALID_TOKEN_STRUCTURE")
        );
    }

    #[test]
    fn any_secret_of_the_list_verifies() {
        let claims = json!({"userId": "u", "exp": NOW + 60});
        let new: &[u8] = b"new-secret";
        let old: &[u8] = b"old-secret";
        let by_old = bearer_of(&mint_with(Algorithm::HS256, &claims, old));
        let by_new = bearer_of(&mint_with(Algorithm::HS256, &claims, new));
        let by_other = bearer_of(&mint_with(Algorithm::HS256, &claims, b"stranger"));
        let check = |header: &[u8], secrets: &[&[u8]]| {
            verify_user(Some(header), secrets, &NODE, NOW).map(|u| u.user_id)
        };
        // Signed by the previous secret: accepted during the rotation.
        assert_eq!(check(&by_old, &[new, old]), Ok("u".into()));
        assert_eq!(check(&by_new, &[new, old]), Ok("u".into()));
        // A secret that is not in the list: refused.
        assert_eq!(check(&by_other, &[new, old]), Err(AuthError::INVALID_TOKEN));
        // Once the old secret is dropped, its tokens are refused.
        assert_eq!(check(&by_old, &[new]), Err(AuthError::INVALID_TOKEN));
        // An empty entry verifies nothing and does not stop the others.
        assert_eq!(check(&by_old, &[b"", old]), Ok("u".into()));
        assert_eq!(check(&by_old, &[]), Err(AuthError::INVALID_TOKEN));
        // The algorithm is pinned whatever the list: alg none refused.
        let none = bearer_of(&hand_made("none", &claims, ""));
        assert_eq!(
            check(&none, &[new, old, b""]),
            Err(AuthError::INVALID_TOKEN)
        );
    }

    #[test]
    fn internal_api_key_matches_any_of_the_list() {
        let token = bearer_of(&service_token(SECRET, NOW));
        let keys = ["k-new", "k-old"];
        let with = |key: Option<&[u8]>, keys: &[&str]| {
            verify_internal(key, Some(&token), keys, &[SECRET], &NODE, NOW).map(|_| ())
        };
        assert_eq!(with(Some(b"k-new"), &keys), Ok(()));
        assert_eq!(with(Some(b"k-old"), &keys), Ok(()), "the previous key");
        for wrong in [&b"k-other"[..], b"k-ne", b"k-new ", b"k-newk-old", b""] {
            assert_eq!(
                with(Some(wrong), &keys),
                Err(AuthError::INVALID_API_KEY),
                "{wrong:?}"
            );
        }
        assert_eq!(with(None, &keys), Err(AuthError::INVALID_API_KEY));
        assert_eq!(
            with(Some(b"k-old"), &keys[..1]),
            Err(AuthError::INVALID_API_KEY)
        );
        assert_eq!(with(Some(b"k-new"), &[]), Err(AuthError::INVALID_API_KEY));
        assert!(matches_any(b"b", &["a", "b", "c"]));
        assert!(matches_any(b"a", &["a", "a"]));
        assert!(!matches_any(b"d", &["a", "b", "c"]));
        assert!(!matches_any(b"a", &[] as &[&str]));
    }

    #[test]
    fn internal_path_applies_the_policy() {
        let svc = |extra: Value| {
            let mut c = json!({"service": "ai-service"});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            mint(&c)
        };
        let check = |token: &str, policy: &TokenPolicy| {
            verify_internal(
                Some(KEY.as_bytes()),
                Some(&bearer_of(token)),
                &[KEY],
                &[SECRET],
                policy,
                NOW,
            )
            .map(|_| ())
        };
        let strict = TokenPolicy {
            require_exp: true,
            ..max_age(leeway(5), 600)
        };
        // Our own service tokens pass the strict policy.
        assert_eq!(check(&service_token(SECRET, NOW), &strict), Ok(()));
        // Every refusal of the policy is INVALID_SERVICE_TOKEN.
        for token in [
            svc(json!({})),
            svc(json!({"iat": NOW - 700, "exp": NOW + 10})),
            svc(json!({"iat": NOW, "exp": NOW + 601})),
            svc(json!({"exp": NOW + 606})),
            svc(json!({"exp": NOW - 5})),
            svc(json!({"iat": "x", "exp": NOW + 10})),
        ] {
            assert_eq!(
                check(&token, &strict),
                Err(AuthError::INVALID_SERVICE_TOKEN),
                "{token}"
            );
        }
        // The tolerance applies: an exp 4 s ago, an nbf 5 s ahead pass.
        assert_eq!(check(&svc(json!({"exp": NOW - 4})), &strict), Ok(()));
        assert_eq!(
            check(&svc(json!({"nbf": NOW + 5, "exp": NOW + 60})), &strict),
            Ok(())
        );
        // nbf beyond the tolerance is still AUTH_ERROR (500).
        assert_eq!(
            check(&svc(json!({"nbf": NOW + 6, "exp": NOW + 60})), &strict),
            Err(AuthError::AUTH_ERROR)
        );
        // A maximum age under the service token's 5 minutes refuses it.
        assert_eq!(
            check(&service_token(SECRET, NOW), &max_age(NODE, 299)),
            Err(AuthError::INVALID_SERVICE_TOKEN)
        );
    }

    #[test]
    fn internal_token_signed_by_a_previous_secret() {
        let old: &[u8] = b"old-secret";
        let token = bearer_of(&service_token(old, NOW));
        let check = |secrets: &[&[u8]]| {
            verify_internal(
                Some(KEY.as_bytes()),
                Some(&token),
                &[KEY],
                secrets,
                &NODE,
                NOW,
            )
            .map(|c| c["service"].clone())
        };
        assert_eq!(check(&[SECRET, old]), Ok(json!("ai-service")));
        assert_eq!(check(&[SECRET]), Err(AuthError::INVALID_SERVICE_TOKEN));
    }
}
