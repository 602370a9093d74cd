//! Support crate for the end-to-end tests in `tests/tests/`: the mock model
//! provider ([`mock_ark`]) and the mock HearTalk backend ([`mock_backend`]),
//! both real HTTP servers on 127.0.0.1:0 with faults the tests can dial in,
//! and a real Redis server ([`redis_server`]) per test.
//! Its binary `test-worker` is the misbehaving worker the supervisor tests use.

pub mod mock_ark;
pub mod mock_backend;
pub mod redis_server;
