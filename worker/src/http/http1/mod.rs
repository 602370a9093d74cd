//! The worker's own HTTP/1.1 server side, because hyper's costs too much
//! memory for what this service mostly does: hold a chat stream open for
//! 10–60 s while the model answers. hyper keeps about 38 KB per connection
//! for its whole life (a 16 KB read buffer, an 8 KB head buffer, a cached
//! response header map, its dispatcher), measured with dhat in
//! docs/benchmarks.md; this one keeps no buffer between reads and writes,
//! only its task (≈ 2.4 KB), which is what lets one worker hold 10,000
//! streams on little memory (the [streams] issue).
//!
//! Parsing is `httparse`'s (the parser under hyper), and every wire rule
//! follows hyper's server so the bytes clients see do not change:
//! - [`codec`]: request heads, body framing and chunked decoding, response
//!   heads (pure, unit-tested);
//! - [`body`]: the request body the handler reads on demand;
//! - [`conn`]: the driver of one connection, and the [`Drain`] of them all.
//!
//! HTTP/2 stays with hyper: the driver recognises the h2c preface and
//! hands the connection back ([`Served::Http2`]).

pub mod body;
pub mod codec;
pub mod conn;

pub use body::RequestBody;
pub use conn::{Drain, DrainSignal, Rewind, Served, serve};
