//! Request coalescing (API.md §9) through the real supervisor and worker:
//! identical requests in flight at the same moment make one upstream call
//! and all get the answer (JSON and streams, followers of a stream from its
//! first frame), and the shared call survives its first client leaving.

mod helper;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use heartalk_e2e::mock_ark::{Behavior, MockArk};
use helper::*;
use serde_json::json;

#[test]
fn twenty_identical_requests_make_one_upstream_call() {
    let ark = MockArk::start();
    ark.set(Behavior::success().with_latency(Duration::from_millis(500)));
    let svc = live_service(&ark.base_url(), &[]);
    let addr = svc.addr;
    let token = user_token();
    let body = json!({"messages":[{"role":"user","content":"同时到达的问题"}]});
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let token = token.clone();
            let body = body.clone();
            std::thread::spawn(move || {
                post_json(addr, "/api/v1/chat/generate", Some(&token), &body)
            })
        })
        .collect();
    let answers: Vec<Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(ark.calls(), 1, "exactly one upstream call");
    let first = answers[0].json()["data"]["content"].clone();
    assert!(first.as_str().is_some_and(|c| !c.is_empty()));
    let mut kinds = std::collections::HashMap::new();
    for a in &answers {
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.json()["data"]["content"], first, "identical answers");
        *kinds
            .entry(a.header("x-cache").unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(kinds.get("MISS"), Some(&1), "{kinds:?}");
    assert_eq!(
        kinds.get("COALESCED").copied().unwrap_or(0) + kinds.get("HIT").copied().unwrap_or(0),
        19,
        "{kinds:?}"
    );
}

#[test]
fn stream_followers_get_the_stream_from_its_start() {
    let ark = MockArk::start();
    ark.set(
        Behavior::success()
            .with_content("一二三四五六七八九十")
            .with_chunk_delay(Duration::from_millis(150)),
    );
    let svc = live_service(&ark.base_url(), &[]);
    let addr = svc.addr;
    let token = user_token();
    let body = json!({"messages":[{"role":"user","content":"一起听"}]});
    // Join once the stream is under way (the leader has had a content
    // frame), so the follower must replay.
    let (mut s, mut raw) = stream_until_content(addr, &token, &body.to_string());
    let leader = std::thread::spawn(move || {
        s.read_to_end(&mut raw).expect("the leader's stream");
        parse_response(&raw).expect("the leader's answer")
    });
    let follower = post_json(addr, "/api/v1/chat/stream", Some(&token), &body);
    let leader = leader.join().unwrap();
    assert_eq!(ark.calls(), 1);
    assert_eq!(leader.header("x-cache"), Some("MISS"));
    assert_eq!(follower.header("x-cache"), Some("COALESCED"));
    let content = |r: &Response| -> String {
        sse_json(&r.body)
            .iter()
            .filter(|f| f["type"] == "content")
            .map(|f| f["content"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(content(&leader), "一二三四五六七八九十");
    assert_eq!(content(&follower), content(&leader));
    let last = sse_json(&follower.body).pop().unwrap();
    assert_eq!(last["type"], "complete");
}

#[test]
fn the_shared_call_survives_its_first_client_leaving() {
    let ark = MockArk::start();
    ark.set(Behavior::success().with_latency(Duration::from_millis(800)));
    let svc = live_service(&ark.base_url(), &[]);
    let addr = svc.addr;
    let token = user_token();
    let body = json!({"messages":[{"role":"user","content":"先走一步"}]}).to_string();
    // The first client sends its request and hangs up at once.
    let mut quitter = TcpStream::connect(addr).unwrap();
    write!(
        quitter,
        "POST /api/v1/chat/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    assert!(ark.wait_for_calls(1, Duration::from_secs(10)));
    let follower = {
        let token = token.clone();
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        std::thread::spawn(move || post_json(addr, "/api/v1/chat/generate", Some(&token), &body))
    };
    // The first client leaves once the follower has joined its call.
    wait_for("the follower to join the call", DEADLINE, || {
        (metric(addr, "ai_cache_requests_total", "result=\"coalesced\"")? >= 1.0).then_some(())
    });
    drop(quitter);
    let r = follower.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-cache"), Some("COALESCED"));
    assert_eq!(ark.calls(), 1);
    assert_eq!(ark.cancelled(), 0, "the upstream call was not cancelled");

    // When every listener leaves, the call is cancelled.
    ark.reset();
    let lonely = json!({"messages":[{"role":"user","content":"没人等"}]}).to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /api/v1/chat/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{lonely}",
        lonely.len()
    )
    .unwrap();
    assert!(ark.wait_for_calls(1, Duration::from_secs(10)));
    drop(s);
    assert!(
        ark.wait_for_cancelled(1, Duration::from_secs(5)),
        "the mock saw the abandoned call cancelled"
    );
}

#[test]
fn identical_requests_on_two_supervisors_share_one_call_through_redis() {
    let redis = heartalk_e2e::redis_server::RedisServer::start();
    let ark = MockArk::start();
    ark.set(Behavior::success().with_latency(Duration::from_millis(800)));
    let url = redis.url();
    let a = live_service(&ark.base_url(), &[("REDIS_URL", url.as_str())]);
    let b = live_service(&ark.base_url(), &[("REDIS_URL", url.as_str())]);
    let token = user_token();
    for (round, path) in ["/api/v1/chat/generate", "/api/v1/chat/stream"]
        .iter()
        .enumerate()
    {
        ark.reset();
        let body = json!({"messages":[{"role":"user","content":format!("两边同时问 {round}")}]});
        let first = {
            let (token, body, addr, path) = (token.clone(), body.clone(), a.addr, *path);
            std::thread::spawn(move || post_json(addr, path, Some(&token), &body))
        };
        // The second arrives while the first one's upstream call is running.
        assert!(ark.wait_for_calls(1, Duration::from_secs(10)));
        let second = post_json(b.addr, path, Some(&token), &body);
        let first = first.join().unwrap();
        assert_eq!((first.status, second.status), (200, 200), "{}", second.body);
        assert_eq!(
            ark.calls(),
            1,
            "{path}: one upstream call for both supervisors"
        );
        assert_eq!(first.header("x-cache"), Some("MISS"));
        assert_eq!(second.header("x-cache"), Some("COALESCED"), "{path}");
        let content = |r: &Response| -> String {
            if path.ends_with("stream") {
                sse_json(&r.body)
                    .iter()
                    .filter(|f| f["type"] == "content")
                    .map(|f| f["content"].as_str().unwrap().to_string())
                    .collect()
            } else {
                r.json()["data"]["content"].as_str().unwrap().to_string()
            }
        };
        assert!(!content(&first).is_empty());
        assert_eq!(content(&first), content(&second));
    }
    // The claims were released once the answers were stored.
    assert!(
        redis
            .cli(&["--scan", "--pattern", "heartalk:flight:*"])
            .trim()
            .is_empty(),
        "no claim left behind"
    );
}

#[test]
fn a_waiter_makes_the_call_itself_when_the_owner_fails() {
    let redis = heartalk_e2e::redis_server::RedisServer::start();
    let ark = MockArk::start();
    let url = redis.url();
    let a = live_service(
        &ark.base_url(),
        &[("REDIS_URL", url.as_str()), ("UPSTREAM_MAX_RETRIES", "0")],
    );
    let b = live_service(&ark.base_url(), &[("REDIS_URL", url.as_str())]);
    // A's call fails after a while; B waits on A's claim, then calls itself.
    ark.push(Behavior::server_error().with_latency(Duration::from_millis(600)));
    let token = user_token();
    let body = json!({"messages":[{"role":"user","content":"先失败的那个"}]});
    let first = {
        let (token, body, addr) = (token.clone(), body.clone(), a.addr);
        std::thread::spawn(move || post_json(addr, "/api/v1/chat/generate", Some(&token), &body))
    };
    assert!(ark.wait_for_calls(1, Duration::from_secs(10)));
    let second = post_json(b.addr, "/api/v1/chat/generate", Some(&token), &body);
    assert_eq!(first.join().unwrap().status, 502);
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.header("x-cache"), Some("MISS"));
    assert_eq!(ark.calls(), 2);
}
