//! Reasoning strategies (API.md §7): which one a message gets, the prompts
//! that wrap it, and Self-Consistency's sampling, selection and accounting.
//!
//! The choices and the selection rule are pure functions with unit tests;
//! [`run`] is the only async part and talks to the upstream solely through
//! the [`Provider`] trait, so the same code serves live and simulated mode.
//! The prompt texts are our own (Chinese, as the users are); tests check
//! their structure, not their wording.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::provider::tokens::js_len;
use crate::provider::{
    ChatMessage, Completion, CompletionRequest, EndpointKind, Provider, UpstreamError, Usage,
};

/// Default sampling temperature when the request sets none.
pub const DEFAULT_TEMPERATURE: f64 = 0.7;
/// Default completion budget when the request sets none.
pub const DEFAULT_MAX_TOKENS: u32 = 2000;

/// How a message is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    ChainOfThought,
    SelfConsistency,
    /// The raw message, unwrapped.
    Direct,
}

impl Strategy {
    /// The `reasoning` key of a generate body for a single-call strategy:
    /// `{"type":"chain-of-thought","enhanced":true}` for CoT, none for a
    /// direct call (Self-Consistency's key carries its samples, see [`run`]).
    pub fn body_key(self) -> Option<Value> {
        (self == Strategy::ChainOfThought)
            .then(|| json!({"type": "chain-of-thought", "enhanced": true}))
    }

    /// The label used in metrics and in stream metadata.
    pub fn label(self) -> &'static str {
        match self {
            Strategy::ChainOfThought => "chain-of-thought",
            Strategy::SelfConsistency => "self-consistency",
            Strategy::Direct => "direct",
        }
    }
}

/// The reasoning switches (`ENABLE_*`, `SELF_CONSISTENCY_SAMPLES`,
/// `SHOW_REASONING_PROCESS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switches {
    pub chain_of_thought: bool,
    pub self_consistency: bool,
    pub samples: u32,
    pub show_reasoning: bool,
}

/// §7 "Choice": complex messages get SC when enabled (never when
/// streaming), otherwise CoT when enabled, otherwise a direct call.
pub fn choose(complex: bool, streaming: bool, s: &Switches) -> Strategy {
    if complex && s.self_consistency && !streaming {
        Strategy::SelfConsistency
    } else if s.chain_of_thought {
        Strategy::ChainOfThought
    } else {
        Strategy::Direct
    }
}

/// The chain-of-thought wrapping of `message`. With `show`, the model is
/// asked for an explicit five-stage analysis (returned as reasoning);
/// without, to reason silently and answer concisely.
pub fn cot_prompt(message: &str, show: bool) -> String {
    if show {
        format!(
            "请按以下五个阶段对问题进行明确、完整的分析：\n\
             1. 理解问题：抓住问题的核心；\n\
             2. 背景分析：梳理相关背景与约束条件；\n\
             3. 推理过程：逐步推理，得出可行的解决方案；\n\
             4. 方案权衡：比较各方案的优缺点；\n\
             5. 结论建议：给出结论和推荐做法。\n\n\
             问题：{message}\n\n\
             请开始分析："
        )
    } else {
        format!(
            "请在心里一步一步地仔细思考下面的问题，但只输出清晰、简洁、实用的最终答案，不要展示推理步骤。\n\
             要求：\n\
             1. 答案准确、条理清楚、容易理解；\n\
             2. 如果问题需要建议，请给出具体、可执行的建议；\n\
             3. 语气专业而友好。\n\n\
             问题：{message}\n\n\
             最终答案："
        )
    }
}

/// The three Self-Consistency lead-ins: another angle, a different way of
/// analysing, alternative solution paths.
pub const LEAD_INS: [&str; 3] = [
    "请换一个角度来思考这个问题。",
    "请尝试用一种不同的分析方法来解决这个问题。",
    "请考虑其他可能的解决路径。",
];

/// Sample `i`'s prompt: lead-in `i mod 3`, a blank line, the CoT prompt.
pub fn sc_prompt(i: usize, message: &str, show: bool) -> String {
    format!("{}\n\n{}", LEAD_INS[i % 3], cot_prompt(message, show))
}

/// Sample `i`'s temperature: `base + 0.1·i` (base 0.7 unless the request
/// set one), capped at 2.0.
pub fn sc_temperature(i: usize, base: Option<f64>) -> f64 {
    let t = base.unwrap_or(DEFAULT_TEMPERATURE) + 0.1 * i as f64;
    // Round away float noise (0.7 + 0.1·2 = 0.8999…) so upstream sees 0.9.
    ((t * 1e9).round() / 1e9).min(2.0)
}

/// §7 selection: among successful samples with non-empty content, sorted
/// by content length (stable), the one at index `floor(k/2)`. Returns its
/// original index and `k`.
pub fn select_median(samples: &[Result<Completion, UpstreamError>]) -> Option<(usize, usize)> {
    let mut ok: Vec<(usize, usize)> = samples
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Ok(c) if !c.content.is_empty() => Some((i, js_len(&c.content))),
            _ => None,
        })
        .collect();
    if ok.is_empty() {
        return None;
    }
    ok.sort_by_key(|&(_, len)| len);
    Some((ok[ok.len() / 2].0, ok.len()))
}

/// Self-Consistency's sample count (`SELF_CONSISTENCY_SAMPLES`; 0 means 3).
pub fn sample_count(s: &Switches) -> u32 {
    if s.samples == 0 { 3 } else { s.samples }
}

/// Everything one generate call needs beyond the provider.
#[derive(Debug, Clone)]
pub struct Plan {
    pub strategy: Strategy,
    pub endpoint: EndpointKind,
    pub model: String,
    pub timeout: Duration,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub switches: Switches,
}

impl Plan {
    /// The sampling temperature: the request's, else the default.
    pub fn base_temperature(&self) -> f64 {
        self.temperature.unwrap_or(DEFAULT_TEMPERATURE)
    }

    /// The plan's first upstream request (for SC: sample 0's messages, at
    /// the base temperature, as the cache key reads it): `message` wrapped
    /// for the strategy and put in its context by `build`.
    pub fn first_request(
        &self,
        message: &str,
        build: impl FnOnce(String) -> Vec<ChatMessage>,
    ) -> CompletionRequest {
        let turn = wrap(self.strategy, 0, message, self.switches.show_reasoning);
        self.request(build(turn), self.base_temperature())
    }

    /// One upstream call of this plan with `messages`: the defaults of
    /// §7 (temperature 0.7, max_tokens 2000) unless the request set them.
    pub fn request(&self, messages: Vec<ChatMessage>, temperature: f64) -> CompletionRequest {
        CompletionRequest {
            endpoint: self.endpoint,
            model: self.model.clone(),
            messages: messages.into(),
            temperature,
            max_tokens: self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            top_p: 1.0,
            timeout: self.timeout,
        }
    }
}

/// The answer and how it was reached.
#[derive(Debug, Clone)]
pub struct Answer {
    pub completion: Completion,
    /// The `reasoning` key of the response body (absent for direct calls
    /// and for the SC fallback).
    pub reasoning: Option<Value>,
    /// The strategy that produced the answer (`direct` after a fallback).
    pub used: Strategy,
}

/// The user turn as sent upstream for `plan.strategy` (sample `i` for SC).
pub fn wrap(strategy: Strategy, i: usize, message: &str, show: bool) -> String {
    match strategy {
        Strategy::ChainOfThought => cot_prompt(message, show),
        Strategy::SelfConsistency => sc_prompt(i, message, show),
        Strategy::Direct => message.to_string(),
    }
}

/// Runs `plan` against `provider`. `first` is the plan's first upstream
/// request ([`Plan::first_request`]), built by the caller, which has made
/// the cache key from it: it is sent as it is (for SC as sample 0, at
/// sample 0's temperature), not built again. `build` turns a (wrapped)
/// user turn into the full upstream message list (history or client
/// messages around it), so every other sample carries the same context.
pub async fn run(
    provider: &dyn Provider,
    plan: &Plan,
    message: &str,
    first: CompletionRequest,
    build: &(dyn Fn(String) -> Vec<ChatMessage> + Sync),
) -> Result<Answer, UpstreamError> {
    let show = plan.switches.show_reasoning;
    let request = |user_turn: String, temperature: f64| plan.request(build(user_turn), temperature);
    let base_temperature = plan.base_temperature();
    match plan.strategy {
        Strategy::ChainOfThought | Strategy::Direct => {
            let mut c = provider.complete(first).await?;
            if !show {
                c.reasoning_content = None;
            }
            let reasoning = plan.strategy.body_key();
            Ok(Answer {
                completion: c,
                reasoning,
                used: plan.strategy,
            })
        }
        Strategy::SelfConsistency => {
            let n = sample_count(&plan.switches) as usize;
            // Sample 0's messages are `first`'s (its turn is `sc_prompt(0, …)`).
            let mut first = Some(first);
            let calls = (0..n).map(|i| {
                let temperature = sc_temperature(i, plan.temperature);
                let req = match first.take() {
                    Some(mut r) => {
                        r.temperature = temperature;
                        r
                    }
                    None => request(sc_prompt(i, message, show), temperature),
                };
                provider.complete(req)
            });
            let samples = join_all(calls).await;
            let mut usage = Usage::default();
            let mut any_usage = false;
            for u in samples
                .iter()
                .filter_map(|s| s.as_ref().ok())
                .filter_map(|c| c.usage.as_ref())
            {
                usage.add(u);
                any_usage = true;
            }
            match select_median(&samples) {
                Some((index, k)) => {
                    let mut chosen = match samples.into_iter().nth(index) {
                        Some(Ok(c)) => c,
                        _ => unreachable!("select_median returns a successful sample"),
                    };
                    chosen.usage = any_usage.then_some(usage);
                    if !show {
                        chosen.reasoning_content = None;
                    }
                    Ok(Answer {
                        completion: chosen,
                        reasoning: Some(json!({
                            "type": "self-consistency",
                            "enhanced": true,
                            "samples_count": k,
                            "selected_sample": index,
                        })),
                        used: Strategy::SelfConsistency,
                    })
                }
                None => {
                    tracing::warn!(
                        samples = n,
                        "every self-consistency sample failed; falling back to a direct call"
                    );
                    let mut c = provider
                        .complete(request(message.to_string(), base_temperature))
                        .await?;
                    if let Some(u) = &c.usage {
                        usage.add(u);
                        any_usage = true;
                    }
                    c.usage = any_usage.then_some(usage);
                    if !show {
                        c.reasoning_content = None;
                    }
                    Ok(Answer {
                        completion: c,
                        reasoning: None,
                        used: Strategy::Direct,
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures_util::future::BoxFuture;

    use super::*;
    use crate::provider::EventStream;

    fn switches() -> Switches {
        Switches {
            chain_of_thought: true,
            self_consistency: true,
            samples: 3,
            show_reasoning: false,
        }
    }

    #[test]
    fn choice_follows_section_7() {
        let s = switches();
        assert_eq!(choose(true, false, &s), Strategy::SelfConsistency);
        assert_eq!(
            choose(true, true, &s),
            Strategy::ChainOfThought,
            "streams never use SC"
        );
        assert_eq!(choose(false, false, &s), Strategy::ChainOfThought);
        let no_sc = Switches {
            self_consistency: false,
            ..s
        };
        assert_eq!(choose(true, false, &no_sc), Strategy::ChainOfThought);
        let none = Switches {
            chain_of_thought: false,
            self_consistency: false,
            ..s
        };
        assert_eq!(choose(true, false, &none), Strategy::Direct);
        assert_eq!(
            choose(
                false,
                false,
                &Switches {
                    chain_of_thought: false,
                    ..s
                }
            ),
            Strategy::Direct
        );
    }

    #[test]
    fn prompts_have_the_contract_structure() {
        let hidden = cot_prompt("怎么安排时间", false);
        assert!(hidden.contains("问题：怎么安排时间"));
        assert!(hidden.trim_end().ends_with("最终答案："));
        let shown = cot_prompt("怎么安排时间", true);
        assert_eq!(
            shown.matches(|c| ('1'..='5').contains(&c)).count(),
            5,
            "five stages"
        );
        assert!(shown.contains("问题：怎么安排时间"));
        for i in 0..6 {
            let p = sc_prompt(i, "m", false);
            assert!(p.starts_with(LEAD_INS[i % 3]));
            assert!(p.contains("\n\n"));
            assert!(p.ends_with(&cot_prompt("m", false)));
        }
    }

    /// The simulated provider (infrastructure, which knows no prompts)
    /// quotes a turn wrapped in the CoT prompt by the question inside it.
    #[test]
    fn the_simulated_provider_quotes_a_wrapped_turn_by_its_question() {
        let req = CompletionRequest {
            endpoint: EndpointKind::Chat,
            model: "sim-chat".into(),
            messages: vec![
                ChatMessage::new("system", "你是助手"),
                ChatMessage::new("user", cot_prompt("我最近工作压力很大", false)),
            ]
            .into(),
            temperature: 0.7,
            max_tokens: 2000,
            top_p: 1.0,
            timeout: Duration::from_secs(30),
        };
        let (text, _) = crate::provider::simulated::answer(&req, false);
        assert!(text.starts_with("关于「我最近工作压力很大」"), "{text}");
    }

    #[test]
    fn temperatures_step_and_cap() {
        assert_eq!(sc_temperature(0, None), 0.7);
        assert_eq!(sc_temperature(1, None), 0.8);
        assert_eq!(sc_temperature(2, None), 0.9);
        assert_eq!(sc_temperature(2, Some(1.95)), 2.0);
        assert_eq!(sc_temperature(1, Some(0.0)), 0.1);
    }

    fn ok(content: &str) -> Result<Completion, UpstreamError> {
        Ok(Completion {
            content: content.to_string(),
            ..Completion::default()
        })
    }

    #[test]
    fn median_by_length_stable_skipping_failures() {
        let samples = vec![ok("ccc"), ok("a"), ok("bb")];
        // sorted by length: a(1), bb(2), ccc(0) → floor(3/2) = 1 → sample 2
        assert_eq!(select_median(&samples), Some((2, 3)));
        let samples = vec![
            ok("aa"),
            Err(UpstreamError::Empty),
            ok("b"),
            ok(""),
            ok("dddd"),
        ];
        // successful non-empty: 0 (2), 2 (1), 4 (4) → sorted 2,0,4 → index 1 → sample 0
        assert_eq!(select_median(&samples), Some((0, 3)));
        let samples = vec![ok("xx"), ok("yy")];
        assert_eq!(
            select_median(&samples),
            Some((1, 2)),
            "stable: equal lengths keep order; floor(2/2)=1"
        );
        assert_eq!(select_median(&[Err(UpstreamError::Empty), ok("")]), None);
    }

    /// A provider that answers from a script and records requests.
    struct Scripted {
        answers: Mutex<Vec<Result<Completion, UpstreamError>>>,
        seen: Mutex<Vec<CompletionRequest>>,
    }

    impl Provider for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }
        fn is_simulated(&self) -> bool {
            false
        }
        fn complete(
            &self,
            req: CompletionRequest,
        ) -> BoxFuture<'static, Result<Completion, UpstreamError>> {
            self.seen.lock().unwrap().push(req);
            let next = self.answers.lock().unwrap().remove(0);
            Box::pin(async move { next })
        }
        fn stream(
            &self,
            _req: CompletionRequest,
        ) -> BoxFuture<'static, Result<EventStream, UpstreamError>> {
            Box::pin(async { Err(UpstreamError::Empty) })
        }
    }

    fn answer(content: &str, tokens: u64) -> Result<Completion, UpstreamError> {
        Ok(Completion {
            content: content.into(),
            reasoning_content: Some(format!("why {content}")),
            finish_reason: Some("stop".into()),
            usage: Some(Usage {
                prompt_tokens: tokens,
                completion_tokens: tokens,
                total_tokens: 2 * tokens,
                ..Usage::default()
            }),
            model: Some("m".into()),
        })
    }

    fn plan(strategy: Strategy, show: bool) -> Plan {
        Plan {
            strategy,
            endpoint: EndpointKind::WorkAssistant,
            model: "ep-work".into(),
            timeout: Duration::from_secs(1),
            temperature: None,
            max_tokens: None,
            switches: Switches {
                show_reasoning: show,
                ..switches()
            },
        }
    }

    fn build(turn: String) -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("user", "earlier"),
            ChatMessage::new("user", turn),
        ]
    }

    #[tokio::test]
    async fn sc_makes_n_calls_with_stepped_temperatures_and_sums_usage() {
        let p = Scripted {
            answers: Mutex::new(vec![
                answer("long answer", 10),
                answer("s", 20),
                answer("mid", 30),
            ]),
            seen: Mutex::new(Vec::new()),
        };
        let pl = plan(Strategy::SelfConsistency, false);
        let msg = "帮我制定一个工作计划";
        let first = pl.first_request(msg, build);
        let a = run(&p, &pl, msg, first.clone(), &build).await.unwrap();
        let seen = p.seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(
            seen[0], first,
            "sample 0 is the request the key was made from"
        );
        let temps: Vec<f64> = seen.iter().map(|r| r.temperature).collect();
        assert_eq!(temps, [0.7, 0.8, 0.9]);
        for (i, r) in seen.iter().enumerate() {
            assert_eq!(r.messages.len(), 2, "history kept");
            assert!(r.messages[1].content.starts_with(LEAD_INS[i]));
            assert_eq!(r.max_tokens, DEFAULT_MAX_TOKENS);
        }
        assert_eq!(a.completion.content, "mid", "median by length");
        assert_eq!(
            a.reasoning,
            Some(
                json!({"type":"self-consistency","enhanced":true,"samples_count":3,"selected_sample":2})
            )
        );
        let u = a.completion.usage.unwrap();
        assert_eq!(u.total_tokens, 120);
        assert_eq!(
            a.completion.reasoning_content, None,
            "hidden unless SHOW_REASONING_PROCESS"
        );
    }

    #[tokio::test]
    async fn sc_all_fail_falls_back_to_one_direct_call() {
        let p = Scripted {
            answers: Mutex::new(vec![
                Err(UpstreamError::Empty),
                Err(UpstreamError::Timeout { ms: 5 }),
                Err(UpstreamError::Empty),
                answer("direct", 5),
            ]),
            seen: Mutex::new(Vec::new()),
        };
        let pl = plan(Strategy::SelfConsistency, true);
        let a = run(
            &p,
            &pl,
            "raw message",
            pl.first_request("raw message", build),
            &build,
        )
        .await
        .unwrap();
        let seen = p.seen.lock().unwrap();
        assert_eq!(seen.len(), 4, "one more call after all samples failed");
        assert_eq!(
            seen[3].messages[1].content, "raw message",
            "the raw, unwrapped message"
        );
        assert_eq!(seen[3].endpoint, EndpointKind::WorkAssistant);
        assert!(a.reasoning.is_none());
        assert_eq!(a.used, Strategy::Direct);
        assert_eq!(
            a.completion.reasoning_content.as_deref(),
            Some("why direct"),
            "shown"
        );
    }

    #[tokio::test]
    async fn sc_fallback_failure_returns_its_error() {
        let p = Scripted {
            answers: Mutex::new(vec![
                Err(UpstreamError::Empty),
                Err(UpstreamError::Empty),
                Err(UpstreamError::Empty),
                Err(UpstreamError::Timeout { ms: 9 }),
            ]),
            seen: Mutex::new(Vec::new()),
        };
        let pl = plan(Strategy::SelfConsistency, false);
        let e = run(&p, &pl, "m", pl.first_request("m", build), &build)
            .await
            .unwrap_err();
        assert_eq!(e, UpstreamError::Timeout { ms: 9 });
    }

    #[tokio::test]
    async fn cot_wraps_once_and_reports_its_type() {
        let p = Scripted {
            answers: Mutex::new(vec![answer("a", 1)]),
            seen: Mutex::new(Vec::new()),
        };
        let mut pl = plan(Strategy::ChainOfThought, false);
        pl.temperature = Some(0.3);
        pl.max_tokens = Some(77);
        let a = run(&p, &pl, "你好", pl.first_request("你好", build), &build)
            .await
            .unwrap();
        let seen = p.seen.lock().unwrap();
        assert_eq!(seen[0].messages[1].content, cot_prompt("你好", false));
        assert_eq!((seen[0].temperature, seen[0].max_tokens), (0.3, 77));
        assert_eq!(
            a.reasoning,
            Some(json!({"type":"chain-of-thought","enhanced":true}))
        );
    }
}
