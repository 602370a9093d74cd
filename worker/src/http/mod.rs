//! The HTTP edge: everything between a socket and a handler's answer.
//!
//! It owns the listening sockets ([`listener`]), the accept loop and the
//! drain ([`server`]), the worker's own HTTP/1.1 driver ([`http1`]; h2c
//! stays with hyper), a connection's deadlines ([`conn_deadline`]) and the
//! connection budget ([`budget`]), the endpoints table ([`endpoints`]:
//! each endpoint's path, method and properties), the order of checks
//! ([`router`]), what every response gets on its way out
//! ([`headers`]), CORS ([`cors`]), request ids ([`request_id`]), the client
//! address behind proxies ([`proxy`]), and the endpoints that are about the
//! process rather than the chat: [`health`] and the supervisor's
//! [`fleet_metrics`]. What its connection tasks share is its [`state`],
//! which carries the pipeline's context.
//!
//! It calls into [`crate::pipeline`] for everything about a chat; nothing
//! below imports from here.

pub mod budget;
pub mod conn_deadline;
pub mod cors;
pub mod endpoints;
pub mod fleet_metrics;
pub mod headers;
pub mod health;
pub mod http1;
pub mod listener;
pub mod proxy;
pub mod request_id;
pub mod router;
pub mod server;
pub mod state;
