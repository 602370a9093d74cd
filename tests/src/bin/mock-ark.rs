//! The mock Ark server as a program, for `scripts/bench.sh`: serves the
//! OpenAI-compatible chat completions API on 127.0.0.1 with a fixed
//! latency until it is killed.
//!
//! Usage: `mock-ark [PORT] [LATENCY_MS] [CHUNK_DELAY_MS]` (defaults 0 = any
//! free port, 0 ms, 0 ms between a stream's SSE frames).
//! Prints `http://127.0.0.1:PORT/api/v3` on stdout once listening.

use std::time::Duration;

use heartalk_e2e::mock_ark::{Behavior, MockArk};

fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    let latency: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    let chunk_delay: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    let ark = MockArk::start_on(&format!("127.0.0.1:{port}"));
    ark.forget_requests();
    ark.set(
        Behavior::success()
            .with_latency(Duration::from_millis(latency))
            .with_chunk_delay(Duration::from_millis(chunk_delay)),
    );
    println!("{}", ark.base_url());
    loop {
        std::thread::park();
    }
}
