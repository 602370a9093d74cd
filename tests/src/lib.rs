//! Support crate for the end-to-end tests in `tests/tests/`: the mock model
//! provider ([`mock_ark`]) and the mock HearTalk backend ([`mock_backend`]),
//! both real HTTP servers on 127.0.0.1:0 with faults the tests can dial in,
//! and a real Redis server ([`redis_server`]) per test.
//! Its binary `test-worker` is the misbehaving worker the supervisor tests use.

pub mod mock_ark;
pub mod mock_backend;
pub mod redis_server;

/// A free TCP port on 127.0.0.1 (bound, read, released): nothing listens on
/// it until the test starts something there.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// [`free_port`] as an address on 127.0.0.1: for a server the test starts
/// there, or, left alone, for a closed port that refuses connections.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// The repository's root (for the shipped configs, scripts and assets).
pub fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}
