//! What limits the traffic a worker lets through: per-client rate limits
//! ([`ratelimit`]), the fleet-wide table they share with the other workers
//! of the machine ([`fleet_limits`]), and the circuit breakers that stop
//! calling a failing upstream and pick its fallback ([`breaker`]).
//!
//! Infrastructure: it knows nothing of HTTP or of the chat pipeline.

pub mod breaker;
pub mod fleet_limits;
pub mod ratelimit;
