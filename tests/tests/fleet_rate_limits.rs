//! Fleet-wide rate limits (API.md §4, §13 k): a bucket is one budget for
//! every worker of a supervisor (the shared-memory table, no Redis), and
//! for every replica sharing a Redis. Hammered over many connections spread
//! across the workers, the 30/min `ai_api` bucket admits 30 (± 1).

mod helper;

use std::collections::HashSet;
use std::net::SocketAddr;

use heartalk_e2e::redis_server::RedisServer;
use helper::*;
use serde_json::json;

/// `n` requests from 8 threads, each on its own connection, spread over
/// `addrs`; returns (admitted, refused, workers that answered).
fn hammer(addrs: &[SocketAddr], n: usize) -> (usize, usize, HashSet<String>) {
    let token = user_token();
    let per = n / 8;
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let token = token.clone();
            let addrs = addrs.to_vec();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                for i in 0..per {
                    let addr = addrs[(t + i) % addrs.len()];
                    let body =
                        json!({"messages":[{"role":"user","content":format!("hi {t} {i}")}]});
                    let r = post_json(addr, "/api/v1/chat/generate", Some(&token), &body);
                    let worker = format!("{addr}#{}", r.header("x-worker-id").unwrap_or("?"));
                    out.push((
                        r.status,
                        worker,
                        r.header("ratelimit-limit").map(str::to_string),
                    ));
                }
                out
            })
        })
        .collect();
    let (mut ok, mut refused, mut workers) = (0, 0, HashSet::new());
    for h in handles {
        for (status, worker, limit) in h.join().unwrap() {
            assert_eq!(limit.as_deref(), Some("30"));
            match status {
                200 => ok += 1,
                429 => refused += 1,
                other => panic!("unexpected status {other}"),
            }
            workers.insert(worker);
        }
    }
    (ok, refused, workers)
}

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("SIMULATED_LATENCY_MS", "0"),
        ("SIMULATED_TOKENS_PER_SEC", "0"),
    ]
}

#[test]
fn one_budget_for_all_workers_without_redis() {
    let svc = Service::start(4, &env());
    stay_in_one_window();
    let (ok, refused, workers) = hammer(&[svc.addr], 80);
    assert!(workers.len() >= 2, "spread over workers: {workers:?}");
    assert!((29..=31).contains(&ok), "admitted {ok} (refused {refused})");
    assert_eq!(ok + refused, 80);
}

#[test]
fn one_budget_for_two_supervisors_sharing_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut e = env();
    e.push(("REDIS_URL", url.as_str()));
    let a = Service::start(2, &e);
    let b = Service::start(2, &e);
    stay_in_one_window();
    let (ok, refused, workers) = hammer(&[a.addr, b.addr], 80);
    assert!(
        workers.iter().any(|w| w.starts_with(&a.addr.to_string()))
            && workers.iter().any(|w| w.starts_with(&b.addr.to_string())),
        "both supervisors answered: {workers:?}"
    );
    assert!((29..=31).contains(&ok), "admitted {ok} (refused {refused})");
    let keys = redis.cli(&["--scan", "--pattern", "heartalk:rl:*"]);
    assert!(
        keys.contains("ai_api:test-user-123"),
        "counted in Redis: {keys}"
    );
}

#[test]
fn a_reload_keeps_the_windows() {
    let mut e = env();
    e.push(("RATE_LIMIT_AI_MAX", "10"));
    let svc = Service::start(2, &e);
    stay_in_one_window();
    let token = user_token();
    let send = |n: usize| -> Vec<u16> {
        (0..n)
            .map(|i| {
                let body = json!({"messages":[{"role":"user","content":format!("r {i}")}]});
                post_json(svc.addr, "/api/v1/chat/generate", Some(&token), &body).status
            })
            .collect()
    };
    assert!(send(6).iter().all(|s| *s == 200));
    let old = svc.sup.spawned_pids();
    let out = svc.sup.cli(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A new generation of workers, the same table: 4 more, then refused.
    let statuses = send(6);
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 2);
    assert!(
        svc.sup.spawned_pids().len() > old.len(),
        "workers were replaced"
    );
}
