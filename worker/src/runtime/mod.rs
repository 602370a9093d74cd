//! What the worker process runs on, under the pipeline: the wall clock
//! ([`clock`]), stable hashing ([`fnv`]), the shared Redis connection
//! ([`redis_link`]), and its side of the supervisor: watchdog pings
//! ([`watchdog`]), the fleet-state page `/ready` reads ([`fleet_state`]),
//! and memory given back to the system after a burst ([`alloc`]).
//!
//! Infrastructure: nothing here knows HTTP or the chat pipeline
//! ([`watchdog`] and [`alloc`] are handed the notify socket and a count of
//! open connections by the HTTP edge that spawns them).

pub mod alloc;
pub mod clock;
pub mod fleet_state;
pub mod fnv;
pub mod redis_link;
pub mod watchdog;
