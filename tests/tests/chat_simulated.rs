//! With no API key the service answers through the simulated provider:
//! the README's main command (`heartalk run -c ecosystem.toml`) works, and
//! API.md §15 #1 (health) holds.

mod helper;

use std::time::Duration;

use helper::*;
use serde_json::json;

#[test]
fn the_repository_config_serves_a_simulated_chat() {
    // Exactly the README's command, on a free port (PORT=0 overrides the
    // first app's port), from the repository root.
    let repo = repo();
    let mut sup = Supervisor::run_file(&repo.join("ecosystem.toml"), |cmd| {
        cmd.current_dir(&repo)
            .env("PORT", "0")
            .env("SIMULATED_LATENCY_MS", "20")
            .env("SIMULATED_TOKENS_PER_SEC", "0");
    });
    let addr = sup.addr();
    sup.wait_event("fleet_ready", |_| true);

    let token = jwt(
        &json!({"userId": "u1", "exp": now_unix() + 60}),
        "dev_jwt_secret_key_change_in_production",
    );
    let r = post_json(
        addr,
        "/api/v1/chat/generate",
        Some(&token),
        &json!({"messages":[{"role":"user","content":"你好"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["success"], true);
    assert_eq!(body["provider"], "simulated");
    assert_eq!(body["endpoint"], "sim-chat");
    assert!(
        body["data"]["content"].as_str().unwrap().contains("你好"),
        "{body}"
    );
    assert_eq!(body["reasoning"]["type"], "chain-of-thought");

    let r = post_json(
        addr,
        "/api/v1/chat/stream",
        Some(&token),
        &json!({"messages":[{"role":"user","content":"你好"}]}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let frames = sse_json(&r.body);
    assert!(frames.iter().filter(|f| f["type"] == "content").count() >= 1);
    assert_eq!(frames.last().unwrap()["type"], "complete");
    assert_eq!(frames.iter().filter(|f| f["type"] == "complete").count(), 1);
    sup.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
fn health_vectors() {
    let svc = Service::start(1, &[("SIMULATED_LATENCY_MS", "0")]);
    let r = http_get(svc.addr, "/health", Duration::from_secs(10)).unwrap();
    assert_eq!(r.status, 200);
    let b = r.json();
    assert_eq!(b["status"], "healthy");
    assert!(b["memory"]["rss"].as_u64().unwrap() > 0);
    assert!(b.get("success").is_none() && b.get("requestId").is_none());

    let r = http_get(svc.addr, "/api/v1/health", Duration::from_secs(10)).unwrap();
    assert_eq!(r.status, 200);
    let d = &r.json()["data"];
    assert_eq!(d["service"], "ai-service");
    // Every component is healthy here (worker/src/http/health.rs): the router
    // loaded its file, no REDIS_URL (cache), and the simulated provider is
    // `degraded` only in production, which NODE_ENV (unset) is not.
    assert_eq!(d["environment"], "development", "{d}");
    for component in ["router", "cache", "reasoning", "providers"] {
        assert_eq!(d["services"][component]["status"], "healthy", "{d}");
    }
    assert_eq!(d["status"], "healthy", "{d}");
    assert_eq!(d["services"]["providers"]["simulated"], true);
    assert!(d["system"]["pid"].as_u64().unwrap() > 0);
    assert_eq!(d["services"]["router"]["config"], "file");

    let r = get_auth(svc.addr, "/api/v1/providers", "anything");
    assert_eq!(r.status, 200);
    let p = r.json();
    assert_eq!(p["data"]["simulated"], true);
    assert_eq!(p["data"]["providers"][0]["id"], "simulated");
    // NODE_ENV=development (the default) does not require the Bearer header.
    let r = request(svc.addr, "GET", "/api/v1/models", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["data"]["total"], 2);
}
