//! The simulated provider (API.md §10.2): deterministic Chinese answers
//! with no network, so the service runs, demos and benchmarks without an
//! API key. The text depends only on (endpoint, messages, temperature,
//! max_tokens); usage comes from the §8 estimator; timing follows
//! `SIMULATED_LATENCY_MS` and `SIMULATED_TOKENS_PER_SEC`.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;

use super::{
    Completion, CompletionRequest, EventStream, Provider, StreamEvent, UpstreamError, Usage,
};
use crate::provider::tokens::estimate;
use crate::runtime::fnv::{OFFSET as FNV_OFFSET, fnv1a};

/// Timing and shape of the simulated answers (API.md §14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedConfig {
    /// `SIMULATED_LATENCY_MS`: delay before the first output.
    pub latency: Duration,
    /// `SIMULATED_TOKENS_PER_SEC`: output rate; 0 means no throttling.
    pub tokens_per_sec: u32,
    /// `SIMULATED_REASONING`: also produce `reasoning_content`.
    pub reasoning: bool,
}

/// The provider. Holds only its configuration.
#[derive(Debug, Clone)]
pub struct SimulatedProvider {
    cfg: SimulatedConfig,
}

impl SimulatedProvider {
    pub fn new(cfg: SimulatedConfig) -> Self {
        SimulatedProvider { cfg }
    }
}

/// The pool answers are drawn from; short, so answers stay ~40–80 tokens.
const SENTENCES: &[&str] = &[
    "这是模拟回答。",
    "建议先明确目标。",
    "把任务拆成小步骤。",
    "多倾听对方的想法。",
    "适当休息很重要。",
    "记下关键信息。",
    "先从简单处入手。",
    "保持耐心和坦诚。",
    "每天留时间反思。",
    "需要时寻求帮助。",
];

/// How many characters of the latest user message the answer quotes.
const QUOTE_CHARS: usize = 16;
/// Characters per streamed chunk (≈ 3 estimated tokens of Chinese).
const CHUNK_CHARS: usize = 2;

/// The stable hash of everything the answer may depend on.
fn request_hash(req: &CompletionRequest) -> u64 {
    let mut h = fnv1a(req.endpoint.label().as_bytes(), FNV_OFFSET);
    for m in req.messages.iter() {
        h = fnv1a(&[0x1e], h);
        h = fnv1a(m.role.as_bytes(), h);
        h = fnv1a(&[0x1f], h);
        h = fnv1a(m.content.as_bytes(), h);
    }
    h = fnv1a(&req.temperature.to_bits().to_le_bytes(), h);
    fnv1a(&req.max_tokens.to_le_bytes(), h)
}

/// The deterministic answer: `(content, reasoning_content)`.
pub fn answer(req: &CompletionRequest, reasoning: bool) -> (String, Option<String>) {
    let mut h = request_hash(req);
    let mut next = || {
        // xorshift64 over the hash: a stable sequence of choices.
        h ^= h << 13;
        h ^= h >> 7;
        h ^= h << 17;
        h
    };
    let quote: String = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| {
            // A wrapped turn (chain-of-thought) carries the user's words in
            // its question slot; quote those, not the instructions.
            let text = m
                .content
                .split_once("问题：")
                .map_or(m.content.as_str(), |(_, q)| {
                    q.split("\n\n").next().unwrap_or(q)
                });
            text.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .take(QUOTE_CHARS)
                .collect()
        })
        .unwrap_or_default();
    let mut content = if quote.is_empty() {
        String::from("你好！")
    } else {
        format!("关于「{quote}」：")
    };
    let count = 2 + (next() % 3) as usize;
    let mut start = (next() % SENTENCES.len() as u64) as usize;
    let step = 1 + (next() % (SENTENCES.len() as u64 - 1)) as usize;
    for _ in 0..count {
        content.push_str(SENTENCES[start]);
        start = (start + step) % SENTENCES.len();
    }
    let content = truncate_tokens(&content, u64::from(req.max_tokens));
    let reasoning = reasoning.then(|| {
        let topic = if quote.is_empty() {
            "这个问题".to_string()
        } else {
            format!("「{quote}」")
        };
        format!("用户在询问{topic}。先理解需求，再给出{count}条简明建议。")
    });
    (content, reasoning)
}

/// The longest prefix of `text` whose estimate fits `max` tokens, but
/// never less than one character (an empty answer would be an error).
fn truncate_tokens(text: &str, max: u64) -> String {
    if estimate(text) <= max {
        return text.to_string();
    }
    let mut end = text.chars().next().map_or(0, char::len_utf8);
    for (i, c) in text.char_indices().skip(1) {
        let next = i + c.len_utf8();
        if estimate(&text[..next]) > max {
            break;
        }
        end = next;
    }
    text[..end].to_string()
}

fn usage_for(req: &CompletionRequest, content: &str, reasoning: Option<&str>) -> Usage {
    let prompt: u64 = req.messages.iter().map(|m| estimate(&m.content)).sum();
    let completion = estimate(content) + reasoning.map_or(0, estimate);
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        extra: Default::default(),
    }
}

/// Time to emit `tokens` at `tps` tokens per second (zero when unthrottled).
fn flow_time(tokens: u64, tps: u32) -> Duration {
    if tps == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(tokens as f64 / f64::from(tps))
    }
}

fn chunks(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(CHUNK_CHARS)
        .map(|c| c.iter().collect())
        .collect()
}

impl Provider for SimulatedProvider {
    fn name(&self) -> &str {
        "simulated"
    }

    fn is_simulated(&self) -> bool {
        true
    }

    fn complete(
        &self,
        req: CompletionRequest,
    ) -> BoxFuture<'static, Result<Completion, UpstreamError>> {
        let cfg = self.cfg.clone();
        async move {
            let (content, reasoning) = answer(&req, cfg.reasoning);
            let usage = usage_for(&req, &content, reasoning.as_deref());
            tokio::time::sleep(
                cfg.latency + flow_time(usage.completion_tokens, cfg.tokens_per_sec),
            )
            .await;
            Ok(Completion {
                content,
                reasoning_content: reasoning,
                finish_reason: Some("stop".into()),
                usage: Some(usage),
                model: Some(req.model),
            })
        }
        .boxed()
    }

    /// Resolves at once (the "headers"); the first delta comes after the
    /// latency, and delta *i* at latency + tokens(deltas before *i*) / rate.
    fn stream(
        &self,
        req: CompletionRequest,
    ) -> BoxFuture<'static, Result<EventStream, UpstreamError>> {
        let cfg = self.cfg.clone();
        async move {
            let (content, reasoning) = answer(&req, cfg.reasoning);
            let usage = usage_for(&req, &content, reasoning.as_deref());
            let mut events: Vec<StreamEvent> = Vec::new();
            if let Some(r) = &reasoning {
                events.extend(chunks(r).into_iter().map(StreamEvent::Reasoning));
            }
            events.extend(chunks(&content).into_iter().map(StreamEvent::Content));
            events.push(StreamEvent::Done {
                finish_reason: Some("stop".into()),
                usage: Some(usage),
                model: Some(req.model),
            });
            let first = Instant::now() + cfg.latency;
            let tps = cfg.tokens_per_sec;
            let stream = futures_util::stream::iter(events).scan(0u64, move |emitted, ev| {
                let at = first + flow_time(*emitted, tps);
                *emitted += match &ev {
                    StreamEvent::Content(t) | StreamEvent::Reasoning(t) => estimate(t),
                    StreamEvent::Done { .. } => 0,
                };
                async move {
                    tokio::time::sleep_until(at).await;
                    Some(Ok(ev))
                }
            });
            Ok(stream.boxed())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{ChatMessage, EndpointKind};

    fn req(user: &str, temperature: f64, max_tokens: u32) -> CompletionRequest {
        CompletionRequest {
            endpoint: EndpointKind::Chat,
            model: "sim-chat".into(),
            messages: vec![
                ChatMessage::new("system", "你是助手"),
                ChatMessage::new("user", user),
            ]
            .into(),
            temperature,
            max_tokens,
            top_p: 1.0,
            timeout: Duration::from_secs(30),
        }
    }

    fn fast(reasoning: bool) -> SimulatedProvider {
        SimulatedProvider::new(SimulatedConfig {
            latency: Duration::ZERO,
            tokens_per_sec: 0,
            reasoning,
        })
    }

    #[test]
    fn answers_are_deterministic_short_and_quote_the_user() {
        let a = answer(&req("我最近工作压力很大，怎么办？", 0.7, 2000), false);
        assert_eq!(
            a,
            answer(&req("我最近工作压力很大，怎么办？", 0.7, 2000), false)
        );
        assert!(a.0.contains("我最近工作压力很大"), "{}", a.0);
        assert_eq!(a.1, None);
        let t = estimate(&a.0);
        assert!((30..=110).contains(&t), "{t}: {}", a.0);
        // Every input that matters changes something across a few variants.
        let variants: std::collections::HashSet<String> = (0..8)
            .map(|i| answer(&req("同一个问题", 0.1 * f64::from(i), 2000), false).0)
            .collect();
        assert!(variants.len() > 1);
        // The endpoint (the route's) is one of them: the same question on
        // the work-assistant endpoint is answered differently.
        for q in [
            "同一个问题",
            "我最近工作压力很大，怎么办？",
            "周末去哪里玩？",
        ] {
            let chat = req(q, 0.7, 2000);
            let mut work = chat.clone();
            work.endpoint = EndpointKind::WorkAssistant;
            let (chat_answer, work_answer) = (answer(&chat, false).0, answer(&work, false).0);
            // Both quote the question; the sentences after it differ.
            let quote = format!("关于「{q}」：");
            assert!(chat_answer.starts_with(&quote), "{chat_answer}");
            assert!(work_answer.starts_with(&quote), "{work_answer}");
            assert_ne!(chat_answer, work_answer, "{q}");
            assert_eq!(work_answer, answer(&work, false).0, "{q}: deterministic");
        }
        let mut other = req("同一个问题", 0.7, 2000);
        other.endpoint = EndpointKind::WorkAssistant;
        let _ = answer(&other, true).1.unwrap();
    }

    #[test]
    fn answers_fit_max_tokens() {
        for max in [1, 5, 10, 20] {
            let (c, _) = answer(&req("hello there", 0.7, max), false);
            assert!(!c.is_empty());
            assert!(estimate(&c) <= u64::from(max).max(2), "{max}: {c}");
        }
    }

    #[tokio::test]
    async fn complete_reports_model_stop_and_estimated_usage() {
        let r = req("你好", 0.7, 2000);
        let c = fast(true).complete(r.clone()).await.unwrap();
        assert_eq!(c.model.as_deref(), Some("sim-chat"));
        assert_eq!(c.finish_reason.as_deref(), Some("stop"));
        let u = c.usage.unwrap();
        assert_eq!(u.prompt_tokens, estimate("你是助手") + estimate("你好"));
        assert_eq!(
            u.completion_tokens,
            estimate(&c.content) + estimate(c.reasoning_content.as_deref().unwrap())
        );
        assert_eq!(u.total_tokens, u.prompt_tokens + u.completion_tokens);
        assert!(fast(false).is_simulated());
        assert_eq!(fast(false).name(), "simulated");
    }

    #[tokio::test]
    async fn stream_concatenates_to_the_completion() {
        let r = req("周末去哪里玩？", 0.3, 2000);
        let p = fast(true);
        let c = p.complete(r.clone()).await.unwrap();
        let evs: Vec<_> = p.stream(r).await.unwrap().collect().await;
        let (mut content, mut reasoning) = (String::new(), String::new());
        for e in &evs[..evs.len() - 1] {
            match e {
                Ok(StreamEvent::Content(t)) => content.push_str(t),
                Ok(StreamEvent::Reasoning(t)) => reasoning.push_str(t),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(content, c.content);
        assert_eq!(Some(reasoning), c.reasoning_content);
        assert_eq!(
            evs.last(),
            Some(&Ok(StreamEvent::Done {
                finish_reason: Some("stop".into()),
                usage: c.usage,
                model: Some("sim-chat".into())
            }))
        );
    }

    #[tokio::test]
    async fn timing_follows_latency_and_rate() {
        let p = SimulatedProvider::new(SimulatedConfig {
            latency: Duration::from_millis(100),
            tokens_per_sec: 400,
            reasoning: false,
        });
        let r = req("你好", 0.7, 2000);
        let t0 = Instant::now();
        let c = p.complete(r.clone()).await.unwrap();
        let total = Duration::from_millis(100) + flow_time(c.usage.unwrap().completion_tokens, 400);
        assert!(total > Duration::from_millis(150));
        assert!(
            t0.elapsed() >= total && t0.elapsed() < total + Duration::from_millis(100),
            "{:?}",
            t0.elapsed()
        );
        let t0 = Instant::now();
        let mut s = p.stream(r).await.unwrap();
        assert!(t0.elapsed() < Duration::from_millis(50));
        let _first = s.next().await.unwrap().unwrap();
        let first = t0.elapsed();
        assert!(
            first >= Duration::from_millis(100) && first < Duration::from_millis(150),
            "{first:?}"
        );
        while s.next().await.is_some() {}
        let all = t0.elapsed();
        assert!(
            all > first + Duration::from_millis(30) && all < total + Duration::from_millis(100),
            "{all:?}"
        );
    }
}
