//! Rate limits (API.md §4): which bucket a request falls in, fixed windows
//! aligned to the Unix epoch, and the headers every limited response
//! carries.
//!
//! Bucket choice and header values are pure functions. Counting is the
//! [`Limiter`]'s: with `REDIS_URL`, an atomic script in Redis counts for
//! every replica (fixed windows: `INCR` + `EXPIRE` on a key per window);
//! otherwise — and whenever Redis is unreachable — the supervisor's
//! shared-memory table ([`crate::limits::fleet_limits`]) counts for every worker of
//! this machine; a worker running alone counts in-process.

use http::{HeaderName, HeaderValue};
use std::collections::HashMap;
use std::sync::Mutex;

use crate::settings::RateLimits;

/// One of the Node.js service's buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    Admin,
    Stream,
    AiApi,
    User,
    Global,
}

impl Bucket {
    /// The metric label and key prefix.
    pub fn label(self) -> &'static str {
        match self {
            Bucket::Admin => "admin",
            Bucket::Stream => "stream",
            Bucket::AiApi => "ai_api",
            Bucket::User => "user",
            Bucket::Global => "global",
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Bucket::Admin => "ADMIN_API_RATE_LIMIT_EXCEEDED",
            Bucket::Stream => "STREAM_RATE_LIMIT_EXCEEDED",
            Bucket::AiApi => "AI_API_RATE_LIMIT_EXCEEDED",
            Bucket::User => "USER_RATE_LIMIT_EXCEEDED",
            Bucket::Global => "RATE_LIMIT_EXCEEDED",
        }
    }
}

/// The rule that applies to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub bucket: Bucket,
    pub max: u64,
    /// Window length in seconds.
    pub window: u64,
    /// Counter key, e.g. `stream:user-1` or `203.0.113.9`.
    pub key: String,
    pub message: String,
}

/// Which of §4's rows an endpoint's path falls in. The Node.js service
/// chose the row by substrings of the lower-cased path, first match wins:
/// `/admin/`, then `/stream` (or `/v1/chat/completions` with `stream:true`),
/// then `/api/v1/chat/`, `/api/v1/translate/` or `/v1/chat/completions`,
/// then any authenticated user outside `/internal/`, else the global row.
/// Here each endpoint states its row once, in the endpoints table
/// (`crate::http::endpoints`), so no path is matched here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathClass {
    /// Under `/admin/`.
    Admin,
    /// A streaming path.
    Stream,
    /// `/v1/chat/completions`: a stream's row with `stream:true`, else
    /// the AI API's.
    Completions,
    /// The AI API (chat, translation).
    AiApi,
    /// Under `/internal/`: the global row, even with a user.
    Internal,
    /// Anything else: the user's row with a user, else the global one.
    Other,
}

/// §4: the rule of a request to a path of `class`.
/// `streaming_completions` is true for `/v1/chat/completions` with
/// `stream:true`.
pub fn rule(
    limits: &RateLimits,
    class: PathClass,
    user: Option<&str>,
    ip: &str,
    streaming_completions: bool,
) -> Rule {
    let who = user.unwrap_or(ip);
    let (bucket, max, window, key, message) = match class {
        PathClass::Admin => (
            Bucket::Admin,
            limits.admin_max,
            900,
            format!("admin:{who}"),
            "Too many admin API requests, please try again later.",
        ),
        PathClass::Completions if streaming_completions => stream_row(limits, who),
        PathClass::Stream => stream_row(limits, who),
        PathClass::AiApi | PathClass::Completions => (
            Bucket::AiApi,
            limits.ai_max,
            60,
            format!("ai_api:{who}"),
            "Too many AI API requests, please try again later.",
        ),
        PathClass::Other if user.is_some() => (
            Bucket::User,
            limits.user_max,
            60,
            format!("user:{who}"),
            "Too many requests from this user, please try again later.",
        ),
        PathClass::Other | PathClass::Internal => {
            return Rule {
                bucket: Bucket::Global,
                max: limits.global_max,
                window: limits.global_window,
                key: ip.to_string(),
                message: limits.global_message.clone(),
            };
        }
    };
    Rule {
        bucket,
        max,
        window,
        key,
        message: message.to_string(),
    }
}

/// The streaming row of §4.
fn stream_row(limits: &RateLimits, who: &str) -> (Bucket, u64, u64, String, &'static str) {
    (
        Bucket::Stream,
        limits.stream_max,
        60,
        format!("stream:{who}"),
        "Too many streaming requests, please try again later.",
    )
}

/// The verdict for one request, with what the headers need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    pub window: u64,
    /// Seconds until the window ends.
    pub reset_in: u64,
    /// Unix seconds of the window end.
    pub reset_at: u64,
}

/// Window start for `now` (fixed windows aligned to the epoch).
pub fn window_start(now_unix: u64, window: u64) -> u64 {
    now_unix - now_unix % window.max(1)
}

/// Turns the count *including this request* into a verdict: the
/// (max+1)-th request in a window is refused.
pub fn verdict(rule: &Rule, count: u64, now_unix: u64) -> Verdict {
    let start = window_start(now_unix, rule.window);
    let reset_at = start + rule.window;
    Verdict {
        allowed: count <= rule.max,
        limit: rule.max,
        remaining: rule.max.saturating_sub(count),
        window: rule.window,
        reset_in: reset_at - now_unix,
        reset_at,
    }
}

/// The rate-limit headers of §4 (plus `Retry-After` when refused), ready
/// to insert: names built at compile time and numbers written straight
/// into header values (they go on every limited response).
pub fn headers(v: &Verdict) -> Vec<(HeaderName, HeaderValue)> {
    const POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
    const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
    const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
    const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
    const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
    const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
    const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
    let policy = HeaderValue::from_str(&format!("{};w={}", v.limit, v.window))
        .unwrap_or_else(|_| HeaderValue::from(v.limit));
    let mut h = Vec::with_capacity(8);
    h.extend([
        (POLICY, policy),
        (LIMIT, HeaderValue::from(v.limit)),
        (REMAINING, HeaderValue::from(v.remaining)),
        (RESET, HeaderValue::from(v.reset_in)),
        (X_LIMIT, HeaderValue::from(v.limit)),
        (X_REMAINING, HeaderValue::from(v.remaining)),
        (X_RESET, HeaderValue::from(v.reset_at)),
    ]);
    if !v.allowed {
        h.push((http::header::RETRY_AFTER, HeaderValue::from(v.reset_in)));
    }
    h
}

/// `INCR` the window's key, set its expiry on the first hit: one atomic
/// step, so concurrent replicas never lose a count or leave a key behind.
const REDIS_SCRIPT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
";

/// The rate-limit counter of one worker (see the module doc).
pub struct Limiter {
    local: LocalCounter,
    table: Option<crate::limits::fleet_limits::SharedTable>,
    redis: Option<std::sync::Arc<crate::runtime::redis_link::RedisLink>>,
    script: redis::Script,
    warned_full: std::sync::atomic::AtomicBool,
}

impl Limiter {
    pub fn new(
        table: Option<crate::limits::fleet_limits::SharedTable>,
        redis: Option<std::sync::Arc<crate::runtime::redis_link::RedisLink>>,
    ) -> Limiter {
        Limiter {
            local: LocalCounter::default(),
            table,
            redis,
            script: redis::Script::new(REDIS_SCRIPT),
            warned_full: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Adds one hit to `key` in the window starting at `window_start` and
    /// returns the count so far, this hit included. Never fails: Redis
    /// trouble falls back to the machine's count.
    pub async fn hit(&self, key: &str, window_start: u64, window: u64) -> u64 {
        if let Some(redis) = self.redis.as_ref().filter(|r| r.is_up()) {
            let redis_key = format!("heartalk:rl:{window}:{window_start}:{key}");
            // Expire a little after the window ends (clock skew between replicas).
            let ttl = window + 5;
            let script = &self.script;
            let n = redis
                .run(|mut c| async move {
                    script
                        .key(&redis_key)
                        .arg(ttl)
                        .invoke_async::<u64>(&mut c)
                        .await
                })
                .await;
            match n {
                Some(n) => return n,
                None => crate::telemetry::rate_limit_fallback(),
            }
        }
        self.machine_hit(key, window_start, window)
    }

    fn machine_hit(&self, key: &str, window_start: u64, window: u64) -> u64 {
        if let Some(t) = &self.table {
            if let Some(n) = crate::limits::fleet_limits::hit(t.words(), key, window_start, window)
            {
                return n;
            }
            if !self
                .warned_full
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!("shared rate-limit table full; counting per process for some keys");
            }
        }
        self.local.hit(key, window_start, window)
    }
}

/// Counts inside this process.
#[derive(Default)]
pub struct LocalCounter {
    inner: Mutex<Local>,
}

#[derive(Default)]
struct Local {
    /// key → (window start, window length, count)
    counts: HashMap<String, (u64, u64, u64)>,
    hits: u64,
}

/// Stale windows are swept every this many hits (not on every hit), so
/// the map stays bounded by the keys active in their own windows.
const SWEEP_EVERY: u64 = 10_000;

impl LocalCounter {
    /// Adds one hit and returns the count so far, this hit included.
    pub fn hit(&self, key: &str, window_start: u64, window: u64) -> u64 {
        let mut local = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        local.hits += 1;
        if local.hits % SWEEP_EVERY == 0 {
            // `window_start` of this hit is a lower bound of "now"; each
            // entry expires by its *own* window, whatever this key's is.
            let now = window_start;
            local
                .counts
                .retain(|_, (start, len, _)| *start + *len > now);
        }
        let entry = local
            .counts
            .entry(key.to_string())
            .or_insert((window_start, window, 0));
        if entry.0 != window_start {
            *entry = (window_start, window, 0);
        }
        entry.2 += 1;
        entry.2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of §4 by class; which class each path is in (the table's
    /// substring order, case, trailing slashes) is tested with the
    /// endpoints table, against the Node.js service's path matching.
    #[test]
    fn buckets_follow_the_class_and_the_user() {
        let l = RateLimits::default();
        let r = |class: PathClass, user: Option<&str>| rule(&l, class, user, "1.2.3.4", false);
        assert_eq!(r(PathClass::Admin, Some("u")).bucket, Bucket::Admin);
        assert_eq!(r(PathClass::Admin, None).key, "admin:1.2.3.4");
        assert_eq!(r(PathClass::Stream, Some("u")).bucket, Bucket::Stream);
        assert_eq!(r(PathClass::Stream, Some("u")).key, "stream:u");
        assert_eq!(r(PathClass::AiApi, Some("u")).bucket, Bucket::AiApi);
        assert_eq!(r(PathClass::AiApi, Some("u")).key, "ai_api:u");
        assert_eq!(r(PathClass::Other, Some("u")).bucket, Bucket::User);
        assert_eq!(r(PathClass::Other, Some("u")).key, "user:u");
        assert_eq!(r(PathClass::Internal, Some("svc")).bucket, Bucket::Global);
        assert_eq!(r(PathClass::Other, None).key, "1.2.3.4");
        assert_eq!(r(PathClass::Completions, Some("u")).bucket, Bucket::AiApi);
        assert_eq!(
            rule(&l, PathClass::Completions, Some("u"), "ip", true).bucket,
            Bucket::Stream
        );
        assert_eq!(
            rule(&l, PathClass::Completions, Some("u"), "ip", true).key,
            "stream:u"
        );
        let g = r(PathClass::Other, None);
        assert_eq!((g.max, g.window), (100, 900));
    }

    #[test]
    fn the_eleventh_stream_request_is_refused_with_headers() {
        let l = RateLimits::default();
        let c = LocalCounter::default();
        let rule = rule(&l, PathClass::Stream, Some("u"), "ip", false);
        let now = 1_700_000_010;
        let start = window_start(now, rule.window);
        let verdicts: Vec<Verdict> = (0..11)
            .map(|_| verdict(&rule, c.hit(&rule.key, start, rule.window), now))
            .collect();
        assert!(verdicts[..10].iter().all(|v| v.allowed));
        let last = &verdicts[10];
        assert!(!last.allowed);
        assert_eq!(last.remaining, 0);
        let h: HashMap<String, String> = headers(last)
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        assert_eq!(h["ratelimit-limit"], "10");
        assert_eq!(h["x-ratelimit-limit"], "10");
        assert_eq!(h["ratelimit-policy"], "10;w=60");
        assert_eq!(h["retry-after"], "30");
        assert_eq!(h["ratelimit-reset"], "30");
        assert_eq!(h["x-ratelimit-reset"], "1700000040");
        assert_eq!(verdicts[0].remaining, 9);
    }

    #[test]
    fn a_sweep_keeps_longer_windows_alive() {
        let c = LocalCounter::default();
        // a 900 s bucket, 600 s into its window, at 101 hits
        for _ in 0..101 {
            c.hit("ip", 0, 900);
        }
        // enough 60 s traffic to trigger sweeps (at hits 10 000 and 20 000,
        // "now" 600), while every window so far is still open
        for i in 0..(2 * SWEEP_EVERY) {
            c.hit(&format!("stream:{i}"), 600, 60);
        }
        assert_eq!(
            c.hit("ip", 0, 900),
            102,
            "the long window survived the sweep"
        );
        {
            let local = c.inner.lock().unwrap();
            assert_eq!(local.hits, 2 * SWEEP_EVERY + 102);
            // the sweeps removed no live entry: "ip" and every stream key
            assert_eq!(local.counts.len() as u64, 2 * SWEEP_EVERY + 1);
        }
        // At 2000 every window above has ended. The sweep at hit 30 000
        // (the 9 898th of these) removes all of them and keeps the "later"
        // keys already counted, whose windows are open; the rest follow it.
        for i in 0..SWEEP_EVERY {
            c.hit(&format!("later:{i}"), 2000, 60);
        }
        let local = c.inner.lock().unwrap();
        assert_eq!(local.hits, 3 * SWEEP_EVERY + 102, "one sweep in there");
        assert_eq!(
            local.counts.len() as u64,
            SWEEP_EVERY,
            "exactly the later keys are left"
        );
        assert!(local.counts.keys().all(|k| k.starts_with("later:")));
        assert!(!local.counts.contains_key("ip"));
    }

    #[test]
    fn a_new_window_starts_from_zero() {
        let c = LocalCounter::default();
        assert_eq!(c.hit("k", 60, 60), 1);
        assert_eq!(c.hit("k", 60, 60), 2);
        assert_eq!(c.hit("k", 120, 60), 1);
        assert_eq!(window_start(119, 60), 60);
    }
}
