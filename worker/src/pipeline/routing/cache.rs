//! The per-process routing decision cache (API.md §6): its key derivation
//! and a bounded, time-limited LRU of [`Decision`]s.
//!
//! Time is always passed in (`now`), so expiry is a pure function of the
//! arguments and tests never sleep.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;
use sha2::{Digest, Sha256};

use super::Decision;

/// How many trailing context messages enter the cache key.
pub const KEY_CONTEXT_MESSAGES: usize = 4;

/// The decision cache key: the first 16 hex characters of
/// SHA-256(`message ‖ options_json ‖ "|"-joined last 4 context contents`),
/// where the context part (and its separators) is present only when the
/// context is non-empty. `options_json` is the caller's serialisation of
/// the request options; the same options must serialise identically for
/// the key to be stable.
pub fn cache_key(message: &str, options_json: &str, context: &[String]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(message.as_bytes());
    hasher.update(options_json.as_bytes());
    if !context.is_empty() {
        let start = context.len().saturating_sub(KEY_CONTEXT_MESSAGES);
        hasher.update(context[start..].join("|").as_bytes());
    }
    let digest = hasher.finalize();
    let mut key = hex::encode(digest.as_slice());
    key.truncate(16);
    key
}

/// An LRU of `capacity` decisions, each valid for `ttl` from its insertion.
/// A read refreshes the entry's recency, never its age. A capacity of 0
/// disables the cache (nothing is stored).
///
/// The lock is held only for a map operation, never across an await; a
/// poisoned lock is recovered, since the map cannot be left inconsistent
/// by a panic in a caller.
#[derive(Debug)]
pub struct DecisionCache {
    entries: Mutex<LruCache<String, (Instant, Decision)>>,
    ttl: Duration,
    enabled: bool,
}

impl DecisionCache {
    pub fn new(capacity: usize, ttl: Duration) -> DecisionCache {
        DecisionCache {
            entries: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
            )),
            ttl,
            enabled: capacity > 0,
        }
    }

    /// The cached decision for `key`, if it was inserted no more than `ttl`
    /// before `now`. An expired entry is removed.
    pub fn get(&self, key: &str, now: Instant) -> Option<Decision> {
        if !self.enabled {
            return None;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (inserted, decision) = entries.get(key)?;
        if now.saturating_duration_since(*inserted) > self.ttl {
            entries.pop(key);
            return None;
        }
        Some(decision.clone())
    }

    /// Stores `decision` under `key` as of `now`, evicting the least
    /// recently used entry when full.
    pub fn insert(&self, key: String, decision: Decision, now: Instant) {
        if !self.enabled {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.put(key, (now, decision));
    }

    /// Number of entries held (expired ones included until read).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(route: &str) -> Decision {
        Decision {
            route: route.to_string(),
            confidence: 0.9,
            reason: "keyword_match_success",
            matched_keywords: vec!["工作".to_string()],
            context_enhanced: false,
        }
    }

    #[test]
    fn entries_expire_after_ttl_from_insertion() {
        let cache = DecisionCache::new(10, Duration::from_millis(300_000));
        let t0 = Instant::now();
        cache.insert("k".into(), decision("chat"), t0);
        assert_eq!(cache.get("k", t0).unwrap().route, "chat");
        // A read at 299 s does not extend the life of the entry.
        assert!(cache.get("k", t0 + Duration::from_secs(299)).is_some());
        assert!(
            cache
                .get("k", t0 + Duration::from_millis(300_000))
                .is_some()
        );
        assert!(
            cache
                .get("k", t0 + Duration::from_millis(300_001))
                .is_none()
        );
        assert!(cache.is_empty());
        // A time before insertion is not an error.
        cache.insert("k".into(), decision("chat"), t0 + Duration::from_secs(5));
        assert!(cache.get("k", t0).is_some());
    }

    #[test]
    fn least_recently_used_is_evicted_and_reads_refresh_recency() {
        let cache = DecisionCache::new(2, Duration::from_secs(300));
        let t0 = Instant::now();
        cache.insert("a".into(), decision("chat"), t0);
        cache.insert("b".into(), decision("work_assistant"), t0);
        assert!(cache.get("a", t0).is_some()); // a is now the most recent
        cache.insert("c".into(), decision("complex_reasoning"), t0);
        assert!(cache.get("b", t0).is_none());
        assert!(cache.get("a", t0).is_some());
        assert!(cache.get("c", t0).is_some());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn zero_capacity_stores_nothing() {
        let cache = DecisionCache::new(0, Duration::from_secs(300));
        let t0 = Instant::now();
        cache.insert("a".into(), decision("chat"), t0);
        assert!(cache.get("a", t0).is_none());
    }

    #[test]
    fn key_is_16_hex_chars_and_stable() {
        let k = cache_key("你好", "{}", &[]);
        assert_eq!(k.len(), 16);
        assert!(
            k.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(k, cache_key("你好", "{}", &[]));
        // The key is the prefix of the full digest of the concatenation.
        let full = hex::encode(Sha256::digest("你好{}".as_bytes()).as_slice());
        assert_eq!(k, full[..16]);
        assert_ne!(k, cache_key("你好", r#"{"a":1}"#, &[]));
    }

    #[test]
    fn key_uses_only_the_last_four_context_messages() {
        let ctx: Vec<String> = ["1", "2", "3", "4", "5"].map(String::from).to_vec();
        let k = cache_key("m", "{}", &ctx);
        assert_eq!(k, cache_key("m", "{}", &ctx[1..]));
        let full = hex::encode(Sha256::digest("m{}2|3|4|5".as_bytes()).as_slice());
        assert_eq!(k, full[..16]);
        assert_ne!(k, cache_key("m", "{}", &[]));
        // An empty context adds nothing, not even a separator.
        assert_eq!(cache_key("m", "{}", &[]), cache_key("m{}", "", &[]));
    }
}
