//! The long-lived objects the request handlers share, built once per
//! worker from [`Settings`]: the provider (wrapped so every upstream call
//! is counted and feeds the health window, then in circuit breakers with
//! optional fallback endpoints), the keyword router and its decision cache,
//! the history client, the rate-limit counter, the response cache and its
//! Redis link. (What only the HTTP edge uses, the CORS policy and the
//! per-environment security headers, the edge keeps in its own state.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::ResponseCache;
use crate::limits::breaker::{self, Breakers, Resilient};
use crate::limits::ratelimit::Limiter;
use crate::pipeline::history::{HistoryClient, HistoryConfig};
use crate::pipeline::routing::{DecisionCache, Router};
use crate::provider::ark::{ArkConfig, ArkProvider};
use crate::provider::simulated::{SimulatedConfig, SimulatedProvider};
use crate::provider::upstream_health::{self, UpstreamHealth};
use crate::provider::{
    self, Completion, CompletionRequest, EndpointKind, EventStream, Provider, UpstreamError,
};
use crate::runtime::redis_link::RedisLink;
use crate::settings::Settings;
use crate::telemetry;
use futures_util::future::BoxFuture;

/// Everything a handler needs besides the request.
pub struct Services {
    pub provider: Arc<dyn Provider>,
    /// Recent upstream outcomes, for `/api/v1/health`.
    pub upstream: Arc<UpstreamHealth>,
    pub router: Router,
    pub decisions: DecisionCache,
    pub history: HistoryClient,
    pub limiter: Limiter,
    /// The response cache and coalescing table (§9).
    pub cache: Arc<ResponseCache>,
    /// `REDIS_URL`'s link (its maintenance task is spawned by `run`).
    pub redis: Option<Arc<RedisLink>>,
    /// Per-endpoint circuit breakers (health reads them).
    pub breakers: Arc<Breakers>,
}

impl Services {
    pub fn new(settings: &Settings) -> anyhow::Result<Services> {
        let p = &settings.pipeline;
        let inner: Arc<dyn Provider> = if settings.provider.simulated() {
            Arc::new(SimulatedProvider::new(SimulatedConfig {
                latency: p.simulated_latency,
                tokens_per_sec: p.simulated_tokens_per_sec,
                reasoning: p.simulated_reasoning,
            }))
        } else {
            if !p.endpoints_configured {
                tracing::error!(
                    "live mode without BYTEPLUS_AMI_CHAT_EP / BYTEPLUS_AMI_WORK_ASSISTANT_EP: calls will use the placeholder model names sim-chat / sim-work"
                );
            }
            Arc::new(ArkProvider::new(ArkConfig {
                base_url: p.base_url.clone(),
                api_key: p.api_key.clone(),
                name: settings.provider.name.clone(),
                max_retries: p.max_retries,
                stream_usage: p.stream_usage,
                http2: p.upstream_http2,
                pool_idle: p.upstream_pool_idle,
            })?)
        };
        let router = Router::load(&settings.keywords_config);
        if router.is_fallback() {
            tracing::warn!(path = %settings.keywords_config.display(), "router config missing or invalid; using the built-in fallback table");
        }
        let decisions = router.new_cache();
        let history = HistoryClient::new(HistoryConfig {
            base_url: p.backend_url.clone(),
            api_prefix: p.backend_api_prefix.clone(),
            conversation_path: p.backend_conversation_path.clone(),
            api_key: p.backend_api_key().into(),
            jwt_secret: String::from_utf8_lossy(p.jwt.signing_secret())
                .as_ref()
                .into(),
            timeout: p.backend_timeout,
            retry_delay: Duration::from_secs(1),
            cache_ttl: p.history_cache_ttl,
            max_rounds: p.max_conversation_rounds,
            max_context_tokens: p.max_context_tokens,
        })?;
        let upstream = Arc::new(UpstreamHealth::default());
        // A bad Redis setting is logged and the worker runs without Redis
        // (a worker that refused to start would be restarted in a loop).
        let redis = match &p.redis_url {
            None => {
                let ignored = p.redis_tls.set_vars();
                if !ignored.is_empty() {
                    tracing::warn!(vars = ?ignored, "Redis TLS files are set but REDIS_URL is not; ignoring them");
                }
                None
            }
            Some(url) => match RedisLink::new(
                url,
                p.redis_password.as_ref().map(|s| s.0.as_str()),
                &p.redis_tls,
                p.redis_timeout,
            ) {
                Ok(link) => Some(Arc::new(link)),
                Err(e) => {
                    tracing::error!(error = %e, "Redis is misconfigured; running without Redis");
                    None
                }
            },
        };
        let cache = Arc::new(ResponseCache::new(
            p.cache_enabled,
            p.cache_ttl,
            p.cache_max_entries,
            p.cache_max_bytes,
            redis.clone(),
        ));
        let breakers = Arc::new(Breakers::new(
            breaker::Config {
                threshold: p.circuit_threshold,
                open_for: p.circuit_open,
            },
            p.chat_fallback.clone(),
            p.work_fallback.clone(),
        ));
        let metered: Arc<dyn Provider> = Arc::new(Metered {
            inner,
            health: upstream.clone(),
        });
        Ok(Services {
            provider: Arc::new(Resilient {
                inner: metered,
                breakers: breakers.clone(),
            }),
            upstream,
            router,
            decisions,
            history,
            limiter: Limiter::new(
                crate::limits::fleet_limits::SharedTable::from_env(),
                redis.clone(),
            ),
            cache,
            redis,
            breakers,
        })
    }

    /// Model id and per-attempt timeout of an endpoint.
    pub fn endpoint(&self, settings: &Settings, kind: EndpointKind) -> (String, Duration) {
        let p = &settings.pipeline;
        match kind {
            EndpointKind::Chat => (p.chat_endpoint.clone(), p.chat_timeout),
            EndpointKind::WorkAssistant => (p.work_endpoint.clone(), p.work_timeout),
        }
    }
}

/// Counts every upstream call (`ai_upstream_requests_total`,
/// `ai_upstream_duration_seconds`) around any provider, and feeds the
/// health window.
struct Metered {
    inner: Arc<dyn Provider>,
    health: Arc<UpstreamHealth>,
}

/// The health-window view of a call's end (`None`: a cancel says nothing
/// about the upstream).
fn health_outcome(result: Result<(), &UpstreamError>) -> Option<upstream_health::Outcome> {
    match result {
        Ok(()) => Some(upstream_health::Outcome::Ok),
        Err(UpstreamError::Cancelled) => None,
        Err(UpstreamError::Http {
            status: 401 | 403, ..
        }) => Some(upstream_health::Outcome::AuthFailed),
        Err(_) => Some(upstream_health::Outcome::Failed),
    }
}

impl Metered {
    /// Counts one finished call and feeds the health window.
    fn record(
        health: &UpstreamHealth,
        name: &str,
        endpoint: &'static str,
        start: Instant,
        result: Result<(), &UpstreamError>,
    ) {
        let outcome = match result {
            Ok(()) => "success",
            Err(e) => e.outcome(),
        };
        telemetry::upstream(name, endpoint, outcome, start.elapsed());
        if let Some(o) = health_outcome(result) {
            health.record(o, Instant::now());
        }
    }
}

impl Provider for Metered {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn is_simulated(&self) -> bool {
        self.inner.is_simulated()
    }

    fn complete(
        &self,
        req: CompletionRequest,
    ) -> BoxFuture<'static, Result<Completion, UpstreamError>> {
        let name = self.inner.name().to_string();
        let endpoint = req.endpoint.label();
        let call = self.inner.complete(req);
        let health = self.health.clone();
        Box::pin(async move {
            let start = Instant::now();
            let result = call.await;
            Self::record(&health, &name, endpoint, start, result.as_ref().map(|_| ()));
            result
        })
    }

    fn stream(
        &self,
        req: CompletionRequest,
    ) -> BoxFuture<'static, Result<EventStream, UpstreamError>> {
        let name = self.inner.name().to_string();
        let endpoint = req.endpoint.label();
        let call = self.inner.stream(req);
        let health = self.health.clone();
        Box::pin(async move {
            let start = Instant::now();
            match call.await {
                Err(e) => {
                    Self::record(&health, &name, endpoint, start, Err(&e));
                    Err(e)
                }
                // Counted once, when the stream ends or is dropped.
                Ok(stream) => Ok(provider::on_end(stream, move |r| {
                    Self::record(&health, &name, endpoint, start, r)
                })),
            }
        })
    }
}
