//! Coalescing across workers and replicas through Redis (API.md §9's
//! "at least within a worker", taken further).
//!
//! The worker whose local flight is first for a key claims it in Redis with
//! `SET heartalk:flight:v1:<hex> <token> NX PX 6000`, keeps the claim alive
//! every 2 s while its upstream call runs, stores the answer (`SET` of the
//! cache value) and only then releases the claim (compare-and-delete, so a
//! claim that expired and was taken over is never deleted by its old owner).
//! A worker that finds the key claimed by someone else does not call the
//! upstream: it polls for the answer (`GET` value + `EXISTS` claim) and
//! serves it as `COALESCED`. If the claim disappears without an answer (the
//! owner failed, or died and its claim expired within 6 s), or Redis stops
//! answering, the waiter makes the call itself — coalescing is an
//! optimisation, never a reason for a request to fail or hang.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{Entry, Key};
use crate::runtime::redis_link::RedisLink;

/// How long a claim lives without being renewed.
const CLAIM_MS: u64 = 6000;
/// How often the owner renews it.
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// The waiter's polling interval: first, then at most.
const POLL_FIRST: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(100);
/// A waiter gives up (and calls) after this long even if the claim lives.
const WAIT_MAX: Duration = Duration::from_secs(300);

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

fn claim_key(key: &Key) -> String {
    format!("heartalk:flight:v1:{}", hex::encode(key.0))
}

/// A token unique to this claim attempt (pid, a counter, the clock).
fn token() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}:{}:{nanos}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The outcome of trying to claim a key.
pub enum Claim {
    /// We make the call; release after storing the answer.
    Ours(Owner),
    /// Another process is making it.
    Theirs,
    /// Redis did not answer: make the call without a claim.
    Unavailable,
}

/// A held claim. Dropped unreleased (the call was abandoned), it is
/// released in the background, so waiters need not wait for it to expire.
pub struct Owner {
    redis: Arc<RedisLink>,
    key: String,
    token: String,
    released: bool,
}

impl Drop for Owner {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (redis, key, token) = (self.redis.clone(), self.key.clone(), self.token.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { release(&redis, key, token).await });
        }
    }
}

async fn release(redis: &RedisLink, key: String, token: String) {
    let script = redis::Script::new(RELEASE);
    let script = &script;
    redis
        .run(|mut c| async move {
            script
                .key(&key)
                .arg(&token)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await;
}

pub async fn claim(redis: &Arc<RedisLink>, key: &Key) -> Claim {
    let (k, t) = (claim_key(key), token());
    let (k2, t2) = (k.clone(), t.clone());
    let set: Option<Option<String>> = redis
        .run(|mut c| async move {
            redis::cmd("SET")
                .arg(&k2)
                .arg(&t2)
                .arg("NX")
                .arg("PX")
                .arg(CLAIM_MS)
                .query_async::<Option<String>>(&mut c)
                .await
        })
        .await;
    match set {
        Some(Some(_)) => Claim::Ours(Owner {
            redis: redis.clone(),
            key: k,
            token: t,
            released: false,
        }),
        Some(None) => Claim::Theirs,
        None => Claim::Unavailable,
    }
}

impl Owner {
    /// Renews the claim until dropped (run it beside the call).
    pub async fn keep_alive(&self) {
        let script = redis::Script::new(RENEW);
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            let (k, t) = (self.key.clone(), self.token.clone());
            let script = &script;
            self.redis
                .run(|mut c| async move {
                    script
                        .key(&k)
                        .arg(&t)
                        .arg(CLAIM_MS)
                        .invoke_async::<i64>(&mut c)
                        .await
                })
                .await;
        }
    }

    /// Gives the claim up (only if it is still ours).
    pub async fn release(mut self) {
        self.released = true;
        release(&self.redis, self.key.clone(), self.token.clone()).await;
    }
}

/// Waits for the claim owner's answer: `Some` when it is in Redis, `None`
/// when the claim went away without one, Redis failed, or `WAIT_MAX`
/// passed (the caller then makes the call itself).
pub async fn wait_for_answer(redis: &RedisLink, key: &Key) -> Option<(Entry, Duration)> {
    let value_key = key.redis_key();
    let claim = claim_key(key);
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    let mut pause = POLL_FIRST;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
        let (v, c) = (value_key.clone(), claim.clone());
        let (bytes, pttl, claimed): (Option<Vec<u8>>, i64, bool) = redis
            .run(|mut conn| async move {
                redis::pipe()
                    .cmd("GET")
                    .arg(&v)
                    .cmd("PTTL")
                    .arg(&v)
                    .cmd("EXISTS")
                    .arg(&c)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        if let Some(entry) = bytes.as_deref().and_then(Entry::decode) {
            let left = Duration::from_millis(pttl.max(1) as u64);
            return Some((entry, left));
        }
        if !claimed {
            return None;
        }
    }
    None
}
