//! The three probe endpoints of API.md §5.1: `GET /health` (liveness, flat
//! body), `GET /api/v1/health` (component health wrapped in `data`, the
//! container/orchestrator probe) and `GET /ready` (readiness, flips to 503
//! when the worker starts draining, or while it or any slot of its fleet
//! cannot accept connections, so a load balancer stops sending work).
//!
//! Component status is decided by the pure [`services`] function from
//! facts gathered elsewhere, so the rules are unit-tested without a server.
//! The probes never do network I/O and never block on disk: the router
//! config is loaded once at start-up (the router remembers whether it fell back) and memory
//! comes from procfs.

use http::{Response, StatusCode};
use serde::Serialize;

use crate::http::state::{AppState, Phase};
use crate::pipeline::response::{self, Body};
use crate::provider::upstream_health;
use crate::runtime::clock;
use crate::settings::{ProviderSettings, ReasoningSettings};

/// A component's or the service's health, ordered from best to worst so
/// the overall status is simply the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Degraded,
    Unhealthy,
}

/// `memory` as the Node.js service reported it. Only `rss` is measured;
/// the V8 heap keys have no equivalent and stay 0 so clients that read
/// them keep working.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    pub rss: u64,
    pub heap_total: u64,
    pub heap_used: u64,
    pub external: u64,
    pub array_buffers: u64,
}

impl Memory {
    fn current() -> Self {
        Memory {
            rss: rss_bytes().unwrap_or(0),
            heap_total: 0,
            heap_used: 0,
            external: 0,
            array_buffers: 0,
        }
    }
}

/// Resident set size in bytes: field 2 of `/proc/self/statm` (pages) times
/// the page size. `None` off Linux or if procfs is not mounted.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page_size = u64::try_from(page_size).ok().filter(|p| *p > 0)?;
    Some(pages * page_size)
}

/// `GET /health`: always 200 while the process can answer.
pub fn liveness(state: &AppState) -> Response<Body> {
    #[derive(Serialize)]
    struct Liveness<'a> {
        status: &'static str,
        timestamp: String,
        uptime: f64,
        memory: Memory,
        version: &'a str,
    }
    response::json(
        StatusCode::OK,
        &Liveness {
            status: "healthy",
            timestamp: clock::now_iso8601(),
            uptime: state.started.elapsed().as_secs_f64(),
            memory: Memory::current(),
            version: &state.ctx.settings.service_version,
        },
    )
}

/// `GET /ready`: 200 only in [`Phase::Ready`], and only while neither this
/// worker nor any slot of its app is degraded (see [`ready_answer`]).
pub fn readiness(state: &AppState) -> Response<Body> {
    let (status, body) = ready_answer(
        state.phase(),
        state.degraded(),
        state.fleet_not_serving(),
        state.ctx.settings.worker_id,
    );
    response::json(status, &body)
}

/// What `/ready` answers, from the phase, whether this worker cannot
/// accept connections (`degraded`, see [`crate::http::budget`]) and how many
/// slots of its app are not serving (`fleet_not_serving`, from its app's
/// word of the supervisor's page; `None` when running alone):
///
/// - `200 {status:"ready", worker_id}` when serving and all is well;
/// - `503 {status:"starting"}` / `503 {status:"draining"}` as API.md §5.1;
/// - `503 {status:"degraded", worker_id, accepting, fleet_not_serving}`
///   while this worker, or any slot of its app, cannot accept: the
///   degraded worker itself cannot answer a new probe, so the others say
///   it for the app, and its load balancer steers away from all of it
///   rather than leaving part of its connections hanging. Other apps of
///   the supervisor have their own words and are not concerned.
pub fn ready_answer(
    phase: Phase,
    degraded: bool,
    fleet_not_serving: Option<u64>,
    worker_id: u32,
) -> (StatusCode, serde_json::Value) {
    match phase {
        Phase::Ready if degraded || fleet_not_serving.is_some_and(|n| n > 0) => {
            let mut body = serde_json::json!({
                "status": "degraded",
                "worker_id": worker_id,
                "accepting": !degraded,
            });
            if let Some(n) = fleet_not_serving {
                body["fleet_not_serving"] = n.into();
            }
            (StatusCode::SERVICE_UNAVAILABLE, body)
        }
        Phase::Ready => (
            StatusCode::OK,
            serde_json::json!({"status": "ready", "worker_id": worker_id}),
        ),
        Phase::Starting => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "starting"}),
        ),
        Phase::Draining => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "draining"}),
        ),
    }
}

/// The facts component health is decided from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub router_config_loaded: bool,
    pub reasoning: &'a ReasoningSettings,
    pub provider: &'a ProviderSettings,
    pub production: bool,
    /// What recent upstream calls say (live mode only).
    pub upstream: upstream_health::Verdict,
    /// Response-cache backends, and whether Redis is configured but down.
    pub cache_backends: &'a [&'static str],
    pub redis_down: bool,
    pub cache_hit_rate: f64,
    /// Some endpoint's circuit breaker is open (providers `degraded`).
    pub circuit_open: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Services {
    pub router: RouterHealth,
    pub cache: CacheHealth,
    pub reasoning: ReasoningHealth,
    pub providers: ProviderHealth,
}

impl Services {
    /// The worst component status.
    pub fn overall(&self) -> Status {
        [
            self.router.status,
            self.cache.status,
            self.reasoning.status,
            self.providers.status,
        ]
        .into_iter()
        .max()
        .unwrap_or(Status::Healthy)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouterHealth {
    pub status: Status,
    /// `file` or `fallback`.
    pub config: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheHealth {
    pub status: Status,
    pub backends: Vec<&'static str>,
    pub hit_rate: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReasoningHealth {
    pub status: Status,
    pub chain_of_thought: bool,
    pub self_consistency: bool,
    pub samples: u32,
    pub show_reasoning_process: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderHealth {
    pub status: Status,
    pub provider: String,
    pub mode: &'static str,
    pub simulated: bool,
}

/// Component health: the router config file; the response cache
/// (`degraded` while `REDIS_URL` is set and Redis does not answer); the
/// reasoning switches; and the provider: simulated is `degraded` only in
/// production (where it means a missing API key); live mode follows the
/// recent upstream outcomes (see [`crate::provider::upstream_health`]) and is
/// `degraded` while a circuit breaker is open.
pub fn services(inputs: Inputs<'_>) -> Services {
    let router = if inputs.router_config_loaded {
        RouterHealth {
            status: Status::Healthy,
            config: "file",
        }
    } else {
        RouterHealth {
            status: Status::Degraded,
            config: "fallback",
        }
    };
    let providers = if inputs.provider.simulated() {
        ProviderHealth {
            status: if inputs.production {
                Status::Degraded
            } else {
                Status::Healthy
            },
            provider: "simulated".to_string(),
            mode: "simulated",
            simulated: true,
        }
    } else {
        ProviderHealth {
            status: match inputs.upstream {
                upstream_health::Verdict::Healthy if inputs.circuit_open => Status::Degraded,
                upstream_health::Verdict::Healthy => Status::Healthy,
                upstream_health::Verdict::Degraded => Status::Degraded,
                upstream_health::Verdict::Unhealthy => Status::Unhealthy,
            },
            provider: inputs.provider.name.clone(),
            mode: "live",
            simulated: false,
        }
    };
    Services {
        router,
        cache: CacheHealth {
            status: if inputs.redis_down {
                Status::Degraded
            } else {
                Status::Healthy
            },
            backends: inputs.cache_backends.to_vec(),
            hit_rate: (inputs.cache_hit_rate * 1000.0).round() / 1000.0,
        },
        reasoning: ReasoningHealth {
            status: Status::Healthy,
            chain_of_thought: inputs.reasoning.chain_of_thought,
            self_consistency: inputs.reasoning.self_consistency,
            samples: inputs.reasoning.samples,
            show_reasoning_process: inputs.reasoning.show_reasoning_process,
        },
        providers,
    }
}

/// HTTP status for an overall health: 503 only when `unhealthy`; a
/// `degraded` service still serves (§13 b).
pub fn http_status(overall: Status) -> StatusCode {
    match overall {
        Status::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
        Status::Healthy | Status::Degraded => StatusCode::OK,
    }
}

/// `GET /api/v1/health`.
pub fn components(state: &AppState) -> Response<Body> {
    #[derive(Serialize)]
    struct SystemMemory {
        rss: u64,
    }
    #[derive(Serialize)]
    struct System {
        memory: SystemMemory,
        pid: u32,
        worker_id: u32,
    }
    #[derive(Serialize)]
    struct Data<'a> {
        status: Status,
        service: &'static str,
        version: &'a str,
        timestamp: String,
        uptime: f64,
        environment: &'a str,
        memory: Memory,
        system: System,
        services: Services,
    }
    #[derive(Serialize)]
    struct Wrapped<'a> {
        data: Data<'a>,
    }

    let s = &state.ctx.settings;
    let services = services(Inputs {
        router_config_loaded: state.router_config_loaded,
        reasoning: &s.reasoning,
        provider: &s.provider,
        production: s.is_production(),
        upstream: state
            .ctx
            .services
            .upstream
            .verdict(std::time::Instant::now()),
        cache_backends: &state.ctx.services.cache.backends(),
        redis_down: state.ctx.services.cache.degraded(),
        cache_hit_rate: crate::telemetry::hit_rate("response"),
        circuit_open: state.ctx.services.breakers.any_open(),
    });
    let overall = services.overall();
    let memory = Memory::current();
    response::json(
        http_status(overall),
        &Wrapped {
            data: Data {
                status: overall,
                service: "ai-service",
                version: &s.service_version,
                timestamp: clock::now_iso8601(),
                uptime: state.started.elapsed().as_secs_f64(),
                environment: &s.node_env,
                memory,
                system: System {
                    memory: SystemMemory { rss: memory.rss },
                    pid: std::process::id(),
                    worker_id: s.worker_id,
                },
                services,
            },
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input at its healthy default, with these settings.
    fn inputs<'a>(reasoning: &'a ReasoningSettings, provider: &'a ProviderSettings) -> Inputs<'a> {
        Inputs {
            router_config_loaded: true,
            reasoning,
            provider,
            production: false,
            upstream: upstream_health::Verdict::Healthy,
            cache_backends: &["memory"],
            redis_down: false,
            cache_hit_rate: 0.0,
            circuit_open: false,
        }
    }

    fn reasoning() -> ReasoningSettings {
        ReasoningSettings {
            chain_of_thought: true,
            self_consistency: false,
            samples: 5,
            show_reasoning_process: true,
        }
    }

    fn provider(mode: &str, key: bool) -> ProviderSettings {
        ProviderSettings {
            mode: mode.into(),
            name: "ark".into(),
            has_api_key: key,
        }
    }

    #[test]
    fn status_order_and_aggregation() {
        assert!(Status::Healthy < Status::Degraded && Status::Degraded < Status::Unhealthy);
        let r = reasoning();
        let p = provider("auto", true);
        let mut s = services(Inputs {
            production: true,
            ..inputs(&r, &p)
        });
        assert_eq!(s.overall(), Status::Healthy);
        s.cache.status = Status::Degraded;
        assert_eq!(s.overall(), Status::Degraded);
        s.router.status = Status::Unhealthy;
        assert_eq!(s.overall(), Status::Unhealthy);
        assert_eq!(http_status(Status::Degraded), StatusCode::OK);
        assert_eq!(
            http_status(Status::Unhealthy),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn missing_router_config_degrades() {
        let r = reasoning();
        let p = provider("auto", true);
        let s = services(Inputs {
            router_config_loaded: false,
            ..inputs(&r, &p)
        });
        assert_eq!(
            s.router,
            RouterHealth {
                status: Status::Degraded,
                config: "fallback"
            }
        );
        assert_eq!(s.overall(), Status::Degraded);
    }

    #[test]
    fn simulated_provider_is_degraded_only_in_production() {
        let r = reasoning();
        // `live` with an empty key stays live (§10.1 omits the header).
        for (mode, key) in [("auto", false), ("simulated", true)] {
            let p = provider(mode, key);
            for production in [false, true] {
                let s = services(Inputs {
                    router_config_loaded: true,
                    reasoning: &r,
                    provider: &p,
                    production,
                    upstream: upstream_health::Verdict::Unhealthy,
                    cache_backends: &["memory"],
                    redis_down: false,
                    cache_hit_rate: 0.0,
                    circuit_open: false,
                });
                assert!(s.providers.simulated, "{mode} {key}");
                assert_eq!(s.providers.provider, "simulated");
                assert_eq!(s.providers.mode, "simulated");
                let want = if production {
                    Status::Degraded
                } else {
                    Status::Healthy
                };
                assert_eq!(s.providers.status, want);
                assert_eq!(s.overall(), want);
            }
        }
    }

    #[test]
    fn live_provider_reports_its_name() {
        let r = reasoning();
        let p = provider("auto", true);
        let s = services(Inputs {
            production: true,
            ..inputs(&r, &p)
        });
        assert_eq!(
            s.providers,
            ProviderHealth {
                status: Status::Healthy,
                provider: "ark".into(),
                mode: "live",
                simulated: false
            }
        );
        assert_eq!(s.reasoning.samples, 5);
        assert!(!s.reasoning.self_consistency);
        for (verdict, want) in [
            (upstream_health::Verdict::Degraded, Status::Degraded),
            (upstream_health::Verdict::Unhealthy, Status::Unhealthy),
        ] {
            let s = services(Inputs {
                production: true,
                upstream: verdict,
                ..inputs(&r, &p)
            });
            assert_eq!(s.providers.status, want);
            assert_eq!(s.overall(), want);
        }
        // An open breaker, or Redis down, is `degraded`, never a 503.
        let s = services(Inputs {
            production: true,
            cache_backends: &["memory", "redis"],
            redis_down: true,
            cache_hit_rate: 0.5,
            circuit_open: true,
            ..inputs(&r, &p)
        });
        assert_eq!(s.providers.status, Status::Degraded);
        assert_eq!(s.cache.status, Status::Degraded);
        assert_eq!(s.cache.backends, vec!["memory", "redis"]);
        assert_eq!(http_status(s.overall()), StatusCode::OK);
    }

    #[test]
    fn services_json_shape() {
        let r = reasoning();
        let p = provider("auto", false);
        let v = serde_json::to_value(services(inputs(&r, &p))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "router": {"status": "healthy", "config": "file"},
                "cache": {"status": "healthy", "backends": ["memory"], "hit_rate": 0.0},
                "reasoning": {"status": "healthy", "chain_of_thought": true, "self_consistency": false,
                              "samples": 5, "show_reasoning_process": true},
                "providers": {"status": "healthy", "provider": "simulated", "mode": "simulated", "simulated": true}
            })
        );
    }

    #[test]
    fn ready_answers_for_the_fleet() {
        use serde_json::json;
        let ok = (StatusCode::OK, json!({"status": "ready", "worker_id": 2}));
        assert_eq!(ready_answer(Phase::Ready, false, None, 2), ok, "alone");
        assert_eq!(ready_answer(Phase::Ready, false, Some(0), 2), ok);
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(
            ready_answer(Phase::Ready, false, Some(1), 2),
            (
                unavailable,
                json!({"status": "degraded", "worker_id": 2, "accepting": true, "fleet_not_serving": 1})
            ),
            "another slot cannot accept: the container is not ready"
        );
        assert_eq!(
            ready_answer(Phase::Ready, true, None, 2),
            (
                unavailable,
                json!({"status": "degraded", "worker_id": 2, "accepting": false})
            ),
            "alone and degraded"
        );
        assert_eq!(
            ready_answer(Phase::Draining, true, Some(3), 2),
            (unavailable, json!({"status": "draining"})),
            "draining says so first"
        );
        assert_eq!(
            ready_answer(Phase::Starting, false, Some(1), 2),
            (unavailable, json!({"status": "starting"}))
        );
    }

    #[test]
    fn rss_is_real() {
        assert!(rss_bytes().is_some_and(|b| b > 0));
    }
}
