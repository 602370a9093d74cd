//! The worker's link to Redis (`REDIS_URL`): the shared store behind the
//! response cache's second level and the cross-replica rate limits.
//!
//! Redis is an optimisation, never a dependency a request can fail on. Every
//! command runs under a short deadline (`REDIS_TIMEOUT_MS`, default 200 ms);
//! the first failure marks the link down and callers fall back at once
//! (memory cache, fleet-local counters) instead of each waiting out its own
//! timeout. A background task reconnects and pings every second, so the
//! link comes back by itself when Redis does. `/api/v1/health` reports the
//! cache `degraded` while the link is down, and `ai_redis_up` says the same
//! to Prometheus.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::telemetry;

/// How often the maintenance task checks (and, when down, reconnects).
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// A shared, self-healing Redis connection.
pub struct RedisLink {
    client: redis::Client,
    conn: Mutex<Option<MultiplexedConnection>>,
    up: AtomicBool,
    timeout: Duration,
    /// The URL without its password, for logs.
    display: String,
}

impl RedisLink {
    /// Parses `url` (no connection yet: [`RedisLink::maintain`] connects).
    pub fn new(url: &str, timeout: Duration) -> Result<RedisLink, redis::RedisError> {
        let client = redis::Client::open(url)?;
        Ok(RedisLink {
            client,
            conn: Mutex::new(None),
            up: AtomicBool::new(false),
            timeout,
            display: redact(url),
        })
    }

    /// Whether the last command or probe succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn connection(&self) -> Option<MultiplexedConnection> {
        if !self.is_up() {
            return None;
        }
        self.conn.lock().ok()?.clone()
    }

    fn mark_down(&self, why: &dyn std::fmt::Display) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(redis = %self.display, error = %why, "Redis unreachable; falling back to local cache and limits");
            telemetry::redis_up(false);
        }
        if let Ok(mut c) = self.conn.lock() {
            *c = None;
        }
    }

    /// Runs `op` on the connection under the deadline. `None` when the link
    /// is down, the command failed or it timed out (the link is then marked
    /// down until the next successful probe).
    pub async fn run<T, F, Fut>(&self, op: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.connection()?;
        match tokio::time::timeout(self.timeout, op(conn)).await {
            Ok(Ok(v)) => Some(v),
            // The link is down only when the connection is: a command
            // error from a live server (OOM under `noeviction`, a script
            // error) fails that command alone, and the caller falls back
            // for it.
            Ok(Err(e)) if link_failure(&e) => {
                self.mark_down(&e);
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Redis command failed; falling back for this request");
                None
            }
            Err(_) => {
                self.mark_down(&format_args!("no answer within {:?}", self.timeout));
                None
            }
        }
    }

    async fn probe(&self) -> Result<(), String> {
        let conn = match self.conn.lock().ok().and_then(|c| c.clone()) {
            Some(c) => c,
            None => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(500))))
                    .set_response_timeout(Some(self.timeout));
                let c = tokio::time::timeout(
                    self.timeout.max(Duration::from_millis(500)),
                    self.client
                        .get_multiplexed_async_connection_with_config(&config),
                )
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| e.to_string())?;
                if let Ok(mut slot) = self.conn.lock() {
                    *slot = Some(c.clone());
                }
                c
            }
        };
        let mut c = conn;
        let ping = redis::cmd("PING");
        match tokio::time::timeout(self.timeout, ping.query_async::<String>(&mut c)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("PING timed out".to_string()),
        }
    }

    /// Connects, then keeps checking: forever, in the background.
    pub async fn maintain(self: std::sync::Arc<Self>) {
        telemetry::redis_up(false);
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.probe().await {
                Ok(()) => {
                    if !self.up.swap(true, Ordering::Relaxed) {
                        tracing::info!(redis = %self.display, "Redis connected");
                        telemetry::redis_up(true);
                    }
                }
                Err(e) => self.mark_down(&e),
            }
        }
    }

    /// Waits until the link is up or `deadline` passes (start-up, tests).
    pub async fn wait_up(&self, deadline: Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        while !self.is_up() && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.is_up()
    }
}

/// Whether an error means the connection (not just the command) failed.
fn link_failure(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

/// `redis://:secret@host:6379/0` → `redis://:***@host:6379/0`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s + 3 => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("redis://:s3cret@redis:6379/0"),
            "redis://:***@redis:6379/0"
        );
        assert_eq!(
            redact("redis://app:pw@10.0.0.1:6379"),
            "redis://app:***@10.0.0.1:6379"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn a_bad_url_is_refused_up_front() {
        assert!(RedisLink::new("not a url", Duration::from_millis(10)).is_err());
        let link = RedisLink::new("redis://127.0.0.1:1/0", Duration::from_millis(10)).unwrap();
        assert!(!link.is_up(), "down until the first successful probe");
    }
}
