//! The worker's configuration, read once from the environment at start-up
//! (API.md §14, plus the few docs/api.md adds), and what the supervisor
//! passes (worker id, control and metrics sockets).
//!
//! Parsing follows the contract's forgiving rules, inherited from the
//! Node.js service: integers are base 10 and an invalid value means the
//! default; booleans are `true`, `1` or `yes` in any case, anything else
//! set means false. A bad value therefore never stops a worker, which
//! matters because a worker that fails to start is retried in a loop by the
//! supervisor. The connection timeouts this project added
//! ([`ConnectionTimeouts`]) are stricter only in what they report: zero,
//! more than a day, or an unreadable value is listed in
//! [`Settings::problems`], logged as an error at start, and the default is
//! used. The exception is the token rules (`JWT_REQUIRE_EXP`,
//! `JWT_MAX_AGE`, `JWT_CLOCK_TOLERANCE`, parsed by
//! [`shared::token_policy`]): security switches whose default may be the
//! weaker rule, so a bad value is a [`Settings::refusals`] entry instead,
//! which the supervisor's pre-start check catches first.
//!
//! `JWT_SECRET` and `HEARTALK_API_KEY` may hold several lines, and their
//! `_PREVIOUS` companions more, so that a secret can be rotated without a
//! moment where valid credentials are refused ([`JwtSettings`],
//! [`secret_list`]).
//!
//! The `.env` files of §14 are read too: `.env.<NODE_ENV>.local`,
//! `.env.local`, `.env.<NODE_ENV>`, `.env` in the working directory, an
//! earlier file winning, the process environment beating them all.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use shared::activation::env;
use shared::token_policy::{self, TokenPolicy};

/// Everything the worker reads from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `NODE_ENV`: `development` (default), `production` or `test`.
    pub node_env: String,
    /// `HOST`: address to bind when no sockets are inherited.
    pub host: String,
    /// `PORT`: port to bind when no sockets are inherited.
    pub port: u16,
    /// `SERVICE_VERSION`: reported in health and `/` bodies.
    pub service_version: String,
    /// `HEARTALK_WORKER_ID`: the supervisor slot, sent in `X-Worker-Id`.
    pub worker_id: u32,
    /// `SHUTDOWN_GRACE_SECS`: how long in-flight work may run after SIGTERM.
    pub shutdown_grace: Duration,
    /// `MAX_CONNECTIONS`: the most client connections open at once, past
    /// which the worker stops accepting (`None`, the default, or 0: derive
    /// it from the open-file limit; a set value is capped to that too; see
    /// [`crate::http::budget`]).
    pub max_connections: Option<usize>,
    /// `KEYWORDS_CONFIG`: the router table.
    pub keywords_config: PathBuf,
    /// Chain-of-thought / self-consistency settings (§7).
    pub reasoning: ReasoningSettings,
    /// Which upstream provider mode is in force (§10).
    pub provider: ProviderSettings,
    /// Everything the chat pipeline reads (§14).
    pub pipeline: PipelineSettings,
    /// Set by the supervisor: where it scrapes this worker's metrics
    /// (`HEARTALK_METRICS_SOCKET`, an abstract socket name).
    pub metrics_socket: Option<String>,
    /// Set by the supervisor: its control socket, asked for the fleet-wide
    /// metrics that `GET /metrics` on the service port serves
    /// (`HEARTALK_CONTROL_SOCKET`; unset = no `/metrics` on this port).
    pub control_socket: Option<PathBuf>,
    /// The deadlines of client connections (docs/api.md "Connection
    /// deadlines").
    pub connection: ConnectionTimeouts,
    /// Connection timeouts ([`ConnectionTimeouts`]) that were set to a
    /// value that cannot be used, one line each naming the variable, the
    /// value and the default used instead (other settings fall back to
    /// their defaults silently).
    /// Logged as errors at start ([`crate::run`]); the worker still starts,
    /// because one that refused would only be restarted in a loop.
    pub problems: Vec<String>,
    /// Settings that stop the worker: logged and exit 64 (the supervisor
    /// checks the same before it starts a worker, so this is a second
    /// line). One line each naming the variable, the value and what is
    /// accepted: secrets that cannot be used ([`shared::secrets::resolve`])
    /// and the token rules ([`shared::token_policy::parse`]), security
    /// switches that must not fall back to a default on a typo.
    pub refusals: Vec<String>,
}

/// The deadlines of a client connection. Each is an integer number of
/// milliseconds (like the contract's other `*_TIMEOUT`s) or a humantime
/// duration (`10s`, `1m 15s`, `500ms`), see [`parse_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionTimeouts {
    /// `FIRST_BYTE_TIMEOUT` (10 s): from accept to the first byte; a
    /// connection that sends nothing is closed then.
    pub first_byte: Duration,
    /// `HEADER_TIMEOUT` (30 s): from the first byte of a request head to
    /// the whole head (on HTTP/2: from the preface to the first request).
    pub header: Duration,
    /// `BODY_TIMEOUT` (30 s): from the complete head to the whole body, a
    /// total deadline whatever the rate the bytes arrive at; then 408
    /// `REQUEST_TIMEOUT` and the connection is closed.
    pub body: Duration,
    /// `KEEPALIVE_TIMEOUT` (75 s): how long a connection with no request
    /// in flight stays open after its last response. Above the 60 s idle
    /// timeout of the usual proxies in front (nginx's upstream
    /// `keepalive_timeout`, AWS ALB), so they close first and never reuse
    /// a connection the worker is closing.
    pub keep_alive: Duration,
    /// `SEND_TIMEOUT` (60 s, nginx's `send_timeout`): how long a write may
    /// wait for a client that is not reading (its receive window full)
    /// before the connection is closed; a deadline between two successive
    /// writes the socket takes, not on the whole response.
    pub send: Duration,
}

impl ConnectionTimeouts {
    pub const DEFAULT: ConnectionTimeouts = ConnectionTimeouts {
        first_byte: Duration::from_secs(10),
        header: Duration::from_secs(30),
        body: Duration::from_secs(30),
        keep_alive: Duration::from_secs(75),
        send: Duration::from_secs(60),
    };
}

/// The longest connection timeout accepted: a day (a larger value is a
/// typo, and the deadline must stay far from the clock's range).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// A connection timeout: unset or blank is `Ok(default)`; an integer is
/// milliseconds (`HEARTALK_TIMEOUT`'s unit), anything else is read as a
/// humantime duration (`10s`, `1m 15s`, `500ms`). Zero, a value that
/// parses as neither, or more than [`MAX_TIMEOUT`] is an error saying why.
pub fn parse_timeout(value: Option<&str>, default: Duration) -> Result<Duration, String> {
    let v = match value.map(str::trim) {
        None | Some("") => return Ok(default),
        Some(v) => v,
    };
    let d = match v.parse::<u64>() {
        Ok(ms) => Duration::from_millis(ms),
        Err(_) => shared::config::units::parse_duration(v).map_err(|_| {
            "not a duration (an integer number of milliseconds, or e.g. `10s`, `1m 15s`, `500ms`)"
                .to_string()
        })?,
    };
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    if d > MAX_TIMEOUT {
        return Err("must be at most a day".into());
    }
    Ok(d)
}

/// Reads the five connection timeouts; each bad value adds a problem and
/// leaves that timeout at its default.
fn connection_timeouts(
    get: &impl Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> ConnectionTimeouts {
    let d = ConnectionTimeouts::DEFAULT;
    let mut read = |key: &str, default: Duration| {
        let value = get(key);
        parse_timeout(value.as_deref(), default).unwrap_or_else(|why| {
            problems.push(format!(
                "{key}={:?}: {why}; using the default {default:?}",
                value.unwrap_or_default()
            ));
            default
        })
    };
    ConnectionTimeouts {
        first_byte: read("FIRST_BYTE_TIMEOUT", d.first_byte),
        header: read("HEADER_TIMEOUT", d.header),
        body: read("BODY_TIMEOUT", d.body),
        keep_alive: read("KEEPALIVE_TIMEOUT", d.keep_alive),
        send: read("SEND_TIMEOUT", d.send),
    }
}

/// A secret value: usable, but never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(pub String);

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_string())
    }
}

impl AsRef<[u8]> for Secret {
    /// The secret's bytes, as the verifiers in [`crate::pipeline::auth`]
    /// take them.
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// `REDIS_URL`: used as it is, printed by `Debug` with any password in it
/// masked (userinfo, `pass=`/`password=`), so that a stray `{:?}` of the
/// settings does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(pub String);

impl std::ops::Deref for RedisUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", shared::secrets::redact_urls(&self.0))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// The JWT secret used when `JWT_SECRET` is unset or blank (API.md §14);
/// a warning is logged when production runs with it.
pub const DEV_JWT_SECRET: &str = "dev_jwt_secret_key_change_in_production";

/// The internal API key used when `HEARTALK_API_KEY` is unset or blank.
pub const DEV_HEARTALK_API_KEY: &str = "dev_heartalk_api_key_placeholder";

/// The secrets and rules of JWT verification, inbound and outbound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// Every secret a token may be signed with, never empty: `JWT_SECRET`'s
    /// lines (or [`DEV_JWT_SECRET`]), then `JWT_SECRET_PREVIOUS`'s, without
    /// repeats. `secrets[0]` signs the outbound service token; every entry
    /// verifies inbound tokens. A list, so a secret can be rotated without
    /// refusing the tokens signed with the other (docs/configuration.md
    /// "Rotating the JWT secret").
    pub secrets: Vec<Secret>,
    /// `JWT_REQUIRE_EXP`, `JWT_MAX_AGE`, `JWT_CLOCK_TOLERANCE`.
    pub policy: TokenPolicy,
}

impl JwtSettings {
    /// The secret the outbound service token is signed with (`secrets[0]`).
    pub fn signing_secret(&self) -> &[u8] {
        self.secrets.first().map_or(&[], |s| s.0.as_bytes())
    }
}

/// The chat pipeline's configuration (API.md §14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineSettings {
    /// `JWT_SECRET`, `JWT_SECRET_PREVIOUS` and the token rules.
    pub jwt: JwtSettings,
    /// The keys the internal paths accept in `X-API-Key`, never empty:
    /// `HEARTALK_API_KEY`'s lines (or [`DEV_HEARTALK_API_KEY`]), then
    /// `HEARTALK_API_KEY_PREVIOUS`'s, without repeats. The first is the
    /// one sent to the backend ([`PipelineSettings::backend_api_key`]).
    pub heartalk_api_keys: Vec<Secret>,
    pub backend_url: String,
    pub backend_api_prefix: String,
    pub backend_conversation_path: String,
    /// `HEARTALK_TIMEOUT`: backend request timeout.
    pub backend_timeout: Duration,
    /// `HEALTH_CHECK_INTERVAL`: backend probe period.
    pub health_check_interval: Duration,
    /// `HISTORY_CACHE_TTL`, capped at 30 s.
    pub history_cache_ttl: Duration,
    pub max_context_tokens: u64,
    pub max_conversation_rounds: usize,
    pub base_url: String,
    pub api_key: Secret,
    /// Endpoint ids (model names) for the two routes.
    pub chat_endpoint: String,
    pub work_endpoint: String,
    /// Whether the endpoint ids came from the environment (live mode needs them).
    pub endpoints_configured: bool,
    pub chat_timeout: Duration,
    pub work_timeout: Duration,
    pub max_retries: u32,
    pub stream_usage: bool,
    /// `UPSTREAM_HTTP2`: how the provider client speaks HTTP/2.
    pub upstream_http2: UpstreamHttp2,
    /// `UPSTREAM_POOL_IDLE_SECS`: how long an idle upstream connection is kept.
    pub upstream_pool_idle: Duration,
    pub simulated_latency: Duration,
    pub simulated_tokens_per_sec: u32,
    pub simulated_reasoning: bool,
    pub cache_enabled: bool,
    pub cache_ttl: Duration,
    pub cache_max_entries: u64,
    pub redis_url: Option<RedisUrl>,
    /// `REDIS_PASSWORD`: the password of `REDIS_URL`'s connection, kept out
    /// of the URL (a URL carrying one too is refused at start).
    pub redis_password: Option<Secret>,
    /// `REDIS_TLS_CA_FILE`, `REDIS_TLS_CERT_FILE`, `REDIS_TLS_KEY_FILE`:
    /// the TLS material of a `rediss://` `REDIS_URL`.
    pub redis_tls: RedisTlsFiles,
    /// `REDIS_TIMEOUT_MS` (200): deadline of one Redis command.
    pub redis_timeout: Duration,
    /// `RESPONSE_CACHE_MAX_BYTES` (64 MiB): L1 memory bound.
    pub cache_max_bytes: u64,
    /// `CHAT_FALLBACK_EP` / `WORK_ASSISTANT_FALLBACK_EP`: optional second
    /// endpoint per route, tried once when the first fails.
    pub chat_fallback: Option<String>,
    pub work_fallback: Option<String>,
    /// `CIRCUIT_FAILURE_THRESHOLD` (5) consecutive failures open an
    /// endpoint's breaker for `CIRCUIT_OPEN_SECS` (30).
    pub circuit_threshold: u32,
    pub circuit_open: Duration,
    /// `TRUSTED_PROXIES`: addresses/CIDRs whose `X-Forwarded-For` is
    /// believed (with `TRUST_PROXY=true`; empty = any peer, as before).
    pub trusted_proxies: Vec<Cidr>,
    pub rate_limits: RateLimits,
    /// `ALLOWED_ORIGINS`, or `None` for the built-in list.
    pub allowed_origins: Option<Vec<String>>,
    pub trust_proxy: bool,
    pub max_body_size: usize,
    pub sse_heartbeat: Duration,
    pub metrics_port: Option<u16>,
}

impl PipelineSettings {
    /// The `X-API-Key` sent to the backend (`heartalk_api_keys[0]`).
    pub fn backend_api_key(&self) -> &str {
        self.heartalk_api_keys.first().map_or("", |k| k.0.as_str())
    }
}

/// Where the TLS material of a `rediss://` `REDIS_URL` lives (PEM files).
///
/// Only the paths are read here: the files are opened, parsed and checked
/// against the URL when the Redis link is built
/// ([`crate::runtime::redis_link::RedisLink::new`]), which is where a bad value is
/// reported. Relative paths are relative to the worker's working directory
/// (the app's `cwd`). An empty or blank value means unset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RedisTlsFiles {
    /// `REDIS_TLS_CA_FILE`: the CA certificate(s) that sign the server's
    /// certificate. Set, it *replaces* the system trust store for Redis:
    /// a private CA then cannot be bypassed by a public one.
    pub ca_file: Option<PathBuf>,
    /// `REDIS_TLS_CERT_FILE`: the client certificate chain, for servers
    /// that require mutual TLS (`tls-auth-clients yes`).
    pub cert_file: Option<PathBuf>,
    /// `REDIS_TLS_KEY_FILE`: the client certificate's private key
    /// (PKCS#8, PKCS#1 or SEC1; not encrypted).
    pub key_file: Option<PathBuf>,
}

impl RedisTlsFiles {
    /// Whether none of the three is set.
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }

    /// The variables that are set, by name (for "set but ignored" logs).
    pub fn set_vars(&self) -> Vec<&'static str> {
        [
            ("REDIS_TLS_CA_FILE", &self.ca_file),
            ("REDIS_TLS_CERT_FILE", &self.cert_file),
            ("REDIS_TLS_KEY_FILE", &self.key_file),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.as_ref().map(|_| name))
        .collect()
    }
}

/// The reasoning switches, reported by `/api/v1/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasoningSettings {
    pub chain_of_thought: bool,
    pub self_consistency: bool,
    pub samples: u32,
    pub show_reasoning_process: bool,
}

/// The provider selection inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSettings {
    /// `AI_PROVIDER_MODE`, lower-cased: `auto` (default), `live`, `simulated`.
    pub mode: String,
    /// `AI_PROVIDER_NAME`: the label reported in live mode.
    pub name: String,
    /// Whether `BYTEPLUS_API_KEY` is non-empty. The key itself is not kept
    /// here so it cannot leak through a `Debug` log of the settings.
    pub has_api_key: bool,
}

impl ProviderSettings {
    /// Simulated mode: forced by `AI_PROVIDER_MODE=simulated`, or implied
    /// by an empty `BYTEPLUS_API_KEY` (§13 p: no provider config is not a
    /// start-up failure any more).
    pub fn simulated(&self) -> bool {
        self.mode == "simulated" || (self.mode != "live" && !self.has_api_key)
    }
}

impl Settings {
    /// Reads the process environment, then the `.env` cascade of the
    /// working directory for keys the environment does not set.
    pub fn from_env() -> Self {
        let files = dotenv_cascade(std::path::Path::new("."), |k| std::env::var(k).ok());
        Self::from_lookup(|k| std::env::var(k).ok().or_else(|| files.get(k).cloned()))
    }

    /// Builds settings from any key lookup; `from_env` with the process
    /// environment, tests with a map.
    ///
    /// Secrets named by `NAME_FILE` are read here ([`shared::secrets`]):
    /// the rest of the settings see the file's value as `NAME`. A secret
    /// that cannot be used is a refusal, like a bad token rule.
    pub fn from_lookup(raw: impl Fn(&str) -> Option<String>) -> Self {
        let mut refusals = Vec::new();
        let files = shared::secrets::resolve(&raw).unwrap_or_else(|errors| {
            refusals.extend(errors.iter().map(ToString::to_string));
            shared::secrets::FileSecrets::default()
        });
        let get = |k: &str| files.get(k).map(str::to_string).or_else(|| raw(k));
        let string = |k: &str, default: &str| get(k).unwrap_or_else(|| default.to_string());
        let nonempty = |k: &str, default: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        let mut problems = Vec::new();
        let connection = connection_timeouts(&get, &mut problems);
        let policy = token_policy::parse(get).unwrap_or_else(|errors| {
            refusals.extend(errors);
            // Never served with once the refusal stops the worker; until
            // then, the strict side of the switch a typo cannot weaken.
            TokenPolicy::defaults(true)
        });
        Settings {
            node_env: nonempty("NODE_ENV", "development"),
            host: nonempty("HOST", "localhost"),
            port: parse_int(get("PORT").as_deref(), 8001),
            service_version: nonempty("SERVICE_VERSION", "1.0.0"),
            worker_id: parse_int(get(env::HEARTALK_WORKER_ID).as_deref(), 0),
            shutdown_grace: Duration::from_secs(parse_int(
                get("SHUTDOWN_GRACE_SECS").as_deref(),
                30,
            )),
            max_connections: Some(parse_int(get("MAX_CONNECTIONS").as_deref(), 0usize))
                .filter(|n| *n > 0),
            keywords_config: PathBuf::from(nonempty("KEYWORDS_CONFIG", "config/keywords.json")),
            reasoning: ReasoningSettings {
                chain_of_thought: parse_bool(get("ENABLE_CHAIN_OF_THOUGHT").as_deref(), true),
                self_consistency: parse_bool(get("ENABLE_SELF_CONSISTENCY").as_deref(), true),
                samples: parse_int(get("SELF_CONSISTENCY_SAMPLES").as_deref(), 3),
                show_reasoning_process: parse_bool(get("SHOW_REASONING_PROCESS").as_deref(), false),
            },
            provider: ProviderSettings {
                mode: nonempty("AI_PROVIDER_MODE", "auto").to_ascii_lowercase(),
                name: nonempty("AI_PROVIDER_NAME", "byteplus"),
                has_api_key: !string("BYTEPLUS_API_KEY", "").trim().is_empty(),
            },
            pipeline: pipeline(&get, policy),
            metrics_socket: get(env::HEARTALK_METRICS_SOCKET).filter(|v| !v.is_empty()),
            control_socket: get(env::HEARTALK_CONTROL_SOCKET)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            connection,
            problems,
            refusals,
        }
    }

    /// `NODE_ENV=production`.
    pub fn is_production(&self) -> bool {
        shared::is_production(Some(&self.node_env))
    }

    /// Settings that start but weaken or break authentication, one line
    /// each, logged as warnings at start ([`crate::run`]): the public
    /// development secret or key accepted in production (only as a
    /// `_PREVIOUS` entry, since production refuses to start without its
    /// own), and a `JWT_MAX_AGE` shorter than the backend's service tokens
    /// live, which refuses every internal call.
    pub fn security_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let jwt = &self.pipeline.jwt;
        if self.is_production() {
            if jwt.secrets.iter().any(|s| s.0 == DEV_JWT_SECRET) {
                warnings.push(
                    "the public development JWT secret is accepted in production \
                     (JWT_SECRET or JWT_SECRET_PREVIOUS): anyone can sign tokens with it"
                        .to_string(),
                );
            }
            if self
                .pipeline
                .heartalk_api_keys
                .iter()
                .any(|k| k.0 == DEV_HEARTALK_API_KEY)
            {
                warnings.push(
                    "the public development HEARTALK_API_KEY is accepted in production \
                     (HEARTALK_API_KEY or HEARTALK_API_KEY_PREVIOUS)"
                        .to_string(),
                );
            }
        }
        let service_token = token_policy::SERVICE_TOKEN_TTL;
        if let Some(max_age) = jwt.policy.max_age.filter(|m| *m < service_token) {
            warnings.push(format!(
                "JWT_MAX_AGE={}s is shorter than the {}s the backend's service tokens live: \
                 the internal paths will refuse them",
                max_age.as_secs(),
                service_token.as_secs()
            ));
        }
        warnings
    }
}

/// A secret list: each non-empty line of `current` (trimmed; `default`
/// when there is none), then each of `previous`, the first occurrence of a
/// repeated value kept where it stands.
pub fn secret_list(current: Option<&str>, default: &str, previous: Option<&str>) -> Vec<Secret> {
    let lines = |v: Option<&str>| -> Vec<String> {
        v.unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut first = lines(current);
    if first.is_empty() {
        first.push(default.to_string());
    }
    let mut out: Vec<Secret> = Vec::new();
    for value in first.into_iter().chain(lines(previous)) {
        if !out.iter().any(|s| s.0 == value) {
            out.push(Secret(value));
        }
    }
    out
}

fn pipeline(get: &impl Fn(&str) -> Option<String>, policy: TokenPolicy) -> PipelineSettings {
    let nonempty = |k: &str, default: &str| {
        get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_string())
    };
    let int = |k: &str, default: u64| parse_int(get(k).as_deref(), default);
    // `MAX_*` = 0 means the default (§14).
    let max = |k: &str, default: u64| match int(k, default) {
        0 => default,
        n => n,
    };
    let boolean = |k: &str, default: bool| parse_bool(get(k).as_deref(), default);
    let path = |k: &str| {
        get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let ms = |k: &str, default: u64| Duration::from_millis(int(k, default));
    let chat_ep = get("BYTEPLUS_AMI_CHAT_EP").filter(|v| !v.trim().is_empty());
    let work_ep = get("BYTEPLUS_AMI_WORK_ASSISTANT_EP").filter(|v| !v.trim().is_empty());
    let origins = get("ALLOWED_ORIGINS")
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            v.split(',')
                .map(|o| o.trim().to_string())
                .filter(|o| !o.is_empty())
                .collect()
        });
    let defaults = RateLimits::default();
    PipelineSettings {
        jwt: JwtSettings {
            secrets: secret_list(
                get("JWT_SECRET").as_deref(),
                DEV_JWT_SECRET,
                get("JWT_SECRET_PREVIOUS").as_deref(),
            ),
            policy,
        },
        heartalk_api_keys: secret_list(
            get("HEARTALK_API_KEY").as_deref(),
            DEV_HEARTALK_API_KEY,
            get("HEARTALK_API_KEY_PREVIOUS").as_deref(),
        ),
        backend_url: nonempty("HEARTALK_BACKEND_URL", "http://localhost:8000")
            .trim_end_matches('/')
            .to_string(),
        backend_api_prefix: nonempty("BACKEND_API_PREFIX", "/internal/api/v1"),
        backend_conversation_path: nonempty("BACKEND_CONVERSATION_PATH", "/conversations"),
        backend_timeout: ms("HEARTALK_TIMEOUT", 10_000),
        health_check_interval: ms("HEALTH_CHECK_INTERVAL", 30_000),
        history_cache_ttl: Duration::from_secs(int("HISTORY_CACHE_TTL", 30).min(30)),
        max_context_tokens: max("MAX_CONTEXT_TOKENS", 2000),
        max_conversation_rounds: max("MAX_CONVERSATION_ROUNDS", 10) as usize,
        base_url: nonempty(
            "BYTEPLUS_BASE_URL",
            "https://ark.ap-southeast.bytepluses.com/api/v3",
        )
        .trim_end_matches('/')
        .to_string(),
        api_key: Secret(
            get("BYTEPLUS_API_KEY")
                .unwrap_or_default()
                .trim()
                .to_string(),
        ),
        endpoints_configured: chat_ep.is_some() && work_ep.is_some(),
        chat_endpoint: chat_ep
            .unwrap_or_else(|| "sim-chat".into())
            .trim()
            .to_string(),
        work_endpoint: work_ep
            .unwrap_or_else(|| "sim-work".into())
            .trim()
            .to_string(),
        chat_timeout: ms("BYTEPLUS_TIMEOUT", 30_000),
        work_timeout: ms("BYTEPLUS_WORK_ASSISTANT_TIMEOUT", 60_000),
        max_retries: parse_int(get("UPSTREAM_MAX_RETRIES").as_deref(), 2),
        stream_usage: boolean("UPSTREAM_STREAM_USAGE", true),
        upstream_http2: UpstreamHttp2::parse(get("UPSTREAM_HTTP2").as_deref()),
        upstream_pool_idle: Duration::from_secs(int("UPSTREAM_POOL_IDLE_SECS", 15)),
        simulated_latency: ms("SIMULATED_LATENCY_MS", 300),
        simulated_tokens_per_sec: parse_int(get("SIMULATED_TOKENS_PER_SEC").as_deref(), 40),
        simulated_reasoning: boolean("SIMULATED_REASONING", false),
        cache_enabled: boolean("CACHE_ENABLED", true),
        cache_ttl: Duration::from_secs(int("CACHE_TTL", 7200)),
        cache_max_entries: max("RESPONSE_CACHE_MAX_ENTRIES", 10_000),
        redis_url: get("REDIS_URL")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .map(RedisUrl),
        redis_password: get("REDIS_PASSWORD")
            .map(|v| v.trim_end_matches(['\n', '\r']).to_string())
            .filter(|v| !v.trim().is_empty())
            .map(Secret),
        redis_tls: RedisTlsFiles {
            ca_file: path("REDIS_TLS_CA_FILE"),
            cert_file: path("REDIS_TLS_CERT_FILE"),
            key_file: path("REDIS_TLS_KEY_FILE"),
        },
        redis_timeout: ms("REDIS_TIMEOUT_MS", 200).max(Duration::from_millis(1)),
        cache_max_bytes: max("RESPONSE_CACHE_MAX_BYTES", 64 << 20),
        chat_fallback: get("CHAT_FALLBACK_EP")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty()),
        work_fallback: get("WORK_ASSISTANT_FALLBACK_EP")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty()),
        circuit_threshold: max("CIRCUIT_FAILURE_THRESHOLD", 5) as u32,
        circuit_open: Duration::from_secs(max("CIRCUIT_OPEN_SECS", 30)),
        trusted_proxies: get("TRUSTED_PROXIES")
            .map(|v| parse_list(&v))
            .unwrap_or_default(),
        rate_limits: RateLimits {
            admin_max: max("RATE_LIMIT_ADMIN_MAX", defaults.admin_max),
            stream_max: max("RATE_LIMIT_STREAM_MAX", defaults.stream_max),
            ai_max: max("RATE_LIMIT_AI_MAX", defaults.ai_max),
            user_max: max("RATE_LIMIT_USER_MAX", defaults.user_max),
            global_max: max("RATE_LIMIT_MAX_REQUESTS", defaults.global_max),
            global_window: max("RATE_LIMIT_WINDOW", 15) * 60,
            global_message: nonempty("RATE_LIMIT_MESSAGE", &defaults.global_message),
        },
        allowed_origins: origins,
        trust_proxy: boolean("TRUST_PROXY", false),
        max_body_size: max("MAX_BODY_SIZE", 1_048_576) as usize,
        sse_heartbeat: Duration::from_secs(max("SSE_HEARTBEAT_SECS", 15)),
        metrics_port: get("METRICS_PORT").and_then(|v| v.trim().parse().ok()),
    }
}

/// Reads the `.env` cascade in `dir` (§14): `.env.<NODE_ENV>.local`,
/// `.env.local`, `.env.<NODE_ENV>`, `.env`; the first file to set a key
/// wins. `NODE_ENV` itself comes from `env`, else from `.env.local`/`.env`.
pub fn dotenv_cascade(
    dir: &std::path::Path,
    env: impl Fn(&str) -> Option<String>,
) -> std::collections::HashMap<String, String> {
    let read = |name: &str| -> Vec<(String, String)> {
        match dotenvy::from_path_iter(dir.join(name)) {
            Ok(iter) => iter.filter_map(Result::ok).collect(),
            Err(_) => Vec::new(),
        }
    };
    let local = read(".env.local");
    let base = read(".env");
    let find = |list: &[(String, String)], k: &str| {
        list.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let node_env = env("NODE_ENV")
        .or_else(|| find(&local, "NODE_ENV"))
        .or_else(|| find(&base, "NODE_ENV"))
        .unwrap_or_else(|| "development".into());
    let mut out = std::collections::HashMap::new();
    for list in [
        read(&format!(".env.{node_env}.local")),
        local,
        read(&format!(".env.{node_env}")),
        base,
    ] {
        for (k, v) in list {
            out.entry(k).or_insert(v);
        }
    }
    out
}

/// A base-10 integer (surrounding whitespace allowed); unset, empty,
/// malformed or out-of-range values give `default`.
pub fn parse_int<T: std::str::FromStr>(value: Option<&str>, default: T) -> T {
    value.and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

/// `true`, `1` or `yes` (any case) is true, any other set value is false;
/// unset or empty gives `default`.
pub fn parse_bool(value: Option<&str>, default: bool) -> bool {
    match value.map(str::trim) {
        None | Some("") => default,
        Some(v) => shared::token_policy::parse_bool(v).unwrap_or(false),
    }
}

/// Rate limits per bucket (`RATE_LIMIT_*`), read here and applied by
/// [`crate::limits::ratelimit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    pub admin_max: u64,
    pub stream_max: u64,
    pub ai_max: u64,
    pub user_max: u64,
    pub global_max: u64,
    /// `RATE_LIMIT_WINDOW` in seconds (minutes × 60).
    pub global_window: u64,
    /// `RATE_LIMIT_MESSAGE`.
    pub global_message: String,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            admin_max: 100,
            stream_max: 10,
            ai_max: 30,
            user_max: 60,
            global_max: 100,
            global_window: 15 * 60,
            global_message: "Too many requests from this IP, please try again later.".into(),
        }
    }
}

/// How the provider client uses HTTP/2 (`UPSTREAM_HTTP2`). Over HTTP/2 one
/// connection carries many streams, so an open stream costs a stream's
/// state instead of a connection's buffers (docs/benchmarks.md "Open
/// streams").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamHttp2 {
    /// `auto`: offered by ALPN on `https` URLs (what a TLS server such as
    /// Ark chooses); HTTP/1.1 on plain `http`.
    #[default]
    Auto,
    /// `prior-knowledge`: HTTP/2 without negotiation (h2c on `http`); for a
    /// server known to speak it.
    PriorKnowledge,
    /// `off`: HTTP/1.1 only.
    Off,
}

impl UpstreamHttp2 {
    /// Reads the setting; anything unknown silently becomes `auto` (it is
    /// not reported).
    pub fn parse(value: Option<&str>) -> UpstreamHttp2 {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            Some("prior-knowledge" | "prior_knowledge" | "h2c") => UpstreamHttp2::PriorKnowledge,
            Some("off" | "false" | "0" | "http1") => UpstreamHttp2::Off,
            _ => UpstreamHttp2::Auto,
        }
    }
}

/// An address block, e.g. `10.0.0.0/8` or `::1/128`: an entry of
/// `TRUSTED_PROXIES`, which [`crate::http::proxy`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d`, `a.b.c.d/n`, `::1`, `fd00::/8`.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        // `::ffff:a.b.c.d/n` is the IPv4 block `a.b.c.d/(n-96)` (addresses
        // are compared in their IPv4 form).
        if let IpAddr::V6(v6) = addr {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return prefix.checked_sub(96).map(|p| Cidr {
                    addr: IpAddr::V4(v4),
                    prefix: p,
                });
            }
        }
        Some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a dual-stack socket reports)
/// compares as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A comma-separated list; unparsable items are logged and skipped.
pub fn parse_list(s: &str) -> Vec<Cidr> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let c = Cidr::parse(p);
            if c.is_none() {
                tracing::warn!(
                    entry = p,
                    "TRUSTED_PROXIES: not an address or CIDR; ignored"
                );
            }
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let s = settings(&[]);
        assert_eq!(s.node_env, "development");
        assert_eq!(s.host, "localhost");
        assert_eq!(s.port, 8001);
        assert_eq!(s.service_version, "1.0.0");
        assert_eq!(s.worker_id, 0);
        assert_eq!(s.shutdown_grace, Duration::from_secs(30));
        assert_eq!(s.keywords_config, PathBuf::from("config/keywords.json"));
        assert_eq!(
            s.reasoning,
            ReasoningSettings {
                chain_of_thought: true,
                self_consistency: true,
                samples: 3,
                show_reasoning_process: false
            }
        );
        assert_eq!(s.provider.mode, "auto");
        assert_eq!(s.provider.name, "byteplus");
        assert!(!s.provider.has_api_key);
        assert!(s.provider.simulated());
    }

    #[test]
    fn integers_are_base_10_and_invalid_means_default() {
        assert_eq!(parse_int(Some("8080"), 8001u16), 8080);
        assert_eq!(parse_int(Some(" 42 "), 0u32), 42);
        assert_eq!(parse_int(Some("0x10"), 7u32), 7);
        assert_eq!(parse_int(Some("1e3"), 7u32), 7);
        assert_eq!(parse_int(Some("12abc"), 7u32), 7);
        assert_eq!(parse_int(Some(""), 7u32), 7);
        assert_eq!(parse_int(Some("-1"), 7u32), 7, "negative for unsigned");
        assert_eq!(parse_int(Some("70000"), 8001u16), 8001, "out of range");
        assert_eq!(parse_int(None, 5u64), 5);
        let s = settings(&[("PORT", "nope"), ("SHUTDOWN_GRACE_SECS", "5")]);
        assert_eq!(s.port, 8001);
        assert_eq!(s.shutdown_grace, Duration::from_secs(5));
    }

    #[test]
    fn booleans() {
        for t in ["true", "TRUE", "True", "1", "yes", "YES", " yes "] {
            assert!(parse_bool(Some(t), false), "{t}");
        }
        for f in ["false", "0", "no", "on", "y", "2"] {
            assert!(!parse_bool(Some(f), true), "{f}");
        }
        assert!(parse_bool(None, true));
        assert!(!parse_bool(Some(""), false));
        let s = settings(&[
            ("ENABLE_CHAIN_OF_THOUGHT", "no"),
            ("SHOW_REASONING_PROCESS", "Yes"),
        ]);
        assert!(!s.reasoning.chain_of_thought);
        assert!(s.reasoning.show_reasoning_process);
    }

    #[test]
    fn provider_mode() {
        let live = settings(&[("BYTEPLUS_API_KEY", "k")]);
        assert!(!live.provider.simulated());
        let forced = settings(&[("BYTEPLUS_API_KEY", "k"), ("AI_PROVIDER_MODE", "Simulated")]);
        assert!(forced.provider.simulated());
        let blank = settings(&[("BYTEPLUS_API_KEY", "  ")]);
        assert!(blank.provider.simulated());
    }

    #[test]
    fn pipeline_defaults_and_overrides() {
        let p = settings(&[]).pipeline;
        assert_eq!(
            p.jwt.secrets,
            [Secret("dev_jwt_secret_key_change_in_production".into())]
        );
        assert_eq!(
            p.heartalk_api_keys,
            [Secret("dev_heartalk_api_key_placeholder".into())]
        );
        assert_eq!(p.chat_endpoint, "sim-chat");
        assert!(!p.endpoints_configured);
        assert_eq!(p.chat_timeout, Duration::from_secs(30));
        assert_eq!(p.work_timeout, Duration::from_secs(60));
        assert_eq!(p.rate_limits.global_window, 900);
        assert_eq!(p.max_body_size, 1_048_576);
        assert_eq!(
            format!("{:?}", p.heartalk_api_keys),
            "[\"***\"]",
            "secrets never print"
        );
        let p = settings(&[
            ("HISTORY_CACHE_TTL", "300"),
            ("MAX_CONTEXT_TOKENS", "0"),
            ("RATE_LIMIT_WINDOW", "1"),
            ("ALLOWED_ORIGINS", " https://a.example , https://b.example,"),
            ("BYTEPLUS_AMI_CHAT_EP", "ep-chat"),
            ("BYTEPLUS_AMI_WORK_ASSISTANT_EP", "ep-work"),
            ("BYTEPLUS_BASE_URL", "http://127.0.0.1:9/api/v3/"),
        ])
        .pipeline;
        assert_eq!(
            p.history_cache_ttl,
            Duration::from_secs(30),
            "capped at 30 s"
        );
        assert_eq!(p.max_context_tokens, 2000, "MAX_* = 0 means the default");
        assert_eq!(p.rate_limits.global_window, 60);
        assert_eq!(
            p.allowed_origins.unwrap(),
            ["https://a.example", "https://b.example"]
        );
        assert!(p.endpoints_configured);
        assert_eq!(p.base_url, "http://127.0.0.1:9/api/v3");
    }

    #[test]
    fn live_mode_without_key_is_still_live() {
        let s = settings(&[("AI_PROVIDER_MODE", "live")]);
        assert!(!s.provider.simulated());
    }

    #[test]
    fn dotenv_cascade_order() {
        let dir = tempfile::tempdir().unwrap();
        let w = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        w(".env", "A=base\nB=base\nC=base\nD=base\n");
        w(".env.production", "A=prod\nB=prod\nC=prod\n");
        w(".env.local", "A=local\nB=local\n");
        w(".env.production.local", "A=prodlocal\n");
        let env = |k: &str| (k == "NODE_ENV").then(|| "production".to_string());
        let m = dotenv_cascade(dir.path(), env);
        assert_eq!(m["A"], "prodlocal");
        assert_eq!(m["B"], "local");
        assert_eq!(m["C"], "prod");
        assert_eq!(m["D"], "base");
    }

    #[test]
    fn debug_of_the_settings_masks_the_redis_password() {
        for url in [
            "redis://:s3cret-in-url@redis:6379/0",
            "redis://default:s3cret-in-url@redis:6379/0",
            "redis+unix:///run/redis.sock?db=0&password=s3cret-in-url",
        ] {
            let p = settings(&[("REDIS_URL", url)]).pipeline;
            // Used as it is...
            assert_eq!(p.redis_url.as_deref(), Some(url));
            // ...never printed.
            let shown = format!("{p:?}");
            assert!(!shown.contains("s3cret-in-url"), "{url}: {shown}");
            assert!(shown.contains("redis"), "{shown}");
        }
    }

    #[test]
    fn redis_tls_files() {
        let p = settings(&[]).pipeline;
        assert_eq!(p.redis_tls, RedisTlsFiles::default());
        assert!(p.redis_tls.is_empty());
        assert!(p.redis_tls.set_vars().is_empty());
        let p = settings(&[
            ("REDIS_URL", "rediss://redis.example:6380/0"),
            ("REDIS_TLS_CA_FILE", " /etc/heartalk/redis-ca.pem "),
            ("REDIS_TLS_CERT_FILE", "tls/client.pem"),
            ("REDIS_TLS_KEY_FILE", "   "),
        ])
        .pipeline;
        assert_eq!(
            p.redis_url.as_deref(),
            Some("rediss://redis.example:6380/0")
        );
        assert_eq!(
            p.redis_tls,
            RedisTlsFiles {
                ca_file: Some(PathBuf::from("/etc/heartalk/redis-ca.pem")),
                cert_file: Some(PathBuf::from("tls/client.pem")),
                key_file: None,
            },
            "trimmed; blank means unset; relative paths kept relative"
        );
        assert!(!p.redis_tls.is_empty());
        assert_eq!(
            p.redis_tls.set_vars(),
            ["REDIS_TLS_CA_FILE", "REDIS_TLS_CERT_FILE"]
        );
    }

    #[test]
    fn connection_timeouts_default_and_parse() {
        let s = settings(&[]);
        assert_eq!(s.connection, ConnectionTimeouts::DEFAULT);
        assert_eq!(s.connection.first_byte, Duration::from_secs(10));
        assert_eq!(s.connection.header, Duration::from_secs(30));
        assert_eq!(s.connection.body, Duration::from_secs(30));
        assert_eq!(s.connection.keep_alive, Duration::from_secs(75));
        assert_eq!(s.connection.send, Duration::from_secs(60));
        assert!(s.problems.is_empty());
        let s = settings(&[
            ("FIRST_BYTE_TIMEOUT", "1500"),
            ("HEADER_TIMEOUT", " 2s "),
            ("BODY_TIMEOUT", "1m 30s"),
            ("KEEPALIVE_TIMEOUT", "250ms"),
            ("SEND_TIMEOUT", "2000"),
        ]);
        assert_eq!(
            s.connection,
            ConnectionTimeouts {
                first_byte: Duration::from_millis(1500),
                header: Duration::from_secs(2),
                body: Duration::from_secs(90),
                keep_alive: Duration::from_millis(250),
                send: Duration::from_secs(2),
            },
            "a bare integer is milliseconds, anything else humantime"
        );
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(
            parse_timeout(Some(""), Duration::from_secs(3)),
            Ok(Duration::from_secs(3))
        );
        assert_eq!(
            parse_timeout(None, Duration::from_secs(3)),
            Ok(Duration::from_secs(3))
        );
        assert_eq!(parse_timeout(Some("1d"), Duration::ZERO), Ok(MAX_TIMEOUT));
    }

    #[test]
    fn bad_connection_timeouts_are_reported_and_use_the_default() {
        let s = settings(&[
            ("FIRST_BYTE_TIMEOUT", "0"),
            ("HEADER_TIMEOUT", "soon"),
            ("BODY_TIMEOUT", "-5"),
            ("KEEPALIVE_TIMEOUT", "2d"),
            ("SEND_TIMEOUT", "0ms"),
        ]);
        assert_eq!(s.connection, ConnectionTimeouts::DEFAULT);
        assert_eq!(
            s.problems,
            [
                "FIRST_BYTE_TIMEOUT=\"0\": must be more than zero; using the default 10s",
                "HEADER_TIMEOUT=\"soon\": not a duration (an integer number of milliseconds, \
                 or e.g. `10s`, `1m 15s`, `500ms`); using the default 30s",
                "BODY_TIMEOUT=\"-5\": not a duration (an integer number of milliseconds, \
                 or e.g. `10s`, `1m 15s`, `500ms`); using the default 30s",
                "KEEPALIVE_TIMEOUT=\"2d\": must be at most a day; using the default 75s",
                "SEND_TIMEOUT=\"0ms\": must be more than zero; using the default 60s",
            ]
        );
        assert_eq!(
            parse_timeout(Some("0s"), Duration::from_secs(1)),
            Err("must be more than zero".into())
        );
    }

    #[test]
    fn max_connections() {
        assert_eq!(settings(&[]).max_connections, None, "derived by default");
        for (v, want) in [
            ("5000", Some(5000)),
            (" 64 ", Some(64)),
            ("0", None),
            ("-1", None),
            ("many", None),
        ] {
            assert_eq!(
                settings(&[("MAX_CONNECTIONS", v)]).max_connections,
                want,
                "{v}"
            );
        }
    }

    fn secrets(values: &[&str]) -> Vec<Secret> {
        values.iter().map(|v| Secret(v.to_string())).collect()
    }

    #[test]
    fn jwt_secret_lines_then_previous() {
        let jwt = |pairs: &[(&str, &str)]| settings(pairs).pipeline.jwt;
        let one = jwt(&[("JWT_SECRET", " s1 ")]);
        assert_eq!(one.secrets, secrets(&["s1"]), "trimmed, as before");
        assert_eq!(one.signing_secret(), b"s1");
        let j = jwt(&[
            ("JWT_SECRET", "new\r\n\n  \nolder\n"),
            ("JWT_SECRET_PREVIOUS", "old1\n old2 \n"),
        ]);
        assert_eq!(j.secrets, secrets(&["new", "older", "old1", "old2"]));
        assert_eq!(j.signing_secret(), b"new", "the first line signs");
        // PREVIOUS alone: the dev default still signs, PREVIOUS verifies.
        for unset in [&[][..], &[("JWT_SECRET", " \n ")]] {
            let mut env = unset.to_vec();
            env.push(("JWT_SECRET_PREVIOUS", "old"));
            let j = jwt(&env);
            assert_eq!(j.secrets, secrets(&[DEV_JWT_SECRET, "old"]));
            assert_eq!(j.signing_secret(), DEV_JWT_SECRET.as_bytes());
        }
        assert_eq!(
            jwt(&[("JWT_SECRET_PREVIOUS", "  ")]).secrets,
            secrets(&[DEV_JWT_SECRET])
        );
    }

    #[test]
    fn secret_lists_are_deduplicated_in_order() {
        let j = settings(&[
            ("JWT_SECRET", "a\nb\na"),
            ("JWT_SECRET_PREVIOUS", "b\nc\n a \nc"),
        ])
        .pipeline
        .jwt;
        assert_eq!(j.secrets, secrets(&["a", "b", "c"]));
        assert_eq!(
            secret_list(Some("x"), "dflt", Some("x")),
            secrets(&["x"]),
            "the signing secret repeated in PREVIOUS stays first, once"
        );
        assert_eq!(
            secret_list(None, "dflt", Some("dflt\ny")),
            secrets(&["dflt", "y"])
        );
    }

    #[test]
    fn api_key_lines_then_previous() {
        let p = settings(&[
            ("HEARTALK_API_KEY", "k-new\nk-new2"),
            ("HEARTALK_API_KEY_PREVIOUS", "k-old\nk-new"),
        ])
        .pipeline;
        assert_eq!(p.heartalk_api_keys, secrets(&["k-new", "k-new2", "k-old"]));
        assert_eq!(p.backend_api_key(), "k-new", "the first is sent");
        let p = settings(&[("HEARTALK_API_KEY_PREVIOUS", "k-old")]).pipeline;
        assert_eq!(
            p.heartalk_api_keys,
            secrets(&[DEV_HEARTALK_API_KEY, "k-old"])
        );
        assert_eq!(p.backend_api_key(), DEV_HEARTALK_API_KEY);
        let p = settings(&[("HEARTALK_API_KEY", "   ")]).pipeline;
        assert_eq!(p.backend_api_key(), DEV_HEARTALK_API_KEY, "blank = unset");
        // The JWT and key lists do not mix.
        assert_eq!(
            settings(&[("HEARTALK_API_KEY_PREVIOUS", "k")])
                .pipeline
                .jwt
                .secrets,
            secrets(&[DEV_JWT_SECRET])
        );
    }

    #[test]
    fn token_policy_is_read() {
        let s = settings(&[]);
        assert_eq!(s.pipeline.jwt.policy, TokenPolicy::defaults(false));
        assert!(s.refusals.is_empty());
        let s = settings(&[("NODE_ENV", "production")]);
        assert!(s.pipeline.jwt.policy.require_exp, "production default");
        let s = settings(&[
            ("NODE_ENV", "production"),
            ("JWT_SECRET", "s"),
            ("HEARTALK_API_KEY", "k"),
            ("JWT_REQUIRE_EXP", "no"),
            ("JWT_MAX_AGE", "7d"),
            ("JWT_CLOCK_TOLERANCE", "0"),
        ]);
        assert_eq!(
            s.pipeline.jwt.policy,
            TokenPolicy {
                require_exp: false,
                max_age: Some(Duration::from_secs(7 * 86_400)),
                clock_tolerance: Duration::ZERO,
            }
        );
        assert!(s.refusals.is_empty(), "{:?}", s.refusals);
        assert!(s.problems.is_empty());
    }

    #[test]
    fn secrets_come_from_their_files_and_a_bad_file_is_a_refusal() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, body: &str, mode: u32| {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p.display().to_string()
        };
        let jwt = write("jwt", "new-secret\nold-secret\n", 0o400);
        let key = write("key", "file-key\n", 0o440);
        let pw = write("pw", "redis-pw\n", 0o400);
        let s = settings(&[
            ("JWT_SECRET_FILE", &jwt),
            ("HEARTALK_API_KEY_FILE", &key),
            ("REDIS_PASSWORD_FILE", &pw),
        ]);
        assert!(s.refusals.is_empty(), "{:?}", s.refusals);
        assert_eq!(s.pipeline.jwt.signing_secret(), b"new-secret");
        assert_eq!(s.pipeline.jwt.secrets.len(), 2);
        assert_eq!(s.pipeline.backend_api_key(), "file-key");
        assert_eq!(s.pipeline.redis_password, Some(Secret("redis-pw".into())));

        let open = write("open", "x\n", 0o644);
        let s = settings(&[("JWT_SECRET_FILE", &open), ("BYTEPLUS_API_KEY", "k")]);
        assert_eq!(s.refusals.len(), 1, "{:?}", s.refusals);
        assert!(s.refusals[0].contains(&open), "{:?}", s.refusals);
    }

    #[test]
    fn weak_authentication_settings_are_warned_about() {
        assert!(settings(&[]).security_warnings().is_empty());
        let prod = settings(&[
            ("NODE_ENV", "production"),
            ("JWT_SECRET", "real"),
            ("JWT_SECRET_PREVIOUS", DEV_JWT_SECRET),
            ("HEARTALK_API_KEY", "key"),
            ("HEARTALK_API_KEY_PREVIOUS", DEV_HEARTALK_API_KEY),
            ("JWT_MAX_AGE", "60"),
        ]);
        let w = prod.security_warnings();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("development JWT secret"), "{w:?}");
        assert!(w[1].contains("development HEARTALK_API_KEY"), "{w:?}");
        assert!(w[2].starts_with("JWT_MAX_AGE=60s"), "{w:?}");
        // The same outside production: only the age matters.
        let dev = settings(&[
            ("JWT_SECRET_PREVIOUS", DEV_JWT_SECRET),
            ("JWT_MAX_AGE", "300"),
        ]);
        assert!(
            dev.security_warnings().is_empty(),
            "{:?}",
            dev.security_warnings()
        );
    }

    #[test]
    fn bad_token_rules_are_refusals() {
        let s = settings(&[
            ("JWT_REQUIRE_EXP", "ture"),
            ("JWT_MAX_AGE", "abc"),
            ("JWT_CLOCK_TOLERANCE", "1h"),
            ("FIRST_BYTE_TIMEOUT", "0"),
        ]);
        assert_eq!(
            s.refusals,
            [
                "JWT_REQUIRE_EXP=\"ture\": not a boolean (true/false, 1/0 or yes/no)",
                "JWT_MAX_AGE=\"abc\": not a duration (seconds, or e.g. 24h, 7d)",
                "JWT_CLOCK_TOLERANCE=\"1h\": must be at most 5 minutes \
                 (a leeway extends every token's life)",
            ]
        );
        assert_eq!(s.problems.len(), 1, "a timeout is a problem, not a refusal");
        // Until the refusal stops the worker, the policy fails closed.
        assert!(s.pipeline.jwt.policy.require_exp);
        assert_eq!(s.pipeline.jwt.policy.max_age, None);
    }

    #[test]
    fn worker_id_and_env() {
        let s = settings(&[("HEARTALK_WORKER_ID", "3"), ("NODE_ENV", "production")]);
        assert_eq!(s.worker_id, 3);
        assert!(s.is_production());
    }
}
