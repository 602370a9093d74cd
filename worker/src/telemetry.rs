//! The worker's Prometheus metrics (API.md §12): one recorder per process,
//! the metric names and labels in one place, and the text rendering that
//! `/metrics` (on `METRICS_PORT`) and the supervisor's aggregation read.
//!
//! Names follow Prometheus conventions: base units in the name, `_total`
//! on counters, `_seconds` on durations. Recording goes through the
//! `metrics` facade. The series recorded on every request keep their
//! handles per thread and label set ([`with_handle`]): looking a series up
//! in the recorder's registry builds its key, allocates owned label values
//! such as the status and hashes them, which was ~4 % of a worker's CPU
//! per request; a kept handle is one small-key hash and an atomic add.
//! The recorder never forgets a series (no idle timeout), so a kept handle
//! stays the one `/metrics` renders. The
//! `process_*` series (memory, CPU per worker) are not recorded here: the
//! supervisor reads them from /proc for every worker, with full precision.

use std::sync::OnceLock;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::thread::LocalKey;

use metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Times the metrics were rendered for a scrape (the drain waits for one
/// last scrape after it finished, so the supervisor has the final numbers).
static SCRAPES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Renders for a scrape and counts it.
pub fn render_for_scrape() -> String {
    SCRAPES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    render()
}

/// Scrapes served so far.
pub fn scrapes() -> u64 {
    SCRAPES.load(std::sync::atomic::Ordering::SeqCst)
}

/// `Content-Type` of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Histogram buckets for request and upstream durations, in seconds:
/// fine below 100 ms (our own overhead), coarse up to model timeouts.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Installs the process-wide recorder (once) and describes every metric.
/// Returns the handle that renders the text format.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let handle = match builder.install_recorder() {
            Ok(h) => h,
            // Another recorder is already installed (tests): render an
            // unattached one so callers still get a handle.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        };
        describe();
        handle
    })
}

/// The current metrics in Prometheus text format.
pub fn render() -> String {
    install().render()
}

fn describe() {
    describe_counter!(
        "http_requests_total",
        "HTTP requests answered, by method, route template and status"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request duration"
    );
    describe_counter!(
        "ai_route_decisions_total",
        "Keyword-router decisions by route"
    );
    describe_counter!(
        "ai_cache_requests_total",
        "Cache lookups by cache and result"
    );
    describe_gauge!("ai_cache_hit_rate", "Hit rate per cache since start");
    describe_histogram!(
        "ai_reasoning_duration_seconds",
        metrics::Unit::Seconds,
        "Time spent per reasoning strategy"
    );
    describe_counter!(
        "ai_upstream_requests_total",
        "Upstream model calls by provider, endpoint and outcome"
    );
    describe_histogram!(
        "ai_upstream_duration_seconds",
        metrics::Unit::Seconds,
        "Upstream call duration"
    );
    describe_counter!(
        "ai_tokens_total",
        "Tokens by kind (prompt, completion, reasoning)"
    );
    describe_counter!(
        "ai_backend_history_requests_total",
        "History fetches from the HearTalk backend by outcome"
    );
    describe_gauge!(
        "ai_backend_up",
        "1 when the backend's /health answered the last probe"
    );
    describe_counter!(
        "ai_rate_limited_total",
        "Requests refused by a rate-limit bucket"
    );
    describe_counter!(
        "ai_upstream_stream_parse_errors_total",
        "Upstream SSE payloads that did not parse"
    );
    describe_counter!(
        "ai_upstream_retries_total",
        "Upstream attempts repeated after a retryable failure"
    );
    describe_gauge!(
        "ai_circuit_state",
        "Circuit breaker per endpoint: 0 closed, 1 half-open, 2 open"
    );
    describe_counter!(
        "ai_circuit_rejections_total",
        "Calls failed fast because the endpoint's circuit was open"
    );
    describe_counter!(
        "ai_upstream_fallbacks_total",
        "Calls answered by trying the route's fallback endpoint"
    );
    describe_gauge!(
        "ai_redis_up",
        "1 when REDIS_URL is set and Redis answered the last command"
    );
    describe_counter!(
        "ai_rate_limit_fallbacks_total",
        "Rate-limit decisions counted locally because Redis was unreachable"
    );
    describe_gauge!(
        "ai_connections_open",
        "Client connections this worker has open"
    );
    describe_gauge!(
        "ai_connections_max",
        "This worker's connection budget (MAX_CONNECTIONS, capped by the open-file limit)"
    );
    describe_counter!(
        "ai_connection_budget_reached_total",
        "Times the worker stopped accepting because its connection budget was full"
    );
    describe_gauge!(
        "ai_worker_degraded",
        "1 while the worker cannot accept connections (budget full or accept failing) for over 3 s"
    );
}

/// Registers the series that must exist before anything happens (so
/// dashboards and alerts see zeros, not gaps).
/// `ai_redis_up` exists only where `REDIS_URL` is set, so an alert on it
/// never fires on a deployment that runs without Redis.
pub fn register_defaults(provider: &str, redis_configured: bool) {
    for endpoint in ["chat", "work_assistant"] {
        counter!("ai_upstream_retries_total", "provider" => provider.to_string(), "endpoint" => endpoint)
            .increment(0);
        gauge!("ai_circuit_state", "endpoint" => endpoint).set(0.0);
        counter!("ai_circuit_rejections_total", "endpoint" => endpoint).increment(0);
        counter!("ai_upstream_fallbacks_total", "endpoint" => endpoint).increment(0);
    }
    counter!("ai_rate_limit_fallbacks_total").increment(0);
    counter!("ai_upstream_stream_parse_errors_total").increment(0);
    counter!("ai_connection_budget_reached_total").increment(0);
    gauge!("ai_worker_degraded").set(0.0);
    gauge!("ai_connections_open").set(0.0);
    if redis_configured {
        gauge!("ai_redis_up").set(0.0);
    }
}

pub fn upstream_retry(provider: &str, endpoint: &'static str) {
    counter!("ai_upstream_retries_total", "provider" => provider.to_string(), "endpoint" => endpoint)
        .increment(1);
}

/// `state`: 0 closed, 1 half-open, 2 open. `endpoint` is a breaker name
/// (`chat`, `work_assistant`, or `<route>:fallback`): bounded by config.
pub fn circuit_state(endpoint: &str, state: u8) {
    gauge!("ai_circuit_state", "endpoint" => endpoint.to_string()).set(f64::from(state));
}

pub fn circuit_rejected(endpoint: &str) {
    counter!("ai_circuit_rejections_total", "endpoint" => endpoint.to_string()).increment(1);
}

pub fn upstream_fallback(endpoint: &'static str) {
    counter!("ai_upstream_fallbacks_total", "endpoint" => endpoint).increment(1);
}

pub fn redis_up(up: bool) {
    gauge!("ai_redis_up").set(if up { 1.0 } else { 0.0 });
}

pub fn rate_limit_fallback() {
    counter!("ai_rate_limit_fallbacks_total").increment(1);
}

/// Open client connections, set when the metrics are rendered for a
/// scrape (not on every open and close).
pub fn connections_open(n: usize) {
    gauge!("ai_connections_open").set(n as f64);
}

/// The connection budget in force (see [`crate::http::budget`]).
pub fn connections_max(n: usize) {
    gauge!("ai_connections_max").set(n as f64);
}

/// The accept loop stopped at its connection budget.
pub fn budget_reached() {
    counter!("ai_connection_budget_reached_total").increment(1);
}

pub fn worker_degraded(degraded: bool) {
    gauge!("ai_worker_degraded").set(if degraded { 1.0 } else { 0.0 });
}

/// Handles of the per-request series, per thread, by label set. Every key
/// is bounded: fixed method labels, route labels and statuses, cache and
/// strategy names, and the configured route and endpoint names.
type Handles<K, V> = RefCell<HashMap<K, V>>;

thread_local! {
    static HTTP: Handles<(&'static str, &'static str, u16), (Counter, Histogram)> =
        RefCell::new(HashMap::new());
    static ROUTES: Handles<String, Counter> = RefCell::new(HashMap::new());
    static CACHE: Handles<(&'static str, &'static str), (Counter, Gauge)> =
        RefCell::new(HashMap::new());
    static REASONING: Handles<&'static str, Histogram> = RefCell::new(HashMap::new());
    static UPSTREAM: Handles<(&'static str, &'static str), (String, Counter, Histogram)> =
        RefCell::new(HashMap::new());
    static TOKENS: Handles<&'static str, Counter> = RefCell::new(HashMap::new());
}

/// Runs `record` on the handles kept under `key`, looking them up (with
/// `make`) the first time this thread records that label set. The key is
/// borrowed (`str` for a `String` key), so a label set already seen costs
/// no allocation; it is copied into the map only the first time.
fn with_handle<K, Q, V>(
    handles: &'static LocalKey<Handles<K, V>>,
    key: &Q,
    make: impl FnOnce(&Q) -> V,
    record: impl FnOnce(&V),
) where
    K: Eq + Hash + Borrow<Q>,
    Q: Eq + Hash + ToOwned<Owned = K> + ?Sized,
{
    handles.with(|h| {
        let mut h = h.borrow_mut();
        if let Some(v) = h.get(key) {
            record(v);
            return;
        }
        let v = make(key);
        record(&v);
        h.insert(key.to_owned(), v);
    });
}

pub fn http_request(method: &str, route: &'static str, status: u16, elapsed: Duration) {
    let method = method_label(method);
    with_handle(
        &HTTP,
        &(method, route, status),
        |&(method, route, status)| {
            (
                counter!("http_requests_total", "method" => method, "route" => route, "status" => status.to_string()),
                histogram!("http_request_duration_seconds", "method" => method, "route" => route),
            )
        },
        |(count, duration)| {
            count.increment(1);
            duration.record(elapsed.as_secs_f64());
        },
    );
}

/// The method label from a fixed set: a client can send any token as a
/// method, and a label per token would grow the registry without bound.
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "HEAD" => "HEAD",
        _ => "OTHER",
    }
}

pub fn route_decision(route: &str) {
    with_handle(
        &ROUTES,
        route,
        |route| counter!("ai_route_decisions_total", "route" => route.to_string()),
        |c| c.increment(1),
    );
}

/// (hits, lookups) per cache since start, for `ai_cache_hit_rate`.
static CACHE_COUNTS: [(AtomicU64, AtomicU64); 3] = [
    (AtomicU64::new(0), AtomicU64::new(0)),
    (AtomicU64::new(0), AtomicU64::new(0)),
    (AtomicU64::new(0), AtomicU64::new(0)),
];

fn cache_index(cache: &str) -> usize {
    match cache {
        "route" => 0,
        "response" => 1,
        _ => 2,
    }
}

/// A cache lookup. For the response cache a coalesced request counts as a
/// hit in the rate: it cost no upstream call of its own.
pub fn cache_lookup(cache: &'static str, result: &'static str) {
    let (hits, total) = &CACHE_COUNTS[cache_index(cache)];
    let hit = u64::from(result == "hit" || result == "coalesced");
    let h = hits.fetch_add(hit, Relaxed) + hit;
    let t = total.fetch_add(1, Relaxed) + 1;
    with_handle(
        &CACHE,
        &(cache, result),
        |&(cache, result)| {
            (
                counter!("ai_cache_requests_total", "cache" => cache, "result" => result),
                gauge!("ai_cache_hit_rate", "cache" => cache),
            )
        },
        |(lookups, rate)| {
            lookups.increment(1);
            rate.set(h as f64 / t as f64);
        },
    );
}

/// This worker's hit rate of `cache` since start (0 before any lookup).
pub fn hit_rate(cache: &str) -> f64 {
    let (hits, total) = &CACHE_COUNTS[cache_index(cache)];
    let t = total.load(Relaxed);
    if t == 0 {
        0.0
    } else {
        hits.load(Relaxed) as f64 / t as f64
    }
}

pub fn reasoning(strategy: &'static str, elapsed: Duration) {
    with_handle(
        &REASONING,
        &strategy,
        |&strategy| histogram!("ai_reasoning_duration_seconds", "strategy" => strategy),
        |h| h.record(elapsed.as_secs_f64()),
    );
}

pub fn upstream(provider: &str, endpoint: &'static str, outcome: &'static str, elapsed: Duration) {
    let make = || {
        (
            provider.to_string(),
            counter!("ai_upstream_requests_total", "provider" => provider.to_string(), "endpoint" => endpoint, "outcome" => outcome),
            histogram!("ai_upstream_duration_seconds", "provider" => provider.to_string(), "endpoint" => endpoint),
        )
    };
    UPSTREAM.with(|h| {
        let mut h = h.borrow_mut();
        // Keyed without the provider, which is borrowed here: a process has
        // one provider, so the kept name is checked rather than hashed.
        let v = h.entry((endpoint, outcome)).or_insert_with(make);
        if v.0 != provider {
            *v = make();
        }
        v.1.increment(1);
        v.2.record(elapsed.as_secs_f64());
    });
}

pub fn tokens(kind: &'static str, n: u64) {
    if n > 0 {
        with_handle(
            &TOKENS,
            &kind,
            |&kind| counter!("ai_tokens_total", "kind" => kind),
            |c| c.increment(n),
        );
    }
}

pub fn history(outcome: &'static str) {
    counter!("ai_backend_history_requests_total", "outcome" => outcome).increment(1);
}

pub fn backend_up(up: bool) {
    gauge!("ai_backend_up").set(if up { 1.0 } else { 0.0 });
}

pub fn rate_limited(bucket: &'static str) {
    counter!("ai_rate_limited_total", "bucket" => bucket).increment(1);
}

pub fn stream_parse_errors(n: u64) {
    if n > 0 {
        counter!("ai_upstream_stream_parse_errors_total").increment(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("M123XXXX"), "OTHER");
        assert_eq!(method_label("get"), "OTHER");
    }
}
