//! Tests of the Ark provider: the request body and URLs, error bodies and
//! `Retry-After` mapped, the backoff, answers read, and against a local
//! upstream: retries, timeouts, redirects, streams split at any byte or cut
//! off, and the socket closed when a stream is dropped.

use super::*;
use crate::provider::EndpointKind;
use futures_util::StreamExt;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

fn req(timeout_ms: u64) -> CompletionRequest {
    CompletionRequest {
        endpoint: EndpointKind::Chat,
        model: "ep-test".into(),
        messages: vec![
            ChatMessage::new("system", "be nice"),
            ChatMessage::new("user", "你好"),
        ]
        .into(),
        temperature: 0.7,
        max_tokens: 2000,
        top_p: 1.0,
        timeout: Duration::from_millis(timeout_ms),
    }
}

fn provider(base: &str, key: &str, retries: u32) -> ArkProvider {
    ArkProvider::new(ArkConfig {
        base_url: base.into(),
        api_key: key.into(),
        name: "byteplus".into(),
        max_retries: retries,
        stream_usage: true,
        http2: UpstreamHttp2::Auto,
        pool_idle: Duration::from_secs(15),
    })
    .unwrap()
}

#[test]
fn body_is_exactly_the_contracts() {
    let b = build_body(&req(1000), false, true).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"model":"ep-test","messages":[{"role":"system","content":"be nice"},{"role":"user","content":"你好"}],
                "temperature":0.7,"max_tokens":2000,"top_p":1.0,"frequency_penalty":0,"presence_penalty":0})
    );
    let s: serde_json::Value =
        serde_json::from_slice(&build_body(&req(1000), true, true).unwrap()).unwrap();
    assert_eq!(s["stream"], true);
    assert_eq!(
        s["stream_options"],
        serde_json::json!({"include_usage": true})
    );
    let s: serde_json::Value =
        serde_json::from_slice(&build_body(&req(1000), true, false).unwrap()).unwrap();
    assert_eq!(s["stream"], true);
    assert!(s.get("stream_options").is_none());
}

#[test]
fn urls_are_joined_and_checked() {
    assert_eq!(
        chat_completions_url("http://h/api/v3/").unwrap(),
        "http://h/api/v3/chat/completions"
    );
    assert_eq!(
        chat_completions_url("https://h/api/v3").unwrap(),
        "https://h/api/v3/chat/completions"
    );
    assert!(chat_completions_url("not a url").is_err());
    assert!(chat_completions_url("ftp://h").is_err());
    assert!(
        ArkProvider::new(ArkConfig {
            base_url: "http://h".into(),
            api_key: "bad\nkey".into(),
            name: "x".into(),
            max_retries: 0,
            stream_usage: false,
            http2: UpstreamHttp2::Auto,
            pool_idle: Duration::from_secs(15),
        })
        .is_err()
    );
}

#[test]
fn error_bodies_map_to_http_errors() {
    let body = br#"{"error":{"code":"QuotaExceeded","message":"free quota used up","param":null,"type":"TooManyRequests"}}"#;
    let e = http_error(
        StatusCode::TOO_MANY_REQUESTS,
        Some(Duration::from_secs(3)),
        body,
    );
    assert_eq!(
        e,
        UpstreamError::Http {
            status: 429,
            code: Some("QuotaExceeded".into()),
            message: "free quota used up".into(),
            retry_after: Some(Duration::from_secs(3))
        }
    );
    assert_eq!(e.to_string(), "HTTP 429: free quota used up");
    let e = http_error(StatusCode::BAD_GATEWAY, None, b"<html>bad gateway</html>");
    assert_eq!(e.to_string(), "HTTP 502: <html>bad gateway</html>");
    let e = http_error(StatusCode::SERVICE_UNAVAILABLE, None, b"");
    assert_eq!(e.to_string(), "HTTP 503: Service Unavailable");
    let long = "错".repeat(500);
    let UpstreamError::Http { message, code, .. } =
        http_error(StatusCode::INTERNAL_SERVER_ERROR, None, long.as_bytes())
    else {
        panic!()
    };
    assert_eq!(message.chars().count(), 201);
    assert_eq!(code, None);
    let UpstreamError::Http { message, .. } =
        http_error(StatusCode::UNAUTHORIZED, None, br#"{"error":"bad key"}"#)
    else {
        panic!()
    };
    assert_eq!(message, "bad key");
}

#[test]
fn retry_after_is_parsed_in_seconds() {
    let mut h = HeaderMap::new();
    assert_eq!(parse_retry_after(&h), None);
    h.insert("retry-after", HeaderValue::from_static("7"));
    assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(7)));
    h.insert("retry-after", HeaderValue::from_static(" 1.5 "));
    assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(1500)));
    h.insert(
        "retry-after",
        HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
    );
    assert_eq!(parse_retry_after(&h), None);
    h.insert("retry-after", HeaderValue::from_static("-1"));
    assert_eq!(parse_retry_after(&h), None);
    h.insert("retry-after-ms", HeaderValue::from_static("250"));
    assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(250)));
}

#[test]
fn backoff_doubles_with_bounded_jitter_or_follows_retry_after() {
    let ms = |d: Duration| d.as_millis();
    assert_eq!(ms(backoff_delay(0, None, 0.5)), 500);
    assert_eq!(ms(backoff_delay(1, None, 0.5)), 1000);
    assert_eq!(ms(backoff_delay(2, None, 0.5)), 2000);
    assert_eq!(ms(backoff_delay(0, None, 0.0)), 400);
    assert!(ms(backoff_delay(0, None, 0.999_999)) < 600);
    assert_eq!(
        backoff_delay(3, Some(Duration::from_secs(2)), 0.1),
        Duration::from_secs(2)
    );
    assert_eq!(
        backoff_delay(0, Some(Duration::from_secs(10)), 0.1),
        Duration::from_secs(10)
    );
    // Too long a Retry-After falls back to the backoff.
    assert_eq!(
        ms(backoff_delay(0, Some(Duration::from_secs(11)), 0.5)),
        500
    );
    // Huge attempt numbers do not overflow.
    assert!(backoff_delay(100, None, 0.5) > Duration::from_secs(1000));
    let mut r = XorShift::from_clock();
    for _ in 0..1000 {
        let u = r.next_unit();
        assert!((0.0..1.0).contains(&u));
    }
}

#[test]
fn results_are_extracted() {
    let c = parse_completion(
            br#"{"model":"seed","choices":[{"message":{"role":"assistant","content":"hi","reasoning_content":"hmm"},"finish_reason":"stop"}],
                "usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"prompt_tokens_details":{"cached_tokens":0}}}"#,
        )
        .unwrap();
    assert_eq!(c.content, "hi");
    assert_eq!(c.reasoning_content.as_deref(), Some("hmm"));
    assert_eq!(c.finish_reason.as_deref(), Some("stop"));
    assert_eq!(c.model.as_deref(), Some("seed"));
    let u = c.usage.unwrap();
    assert_eq!(u.total_tokens, 3);
    assert_eq!(u.extra["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(
        parse_completion(br#"{"choices":[{"text":"legacy"}]}"#)
            .unwrap()
            .content,
        "legacy"
    );
    let no_choices =
        UpstreamError::InvalidResponse("Invalid response format: no valid choices found".into());
    assert_eq!(
        parse_completion(br#"{"choices":[]}"#),
        Err(no_choices.clone())
    );
    assert_eq!(parse_completion(br#"{"id":"x"}"#), Err(no_choices.clone()));
    assert_eq!(parse_completion(br#"{"choices":[null]}"#), Err(no_choices));
    assert_eq!(
        parse_completion(br#"{"choices":[{"message":{"content":""},"finish_reason":"length"}]}"#),
        Err(UpstreamError::Empty)
    );
    assert!(
        matches!(parse_completion(b"{\"choices\":["), Err(UpstreamError::InvalidResponse(m)) if m.contains("malformed JSON"))
    );
}

/// The typed reading and the tree reading agree on every body, the
/// odd ones included (a body the typed reading refuses goes to the
/// tree, so this checks the typed reading never accepts a body with a
/// different result).
#[test]
fn typed_and_tree_readings_agree() {
    let bodies: &[&[u8]] = &[
            br#"{"model":"m","choices":[{"message":{"content":"a","reasoning_content":"r"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"completion_tokens_details":{"reasoning_tokens":1}}}"#,
            br#"{"choices":[{"message":{"content":"","reasoning_content":""},"text":"t"}]}"#,
            br#"{"choices":[{"message":null,"text":"t"}]}"#,
            br#"{"choices":[{"message":{"content":["part"]},"text":"t"}]}"#,
            br#"{"choices":[{"message":{"content":7},"text":"t"}]}"#,
            br#"{"choices":[{"message":{"content":"a"},"finish_reason":1}]}"#,
            br#"{"choices":[{"message":{"content":"a"}}, null]}"#,
            br#"{"choices":[{"message":{"content":"a"}}],"usage":null}"#,
            br#"{"choices":[{"message":{"content":"a"}}],"usage":7}"#,
            br#"{"choices":[{"message":{"content":"a"}}],"usage":{"prompt_tokens":"1"}}"#,
            br#"{"choices":[{"message":{"content":"a"}}],"usage":{"prompt_tokens":-1}}"#,
            br#"{"choices":[{"message":{"content":"a"}}],"model":""}"#,
            br#"{"choices":[{"message":{"content":"a"}}],"model":["m"]}"#,
            br#"{"choices":[{"message":{"content":"first"},"message":{"content":"last"}}]}"#,
            br#"{"choices":{"0":{"message":{"content":"a"}}}}"#,
            br#"{"choices":"none"}"#,
            br#"{"choices":[]}"#,
            br#"{"choices":[{}]}"#,
            br#"[]"#,
            br#"{"choices":[{"message":{"content":"a"}}]} trailing"#,
            // Arrays where objects belong (derived structs would read them
            // by position).
            br#"{"choices":[{"message":["x"]}]}"#,
            br#"[[[{"content":"x"}]]]"#,
            br#"{"choices":[[null,"t","stop"]]}"#,
            br#"[[{"message":{"content":"x"}}],null,"m"]"#,
        ];
    for body in bodies {
        assert_eq!(
            parse_completion(body),
            parse_completion_value(body),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // The common shapes take the typed path (otherwise the comparison
    // above would only compare the tree with itself).
    for body in &bodies[..3] {
        assert!(
            serde_json::from_slice::<Obj<WireCompletion>>(body).is_ok(),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // The duplicate key: the tree keeps the last value, and so do we.
    assert_eq!(
        parse_completion(bodies[13]).unwrap().content,
        "last",
        "duplicate keys"
    );
}

/// A one-shot-per-connection HTTP server: `reply` gets the raw request
/// and the socket and writes whatever it likes.
fn serve<F>(conns: usize, reply: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(usize, String, &mut TcpStream) + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/api/v3", l.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let seen2 = seen.clone();
    thread::spawn(move || {
        for i in 0..conns {
            let Ok((mut s, _)) = l.accept() else { return };
            seen2.fetch_add(1, Ordering::SeqCst);
            let reqtext = read_request(&mut s);
            reply(i, reqtext, &mut s);
        }
    });
    (base, seen)
}

fn read_request(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let n = s.read(&mut tmp).unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(h) = text.find("\r\n\r\n") {
            let len = text[..h]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= h + 4 + len {
                break;
            }
        }
    }
    String::from_utf8_lossy(&buf).to_string()
}

fn respond(s: &mut TcpStream, status: &str, extra: &str, body: &str) {
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
}

#[tokio::test]
async fn connection_refused_is_a_network_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = provider(&format!("http://127.0.0.1:{port}/api/v3"), "", 0);
    let err = p.complete(req(2000)).await.unwrap_err();
    assert!(
        matches!(&err, UpstreamError::Network { kind, .. } if kind == "connect"),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("Network error: connect - "),
        "{err}"
    );
}

#[tokio::test]
async fn complete_sends_the_key_and_reads_the_answer() {
    let (base, _) = serve(1, |_, r, s| {
        assert!(r.starts_with("POST /api/v3/chat/completions HTTP/1.1"));
        assert!(
            r.to_ascii_lowercase()
                .contains("authorization: bearer k-123")
        );
        assert!(r.contains(r#""frequency_penalty":0"#));
        respond(
            s,
            "200 OK",
            "",
            r#"{"model":"m","choices":[{"message":{"content":"ok"},"finish_reason":"stop"}]}"#,
        );
    });
    let c = provider(&base, "k-123", 0)
        .complete(req(2000))
        .await
        .unwrap();
    assert_eq!(c.content, "ok");
}

#[tokio::test]
async fn retryable_errors_are_retried_then_succeed() {
    let (base, seen) = serve(3, |i, r, s| {
        assert!(!r.to_ascii_lowercase().contains("authorization"));
        if i < 2 {
            respond(
                s,
                "503 Service Unavailable",
                "retry-after: 0\r\n",
                r#"{"error":{"code":"InternalServiceError","message":"busy"}}"#,
            );
        } else {
            respond(
                s,
                "200 OK",
                "",
                r#"{"choices":[{"message":{"content":"third time"}}]}"#,
            );
        }
    });
    let c = provider(&base, "", 2).complete(req(2000)).await.unwrap();
    assert_eq!(c.content, "third time");
    assert_eq!(seen.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn retries_are_bounded_and_quota_fails_fast() {
    let (base, seen) = serve(5, |i, _, s| {
        if i == 0 {
            respond(
                s,
                "429 Too Many Requests",
                "",
                r#"{"error":{"code":"QuotaExceeded","message":"quota"}}"#,
            );
        } else {
            respond(s, "503 Service Unavailable", "retry-after: 0\r\n", "down");
        }
    });
    let p = provider(&base, "", 1);
    let e = p.complete(req(2000)).await.unwrap_err();
    assert_eq!(e.outcome(), "quota");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    let e = p.complete(req(2000)).await.unwrap_err();
    assert_eq!(e.to_string(), "HTTP 503: down");
    assert_eq!(seen.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_hanging_upstream_times_out_without_retry() {
    let (base, seen) = serve(2, |_, _, s| {
        thread::sleep(Duration::from_millis(1500));
        let _ = s.flush();
    });
    let p = provider(&base, "", 2);
    let t0 = std::time::Instant::now();
    assert_eq!(
        p.complete(req(200)).await.unwrap_err(),
        UpstreamError::Timeout { ms: 200 }
    );
    assert!(t0.elapsed() < Duration::from_millis(1000));
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    let Err(e) = p.stream(req(200)).await else {
        panic!()
    };
    assert_eq!(e, UpstreamError::Timeout { ms: 200 });
}

#[tokio::test]
async fn a_redirect_is_an_upstream_error_not_followed() {
    // The second connection would be the redirected request.
    let (base, seen) = serve(2, |_, _, s| {
        let _ = write!(
            s,
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: /elsewhere\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
    });
    let p = provider(&base, "", 2);
    match p.complete(req(2000)).await.unwrap_err() {
        UpstreamError::Http { status, .. } => assert_eq!(status, 307),
        other => panic!("{other:?}"),
    }
    assert_eq!(seen.load(Ordering::SeqCst), 1, "not followed");
}

fn sse_head(s: &mut TcpStream) {
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
    );
}

const SSE: &str = concat!(
    "data: {\"model\":\"seed\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\r\n\r\n",
    ": ping\n\n",
    "data: {\"choices\":[{\"delta\":{\"content\":\"你好\"}}]}\n\n",
    "data: {\"choices\":[{\"delta\":{\"content\":\"，世界\"}}]}\n\n",
    "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,\"total_tokens\":8}}\n\n",
    "data: [DONE]\n\n",
);

async fn collect(s: EventStream) -> Vec<Result<StreamEvent, UpstreamError>> {
    s.collect().await
}

#[tokio::test]
async fn a_byte_split_stream_yields_the_right_events() {
    let (base, _) = serve(1, |_, r, s| {
        assert!(r.contains(r#""stream":true"#) && r.contains(r#""include_usage":true"#));
        let _ = s.set_nodelay(true);
        sse_head(s);
        for b in SSE.as_bytes().chunks(3) {
            let _ = s.write_all(b);
            let _ = s.flush();
            thread::sleep(Duration::from_micros(200));
        }
    });
    let evs = collect(provider(&base, "", 0).stream(req(2000)).await.unwrap()).await;
    assert_eq!(evs.len(), 3, "{evs:?}");
    assert_eq!(evs[0], Ok(StreamEvent::Content("你好".into())));
    assert_eq!(evs[1], Ok(StreamEvent::Content("，世界".into())));
    let Ok(StreamEvent::Done {
        finish_reason,
        usage,
        model,
    }) = &evs[2]
    else {
        panic!()
    };
    assert_eq!(finish_reason.as_deref(), Some("stop"));
    assert_eq!(usage.as_ref().map(|u| u.total_tokens), Some(8));
    assert_eq!(model.as_deref(), Some("seed"));
}

#[tokio::test]
async fn streams_cut_off_complete_only_after_a_finish_reason() {
    let cut = SSE.find("data: {\"choices\":[],").unwrap();
    let no_finish = SSE.find("data: {\"choices\":[{\"delta\":{},").unwrap();
    let (base, _) = serve(2, move |i, _, s| {
        sse_head(s);
        let _ = s.write_all(&SSE.as_bytes()[..if i == 0 { cut } else { no_finish }]);
    });
    let p = provider(&base, "", 0);
    let evs = collect(p.stream(req(2000)).await.unwrap()).await;
    assert!(
        matches!(
            evs.last(),
            Some(Ok(StreamEvent::Done {
                finish_reason: Some(_),
                usage: None,
                ..
            }))
        ),
        "{evs:?}"
    );
    let evs = collect(p.stream(req(2000)).await.unwrap()).await;
    assert_eq!(
        evs.last(),
        Some(&Err(UpstreamError::InvalidResponse(
            "stream ended before completion".into()
        )))
    );
}

#[tokio::test]
async fn stream_errors_before_2xx_are_mapped_and_idle_gaps_time_out() {
    let (base, _) = serve(2, |i, _, s| {
        if i == 0 {
            respond(
                s,
                "401 Unauthorized",
                "",
                r#"{"error":{"code":"AuthenticationError","message":"bad key"}}"#,
            );
        } else {
            sse_head(s);
            let _ = s.write_all(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n");
            thread::sleep(Duration::from_millis(1500));
        }
    });
    let p = provider(&base, "", 2);
    let Err(e) = p.stream(req(300)).await else {
        panic!()
    };
    assert_eq!(e.to_string(), "HTTP 401: bad key");
    let evs = collect(p.stream(req(300)).await.unwrap()).await;
    assert_eq!(
        evs,
        vec![
            Ok(StreamEvent::Content("a".into())),
            Err(UpstreamError::Timeout { ms: 300 })
        ]
    );
}

#[tokio::test]
async fn dropping_the_stream_closes_the_upstream_socket() {
    let (tx, rx) = std::sync::mpsc::channel();
    let (base, _) = serve(1, move |_, _, s| {
        sse_head(s);
        let _ = s.write_all(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n");
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut b = [0u8; 16];
        // The client sends nothing more: a read returns 0 (FIN) or an
        // error (RST) once it has closed the connection.
        let closed = matches!(s.read(&mut b), Ok(0) | Err(_));
        let _ = tx.send(closed);
    });
    let mut st = provider(&base, "", 0).stream(req(5000)).await.unwrap();
    assert_eq!(st.next().await, Some(Ok(StreamEvent::Content("a".into()))));
    let t0 = std::time::Instant::now();
    drop(st);
    let closed = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(6)))
        .await
        .unwrap();
    assert_eq!(closed, Ok(true));
    assert!(t0.elapsed() < Duration::from_secs(1));
}

#[test]
fn futures_and_streams_are_send_and_static() {
    fn is_send<T: Send + 'static>(_: &T) {}
    let p = provider("http://127.0.0.1:1", "", 0);
    is_send(&p.complete(req(10)));
    is_send(&p.stream(req(10)));
}

#[test]
fn debug_masks_the_api_key() {
    let config = ArkConfig {
        base_url: "http://127.0.0.1:1".into(),
        api_key: "ark-key-visible?".into(),
        name: "byteplus".into(),
        max_retries: 0,
        stream_usage: true,
        http2: UpstreamHttp2::Auto,
        pool_idle: Duration::from_secs(15),
    };
    let shown = format!("{config:?}");
    assert!(!shown.contains("visible?"), "{shown}");
    assert!(shown.contains("api_key: \"***\""), "{shown}");
}
