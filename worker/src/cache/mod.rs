//! The response cache and request coalescing (API.md §9).
//!
//! Two levels: an in-process moka cache (L1) bounded by bytes *and* by
//! `RESPONSE_CACHE_MAX_ENTRIES`, with `CACHE_TTL`; and Redis (L2) when
//! `REDIS_URL` is set, shared by every worker and replica, holding
//! deflate-compressed JSON with the TTL set in Redis. Memory is checked
//! first, then requests already in flight (so a thundering herd coalesces
//! without a Redis round trip each), then Redis.
//!
//! [`ResponseCache::begin`] tells a request what it is: a hit, a follower of
//! an identical call in flight, the leader that must make the call, or
//! alone (the cache off, or `no-store`: nothing to share or store, so the
//! request makes the call itself with no flight). Leaders hand the call to
//! [`ResponseCache::drive`], which runs it in its own task, publishes it
//! through the [`flight::Flight`], stores complete successes, and drops the
//! call when every listener has left.

pub mod cross;
pub mod flight;
pub mod key;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use flight::{Delta, Flight, Subscription};
pub use key::{Key, KeyParts};

use crate::provider::{StreamEvent, UpstreamError, Usage};
use crate::runtime::redis_link::RedisLink;
use crate::telemetry;

/// A complete, successful answer as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The upstream body's `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The `reasoning` key of a generate body (CoT/SC), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<Value>,
    /// The conversation id of the request that produced the answer: a hit
    /// for a request without one (a `temp-…` default) reuses it, so the
    /// body is byte-identical to the original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// The stream deltas as they arrived (empty for a whole answer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<Delta>,
}

/// Characters per chunk when a whole answer is replayed as a stream.
const REPLAY_CHUNK_CHARS: usize = 24;

fn chunks(s: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && i % n == 0 {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

impl Entry {
    /// An entry from a finished stream: content and reasoning are the
    /// concatenated deltas.
    pub fn from_stream(
        deltas: Vec<Delta>,
        finish_reason: Option<String>,
        usage: Option<Usage>,
        model: Option<String>,
        reasoning: Option<Value>,
    ) -> Entry {
        let mut content = String::new();
        let mut thought = String::new();
        for d in &deltas {
            match d {
                Delta::Content(s) => content.push_str(s),
                Delta::Reasoning(s) => thought.push_str(s),
            }
        }
        Entry {
            content,
            reasoning_content: (!thought.is_empty()).then_some(thought),
            finish_reason,
            usage,
            model,
            reasoning,
            conversation_id: None,
            deltas,
        }
    }

    /// The final stream event of this answer.
    pub fn done_event(&self) -> StreamEvent {
        StreamEvent::Done {
            finish_reason: self.finish_reason.clone(),
            usage: self.usage.clone(),
            model: self.model.clone(),
        }
    }

    /// The answer as a stream: the original deltas when it was streamed,
    /// else reasoning then content in chunks; then `Done`.
    pub fn replay(&self) -> Vec<Result<StreamEvent, UpstreamError>> {
        let mut out: Vec<Result<StreamEvent, UpstreamError>> = if self.deltas.is_empty() {
            let mut v = Vec::new();
            if let Some(r) = &self.reasoning_content {
                v.extend(
                    chunks(r, REPLAY_CHUNK_CHARS)
                        .into_iter()
                        .map(|c| Ok(StreamEvent::Reasoning(c))),
                );
            }
            v.extend(
                chunks(&self.content, REPLAY_CHUNK_CHARS)
                    .into_iter()
                    .map(|c| Ok(StreamEvent::Content(c))),
            );
            v
        } else {
            self.deltas
                .iter()
                .map(|d| Ok(StreamEvent::from(d)))
                .collect()
        };
        out.push(Ok(self.done_event()));
        out
    }

    /// Approximate memory held, for the L1 byte bound.
    pub fn weight(&self) -> usize {
        let deltas: usize = self
            .deltas
            .iter()
            .map(|d| match d {
                Delta::Content(s) | Delta::Reasoning(s) => s.len() + 32,
            })
            .sum();
        256 + self.content.len() + self.reasoning_content.as_ref().map_or(0, String::len) + deltas
    }

    /// The stored form: deflate-compressed JSON.
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = z.write_all(&json);
        z.finish().unwrap_or_default()
    }

    /// The inverse of [`Entry::encode`]; `None` for anything else (a value
    /// from an older format, or garbage).
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let mut json = Vec::new();
        flate2::read::DeflateDecoder::new(bytes)
            .take(64 << 20)
            .read_to_end(&mut json)
            .ok()?;
        serde_json::from_slice(&json).ok()
    }
}

/// What the client's `Cache-Control` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `no-cache` / `no-store` skip the lookup (and coalescing).
    pub lookup: bool,
    /// `no-store`: the answer is not stored either.
    pub store: bool,
}

impl Policy {
    pub const DEFAULT: Policy = Policy {
        lookup: true,
        store: true,
    };

    /// From the request's `Cache-Control` header.
    pub fn from_header(v: Option<&str>) -> Policy {
        let Some(v) = v else {
            return Policy::DEFAULT;
        };
        let has = |d: &str| v.split(',').any(|part| part.trim().eq_ignore_ascii_case(d));
        let no_store = has("no-store");
        Policy {
            lookup: !(no_store || has("no-cache")),
            store: !no_store,
        }
    }
}

/// What [`ResponseCache::begin`] decided for a request.
pub enum Begin {
    /// A stored answer (`X-Cache: HIT`).
    Hit(Arc<Entry>),
    /// An identical call is in flight (`X-Cache: COALESCED`).
    Join(Subscription),
    /// This request makes the call (`X-Cache: MISS`, or `COALESCED` when
    /// another process's call answers it, see [`Subscription::leader_x_cache`]):
    /// hand `Flight` to [`ResponseCache::drive`], and wait on the subscription.
    Lead(Arc<Flight>, Subscription, Lead),
    /// Nothing to look up, share or store: the cache is off, or the request
    /// said `no-store` (`X-Cache: MISS`). The request makes the call itself,
    /// in its own task, with no flight: no one could join one, and nothing
    /// would be stored from it.
    Alone,
}

/// The leader's obligations, passed back to [`ResponseCache::drive`].
pub struct Lead {
    key: Key,
    store: bool,
    registered: bool,
}

/// An L1 value: the entry and how long it may live in memory (`CACHE_TTL`,
/// or what is left of it in Redis for an entry copied from there).
#[derive(Clone)]
struct Held {
    entry: Arc<Entry>,
    ttl: Duration,
}

/// Per-entry expiry for L1: each entry's own `ttl` from its insertion.
struct HeldExpiry;

impl moka::Expiry<Key, Held> for HeldExpiry {
    fn expire_after_create(
        &self,
        _key: &Key,
        value: &Held,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl.max(Duration::from_millis(1)))
    }

    /// A replaced entry (a `no-cache` refresh) starts a new life.
    fn expire_after_update(
        &self,
        _key: &Key,
        value: &Held,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl.max(Duration::from_millis(1)))
    }
}

/// The two-level cache plus the table of calls in flight.
pub struct ResponseCache {
    enabled: bool,
    ttl: Duration,
    l1: moka::sync::Cache<Key, Held>,
    redis: Option<Arc<RedisLink>>,
    flights: Mutex<HashMap<Key, Arc<Flight>>>,
}

impl ResponseCache {
    /// `max_bytes` bounds L1's memory and `max_entries` its entry count
    /// (each entry weighs at least `max_bytes / max_entries`).
    pub fn new(
        enabled: bool,
        ttl: Duration,
        max_entries: u64,
        max_bytes: u64,
        redis: Option<Arc<RedisLink>>,
    ) -> ResponseCache {
        let floor = (max_bytes / max_entries.max(1)).max(1);
        let l1 = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(move |_k: &Key, v: &Held| {
                (v.entry.weight() as u64)
                    .max(floor)
                    .min(u64::from(u32::MAX)) as u32
            })
            .expire_after(HeldExpiry)
            .build();
        ResponseCache {
            enabled,
            ttl,
            l1,
            redis,
            flights: Mutex::new(HashMap::new()),
        }
    }

    /// The backends in use, for `/api/v1/health`.
    pub fn backends(&self) -> Vec<&'static str> {
        let mut b = vec!["memory"];
        if self.redis.is_some() {
            b.push("redis");
        }
        b
    }

    /// Whether Redis is configured but unreachable (health `degraded`).
    pub fn degraded(&self) -> bool {
        self.redis.as_ref().is_some_and(|r| !r.is_up())
    }

    fn in_flight(&self, key: &Key) -> Option<Subscription> {
        let flights = self.flights.lock().ok()?;
        flights
            .get(key)
            .filter(|f| !f.is_finished())
            .map(Flight::subscribe)
    }

    /// Hit, join or lead (see the module doc). Counted in
    /// `ai_cache_requests_total{cache="response"}`.
    pub async fn begin(&self, key: Key, policy: Policy) -> Begin {
        self.begin_with(move || key, policy).await
    }

    /// [`ResponseCache::begin`] with the key made only when it is needed:
    /// with the cache off, or for `no-store`, there is nothing to look up,
    /// share or store, so nothing to hash.
    pub async fn begin_with(&self, key: impl FnOnce() -> Key, policy: Policy) -> Begin {
        if !self.enabled {
            return Begin::Alone;
        }
        if !policy.lookup {
            telemetry::cache_lookup("response", "miss");
            if !policy.store {
                return Begin::Alone;
            }
            return private_lead(key(), true);
        }
        let key = key();
        let private = |store: bool| private_lead(key, store);
        if let Some(h) = self.l1.get(&key) {
            telemetry::cache_lookup("response", "hit");
            return Begin::Hit(h.entry);
        }
        if let Some(s) = self.in_flight(&key) {
            telemetry::cache_lookup("response", "coalesced");
            return Begin::Join(s);
        }
        if let Some((e, ttl)) = self.l2_get(&key).await {
            // In memory only for what is left of its life in Redis.
            let e = Arc::new(e);
            self.l1.insert(
                key,
                Held {
                    entry: e.clone(),
                    ttl,
                },
            );
            telemetry::cache_lookup("response", "hit");
            return Begin::Hit(e);
        }
        // Another request may have started (or even finished) the call
        // while Redis answered.
        let mut flights = match self.flights.lock() {
            Ok(f) => f,
            Err(_) => return private(policy.store),
        };
        if let Some(h) = self.l1.get(&key) {
            telemetry::cache_lookup("response", "hit");
            return Begin::Hit(h.entry);
        }
        if let Some(f) = flights.get(&key).filter(|f| !f.is_finished()) {
            telemetry::cache_lookup("response", "coalesced");
            return Begin::Join(f.subscribe());
        }
        // Counted as a miss or a (cross-process) coalesce by `drive`.
        let f = Flight::new();
        let s = f.subscribe();
        flights.insert(key, f.clone());
        Begin::Lead(
            f,
            s,
            Lead {
                key,
                store: policy.store,
                registered: true,
            },
        )
    }

    /// The entry in Redis and the time it has left there.
    async fn l2_get(&self, key: &Key) -> Option<(Entry, Duration)> {
        let redis = self.redis.as_ref()?;
        let k = key.redis_key();
        let (bytes, pttl): (Option<Vec<u8>>, i64) = redis
            .run(|mut c| async move {
                redis::pipe()
                    .cmd("GET")
                    .arg(&k)
                    .cmd("PTTL")
                    .arg(&k)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let entry = Entry::decode(&bytes?);
        if entry.is_none() {
            tracing::warn!("undecodable response-cache value in Redis; ignored");
        }
        // PTTL: -1 no expiry (not ours), -2 gone since the GET.
        let left = match pttl {
            ms if ms > 0 => Duration::from_millis(ms as u64).min(self.ttl),
            -1 => self.ttl,
            _ => return None,
        };
        Some((entry?, left))
    }

    /// L1 now; Redis in the background, then the claim (if any) is
    /// released, so a waiter in another process finds the answer first.
    fn store(self: &Arc<Self>, key: Key, entry: &Arc<Entry>, owner: Option<cross::Owner>) {
        self.l1.insert(
            key,
            Held {
                entry: entry.clone(),
                ttl: self.ttl,
            },
        );
        if let Some(redis) = self.redis.clone() {
            let value = entry.encode();
            let ttl = self.ttl.as_secs().max(1);
            let k = key.redis_key();
            tokio::spawn(async move {
                redis
                    .run(|mut c| async move {
                        redis::cmd("SET")
                            .arg(&k)
                            .arg(value)
                            .arg("EX")
                            .arg(ttl)
                            .query_async::<()>(&mut c)
                            .await
                    })
                    .await;
                if let Some(o) = owner {
                    o.release().await;
                }
            });
        } else if let Some(o) = owner {
            tokio::spawn(o.release());
        }
    }

    /// A whole answer for `request` with its `X-Cache` value: stored, from
    /// an identical call in flight, or from `work(request)` (made only when
    /// this request leads). The key is read from the request (`key`), so a
    /// request is built once for its key and its call. With the cache off
    /// (`CACHE_ENABLED=false`), or for a `no-store` request, the call runs
    /// in the request's own task ([`uncached`]): no key to hash, no
    /// flight, no task.
    pub async fn answer<R, W>(
        self: &Arc<Self>,
        request: R,
        key: impl FnOnce(&R) -> Key,
        policy: Policy,
        work: impl FnOnce(R) -> W,
    ) -> (&'static str, Result<Arc<Entry>, UpstreamError>)
    where
        W: std::future::Future<Output = Result<Entry, UpstreamError>> + Send + 'static,
    {
        match self.begin_with(|| key(&request), policy).await {
            Begin::Alone => ("MISS", uncached(work(request)).await),
            Begin::Hit(e) => ("HIT", Ok(e)),
            Begin::Join(mut s) => ("COALESCED", s.answer().await),
            Begin::Lead(flight, mut s, lead) => {
                self.drive(flight, lead, work(request));
                let answer = s.answer().await;
                (s.leader_x_cache(), answer)
            }
        }
    }

    /// Runs a leader's call in its own task: publishes the outcome to every
    /// subscriber, stores a complete non-empty success (unless the policy
    /// forbids), and drops the call when the last subscriber has left.
    pub fn drive<W>(self: &Arc<Self>, flight: Arc<Flight>, lead: Lead, work: W)
    where
        W: std::future::Future<Output = Result<Entry, UpstreamError>> + Send + 'static,
    {
        let cache = self.clone();
        tokio::spawn(async move {
            // A panic in the call must still end the flight: its listeners
            // would otherwise wait forever, and so would every later
            // identical request that joined it.
            let work = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(work));
            let work = async move { work.await.unwrap_or_else(|_| Err(panicked())) };
            // Across processes (see `cross`): only a call anyone may join.
            let redis = cache.redis.clone().filter(|r| lead.registered && r.is_up());
            let (key, remote_flight) = (lead.key, flight.clone());
            let call = async move {
                let mut owner = None;
                if let Some(redis) = &redis {
                    match cross::claim(redis, &key).await {
                        cross::Claim::Ours(o) => owner = Some(o),
                        cross::Claim::Theirs => {
                            if let Some((entry, left)) = cross::wait_for_answer(redis, &key).await {
                                remote_flight.mark_remote();
                                return Done {
                                    outcome: Ok(Arc::new(entry)),
                                    owner: None,
                                    remote_ttl: Some(left),
                                };
                            }
                        }
                        cross::Claim::Unavailable => {}
                    }
                }
                let outcome = match &owner {
                    Some(o) => tokio::select! {
                        r = work => r,
                        () = o.keep_alive() => unreachable!("keep_alive never returns"),
                    },
                    None => work.await,
                };
                Done {
                    outcome: outcome.map(Arc::new),
                    owner,
                    remote_ttl: None,
                }
            };
            tokio::pin!(call);
            let done = loop {
                tokio::select! {
                    d = &mut call => break d,
                    () = flight.abandoned() => {
                        if flight.listeners() == 0 {
                            break Done {
                                outcome: Err(UpstreamError::Cancelled),
                                owner: None,
                                remote_ttl: None,
                            };
                        }
                        // Someone joined as the last one left: keep going,
                        // but do not spin on the resolved future.
                        tokio::task::yield_now().await;
                    }
                }
            };
            if lead.registered {
                let result = if done.remote_ttl.is_some() {
                    "coalesced"
                } else {
                    "miss"
                };
                telemetry::cache_lookup("response", result);
            }
            match (&done.outcome, done.remote_ttl) {
                (Ok(entry), Some(left)) => {
                    // Another process's answer: keep it here for its life left.
                    cache.l1.insert(
                        lead.key,
                        Held {
                            entry: entry.clone(),
                            ttl: left.min(cache.ttl),
                        },
                    );
                }
                (Ok(entry), None) if lead.store && cache.enabled && !entry.content.is_empty() => {
                    cache.store(lead.key, entry, done.owner);
                }
                _ => {
                    if let Some(o) = done.owner {
                        tokio::spawn(o.release());
                    }
                }
            }
            flight.finish(done.outcome);
            if lead.registered {
                if let Ok(mut flights) = cache.flights.lock() {
                    if flights
                        .get(&lead.key)
                        .is_some_and(|f| Arc::ptr_eq(f, &flight))
                    {
                        flights.remove(&lead.key);
                    }
                }
            }
        });
    }
}

/// A call of this request's own, joined by no one and stored under `key`
/// only when `store` (and the cache is on).
fn private_lead(key: Key, store: bool) -> Begin {
    let f = Flight::new();
    let s = f.subscribe();
    Begin::Lead(
        f,
        s,
        Lead {
            key,
            store,
            registered: false,
        },
    )
}

/// A whole answer from `work` for a [`Begin::Alone`] request: the call
/// runs in the request's own task, so a client that leaves cancels it by
/// dropping it, as the last listener of a flight would. A panic in the call
/// becomes the same error a flight gives its listeners, not a dropped
/// connection.
async fn uncached<W>(work: W) -> Result<Arc<Entry>, UpstreamError>
where
    W: std::future::Future<Output = Result<Entry, UpstreamError>>,
{
    match futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(work)).await {
        Ok(outcome) => outcome.map(Arc::new),
        Err(_) => Err(panicked()),
    }
}

/// What the listeners of a call that panicked get (and a stream whose own
/// call panicked, see [`crate::pipeline::stream`]).
pub fn panicked() -> UpstreamError {
    tracing::error!("the upstream call panicked; its listeners get an error");
    UpstreamError::InvalidResponse("internal error while answering".to_string())
}

/// How a leader's call ended.
struct Done {
    outcome: Result<Arc<Entry>, UpstreamError>,
    /// Our Redis claim, released once the answer is stored.
    owner: Option<cross::Owner>,
    /// Set when another process answered: its time left in Redis.
    remote_ttl: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            content: "你好，世界".repeat(20),
            reasoning_content: Some("想一想".into()),
            finish_reason: Some("stop".into()),
            usage: Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                total_tokens: 7,
                ..Usage::default()
            }),
            model: Some("ep-chat".into()),
            reasoning: Some(serde_json::json!({"type": "chain-of-thought", "enhanced": true})),
            conversation_id: Some("temp-1".into()),
            deltas: vec![],
        }
    }

    #[test]
    fn entries_round_trip_compressed() {
        let e = entry();
        let bytes = e.encode();
        assert!(bytes.len() < serde_json::to_vec(&e).unwrap().len());
        assert_eq!(Entry::decode(&bytes), Some(e));
        assert_eq!(Entry::decode(b"garbage"), None);
    }

    #[test]
    fn whole_answers_replay_as_chunks_then_done() {
        let e = entry();
        let events: Vec<StreamEvent> = e.replay().into_iter().map(Result::unwrap).collect();
        let mut content = String::new();
        let mut reasoning = String::new();
        for ev in &events[..events.len() - 1] {
            match ev {
                StreamEvent::Content(c) => {
                    assert!(c.chars().count() <= REPLAY_CHUNK_CHARS);
                    content.push_str(c);
                }
                StreamEvent::Reasoning(r) => reasoning.push_str(r),
                StreamEvent::Done { .. } => panic!("done before the end"),
            }
        }
        assert_eq!(content, e.content);
        assert_eq!(reasoning, "想一想");
        assert!(matches!(events.last(), Some(StreamEvent::Done { .. })));
    }

    #[test]
    fn streamed_answers_replay_their_own_deltas() {
        let deltas = vec![
            Delta::Reasoning("r".into()),
            Delta::Content("a".into()),
            Delta::Content("bc".into()),
        ];
        let e = Entry::from_stream(deltas, Some("stop".into()), None, None, None);
        assert_eq!(e.content, "abc");
        assert_eq!(e.reasoning_content.as_deref(), Some("r"));
        let events: Vec<StreamEvent> = e.replay().into_iter().map(Result::unwrap).collect();
        assert_eq!(
            events[..3],
            [
                StreamEvent::Reasoning("r".into()),
                StreamEvent::Content("a".into()),
                StreamEvent::Content("bc".into())
            ]
        );
    }

    #[test]
    fn cache_control_policy() {
        assert_eq!(Policy::from_header(None), Policy::DEFAULT);
        assert_eq!(Policy::from_header(Some("max-age=0")), Policy::DEFAULT);
        assert_eq!(
            Policy::from_header(Some("No-Cache")),
            Policy {
                lookup: false,
                store: true
            }
        );
        assert_eq!(
            Policy::from_header(Some("private, no-store")),
            Policy {
                lookup: false,
                store: false
            }
        );
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// An enabled memory-only cache.
    fn memory_cache() -> Arc<ResponseCache> {
        Arc::new(ResponseCache::new(
            true,
            Duration::from_secs(60),
            100,
            1 << 20,
            None,
        ))
    }

    /// Two identical requests: the first leads, the second joins.
    async fn lead_and_join(
        cache: &ResponseCache,
        k: Key,
    ) -> (Arc<Flight>, Subscription, Lead, Subscription) {
        let Begin::Lead(flight, leader, lead) = cache.begin(k, Policy::DEFAULT).await else {
            panic!("the first request leads");
        };
        let Begin::Join(follower) = cache.begin(k, Policy::DEFAULT).await else {
            panic!("the second request joins");
        };
        (flight, leader, lead, follower)
    }

    fn key_of(s: &str) -> Key {
        let m = vec![crate::provider::ChatMessage::new("user", s)];
        key::key(&KeyParts {
            kind: "chat",
            provider: "p",
            model: "m",
            strategy: "direct",
            samples: 0,
            messages: &m,
            temperature: 0.7,
            max_tokens: 10,
            top_p: 1.0,
            show_reasoning: false,
        })
    }

    #[test]
    fn identical_requests_share_one_call_then_hit() {
        block_on(async {
            let cache = memory_cache();
            let k = key_of("x");
            let (flight, mut leader, lead, mut follower) = lead_and_join(&cache, k).await;
            let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let c = calls.clone();
            cache.drive(flight, lead, async move {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(Entry {
                    content: "answer".into(),
                    ..Entry::default()
                })
            });
            let a = leader.answer().await.unwrap();
            let b = follower.answer().await.unwrap();
            assert_eq!(a.content, "answer");
            assert!(Arc::ptr_eq(&a, &b));
            assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
            // Stored: the next identical request is a hit.
            tokio::task::yield_now().await;
            assert!(matches!(
                cache.begin(k, Policy::DEFAULT).await,
                Begin::Hit(_)
            ));
            // no-cache skips the lookup.
            assert!(matches!(
                cache
                    .begin(
                        k,
                        Policy {
                            lookup: false,
                            store: true
                        }
                    )
                    .await,
                Begin::Lead(..)
            ));
        });
    }

    #[test]
    fn errors_reach_every_listener_and_are_not_stored() {
        block_on(async {
            let cache = memory_cache();
            let k = key_of("y");
            let (flight, mut leader, lead, mut follower) = lead_and_join(&cache, k).await;
            cache.drive(flight, lead, async { Err(UpstreamError::Empty) });
            assert_eq!(leader.answer().await.unwrap_err(), UpstreamError::Empty);
            assert_eq!(follower.answer().await.unwrap_err(), UpstreamError::Empty);
            tokio::task::yield_now().await;
            assert!(matches!(
                cache.begin(k, Policy::DEFAULT).await,
                Begin::Lead(..)
            ));
        });
    }

    #[test]
    fn the_call_is_dropped_when_the_last_listener_leaves() {
        block_on(async {
            let cache = memory_cache();
            let k = key_of("z");
            let (flight, leader, lead, follower) = lead_and_join(&cache, k).await;
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            struct Dropped(Option<tokio::sync::oneshot::Sender<()>>);
            impl Drop for Dropped {
                fn drop(&mut self) {
                    if let Some(tx) = self.0.take() {
                        let _ = tx.send(());
                    }
                }
            }
            let guard = Dropped(Some(tx));
            cache.drive(flight.clone(), lead, async move {
                let _guard = guard;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Entry::default())
            });
            tokio::task::yield_now().await;
            drop(leader);
            tokio::task::yield_now().await;
            assert!(!flight.is_finished(), "a listener remains");
            drop(follower);
            tokio::time::timeout(Duration::from_secs(5), rx)
                .await
                .expect("the call was dropped")
                .unwrap();
        });
    }

    #[test]
    fn a_panicking_call_still_ends_its_flight() {
        block_on(async {
            let cache = memory_cache();
            let k = key_of("panic");
            let Begin::Lead(flight, mut leader, lead) = cache.begin(k, Policy::DEFAULT).await
            else {
                panic!("leads");
            };
            let explode = true;
            cache.drive(flight, lead, async move {
                if explode {
                    panic!("boom");
                }
                Ok(Entry::default())
            });
            assert!(matches!(
                leader.answer().await,
                Err(UpstreamError::InvalidResponse(_))
            ));
            tokio::task::yield_now().await;
            assert!(
                matches!(cache.begin(k, Policy::DEFAULT).await, Begin::Lead(..)),
                "the dead flight is gone"
            );
        });
    }

    #[test]
    fn late_joiners_replay_the_stream_from_the_start() {
        block_on(async {
            use futures_util::StreamExt;
            let f = Flight::new();
            let early = f.subscribe();
            f.start();
            f.push(Delta::Content("a".into()));
            let late = f.subscribe();
            f.push(Delta::Content("b".into()));
            f.finish(Ok(Arc::new(Entry::from_stream(
                vec![Delta::Content("a".into()), Delta::Content("b".into())],
                Some("stop".into()),
                None,
                None,
                None,
            ))));
            for s in [early, late] {
                let events: Vec<_> = s.into_events().collect().await;
                assert_eq!(events.len(), 3);
                assert_eq!(events[0], Ok(StreamEvent::Content("a".into())));
                assert_eq!(events[1], Ok(StreamEvent::Content("b".into())));
                assert!(matches!(events[2], Ok(StreamEvent::Done { .. })));
            }
        });
    }

    #[test]
    fn each_l1_entry_lives_its_own_ttl() {
        let cache = ResponseCache::new(true, Duration::from_secs(3600), 10, 1 << 20, None);
        let held = |ms: u64| Held {
            entry: Arc::new(Entry::default()),
            ttl: Duration::from_millis(ms),
        };
        cache.l1.insert(key_of("short"), held(30));
        cache.l1.insert(key_of("long"), held(60_000));
        std::thread::sleep(Duration::from_millis(80));
        assert!(
            cache.l1.get(&key_of("short")).is_none(),
            "expired by its own TTL"
        );
        assert!(cache.l1.get(&key_of("long")).is_some());
    }

    #[test]
    fn l1_is_bounded_by_entries() {
        let cache = ResponseCache::new(true, Duration::from_secs(60), 2, 1 << 20, None);
        for i in 0..10u8 {
            cache.l1.insert(
                key_of(&i.to_string()),
                Held {
                    entry: Arc::new(Entry {
                        content: "x".into(),
                        ..Entry::default()
                    }),
                    ttl: Duration::from_secs(60),
                },
            );
        }
        cache.l1.run_pending_tasks();
        assert!(cache.l1.entry_count() <= 2, "{}", cache.l1.entry_count());
    }
}
