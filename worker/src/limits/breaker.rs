//! Upstream resilience beyond retries (API.md §10, issue #7 `[edge]`): a circuit
//! breaker per endpoint and an optional fallback endpoint per route.
//!
//! The breaker is a pure state machine ([`step`]): `threshold` consecutive
//! endpoint failures open it; while open, calls fail at once without
//! touching the upstream (so a dead endpoint costs no timeouts and no
//! quota); after `open_for`, one probe call is let through (half-open) and
//! its outcome closes or re-opens the breaker. What counts as a failure is
//! [`UpstreamError::endpoint_trouble`]; client errors and cancellations are
//! neutral.
//!
//! [`Resilient`] wraps the metered provider: it asks the breaker before each
//! call, records the outcome (for streams, the outcome at the end of the
//! stream), and when the route has a fallback endpoint and the primary
//! failed with endpoint trouble (or its breaker is open), tries the
//! fallback once under its own breaker. Each breaker is `ai_circuit_state`
//! in the metrics, and any open one makes the providers `degraded` in
//! `/api/v1/health`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use crate::provider::{
    self, Completion, CompletionRequest, EndpointKind, EventStream, Provider, UpstreamError,
};
use crate::telemetry;

/// Breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// `probing`: the one trial call is out.
    HalfOpen {
        probing: bool,
    },
}

impl State {
    /// The `ai_circuit_state` value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> u8 {
        match self {
            State::Closed { .. } => 0,
            State::HalfOpen { .. } => 1,
            State::Open { .. } => 2,
        }
    }
}

/// What happens to a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A call asks to go out.
    Ask,
    Success,
    Failure,
    /// A call ended saying nothing about the endpoint (cancelled, 4xx).
    Neutral,
}

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub threshold: u32,
    pub open_for: Duration,
}

/// The answer to [`Event::Ask`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Refused; retry after this long.
    Refused(Duration),
}

/// The pure transition function.
pub fn step(state: State, event: Event, now: Instant, cfg: Config) -> (State, Admission) {
    let allowed = Admission::Allowed;
    match (state, event) {
        (State::Open { until }, Event::Ask) if now < until => {
            (state, Admission::Refused(until - now))
        }
        (State::Open { .. }, Event::Ask) => (State::HalfOpen { probing: true }, allowed),
        (State::HalfOpen { probing: true }, Event::Ask) => {
            (state, Admission::Refused(Duration::from_secs(1)))
        }
        (State::HalfOpen { probing: false }, Event::Ask) => {
            (State::HalfOpen { probing: true }, allowed)
        }
        (State::Closed { .. }, Event::Ask) => (state, allowed),
        (_, Event::Success) => (State::Closed { failures: 0 }, allowed),
        (State::Closed { failures }, Event::Failure) => {
            let failures = failures.saturating_add(1);
            if failures >= cfg.threshold.max(1) {
                (
                    State::Open {
                        until: now + cfg.open_for,
                    },
                    allowed,
                )
            } else {
                (State::Closed { failures }, allowed)
            }
        }
        (State::HalfOpen { .. } | State::Open { .. }, Event::Failure) => (
            State::Open {
                until: now + cfg.open_for,
            },
            allowed,
        ),
        // A probe that said nothing: let another one try.
        (State::HalfOpen { .. }, Event::Neutral) => (State::HalfOpen { probing: false }, allowed),
        (s, Event::Neutral) => (s, allowed),
    }
}

/// One endpoint's breaker.
pub struct Breaker {
    name: String,
    cfg: Config,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(name: &str, cfg: Config) -> Breaker {
        telemetry::circuit_state(name, 0);
        Breaker {
            name: name.to_string(),
            cfg,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn apply(&self, event: Event) -> Admission {
        let Ok(mut s) = self.state.lock() else {
            return Admission::Allowed;
        };
        let before = *s;
        let (next, admission) = step(before, event, Instant::now(), self.cfg);
        *s = next;
        if before.gauge() != next.gauge() {
            telemetry::circuit_state(&self.name, next.gauge());
            match next {
                State::Open { .. } => {
                    tracing::warn!(endpoint = %self.name, "circuit opened: failing fast")
                }
                State::Closed { .. } => tracing::info!(endpoint = %self.name, "circuit closed"),
                State::HalfOpen { .. } => {
                    tracing::info!(endpoint = %self.name, "circuit half-open: probing")
                }
            }
        }
        admission
    }

    /// Whether the breaker is open or probing (health `degraded`).
    pub fn is_open(&self) -> bool {
        self.state
            .lock()
            .map(|s| !matches!(*s, State::Closed { .. }))
            .unwrap_or(false)
    }

    fn ask(&self) -> Result<(), UpstreamError> {
        match self.apply(Event::Ask) {
            Admission::Allowed => Ok(()),
            Admission::Refused(retry_after) => {
                telemetry::circuit_rejected(&self.name);
                Err(UpstreamError::CircuitOpen {
                    endpoint: self.name.clone(),
                    retry_after: Duration::from_secs(retry_after.as_secs().max(1)),
                })
            }
        }
    }

    fn record(&self, outcome: Result<(), &UpstreamError>) {
        let event = match outcome {
            Ok(()) => Event::Success,
            Err(e) if e.endpoint_trouble() => Event::Failure,
            Err(_) => Event::Neutral,
        };
        self.apply(event);
    }
}

/// The breakers of every endpoint, shared with `/api/v1/health`.
pub struct Breakers {
    pub chat: Breaker,
    pub work: Breaker,
    pub chat_fallback: Option<(String, Breaker)>,
    pub work_fallback: Option<(String, Breaker)>,
}

impl Breakers {
    pub fn new(cfg: Config, chat_fallback: Option<String>, work_fallback: Option<String>) -> Self {
        Breakers {
            chat: Breaker::new("chat", cfg),
            work: Breaker::new("work_assistant", cfg),
            chat_fallback: chat_fallback.map(|m| (m, Breaker::new("chat:fallback", cfg))),
            work_fallback: work_fallback.map(|m| (m, Breaker::new("work_assistant:fallback", cfg))),
        }
    }

    fn primary(&self, kind: EndpointKind) -> &Breaker {
        match kind {
            EndpointKind::Chat => &self.chat,
            EndpointKind::WorkAssistant => &self.work,
        }
    }

    fn fallback(&self, kind: EndpointKind) -> Option<&(String, Breaker)> {
        match kind {
            EndpointKind::Chat => self.chat_fallback.as_ref(),
            EndpointKind::WorkAssistant => self.work_fallback.as_ref(),
        }
    }

    /// Any breaker not closed.
    pub fn any_open(&self) -> bool {
        self.chat.is_open()
            || self.work.is_open()
            || self
                .chat_fallback
                .as_ref()
                .is_some_and(|(_, b)| b.is_open())
            || self
                .work_fallback
                .as_ref()
                .is_some_and(|(_, b)| b.is_open())
    }
}

/// The provider with breakers and fallbacks around it.
pub struct Resilient {
    pub inner: Arc<dyn Provider>,
    pub breakers: Arc<Breakers>,
}

/// Which breaker a call goes through.
#[derive(Clone, Copy)]
struct Pick {
    kind: EndpointKind,
    fallback: bool,
}

impl Pick {
    fn get(self, b: &Breakers) -> &Breaker {
        if self.fallback {
            if let Some((_, f)) = b.fallback(self.kind) {
                return f;
            }
        }
        b.primary(self.kind)
    }
}

/// An admitted call's obligation to report its outcome. Dropped without a
/// report (the caller went away mid-call), it reports `Neutral`, so a
/// cancelled half-open probe lets the next call probe instead of leaving
/// the breaker refusing everything.
struct Ticket {
    breakers: Arc<Breakers>,
    pick: Pick,
    reported: bool,
}

impl Ticket {
    fn take(breakers: &Arc<Breakers>, pick: Pick) -> Result<Ticket, UpstreamError> {
        pick.get(breakers).ask()?;
        Ok(Ticket {
            breakers: breakers.clone(),
            pick,
            reported: false,
        })
    }

    fn report(mut self, outcome: Result<(), &UpstreamError>) {
        self.reported = true;
        self.pick.get(&self.breakers).record(outcome);
    }

    /// The outcome will be reported by someone else (the stream's guard).
    fn hand_over(mut self) {
        self.reported = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.reported {
            self.pick.get(&self.breakers).apply(Event::Neutral);
        }
    }
}

impl Resilient {
    async fn complete_via(
        inner: Arc<dyn Provider>,
        breakers: Arc<Breakers>,
        pick: Pick,
        req: CompletionRequest,
    ) -> Result<Completion, UpstreamError> {
        let ticket = Ticket::take(&breakers, pick)?;
        let r = inner.complete(req).await;
        ticket.report(r.as_ref().map(|_| ()));
        r
    }

    async fn stream_via(
        inner: Arc<dyn Provider>,
        breakers: Arc<Breakers>,
        pick: Pick,
        req: CompletionRequest,
    ) -> Result<EventStream, UpstreamError> {
        let ticket = Ticket::take(&breakers, pick)?;
        match inner.stream(req).await {
            Ok(s) => {
                ticket.hand_over();
                Ok(provider::on_end(s, move |r| pick.get(&breakers).record(r)))
            }
            Err(e) => {
                ticket.report(Err(&e));
                Err(e)
            }
        }
    }
}

/// Calls `call` on the primary endpoint and, when it fails with endpoint
/// trouble and the route has a fallback, once more on the fallback.
async fn with_fallback<T, F, Fut>(
    breakers: &Breakers,
    req: CompletionRequest,
    call: F,
) -> Result<T, UpstreamError>
where
    F: Fn(Pick, CompletionRequest) -> Fut,
    Fut: std::future::Future<Output = Result<T, UpstreamError>>,
{
    let kind = req.endpoint;
    // The fallback's request shares the primary's messages (no copy).
    let second = breakers
        .fallback(kind)
        .map(|(model, _)| req.for_model(model.clone()));
    let primary = Pick {
        kind,
        fallback: false,
    };
    match (call(primary, req).await, second) {
        (Err(e), Some(r)) if e.endpoint_trouble() => {
            tracing::warn!(error = %e, fallback = %r.model, "primary endpoint failed; trying the fallback");
            telemetry::upstream_fallback(kind.label());
            let pick = Pick {
                kind,
                fallback: true,
            };
            call(pick, r).await
        }
        (result, _) => result,
    }
}

impl Provider for Resilient {
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
        let inner = self.inner.clone();
        let breakers = self.breakers.clone();
        Box::pin(async move {
            with_fallback(&breakers, req, |pick, r| {
                Self::complete_via(inner.clone(), breakers.clone(), pick, r)
            })
            .await
        })
    }

    fn stream(
        &self,
        req: CompletionRequest,
    ) -> BoxFuture<'static, Result<EventStream, UpstreamError>> {
        let inner = self.inner.clone();
        let breakers = self.breakers.clone();
        Box::pin(async move {
            with_fallback(&breakers, req, |pick, r| {
                Self::stream_via(inner.clone(), breakers.clone(), pick, r)
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: Config = Config {
        threshold: 3,
        open_for: Duration::from_secs(30),
    };

    #[test]
    fn opens_after_consecutive_failures_only() {
        let t = Instant::now();
        let mut s = State::Closed { failures: 0 };
        for _ in 0..2 {
            s = step(s, Event::Failure, t, CFG).0;
        }
        // A success in between resets the count.
        s = step(s, Event::Success, t, CFG).0;
        assert_eq!(s, State::Closed { failures: 0 });
        for _ in 0..2 {
            s = step(s, Event::Failure, t, CFG).0;
        }
        assert_eq!(s, State::Closed { failures: 2 });
        // Neutral outcomes do not count either way.
        s = step(s, Event::Neutral, t, CFG).0;
        assert_eq!(s, State::Closed { failures: 2 });
        s = step(s, Event::Failure, t, CFG).0;
        assert_eq!(
            s,
            State::Open {
                until: t + CFG.open_for
            }
        );
        assert_eq!(s.gauge(), 2);
    }

    #[test]
    fn open_refuses_then_lets_one_probe_through() {
        let t = Instant::now();
        let open = State::Open {
            until: t + Duration::from_secs(30),
        };
        let (s, a) = step(open, Event::Ask, t + Duration::from_secs(10), CFG);
        assert_eq!(s, open);
        assert_eq!(a, Admission::Refused(Duration::from_secs(20)));
        let later = t + Duration::from_secs(31);
        let (s, a) = step(open, Event::Ask, later, CFG);
        assert_eq!(
            (s, a),
            (State::HalfOpen { probing: true }, Admission::Allowed)
        );
        assert_eq!(s.gauge(), 1);
        // Only one probe at a time.
        let (_, a) = step(s, Event::Ask, later, CFG);
        assert!(matches!(a, Admission::Refused(_)));
        // The probe's success closes it; its failure re-opens it.
        assert_eq!(
            step(s, Event::Success, later, CFG).0,
            State::Closed { failures: 0 }
        );
        assert_eq!(
            step(s, Event::Failure, later, CFG).0,
            State::Open {
                until: later + CFG.open_for
            }
        );
        // A probe that was cancelled lets the next call probe.
        assert_eq!(
            step(s, Event::Neutral, later, CFG).0,
            State::HalfOpen { probing: false }
        );
    }

    #[test]
    fn a_cancelled_probe_lets_the_next_call_probe() {
        let breakers = Arc::new(Breakers::new(
            Config {
                threshold: 1,
                open_for: Duration::ZERO,
            },
            None,
            None,
        ));
        breakers.chat.record(Err(&UpstreamError::Timeout { ms: 1 }));
        assert!(breakers.chat.is_open());
        let pick = Pick {
            kind: EndpointKind::Chat,
            fallback: false,
        };
        // The probe is admitted, then its caller goes away.
        let ticket = Ticket::take(&breakers, pick).expect("probe admitted");
        assert!(
            Ticket::take(&breakers, pick).is_err(),
            "one probe at a time"
        );
        drop(ticket);
        let next = Ticket::take(&breakers, pick).expect("the next call probes");
        next.report(Ok(()));
        assert!(!breakers.chat.is_open());
    }

    #[test]
    fn only_endpoint_trouble_counts() {
        let b = Breaker::new("test-endpoint", CFG);
        let bad_request = UpstreamError::Http {
            status: 400,
            code: Some("InvalidParameter".into()),
            message: "bad".into(),
            retry_after: None,
        };
        let quota = UpstreamError::Http {
            status: 429,
            code: Some("QuotaExceeded".into()),
            message: "quota".into(),
            retry_after: None,
        };
        for _ in 0..5 {
            b.record(Err(&bad_request));
            b.record(Err(&quota));
            b.record(Err(&UpstreamError::Cancelled));
        }
        assert!(!b.is_open());
        for _ in 0..3 {
            b.record(Err(&UpstreamError::Timeout { ms: 1 }));
        }
        assert!(b.is_open());
        assert!(matches!(b.ask(), Err(UpstreamError::CircuitOpen { .. })));
    }
}
