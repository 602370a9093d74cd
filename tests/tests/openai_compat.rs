//! The OpenAI-compatible endpoint (API.md §5.4) with the real official
//! `openai` Python and Node.js SDKs (installed by scripts/deps.sh into
//! target/tools-venv and target/tools-node) against the real supervisor and worker: a plain and a
//! streaming chat completion, the model list, and errors in OpenAI's shape;
//! plus the raw wire format (`chat.completion.chunk` events, the usage
//! chunk, `data: [DONE]`) and how `model` picks the endpoint; and a
//! stream whose upstream refuses: an OpenAI-shaped error that still counts
//! its reasoning time.

mod helper;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use heartalk_e2e::mock_ark::{Behavior, MockArk};
use helper::*;
use serde_json::{Value, json};

fn python() -> PathBuf {
    let venv = repo().join("target/tools-venv/bin/python3");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

const SDK_SCRIPT: &str = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0, timeout=30)
out = {}
r = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "你好"}])
out["plain"] = {"content": r.choices[0].message.content, "finish": r.choices[0].finish_reason,
                "object": r.object, "total": r.usage.total_tokens, "model": r.model}
parts, usage, finishes = [], None, []
for chunk in client.chat.completions.create(model="chat", stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "讲个故事"}]):
    if chunk.usage is not None:
        usage = chunk.usage.total_tokens
    for c in chunk.choices:
        if c.delta.content:
            parts.append(c.delta.content)
        if c.finish_reason:
            finishes.append(c.finish_reason)
out["stream"] = {"content": "".join(parts), "usage": usage, "finishes": finishes}
out["models"] = [m.id for m in client.models.list()]
try:
    client.chat.completions.create(model="auto", messages=[])
except Exception as e:
    out["error"] = {"status": getattr(e, "status_code", None), "body": getattr(e, "body", None)}
bad = OpenAI(base_url=sys.argv[1], api_key="not-a-jwt", max_retries=0)
try:
    bad.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}])
except Exception as e:
    out["auth"] = {"status": getattr(e, "status_code", None), "body": getattr(e, "body", None)}
print(json.dumps(out))
"#;

#[test]
fn the_official_python_sdk_works_unchanged() {
    let ark = MockArk::start();
    let svc = live_service(&ark.base_url(), &[]);
    let out = Command::new(python())
        .args(["-c", SDK_SCRIPT])
        .arg(format!("http://{}/v1", svc.addr))
        .arg(user_token())
        .output()
        .expect("python3 with the openai package (scripts/deps.sh)");
    assert!(
        out.status.success(),
        "SDK script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let plain = &r["plain"];
    assert!(
        plain["content"].as_str().is_some_and(|c| !c.is_empty()),
        "{r}"
    );
    assert_eq!(plain["object"], "chat.completion");
    assert_eq!(plain["finish"], "stop");
    assert_eq!(plain["model"], "ep-chat");
    assert!(plain["total"].as_u64().unwrap() > 0);
    let stream = &r["stream"];
    assert!(
        stream["content"].as_str().is_some_and(|c| !c.is_empty()),
        "{r}"
    );
    assert_eq!(stream["finishes"], json!(["stop"]));
    assert!(stream["usage"].as_u64().unwrap() > 0, "usage chunk: {r}");
    assert_eq!(
        r["models"],
        json!(["auto", "chat", "work_assistant", "ep-chat", "ep-work"])
    );
    assert_eq!(r["error"]["status"], 400);
    assert_eq!(r["error"]["body"]["code"], "VALIDATION_ERROR");
    assert_eq!(r["error"]["body"]["type"], "invalid_request_error");
    assert_eq!(r["auth"]["status"], 401);
    assert_eq!(r["auth"]["body"]["type"], "authentication_error");
    assert_eq!(r["auth"]["body"]["code"], "INVALID_TOKEN");
}

const NODE_SCRIPT: &str = r#"
const OpenAI = require(process.env.OPENAI_MODULE);
(async () => {
  const client = new OpenAI({ baseURL: process.argv[1], apiKey: process.argv[2], maxRetries: 0 });
  const out = {};
  const r = await client.chat.completions.create({ model: "auto", messages: [{ role: "user", content: "你好 node" }] });
  out.plain = { content: r.choices[0].message.content, object: r.object };
  const stream = await client.chat.completions.create({ model: "chat", stream: true,
    stream_options: { include_usage: true }, messages: [{ role: "user", content: "node 流" }] });
  let text = "", usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage.total_tokens;
    for (const c of chunk.choices) if (c.delta && c.delta.content) text += c.delta.content;
  }
  out.stream = { content: text, usage };
  try {
    await client.chat.completions.create({ model: "auto", messages: [] });
  } catch (e) {
    out.error = { status: e.status, code: e.code, type: e.type };
  }
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"#;

#[test]
fn the_official_node_sdk_works_unchanged() {
    let module = repo().join("target/tools-node/node_modules/openai");
    assert!(
        module.join("package.json").exists(),
        "the openai npm package (scripts/deps.sh installs it)"
    );
    let ark = MockArk::start();
    let svc = live_service(&ark.base_url(), &[]);
    let out = Command::new("node")
        .env("OPENAI_MODULE", &module)
        .args(["-e", NODE_SCRIPT])
        .arg(format!("http://{}/v1", svc.addr))
        .arg(user_token())
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "SDK script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["plain"]["object"], "chat.completion");
    assert!(
        r["plain"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{r}"
    );
    assert!(
        r["stream"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{r}"
    );
    assert!(r["stream"]["usage"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["error"]["status"], 400);
    assert_eq!(r["error"]["code"], "VALIDATION_ERROR");
    assert_eq!(r["error"]["type"], "invalid_request_error");
}

#[test]
fn wire_format_and_model_selection() {
    let ark = MockArk::start();
    let svc = live_service(&ark.base_url(), &[]);
    // `work_assistant` forces the endpoint even for a chatty message.
    let r = svc.post(
        "/v1/chat/completions",
        &json!({"model": "work_assistant", "messages": [{"role": "user", "content": "你好"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(ark.last_body().unwrap()["model"], "ep-work");
    let b = r.json();
    assert!(b["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(b["choices"][0]["message"]["role"], "assistant");
    assert_eq!(r.header("x-cache"), Some("MISS"));

    // The raw stream: role chunk, content chunks, finish chunk, usage chunk, [DONE].
    let r = svc.post(
        "/v1/chat/completions",
        &json!({"model": "auto", "stream": true, "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "流"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = sse_events(&r.body);
    assert_eq!(events.last().map(String::as_str), Some("data: [DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let n = chunks.len();
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[n - 1]["choices"], json!([]));
    assert!(chunks[n - 1]["usage"]["total_tokens"].as_u64().is_some());

    // Streams count in the stream bucket; errors are OpenAI-shaped.
    let r = svc.post("/v1/chat/completions", &json!({"messages": "nope"}));
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"error": {"message": "messages is required and must be an array",
                         "type": "invalid_request_error", "param": null, "code": "VALIDATION_ERROR"}})
    );
    let r = request(
        svc.addr,
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        b"{}",
    )
    .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "MISSING_TOKEN");
    let r = get_auth(svc.addr, "/v1/chat/completions", &user_token());
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["error"]["code"], "METHOD_NOT_ALLOWED");
}

/// The `ai_reasoning_duration_seconds` observations on `addr`'s `/metrics`,
/// over every strategy (absent series count as 0).
fn reasoning_observations(addr: SocketAddr) -> Option<f64> {
    let text = scrape(addr)?;
    Some(sample_sum(&text, "ai_reasoning_duration_seconds_count", ""))
}

/// A stream the upstream refuses before its first byte is a JSON error in
/// OpenAI's shape (status, code and `Retry-After` of the upstream error),
/// and its reasoning time is recorded as on `/api/v1/chat/stream`: a
/// failed open is still time spent on the request's strategy.
#[test]
fn a_refused_stream_is_an_openai_error_and_counts_reasoning_time() {
    let ark = MockArk::start();
    // A quota refusal is not retried: one upstream call, one failure.
    ark.set(Behavior::quota_exceeded().with_retry_after("7"));
    let svc = live_service(&ark.base_url(), &[]);
    let before = wait_for("/metrics", Duration::from_secs(10), || {
        reasoning_observations(svc.addr)
    });
    let r = svc.post(
        "/v1/chat/completions",
        &json!({"model": "chat", "stream": true,
                "messages": [{"role": "user", "content": "额度用完了"}]}),
    );
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("7"));
    let body = r.json();
    let error = body["error"].as_object().expect("OpenAI error object");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
    assert_eq!(error["type"], "rate_limit_error");
    assert_eq!(error["code"], "UPSTREAM_RATE_LIMITED");
    assert_eq!(error["param"], Value::Null);
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(ark.calls(), 1);
    wait_for(
        "the failed stream's reasoning time in /metrics",
        Duration::from_secs(10),
        || (reasoning_observations(svc.addr)? >= before + 1.0).then_some(()),
    );
}
