//! A client that leaves mid-stream cancels the upstream call: the mock Ark
//! sees its connection closed within 1 s (API.md §5.3 "Disconnects").

mod helper;

use std::time::{Duration, Instant};

use heartalk_e2e::mock_ark::{Behavior, MockArk};
use helper::*;
use serde_json::json;

#[test]
fn disconnect_mid_stream_aborts_the_upstream_within_a_second() {
    let ark = MockArk::start();
    // A long, slow answer: 4 characters every 200 ms.
    ark.set(
        Behavior::success()
            .with_content("慢".repeat(400))
            .with_chunk_delay(Duration::from_millis(200)),
    );
    let svc = live_service(&ark.base_url(), &[]);

    let body = json!({"messages":[{"role":"user","content":"你好"}]}).to_string();
    let (s, got) = stream_until_content(svc.addr, &user_token(), &body);
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert_eq!(ark.cancelled(), 0);

    let left = Instant::now();
    drop(s);
    assert!(
        ark.wait_for_cancelled(1, Duration::from_secs(1)),
        "the upstream stream was not cancelled within 1 s"
    );
    assert!(left.elapsed() < Duration::from_secs(1));
    assert_eq!(ark.completed(), 0, "the upstream answer was never finished");
    // The worker carries on.
    assert_eq!(http_get(svc.addr, "/health", DEADLINE).unwrap().status, 200);
}
