//! `compose/docker-compose.yml` for real, with Debian's `podman-compose`:
//! the image built from the Dockerfile (`$HEARTALK_IMAGE`, or
//! `scripts/image.sh`) and the Redis stand-in that `scripts/image.sh`
//! makes under the file's name (`redis:7.2-alpine`, from Debian's
//! redis-server). The stack comes up, the service reaches Redis by its
//! service name (its health lists the Redis cache backend), a chat answers,
//! and after the heartalk container restarts (its in-process cache gone)
//! the same chat is a cache HIT, which only Redis can have kept; then
//! `down` removes everything.

mod helper;

use std::time::Duration;

use helper::*;
use serde_json::json;

#[test]
fn the_dev_stack_serves_and_keeps_its_cache_in_redis_across_a_restart() {
    let port = free_port();
    let stack = DevCompose::new(
        format!("heartalktest{}", std::process::id()),
        &[
            ("HEARTALK_IMAGE", &built_image()),
            ("HEARTALK_PORT", &port.to_string()),
        ],
    );
    stack.run_ok(&["up", "--detach", "--no-build"]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let backends = || -> Result<(), String> {
        let r =
            http_get(addr, "/api/v1/health", Duration::from_secs(5)).map_err(|e| e.to_string())?;
        let cache = r.json()["data"]["services"]["cache"].clone();
        if cache["backends"].to_string().contains("redis") && cache["status"] == "healthy" {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    };
    wait_until(
        "the service up with Redis",
        Duration::from_secs(90),
        backends,
    );

    // The compose file's development secret signs the tokens.
    let token = jwt(
        &json!({"userId": "compose-user", "exp": now_unix() + 600}),
        "dev_jwt_secret_key_change_in_production",
    );
    let chat = json!({"messages": [{"role": "user", "content": "compose cache check"}]});
    let first = post_json(addr, "/api/v1/chat/generate", Some(&token), &chat);
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    // Redis holds it (the cache writes behind the answer: poll).
    let redis = stack.container("redis");
    wait_until("the answer in Redis", DEADLINE, || {
        let keys = podman(&["exec", &redis, "redis-cli", "--scan"]);
        let keys = String::from_utf8_lossy(&keys.stdout).into_owned();
        if keys.lines().count() > 0 {
            Ok(())
        } else {
            Err("no key yet".into())
        }
    });

    // A new heartalk container: nothing in its memory.
    stack.run_ok(&["restart", "heartalk"]);
    wait_until(
        "the service back with Redis",
        Duration::from_secs(90),
        backends,
    );
    let again = post_json(addr, "/api/v1/chat/generate", Some(&token), &chat);
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.header("x-cache"), Some("HIT"), "{}", again.body);

    stack.run_ok(&["down", "--volumes"]);
    let left = podman(&[
        "ps",
        "--all",
        "--filter",
        &format!("name={}", stack.project),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&left.stdout).lines().count(),
        1,
        "containers left: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}
