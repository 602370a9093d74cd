//! Tests of the backend history: trimming to rounds and a token budget,
//! the context cache and its invalidation, and the client against a local
//! backend (URL and headers, retries, timeouts, malformed bodies, probes).

use super::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage::new(role, content)
}

// ---- trim ----

#[test]
fn trim_keeps_the_last_rounds() {
    let raw: Vec<Value> = (0..25)
            .map(|i| json!({"role": if i % 2 == 0 {"user"} else {"assistant"}, "content": format!("m{i}")}))
            .collect();
    let out = trim(&raw, 10, 2000);
    assert_eq!(out.len(), 20);
    assert_eq!(out[0], msg("assistant", "m5"));
    assert_eq!(out[19], msg("user", "m24"));
    assert_eq!(
        trim(&raw, 1, 2000),
        vec![msg("assistant", "m23"), msg("user", "m24")]
    );
    assert_eq!(trim(&raw, 100, 2000).len(), 25);
    assert!(trim(&raw, 0, 2000).is_empty());
    assert!(trim(&[], 10, 2000).is_empty());
}

#[test]
fn trim_maps_role_and_content_like_javascript_or() {
    let raw = vec![
        json!({"content": "no role"}),
        json!({"role": "", "content": "empty role"}),
        json!({"role": 5, "content": "numeric role"}),
        json!({"role": "assistant", "message": "from message"}),
        json!({"role": "assistant", "content": "", "message": "empty content"}),
        json!({"role": "system", "content": "both", "message": "ignored"}),
        json!({"role": "user", "content": null, "message": "null content"}),
    ];
    assert_eq!(
        trim(&raw, 10, 2000),
        vec![
            msg("user", "no role"),
            msg("user", "empty role"),
            msg("user", "numeric role"),
            msg("assistant", "from message"),
            msg("assistant", "empty content"),
            msg("system", "both"),
            msg("user", "null content"),
        ]
    );
}

#[test]
fn trim_drops_blank_messages_after_the_round_cut() {
    let raw = vec![
        json!({"role": "user", "content": "old"}),
        json!({"role": "user", "content": "   "}),
        json!({"role": "assistant"}),
        json!({"role": "user", "content": "\n\t"}),
        json!("not an object"),
        json!({"role": "user", "content": 42}),
        json!({"role": "user", "content": " kept "}),
    ];
    // The round cut (last 6) happens before blanks are dropped, so
    // "old" is not pulled back in.
    assert_eq!(trim(&raw, 3, 2000), vec![msg("user", " kept ")]);
}

#[test]
fn trim_fits_the_token_budget_newest_first() {
    // Costs: "a b c" 3, "你好" 3, "one" 1, "x y" 2.
    let raw = vec![
        json!({"role": "user", "content": "a b c"}),
        json!({"role": "assistant", "content": "你好"}),
        json!({"role": "user", "content": "one"}),
        json!({"role": "assistant", "content": "x y"}),
    ];
    assert_eq!(trim(&raw, 10, 9).len(), 4); // total 9: within budget
    assert_eq!(
        trim(&raw, 10, 8),
        vec![
            msg("assistant", "你好"),
            msg("user", "one"),
            msg("assistant", "x y")
        ]
    );
    assert_eq!(
        trim(&raw, 10, 5),
        vec![msg("user", "one"), msg("assistant", "x y")]
    );
    assert_eq!(trim(&raw, 10, 2), vec![msg("assistant", "x y")]);
    assert!(trim(&raw, 10, 1).is_empty()); // the newest does not fit
    assert!(trim(&raw, 10, 0).is_empty());
}

#[test]
fn trim_stops_at_the_first_message_that_does_not_fit() {
    // Costs newest-first: 1, 10, 1. Budget 5: keep the 1, stop at the
    // 10, even though the oldest 1 would fit.
    let raw = vec![
        json!({"role": "user", "content": "small"}),
        json!({"role": "assistant", "content": "a b c d e f g h i j"}),
        json!({"role": "user", "content": "tiny"}),
    ];
    assert_eq!(trim(&raw, 10, 5), vec![msg("user", "tiny")]);
}

#[test]
fn trim_budget_counts_only_kept_non_blank_messages() {
    let mut raw = vec![json!({"role": "user", "content": "w ".repeat(5000)})];
    raw.extend((0..20).map(|i| json!({"role": "user", "content": format!("m{i}")})));
    // The big one is outside the last 20, so the total is 20 ≤ 20.
    assert_eq!(trim(&raw, 10, 20).len(), 20);
}

// ---- outcome ----

#[test]
fn outcome_labels_match_the_metric() {
    assert_eq!(Outcome::Ok.label(), "ok");
    assert_eq!(Outcome::ClientError.label(), "client_error");
    assert_eq!(Outcome::ServerError.label(), "server_error");
    assert_eq!(Outcome::Timeout.label(), "timeout");
    assert_eq!(Outcome::Network.label(), "network");
    assert!(Outcome::Network.requested());
    assert!(!Outcome::Cached.requested());
}

#[test]
fn parse_data_wants_an_object_with_a_data_array() {
    assert_eq!(
        parse_data(br#"{"success":true,"data":[1]}"#),
        Some(vec![json!(1)])
    );
    assert_eq!(parse_data(br#"{"data":[]}"#), Some(vec![]));
    assert_eq!(parse_data(br#"{"data":null}"#), None);
    assert_eq!(parse_data(br#"{"data":{}}"#), None);
    assert_eq!(parse_data(br#"[1]"#), None);
    assert_eq!(parse_data(b"not json"), None);
    assert_eq!(parse_data(b""), None);
}

// ---- cache ----

#[test]
fn cache_entries_expire_at_the_ttl() {
    let cache = Cache::new(Duration::from_secs(30), 10);
    let t0 = Instant::now();
    let m = vec![msg("user", "hi")];
    cache.store("c1", None, &m, cache.ticket(), t0);
    assert_eq!(cache.lookup("c1", None, t0), Some(m.clone()));
    assert_eq!(
        cache.lookup("c1", None, t0 + Duration::from_millis(29_999)),
        Some(m)
    );
    assert_eq!(cache.lookup("c1", None, t0 + Duration::from_secs(30)), None);
    // Expired entries are gone, not just hidden.
    assert_eq!(cache.lookup("c1", None, t0), None);
    assert_eq!(cache.lookup("c2", None, t0), None);
}

#[test]
fn cache_entries_are_per_history_length() {
    let cache = Cache::new(Duration::from_secs(30), 10);
    let t0 = Instant::now();
    cache.store("c", Some(4), &[msg("user", "four")], cache.ticket(), t0);
    cache.store("c", None, &[msg("user", "none")], cache.ticket(), t0);
    assert_eq!(
        cache.lookup("c", Some(4), t0),
        Some(vec![msg("user", "four")])
    );
    assert_eq!(cache.lookup("c", None, t0), Some(vec![msg("user", "none")]));
    assert_eq!(cache.lookup("c", Some(6), t0), None);
    // A newer store for the same value replaces the old one.
    cache.store("c", Some(4), &[msg("user", "four'")], cache.ticket(), t0);
    assert_eq!(
        cache.lookup("c", Some(4), t0),
        Some(vec![msg("user", "four'")])
    );
    // Only the last few variants are kept.
    for n in 10..20 {
        cache.store("c", Some(n), &[], cache.ticket(), t0);
    }
    assert_eq!(cache.lookup("c", Some(4), t0), None);
    assert_eq!(cache.lookup("c", Some(19), t0), Some(vec![]));
}

#[test]
fn long_ids_are_never_cached_or_marked() {
    let cache = Cache::new(Duration::from_secs(30), 10);
    let long = "x".repeat(MAX_CACHED_ID_LEN + 1);
    let now = Instant::now();
    let t = cache.ticket();
    cache.store(&long, None, &[msg("user", "hi")], t, now);
    assert!(cache.lookup(&long, None, now).is_none());
    cache.invalidate(&long);
    assert_eq!(cache.lock().conversations.len(), 0, "no entry, no marker");
    let short = "42";
    cache.store(short, None, &[msg("user", "hi")], cache.ticket(), now);
    assert!(cache.lookup(short, None, now).is_some());
}

#[test]
fn invalidate_drops_all_of_a_conversations_entries() {
    let cache = Cache::new(Duration::from_secs(30), 10);
    let t0 = Instant::now();
    cache.store("c", Some(2), &[msg("user", "a")], cache.ticket(), t0);
    cache.store("c", None, &[msg("user", "a")], cache.ticket(), t0);
    cache.store("other", None, &[msg("user", "b")], cache.ticket(), t0);
    cache.invalidate("c");
    assert_eq!(cache.lookup("c", Some(2), t0), None);
    assert_eq!(cache.lookup("c", None, t0), None);
    assert!(cache.lookup("other", None, t0).is_some());
    // A fetch that starts after the invalidation may store again.
    cache.store("c", None, &[msg("user", "new")], cache.ticket(), t0);
    assert_eq!(cache.lookup("c", None, t0), Some(vec![msg("user", "new")]));
}

#[test]
fn a_fetch_in_flight_across_an_invalidation_does_not_store() {
    let cache = Cache::new(Duration::from_secs(30), 10);
    let t0 = Instant::now();
    let ticket = cache.ticket(); // fetch starts
    cache.invalidate("c"); // a turn completes meanwhile
    cache.store("c", None, &[msg("user", "stale")], ticket, t0);
    assert_eq!(cache.lookup("c", None, t0), None);
    // Invalidating another conversation does not block this one.
    let ticket = cache.ticket();
    cache.invalidate("x");
    cache.store("c", None, &[msg("user", "fresh")], ticket, t0);
    assert_eq!(
        cache.lookup("c", None, t0),
        Some(vec![msg("user", "fresh")])
    );
}

#[test]
fn cache_is_bounded_and_ttl_zero_disables_it() {
    let cache = Cache::new(Duration::from_secs(30), 2);
    let t0 = Instant::now();
    for id in ["a", "b", "c"] {
        cache.store(id, None, &[], cache.ticket(), t0);
    }
    assert_eq!(cache.lookup("a", None, t0), None);
    assert!(cache.lookup("c", None, t0).is_some());

    let off = Cache::new(Duration::ZERO, 10);
    off.store("a", None, &[], off.ticket(), t0);
    assert_eq!(off.lookup("a", None, t0), None);
}

#[test]
fn client_caps_the_ttl_and_trims_the_base_url() {
    let client = HistoryClient::new(HistoryConfig {
        base_url: "http://h:1/".into(),
        cache_ttl: Duration::from_secs(900),
        ..HistoryConfig::default()
    })
    .unwrap();
    assert_eq!(client.config().cache_ttl, MAX_CACHE_TTL);
    assert_eq!(client.config().base_url, "http://h:1");
    assert_eq!(
        client.history_url("a b/c?d#é").as_deref(),
        Some("http://h:1/internal/api/v1/conversations/a%20b%2Fc%3Fd%23%C3%A9/history")
    );
    assert_eq!(
        client.history_url("42-x_y.z!~*'()").as_deref(),
        Some("http://h:1/internal/api/v1/conversations/42-x_y.z!~*'()/history")
    );
    for id in ["", ".", ".."] {
        assert_eq!(client.history_url(id), None);
    }
}

#[test]
fn client_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<HistoryClient>();
}

// ---- HTTP, against a canned-response server ----

struct Canned {
    status: u16,
    body: String,
    delay: Duration,
}

fn canned(status: u16, body: &str) -> Canned {
    Canned {
        status,
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

/// A server answering one connection per canned response, in order,
/// recording each request head. Returns the base URL and the heads.
fn serve(responses: Vec<Canned>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&heads);
    std::thread::spawn(move || {
        for r in responses {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            seen.lock().unwrap().push(read_head(&mut stream));
            std::thread::sleep(r.delay);
            let reply = format!(
                "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                r.status,
                r.body.len(),
                r.body
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    (base, heads)
}

fn read_head(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn client(base: &str) -> HistoryClient {
    HistoryClient::new(HistoryConfig {
        base_url: base.to_string(),
        api_key: "k3y".into(),
        jwt_secret: "s3cret".into(),
        timeout: Duration::from_millis(500),
        retry_delay: Duration::from_millis(50),
        ..HistoryConfig::default()
    })
    .unwrap()
}

const TWO: &str = r#"{"success":true,"data":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}"#;

fn two() -> Vec<ChatMessage> {
    vec![msg("user", "hi"), msg("assistant", "hello")]
}

#[tokio::test]
async fn sends_the_contract_url_and_headers() {
    let (base, heads) = serve(vec![canned(200, TWO)]);
    let c = client(&base);
    assert_eq!(c.fetch("a b/7", None).await, (two(), Outcome::Ok));
    let heads = heads.lock().unwrap();
    assert_eq!(heads.len(), 1);
    let head = &heads[0];
    assert!(
        head.starts_with("GET /internal/api/v1/conversations/a%20b%2F7/history HTTP/1.1\r\n"),
        "{head}"
    );
    assert_eq!(header(head, "x-api-key"), Some("k3y"));
    assert_eq!(header(head, "user-agent"), Some(USER_AGENT));
    assert_eq!(header(head, "content-type"), Some("application/json"));
    let claims = auth::verify_internal(
        Some(b"k3y"),
        header(head, "authorization").map(str::as_bytes),
        &["k3y"],
        &[b"s3cret"],
        &shared::token_policy::TokenPolicy::defaults(true),
        crate::runtime::clock::unix_secs(),
    )
    .unwrap();
    assert_eq!(claims["service"], "ai-service");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        300
    );
}

#[tokio::test]
async fn a_5xx_is_retried_once_after_the_delay() {
    let (base, heads) = serve(vec![canned(500, "{}"), canned(200, TWO)]);
    let c = client(&base);
    let t0 = Instant::now();
    assert_eq!(c.fetch("1", None).await, (two(), Outcome::Ok));
    assert!(t0.elapsed() >= Duration::from_millis(50));
    assert_eq!(heads.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn two_5xx_give_server_error_and_no_third_try() {
    let (base, heads) = serve(vec![canned(503, "{}"), canned(502, "{}"), canned(200, TWO)]);
    let c = client(&base);
    assert_eq!(c.fetch("1", None).await, (vec![], Outcome::ServerError));
    assert_eq!(heads.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_4xx_is_not_retried() {
    let (base, heads) = serve(vec![canned(404, r#"{"success":false}"#), canned(200, TWO)]);
    let c = client(&base);
    assert_eq!(c.fetch("1", None).await, (vec![], Outcome::ClientError));
    assert_eq!(heads.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn connection_refused_is_network_after_one_retry() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = client(&format!("http://127.0.0.1:{port}"));
    let t0 = Instant::now();
    assert_eq!(c.fetch("1", None).await, (vec![], Outcome::Network));
    assert!(t0.elapsed() >= Duration::from_millis(50));
    assert!(!c.probe().await);
}

#[tokio::test]
async fn a_slow_backend_times_out_twice() {
    let slow = || Canned {
        delay: Duration::from_millis(800),
        ..canned(200, TWO)
    };
    let (base, heads) = serve(vec![slow(), slow()]);
    let c = client(&base);
    let t0 = Instant::now();
    assert_eq!(c.fetch("1", None).await, (vec![], Outcome::Timeout));
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(1050), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(heads.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_malformed_body_is_server_error_not_retried_nor_cached() {
    let (base, heads) = serve(vec![
        canned(200, "<html>"),
        canned(200, r#"{"data":"x"}"#),
        canned(200, TWO),
    ]);
    let c = client(&base);
    assert_eq!(c.fetch("1", None).await, (vec![], Outcome::ServerError));
    assert_eq!(heads.lock().unwrap().len(), 1);
    assert_eq!(c.fetch("1", None).await, (vec![], Outcome::ServerError));
    assert_eq!(c.fetch("1", None).await, (two(), Outcome::Ok));
    assert_eq!(heads.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn successes_are_cached_until_invalidated() {
    let (base, heads) = serve(vec![
        canned(200, TWO),
        canned(200, TWO),
        canned(200, r#"{"data":[]}"#),
    ]);
    let c = client(&base);
    assert_eq!(c.fetch("9", Some(2)).await, (two(), Outcome::Ok));
    assert_eq!(c.fetch("9", Some(2)).await, (two(), Outcome::Cached));
    assert_eq!(heads.lock().unwrap().len(), 1);
    // Another history_length is another entry.
    assert_eq!(c.fetch("9", Some(3)).await, (two(), Outcome::Ok));
    assert_eq!(heads.lock().unwrap().len(), 2);
    // A completed turn makes the next request go to the backend.
    c.invalidate("9");
    assert_eq!(c.fetch("9", Some(2)).await, (vec![], Outcome::Ok));
    assert_eq!(heads.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn fetch_trims_with_the_configured_budget() {
    let body = json!({"data": (0..30).map(|i| json!({"role": "user", "content": format!("m{i}")})).collect::<Vec<_>>()}).to_string();
    let (base, _) = serve(vec![canned(200, &body)]);
    let c = HistoryClient::new(HistoryConfig {
        max_rounds: 2,
        max_context_tokens: 3,
        ..client(&base).config().clone()
    })
    .unwrap();
    let (m, o) = c.fetch("1", None).await;
    assert_eq!(o, Outcome::Ok);
    assert_eq!(
        m,
        vec![msg("user", "m27"), msg("user", "m28"), msg("user", "m29")]
    );
}

#[tokio::test]
async fn unusable_ids_make_no_request() {
    let c = client("http://127.0.0.1:9");
    assert_eq!(c.fetch("..", None).await, (vec![], Outcome::ClientError));
}

#[tokio::test]
async fn probe_is_true_only_on_2xx() {
    let (base, heads) = serve(vec![canned(200, "{}"), canned(503, "{}")]);
    let c = client(&base);
    assert!(c.probe().await);
    assert!(!c.probe().await);
    assert!(heads.lock().unwrap()[0].starts_with("GET /health HTTP/1.1"));
}

#[test]
fn debug_masks_the_key_and_the_secret() {
    let config = HistoryConfig {
        api_key: "history-key-visible?".into(),
        jwt_secret: "history-secret-visible?".into(),
        ..HistoryConfig::default()
    };
    let shown = format!("{config:?}");
    assert!(!shown.contains("visible?"), "{shown}");
    assert!(
        shown.contains("api_key: \"***\"") && shown.contains("base_url"),
        "{shown}"
    );
}
