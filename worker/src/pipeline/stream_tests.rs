//! Tests of the SSE frames (byte for byte, both formats) and of the
//! stream body (cancellation, drain, token estimates).

use super::*;
use serde_json::{Value, json};

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A pipeline context on the defaults (the simulated provider).
fn ctx() -> Arc<Pipeline> {
    let settings = crate::settings::Settings::from_lookup(|k| match k {
        "KEYWORDS_CONFIG" => {
            Some(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/keywords.json").into())
        }
        _ => None,
    });
    let services = crate::pipeline::services::Services::new(&settings).unwrap();
    Arc::new(Pipeline::new(settings, services))
}

fn meta(heartbeat: Duration) -> Meta {
    Meta {
        conversation_id: "c1".into(),
        route: "general".into(),
        strategy: Strategy::Direct,
        show_reasoning: false,
        prompt_estimate: 5,
        heartbeat,
        legacy: false,
        started: Instant::now(),
        x_cache: "MISS",
        own_call: true,
        format: Format::HearTalk,
    }
}

/// The final usage as the frames write it, read back as a JSON value.
fn final_usage(upstream: Option<Usage>, prompt_estimate: u64, completion: u64) -> Value {
    serde_json::to_value(FinalUsage::new(upstream, prompt_estimate, completion)).unwrap()
}

/// The next data frame of `body`, `None` at its end.
async fn next(body: &mut Body) -> Option<Bytes> {
    let frame = body.frame().await?.expect("SSE bodies do not fail");
    Some(frame.into_data().expect("a data frame"))
}

/// Sets its flag when dropped: the upstream stream is gone.
struct Dropped(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// One content delta, then nothing, ever; `dropped` is set when the
/// stream is dropped.
fn pending_after_one(dropped: &Arc<std::sync::atomic::AtomicBool>) -> EventStream {
    let guard = Dropped(dropped.clone());
    futures_util::stream::iter([Ok(StreamEvent::Content("a".into()))])
        .chain(futures_util::stream::pending())
        .map(move |item| {
            let _ = &guard;
            item
        })
        .boxed()
}

#[test]
fn a_stream_is_its_frames_byte_exact_then_its_end() {
    block_on(async {
        let st = ctx();
        let upstream = futures_util::stream::iter([
            Ok(StreamEvent::Reasoning("hidden thought".into())),
            Ok(StreamEvent::Content("你好".into())),
            Ok(StreamEvent::Content(" world".into())),
            Ok(StreamEvent::Done {
                finish_reason: None,
                usage: None,
                model: Some("ep-chat".into()),
            }),
        ])
        .boxed();
        let resp = respond(st, upstream, meta(Duration::from_secs(15)), true);
        assert_eq!(resp.headers()["x-cache"], "MISS");
        assert_eq!(resp.headers()[http::header::CONNECTION], "keep-alive");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        // Hidden reasoning writes nothing but counts in the estimate:
        // 2 ideographs (3) + "world" (1) + "hidden thought" (2).
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            concat!(
                "data: {\"type\":\"content\",\"content\":\"你好\",\"done\":false,\"provider\":\"simulated\"}\n\n",
                "data: {\"type\":\"content\",\"content\":\" world\",\"done\":false,\"provider\":\"simulated\"}\n\n",
                "data: {\"type\":\"complete\",\"done\":true,\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6,\"total_tokens\":11,\"estimated\":true},",
                "\"finish_reason\":\"stop\",\"provider\":\"simulated\",\"metadata\":{\"conversation_id\":\"c1\",",
                "\"endpoint\":\"ep-chat\",\"route\":\"general\",\"reasoning\":\"direct\",\"cached\":false}}\n\n",
            )
        );
    });
}

#[test]
fn a_bare_end_or_a_panic_upstream_is_a_final_error_frame() {
    block_on(async {
        let st = ctx();
        let bare = futures_util::stream::iter([Ok(StreamEvent::Content("a".into()))]).boxed();
        let mut body = respond(st.clone(), bare, meta(Duration::from_secs(15)), false).into_body();
        assert!(next(&mut body).await.is_some());
        assert_eq!(
            next(&mut body).await,
            Some(error_frame(
                "Response processing error: stream ended unexpectedly",
                "AI_PROVIDER_ERROR"
            ))
        );
        assert_eq!(next(&mut body).await, None);
        let explode = true;
        let panics = futures_util::stream::poll_fn(move |_| {
            if explode {
                panic!("boom");
            }
            Poll::Ready(None)
        })
        .boxed();
        let mut body = respond(st, panics, meta(Duration::from_secs(15)), false).into_body();
        assert_eq!(
            next(&mut body).await,
            Some(error_frame(
                "Response processing error: internal error while answering",
                "AI_PROVIDER_ERROR"
            ))
        );
        assert_eq!(next(&mut body).await, None);
    });
}

#[test]
fn dropping_the_body_drops_the_upstream_at_once() {
    block_on(async {
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let upstream = pending_after_one(&dropped);
        let mut body = respond(ctx(), upstream, meta(Duration::from_secs(15)), false).into_body();
        assert!(next(&mut body).await.is_some());
        assert!(!dropped.load(std::sync::atomic::Ordering::SeqCst));
        // The client went away: the server drops the body.
        drop(body);
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    });
}

#[test]
fn silence_gets_pings_and_the_drain_deadline_a_final_error_frame() {
    block_on(async {
        let st = ctx();
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let upstream = pending_after_one(&dropped);
        let mut body = respond(
            st.clone(),
            upstream,
            meta(Duration::from_millis(100)),
            false,
        )
        .into_body();
        assert!(next(&mut body).await.is_some());
        let t0 = Instant::now();
        assert_eq!(next(&mut body).await, Some(Bytes::from_static(PING)));
        assert!(
            t0.elapsed() >= Duration::from_millis(90),
            "{:?}",
            t0.elapsed()
        );
        let waiting = tokio::spawn(async move {
            let frame = next(&mut body).await;
            (frame, next(&mut body).await)
        });
        tokio::task::yield_now().await;
        assert_eq!(st.finish_streams(), 1, "the open stream listens");
        let (frame, end) = waiting.await.unwrap();
        assert_eq!(frame, Some(error_frame(SHUTDOWN_MESSAGE, SHUTDOWN_CODE)));
        assert_eq!(end, None);
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(st.finish_streams(), 0, "an ended stream no longer listens");
    });
}

#[test]
fn an_openai_stream_opens_with_the_role_chunk() {
    block_on(async {
        let mut m = meta(Duration::from_secs(15));
        m.format = Format::OpenAi(OpenAiStream {
            id: "chatcmpl-1".into(),
            created: 7,
            model: "ep-chat".into(),
            include_usage: false,
        });
        let upstream = futures_util::stream::iter([Ok(StreamEvent::Done {
            finish_reason: Some("length".into()),
            usage: None,
            model: None,
        })])
        .boxed();
        let bytes = respond(ctx(), upstream, m, false)
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let head = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"ep-chat\",\"choices\":[{\"index\":0,";
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            format!(
                "{head}\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"finish_reason\":null}}]}}\n\n\
                 {head}\"delta\":{{}},\"finish_reason\":\"length\"}}]}}\n\ndata: [DONE]\n\n"
            )
        );
    });
}

/// The frames written from structs are byte for byte the frames the
/// JSON trees (`json!`, keys in insertion order) made, for every frame
/// type and for text that needs escaping.
#[test]
fn frames_match_the_json_trees_they_replace() {
    let tree = |v: Value| Bytes::from(format!("data: {v}\n\n"));
    let openai = Format::OpenAi(OpenAiStream {
        id: "chatcmpl-\"x\"".into(),
        created: 1_700_000_000,
        model: "ep-\u{1}chat".into(),
        include_usage: true,
    });
    let Format::OpenAi(o) = &openai else {
        unreachable!()
    };
    let chunk = |delta: Value, finish: Option<&str>| {
        tree(json!({
            "id": o.id,
            "object": "chat.completion.chunk",
            "created": o.created,
            "model": o.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }))
    };
    let upstream: Usage = serde_json::from_str(
        r#"{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8,"prompt_tokens_details":{"cached_tokens":2},"note":1.5}"#,
    )
    .unwrap();
    let mut m = meta(Duration::from_secs(15));
    m.conversation_id = "c\n\"1\"".into();
    m.x_cache = "HIT";
    for text in [
        "",
        "你好 world",
        "quote \" back \\ nl \n tab \t ctl \u{7} </script>",
        "😀",
    ] {
        assert_eq!(
            openai.content(text, "p"),
            chunk(json!({"content": text}), None)
        );
        assert_eq!(
            openai.reasoning(text),
            chunk(json!({"reasoning_content": text}), None)
        );
        assert_eq!(
            content_frame(text, "byte\"plus"),
            tree(
                json!({"type": "content", "content": text, "done": false, "provider": "byte\"plus"})
            )
        );
        assert_eq!(
            reasoning_frame(text),
            tree(json!({"type": "reasoning", "reasoning": text, "done": false}))
        );
        assert_eq!(
            error_frame(text, "CODE"),
            tree(json!({"type": "error", "error": text, "code": "CODE", "done": true}))
        );
        assert_eq!(
            openai.error(text, "UPSTREAM_RATE_LIMITED"),
            tree(
                json!({"error": {"message": text, "type": "rate_limit_error", "param": null, "code": "UPSTREAM_RATE_LIMITED"}})
            )
        );
    }
    assert_eq!(
        openai.opening().unwrap(),
        chunk(json!({"role": "assistant", "content": ""}), None)
    );
    for usage in [
        FinalUsage::new(Some(upstream.clone()), 9, 9),
        FinalUsage::new(None, 10, 2),
    ] {
        let usage_tree = serde_json::to_value(&usage).unwrap();
        let mut want = chunk(json!({}), Some("length")).to_vec();
        want.extend_from_slice(&tree(json!({
            "id": o.id,
            "object": "chat.completion.chunk",
            "created": o.created,
            "model": o.model,
            "choices": [],
            "usage": usage_tree,
        })));
        want.extend_from_slice(b"data: [DONE]\n\n");
        assert_eq!(openai.complete(&m, "p", &usage, "length", "ep"), want);
        assert_eq!(
            complete_frame(&m, "simulated", &usage, "stop", "ep-\"chat"),
            tree(json!({
                "type": "complete",
                "done": true,
                "usage": usage_tree,
                "finish_reason": "stop",
                "provider": "simulated",
                "metadata": {
                    "conversation_id": m.conversation_id,
                    "endpoint": "ep-\"chat",
                    "route": m.route,
                    "reasoning": m.strategy.label(),
                    "cached": true,
                }
            }))
        );
    }
    // The upstream's usage is written as the tree it was read into.
    assert_eq!(
        serde_json::to_value(FinalUsage::new(Some(upstream), 0, 0)).unwrap(),
        json!({"prompt_tokens":5,"completion_tokens":3,"total_tokens":8,"prompt_tokens_details":{"cached_tokens":2},"note":1.5})
    );
}

#[test]
fn frames_are_compact_json_lines() {
    assert_eq!(
        content_frame("你好", "byteplus"),
        Bytes::from(
            "data: {\"type\":\"content\",\"content\":\"你好\",\"done\":false,\"provider\":\"byteplus\"}\n\n"
        )
    );
    assert_eq!(
        error_frame("Upstream timeout after 5 ms", "TIMEOUT_ERROR"),
        Bytes::from(
            "data: {\"type\":\"error\",\"error\":\"Upstream timeout after 5 ms\",\"code\":\"TIMEOUT_ERROR\",\"done\":true}\n\n"
        )
    );
}

#[test]
fn usage_is_estimated_and_marked_without_upstream_usage() {
    let u = final_usage(None, 10, crate::provider::tokens::estimate("hello world"));
    assert_eq!(
        u,
        json!({"prompt_tokens":10,"completion_tokens":2,"total_tokens":12,"estimated":true})
    );
    let real = Usage {
        prompt_tokens: 1,
        completion_tokens: 2,
        total_tokens: 3,
        ..Usage::default()
    };
    assert_eq!(
        final_usage(Some(real), 10, 1),
        json!({"prompt_tokens":1,"completion_tokens":2,"total_tokens":3})
    );
}
