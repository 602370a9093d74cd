//! The response cache's second level in a real Redis (API.md §9, §5.1):
//! an answer cached by one supervisor's worker is a hit on another's; with
//! Redis killed mid-test requests keep succeeding (misses) and health says
//! `degraded`; when Redis is back, hits across supervisors resume.

mod helper;

use std::time::Duration;

use heartalk_e2e::mock_ark::MockArk;
use heartalk_e2e::redis_server::RedisServer;
use helper::*;
use serde_json::json;

/// Answers land in Redis in the background: waits until one is there.
fn wait_for_an_entry_in(redis: &RedisServer) {
    wait_for("an entry in Redis", Duration::from_secs(5), || {
        (!redis
            .cli(&["--scan", "--pattern", "heartalk:resp:v1:*"])
            .trim()
            .is_empty())
        .then_some(())
    });
}

/// (SETs, commands of any kind) that Redis has refused for want of memory.
fn refusals(redis: &RedisServer) -> (usize, usize) {
    let stat = |section: &str, line: &str, field: &str| -> usize {
        redis
            .cli(&["INFO", section])
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|fields| fields.split(',').find_map(|f| f.strip_prefix(field)))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    (
        stat("commandstats", "cmdstat_set:", "rejected_calls="),
        stat("errorstats", "errorstat_OOM:", "count="),
    )
}

#[test]
fn cached_by_one_supervisor_hit_on_another_and_redis_outages_degrade_only() {
    let mut redis = RedisServer::start();
    let ark = MockArk::start();
    let url = redis.url();
    let a = live_service(&ark.base_url(), &[("REDIS_URL", url.as_str())]);
    let b = live_service(&ark.base_url(), &[("REDIS_URL", url.as_str())]);
    assert_eq!(
        a.cache_health(),
        json!({"status": "healthy", "backends": ["memory", "redis"], "hit_rate": 0.0})
    );
    for svc in [&a, &b] {
        assert_eq!(svc.redis_up(), Some(1.0), "linked to Redis");
    }

    let first = a.ask("跨进程的问题");
    assert_eq!(first.header("x-cache"), Some("MISS"));
    wait_for_an_entry_in(&redis);
    let second = b.ask("跨进程的问题");
    assert_eq!(
        second.header("x-cache"),
        Some("HIT"),
        "L2 hit on the other supervisor"
    );
    assert_eq!(second.body, first.body);
    assert_eq!(ark.calls(), 1);

    // Redis goes away: requests still succeed, health is degraded.
    redis.kill();
    for i in 0..3 {
        let r = a.ask(&format!("Redis 不在 {i}"));
        assert_eq!(r.header("x-cache"), Some("MISS"));
    }
    for svc in [&a, &b] {
        wait_for("cache degraded", Duration::from_secs(10), || {
            (svc.cache_health()["status"] == "degraded").then_some(())
        });
        // The gauge says what health says (both follow the link's state).
        assert_eq!(svc.redis_up(), Some(0.0), "Redis is down");
    }
    let r = b.ask("Redis 不在 也要回答");
    assert_eq!(r.header("x-cache"), Some("MISS"));

    // Redis is back (empty): the link heals and hits across supervisors resume.
    redis.restart();
    for svc in [&a, &b] {
        wait_for("cache healthy again", Duration::from_secs(10), || {
            (svc.cache_health()["status"] == "healthy").then_some(())
        });
        assert_eq!(svc.redis_up(), Some(1.0), "Redis is back");
    }
    let again = a.ask("恢复以后");
    assert_eq!(again.header("x-cache"), Some("MISS"));
    wait_for_an_entry_in(&redis);
    let hit = b.ask("恢复以后");
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert_eq!(hit.body, again.body);
    // The value in Redis is compressed (not the plain JSON answer) and expires.
    let key = redis.cli(&["--scan", "--pattern", "heartalk:resp:v1:*"]);
    let key = key.lines().next().unwrap().trim().to_string();
    let ttl: i64 = redis.cli(&["TTL", &key]).trim().parse().unwrap();
    assert!(ttl > 7000 && ttl <= 7200, "CACHE_TTL set in Redis: {ttl}");
    let value = redis.cli(&["GET", &key]);
    assert!(
        !value.is_empty() && !value.contains("\"content\""),
        "compressed: {value}"
    );
}

#[test]
fn a_full_redis_fails_commands_not_the_link() {
    let redis = RedisServer::start();
    let ark = MockArk::start();
    let url = redis.url();
    let svc = live_service(&ark.base_url(), &[("REDIS_URL", url.as_str())]);
    // Every write is refused with an OOM error from here on.
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    redis.cli(&["CONFIG", "SET", "maxmemory", "1"]);
    for i in 0..3 {
        let r = svc.ask(&format!("写不进去 {i}"));
        assert_eq!(r.header("x-cache"), Some("MISS"));
        // The answer's background SET is refused within a few ms; right
        // after it, the link must still be up (a refused command is not an
        // outage; before the fix it marked the link down until the next
        // probe, up to a second later). Each answer makes two SETs, its
        // flight's claim and then its store: once Redis has refused both
        // and the worker has logged each refusal, the link is checked.
        wait_until(
            "the answer's SET to be refused and handled",
            DEADLINE,
            || {
                let (sets, all) = refusals(&redis);
                let handled = svc
                    .log()
                    .matches("Redis command failed; falling back")
                    .count();
                if sets >= 2 * (i + 1) && handled >= all {
                    return Ok(());
                }
                Err(format!(
                    "{sets} SETs refused; {handled} of {all} refusals logged as failed commands; cache {}",
                    svc.cache_health()
                ))
            },
        );
        assert_eq!(svc.cache_health()["status"], "healthy");
    }
    assert_eq!(svc.redis_up(), Some(1.0));
}
