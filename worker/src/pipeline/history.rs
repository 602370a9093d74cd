//! Conversation context for legacy chat bodies (API.md §8): fetching a
//! conversation's history from the HearTalk backend, trimming it to the
//! round and token budgets, and a short-lived cache that never hides a
//! completed turn from the next request.
//!
//! [`HistoryClient::fetch`] never fails: any failure yields an empty
//! history (the chat goes on without context) plus an [`Outcome`] the
//! caller counts in `ai_backend_history_requests_total{outcome}`; this
//! module registers no metrics itself. [`HistoryClient::probe`] is the
//! one-shot `{backend}/health` check behind the `ai_backend_up` gauge; the
//! caller schedules it every `HEALTH_CHECK_INTERVAL`.
//!
//! [`trim`] is pure and holds the whole trimming rule, so it is tested
//! without a network. The cache takes its clock as an argument for the
//! same reason.

use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lru::LruCache;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use crate::pipeline::auth;
use crate::provider::ChatMessage;
use crate::provider::tokens;
use crate::settings::Secret;

/// `User-Agent` of every backend call, as the Node.js service sent it.
pub const USER_AGENT: &str = "HearTalk-AI-MVP/1.0.0";

/// The longest a cached history may live, whatever `HISTORY_CACHE_TTL`
/// says (§8: "never more").
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(30);

/// Conversations the cache remembers before evicting the least recently
/// used one.
pub const CACHE_CAPACITY: usize = 10_000;

/// `history_length` variants kept per conversation. A client sends one
/// value per turn, so more than a few means stale values nobody asks for.
const VARIANTS_PER_CONVERSATION: usize = 4;

/// Timeout of [`HistoryClient::probe`] (§12).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A history body larger than this is treated as a broken backend rather
/// than buffered: 20 messages never come near it.
const MAX_BODY_BYTES: usize = 16 << 20;

/// JavaScript's `encodeURIComponent` set: everything but `A–Z a–z 0–9
/// - _ . ! ~ * ' ( )` is percent-encoded.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// Everything the history client needs from the configuration (§14).
/// `Debug` masks the key and the secret (each a [`Secret`]).
#[derive(Debug, Clone)]
pub struct HistoryConfig {
    /// `HEARTALK_BACKEND_URL`; a trailing `/` is ignored.
    pub base_url: String,
    /// `BACKEND_API_PREFIX` (`/internal/api/v1`).
    pub api_prefix: String,
    /// `BACKEND_CONVERSATION_PATH` (`/conversations`).
    pub conversation_path: String,
    /// `HEARTALK_API_KEY`'s first line, sent as `X-API-Key` (the backend
    /// knows it; a `_PREVIOUS` key is only accepted inbound).
    pub api_key: Secret,
    /// `JWT_SECRET`'s first line, signing the outbound service JWT (the
    /// one the backend is known to accept during a rotation).
    pub jwt_secret: Secret,
    /// `HEARTALK_TIMEOUT`: per attempt, from connecting to the last byte.
    pub timeout: Duration,
    /// Pause before the one retry: 1 s per the contract; configurable so
    /// tests need not wait.
    pub retry_delay: Duration,
    /// `HISTORY_CACHE_TTL`; capped at [`MAX_CACHE_TTL`]. Zero disables the
    /// cache.
    pub cache_ttl: Duration,
    /// `MAX_CONVERSATION_ROUNDS`: the last `2 ×` this many messages are kept.
    pub max_rounds: usize,
    /// `MAX_CONTEXT_TOKENS`: the budget of the kept messages' estimate.
    pub max_context_tokens: u64,
}

impl Default for HistoryConfig {
    /// The contract's defaults (§14).
    fn default() -> Self {
        HistoryConfig {
            base_url: "http://localhost:8000".into(),
            api_prefix: "/internal/api/v1".into(),
            conversation_path: "/conversations".into(),
            api_key: "dev_heartalk_api_key_placeholder".into(),
            jwt_secret: "dev_jwt_secret_key_change_in_production".into(),
            timeout: Duration::from_millis(10_000),
            retry_delay: Duration::from_secs(1),
            cache_ttl: MAX_CACHE_TTL,
            max_rounds: 10,
            max_context_tokens: 2000,
        }
    }
}

/// How a [`HistoryClient::fetch`] went. Failures carry the last attempt's
/// outcome: a 5xx followed by a timeout is `Timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx with a `data` array.
    Ok,
    /// A 4xx (or another non-2xx below 500), not retried; also a
    /// conversation id that cannot be put in a URL path (`""`, `.`, `..`),
    /// for which no request is made.
    ClientError,
    /// A 5xx on both attempts, or a 2xx whose body is not JSON with a
    /// `data` array (the backend broke its contract; not retried).
    ServerError,
    /// No complete response within `timeout`, on both attempts.
    Timeout,
    /// Connection refused/reset, DNS, TLS... on both attempts.
    Network,
    /// Served from the cache: no request was made.
    Cached,
}

impl Outcome {
    /// The `outcome` label of `ai_backend_history_requests_total`.
    /// [`Outcome::Cached`] made no request and must not be counted there
    /// (the caller counts it as a `history` cache hit); its label,
    /// `"cached"`, exists only for logs.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ClientError => "client_error",
            Outcome::ServerError => "server_error",
            Outcome::Timeout => "timeout",
            Outcome::Network => "network",
            Outcome::Cached => "cached",
        }
    }

    /// Whether a request was made (and so belongs in the counter).
    pub fn requested(self) -> bool {
        self != Outcome::Cached
    }
}

/// Why a [`HistoryClient`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("building the backend HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Why one attempt failed, finer than [`Outcome`] because retrying
/// depends on more than the label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Status4xx,
    Status5xx,
    BadBody,
    Timeout,
    Network,
}

impl Failure {
    fn outcome(self) -> Outcome {
        match self {
            Failure::Status4xx => Outcome::ClientError,
            Failure::Status5xx | Failure::BadBody => Outcome::ServerError,
            Failure::Timeout => Outcome::Timeout,
            Failure::Network => Outcome::Network,
        }
    }

    /// §8: one retry on a network error, a timeout or a 5xx; none on a
    /// 4xx. A malformed 2xx body is not transient, so not retried either.
    fn retryable(self) -> bool {
        matches!(
            self,
            Failure::Status5xx | Failure::Timeout | Failure::Network
        )
    }

    fn from_reqwest(e: &reqwest::Error) -> Self {
        if e.is_timeout() {
            Failure::Timeout
        } else {
            Failure::Network
        }
    }
}

/// The backend history client: one pooled HTTP client and the history
/// cache. `Send + Sync`; share it in an `Arc`.
pub struct HistoryClient {
    http: reqwest::Client,
    config: HistoryConfig,
    cache: Cache,
}

impl HistoryClient {
    /// Builds the client. `config.base_url` loses any trailing `/` and
    /// `config.cache_ttl` is capped at [`MAX_CACHE_TTL`].
    pub fn new(mut config: HistoryConfig) -> Result<Self, HistoryError> {
        config.base_url = config.base_url.trim_end_matches('/').to_string();
        config.cache_ttl = config.cache_ttl.min(MAX_CACHE_TTL);
        let http = reqwest::Client::builder().user_agent(USER_AGENT).build()?;
        let cache = Cache::new(config.cache_ttl, CACHE_CAPACITY);
        Ok(HistoryClient {
            http,
            config,
            cache,
        })
    }

    /// The configuration in effect (after normalisation by [`new`](Self::new)).
    pub fn config(&self) -> &HistoryConfig {
        &self.config
    }

    /// The trimmed history of `conversation_id`, and how it was obtained.
    ///
    /// A cached entry is used only if it is younger than the TTL and was
    /// stored for the same `history_length` (the number of stored messages
    /// the client knows of: a different value means the client has seen a
    /// turn the entry may lack). Only successful fetches are cached. Never
    /// fails: on any failure the history is empty.
    pub async fn fetch(
        &self,
        conversation_id: &str,
        history_length: Option<u64>,
    ) -> (Vec<ChatMessage>, Outcome) {
        let started = Instant::now();
        if let Some(hit) = self.cache.lookup(conversation_id, history_length, started) {
            return (hit, Outcome::Cached);
        }
        let ticket = self.cache.ticket();
        match self.fetch_raw(conversation_id).await {
            Ok(raw) => {
                let messages = trim(&raw, self.config.max_rounds, self.config.max_context_tokens);
                // Stamped with the start time: the entry's age counts from
                // when the backend could last have been asked.
                self.cache
                    .store(conversation_id, history_length, &messages, ticket, started);
                (messages, Outcome::Ok)
            }
            Err(failure) => {
                tracing::warn!(
                    conversation_id,
                    outcome = failure.outcome().label(),
                    "conversation history unavailable; continuing without it"
                );
                (Vec::new(), failure.outcome())
            }
        }
    }

    /// Drops every cached entry of `conversation_id`; call it when a chat
    /// turn completes, so the next request sees that turn. A fetch already
    /// in flight when this is called will not cache its (older) result.
    pub fn invalidate(&self, conversation_id: &str) {
        self.cache.invalidate(conversation_id);
    }

    /// `GET {base_url}/health` with a 5 s timeout: `true` on a 2xx. For the
    /// `ai_backend_up` gauge.
    pub async fn probe(&self) -> bool {
        let url = format!("{}/health", self.config.base_url);
        match self.http.get(url).timeout(PROBE_TIMEOUT).send().await {
            Ok(resp) => resp.status().is_success(),
            Err(e) => {
                tracing::debug!(error = %e, "backend health probe failed");
                false
            }
        }
    }

    /// The history URL of `conversation_id`, or `None` for an id that would
    /// not stay one path segment: `""`, and `.`/`..`, which URL parsers
    /// resolve as dot segments even when percent-encoded.
    fn history_url(&self, conversation_id: &str) -> Option<String> {
        if matches!(conversation_id, "" | "." | "..") {
            return None;
        }
        let c = &self.config;
        Some(format!(
            "{}{}{}/{}/history",
            c.base_url,
            c.api_prefix,
            c.conversation_path,
            utf8_percent_encode(conversation_id, URI_COMPONENT)
        ))
    }

    /// Up to two attempts; the raw `data` array on success.
    async fn fetch_raw(&self, conversation_id: &str) -> Result<Vec<Value>, Failure> {
        let url = self
            .history_url(conversation_id)
            .ok_or(Failure::Status4xx)?;
        match self.attempt(&url).await {
            Err(f) if f.retryable() => {
                tokio::time::sleep(self.config.retry_delay).await;
                self.attempt(&url).await
            }
            other => other,
        }
    }

    /// One GET, with a service JWT signed for this attempt.
    async fn attempt(&self, url: &str) -> Result<Vec<Value>, Failure> {
        let token = auth::service_token(
            self.config.jwt_secret.as_ref(),
            crate::runtime::clock::unix_secs(),
        );
        let response = self
            .http
            .get(url)
            .timeout(self.config.timeout)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header("X-API-Key", &self.config.api_key.0)
            .header(http::header::CONTENT_TYPE, "application/json")
            .send()
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "history request failed");
                Failure::from_reqwest(&e)
            })?;
        let status = response.status();
        if status.is_server_error() {
            return Err(Failure::Status5xx);
        }
        if !status.is_success() {
            tracing::debug!(%status, "history request refused");
            return Err(Failure::Status4xx);
        }
        let body = read_capped(response, MAX_BODY_BYTES).await?;
        parse_data(&body).ok_or(Failure::BadBody)
    }
}

/// Reads the whole body, failing with [`Failure::BadBody`] past `cap`.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Failure::from_reqwest(&e))?
    {
        if body.len() + chunk.len() > cap {
            return Err(Failure::BadBody);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The `data` array of a backend body, or `None` when the body is not a
/// JSON object holding one.
fn parse_data(body: &[u8]) -> Option<Vec<Value>> {
    match serde_json::from_slice::<Value>(body).ok()? {
        Value::Object(mut map) => match map.remove("data")? {
            Value::Array(items) => Some(items),
            _ => None,
        },
        _ => None,
    }
}

/// Trims raw backend messages to the context budget (§8), keeping
/// chronological order:
///
/// 1. keep the last `max_rounds × 2` messages;
/// 2. map each to `{role: role‖"user", content: content‖message‖""}`
///    (JavaScript `‖`: an empty or non-string value falls through);
/// 3. drop those whose content is blank;
/// 4. if the [`tokens::estimate`] of all contents exceeds `max_tokens`,
///    keep the longest newest-first run whose running total stays
///    `≤ max_tokens`, stopping at the first message that does not fit
///    (an older, smaller message is not taken past it).
pub fn trim(raw: &[Value], max_rounds: usize, max_tokens: u64) -> Vec<ChatMessage> {
    let recent = &raw[raw.len().saturating_sub(max_rounds.saturating_mul(2))..];
    let mut messages: Vec<ChatMessage> = recent
        .iter()
        .map(to_message)
        .filter(|m| !m.content.trim().is_empty())
        .collect();
    let costs: Vec<u64> = messages
        .iter()
        .map(|m| tokens::estimate(&m.content))
        .collect();
    if costs.iter().sum::<u64>() <= max_tokens {
        return messages;
    }
    let mut running = 0u64;
    let mut first_kept = messages.len();
    for (i, cost) in costs.iter().enumerate().rev() {
        if running + cost > max_tokens {
            break;
        }
        running += cost;
        first_kept = i;
    }
    messages.split_off(first_kept)
}

fn to_message(v: &Value) -> ChatMessage {
    let text = |key: &str| v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
    ChatMessage::new(
        text("role").unwrap_or("user"),
        text("content").or_else(|| text("message")).unwrap_or(""),
    )
}

/// Conversation ids longer than this are not cached (see
/// [`Cache::cacheable`]): ids come from clients, and the cache must stay
/// bounded in bytes.
const MAX_CACHED_ID_LEN: usize = 128;

/// The history cache: per conversation, up to a few entries keyed by
/// `history_length`, each living less than `ttl`.
///
/// Invalidation leaves a marker (an empty entry stamped with a global
/// invalidation counter) instead of removing the conversation, so a fetch
/// that started before the invalidation, and may therefore miss the new
/// turn, sees on completion that it is stale and does not store.
struct Cache {
    ttl: Duration,
    inner: Mutex<CacheInner>,
}

struct CacheInner {
    conversations: LruCache<String, Conversation>,
    /// Invalidations so far; a fetch's ticket is the value when it began.
    invalidations: u64,
}

struct Conversation {
    /// `invalidations` right after this conversation was last invalidated.
    invalidated_at: u64,
    /// Oldest first.
    entries: Vec<Entry>,
}

struct Entry {
    history_length: Option<u64>,
    stored_at: Instant,
    messages: Vec<ChatMessage>,
}

impl Cache {
    fn new(ttl: Duration, capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Cache {
            ttl,
            inner: Mutex::new(CacheInner {
                conversations: LruCache::new(capacity),
                invalidations: 0,
            }),
        }
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// Conversation ids longer than this are never cached (nor marked): the
    /// id comes from the client unbounded, and the cache holds up to
    /// `CACHE_CAPACITY` of them. The backend's ids are short integers.
    fn cacheable(id: &str) -> bool {
        id.len() <= MAX_CACHED_ID_LEN
    }

    /// The lock; a panic elsewhere while holding it leaves only cache
    /// entries behind, which are safe to keep using.
    fn lock(&self) -> MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lookup(
        &self,
        id: &str,
        history_length: Option<u64>,
        now: Instant,
    ) -> Option<Vec<ChatMessage>> {
        if !self.enabled() || !Self::cacheable(id) {
            return None;
        }
        let ttl = self.ttl;
        let mut inner = self.lock();
        let conv = inner.conversations.get_mut(id)?;
        conv.entries
            .retain(|e| now.saturating_duration_since(e.stored_at) < ttl);
        conv.entries
            .iter()
            .find(|e| e.history_length == history_length)
            .map(|e| e.messages.clone())
    }

    fn ticket(&self) -> u64 {
        self.lock().invalidations
    }

    fn store(
        &self,
        id: &str,
        history_length: Option<u64>,
        messages: &[ChatMessage],
        ticket: u64,
        stored_at: Instant,
    ) {
        if !self.enabled() || !Self::cacheable(id) {
            return;
        }
        let mut inner = self.lock();
        let conv = inner
            .conversations
            .get_or_insert_mut(id.to_string(), || Conversation {
                invalidated_at: 0,
                entries: Vec::new(),
            });
        if conv.invalidated_at > ticket {
            return; // invalidated while this fetch was in flight
        }
        conv.entries.retain(|e| e.history_length != history_length);
        if conv.entries.len() >= VARIANTS_PER_CONVERSATION {
            conv.entries.remove(0);
        }
        conv.entries.push(Entry {
            history_length,
            stored_at,
            messages: messages.to_vec(),
        });
    }

    fn invalidate(&self, id: &str) {
        if !self.enabled() || !Self::cacheable(id) {
            return;
        }
        let mut inner = self.lock();
        inner.invalidations += 1;
        let marker = Conversation {
            invalidated_at: inner.invalidations,
            entries: Vec::new(),
        };
        inner.conversations.put(id.to_string(), marker);
    }
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
