//! The keyword router of the chat pipeline (API.md §6, Node.js `BasicRouter`):
//! it maps a user message, plus optional conversation context, to a route
//! (`work_assistant`, `chat` or `complex_reasoning`) with a confidence and a
//! reason, and the route to an upstream endpoint. It owns the keyword index
//! built from `config/keywords.json` and the scoring rules; the file format
//! lives in [`config`], the decision cache in [`cache`], and the fixed
//! word-list rules (complexity heuristic, emergency route) in [`heuristics`].
//!
//! Everything here is pure except [`Router::load`], which reads the file
//! once at start-up. Results must match the Node.js service number for
//! number, so the algorithm is reproduced literally, quirks included
//! (substring matching, the `decision_words` group having no effect, the
//! threshold ignoring the file's `confidence_threshold`).

pub mod cache;
pub mod config;
pub mod heuristics;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::provider::EndpointKind;
use crate::provider::tokens::js_len;

pub use cache::{DecisionCache, cache_key};
pub use config::{RouteDef, RouterConfig, RouterError};
pub use heuristics::{emergency_route, is_complex};

/// The acceptance threshold. Always 0.6: the file's `confidence_threshold`
/// is ignored, as it was in Node.js.
pub const CONFIDENCE_THRESHOLD: f64 = 0.6;
/// How many trailing context messages the context boost looks at.
pub const CONTEXT_MESSAGES: usize = 6;

pub const ROUTE_CHAT: &str = "chat";
pub const ROUTE_WORK_ASSISTANT: &str = "work_assistant";
pub const ROUTE_COMPLEX_REASONING: &str = "complex_reasoning";

pub const REASON_NO_KEYWORDS: &str = "no_keywords_matched";
pub const REASON_BELOW_THRESHOLD: &str = "confidence_below_threshold";
pub const REASON_SUCCESS: &str = "keyword_match_success";

/// The pattern groups that boost `complex_reasoning`, in the order they are
/// applied. `decision_words` is deliberately absent: it never had an effect.
const BOOSTING_GROUPS: [&str; 3] = ["question_words", "comparison_words", "analysis_words"];
/// Score added per pattern word present.
const PATTERN_BOOST: f64 = 0.5;
/// Score added per route keyword present in the context.
const CONTEXT_BOOST: f64 = 0.3;
/// Weight and priority of a pattern-created `complex_reasoning` match when
/// the file has no such route.
const COMPLEX_DEFAULT_WEIGHT: f64 = 1.2;
const COMPLEX_DEFAULT_PRIORITY: f64 = 1.0;

/// A routing decision: what the pipeline needs to pick an endpoint and a
/// strategy, and what it reports back to the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub route: String,
    /// In [0.1, 1.0]; reported as computed even when below the threshold.
    pub confidence: f64,
    /// `no_keywords_matched` | `confidence_below_threshold` |
    /// `keyword_match_success`.
    pub reason: &'static str,
    /// The keywords recorded on the best match (pattern words only when the
    /// patterns created that match); empty when nothing matched.
    pub matched_keywords: Vec<String>,
    /// Whether the context boosted the best match.
    pub context_enhanced: bool,
}

impl Decision {
    /// The upstream endpoint for the route: `work_assistant` and
    /// `complex_reasoning` use the work-assistant endpoint; `chat` and any
    /// unknown route use the chat endpoint.
    pub fn endpoint(&self) -> EndpointKind {
        endpoint_for(&self.route)
    }

    /// Whether the route itself makes the message complex (it then gets
    /// Self-Consistency when enabled, API.md §7).
    pub fn is_complex_route(&self) -> bool {
        self.route == ROUTE_COMPLEX_REASONING
    }
}

/// The endpoint for a route name, as [`Decision::endpoint`]; also usable
/// with [`emergency_route`]'s answer.
pub fn endpoint_for(route: &str) -> EndpointKind {
    match route {
        ROUTE_WORK_ASSISTANT | ROUTE_COMPLEX_REASONING => EndpointKind::WorkAssistant,
        _ => EndpointKind::Chat,
    }
}

/// One configured route after the Node.js defaults are applied.
#[derive(Debug, Clone)]
struct Route {
    id: String,
    name: String,
    /// Normalised (lower-cased unless case-sensitive), duplicates removed,
    /// in file order.
    keywords: Vec<String>,
    weight: f64,
    priority: f64,
}

/// A route's running score while a message is scored.
#[derive(Debug)]
struct Match {
    route_id: String,
    /// Index into `Router::routes`; `None` for a pattern-created
    /// `complex_reasoning` match when the file has no such route.
    route: Option<usize>,
    score: f64,
    keywords: Vec<String>,
    weight: f64,
    priority: f64,
    context_enhanced: bool,
}

/// The keyword router. Immutable once built, so it can be shared freely.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
    /// keyword → owning routes, in first-seen order (routes in file order,
    /// then keywords in file order). Scanning follows this order, which
    /// fixes the creation order of matches and so the sort's tie-breaks.
    index: Vec<(String, Vec<usize>)>,
    /// The boosting pattern groups present in the file, normalised, in
    /// [`BOOSTING_GROUPS`] order.
    patterns: Vec<Vec<String>>,
    case_sensitive: bool,
    cache_size: usize,
    cache_ttl: Duration,
    fallback: bool,
}

impl Router {
    /// Builds a router from the text of a `keywords.json`.
    pub fn from_json(text: &str) -> Result<Router, RouterError> {
        Ok(Router::from_config(RouterConfig::from_json(text)?))
    }

    /// The built-in table (a single `chat` route: 聊天 问答 帮助, weight
    /// 0.8, priority 2, no patterns), used when the file is unusable.
    pub fn fallback() -> Router {
        let mut router = Router::from_config(RouterConfig::fallback());
        router.fallback = true;
        router
    }

    /// Reads and parses `path`, or explains why it cannot be used.
    pub fn try_load(path: impl AsRef<Path>) -> Result<Router, RouterError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| RouterError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Router::from_json(&text)
    }

    /// Loads `path` at start-up. A missing or invalid file is not fatal:
    /// it is logged and the [`Router::fallback`] table is used, which
    /// [`Router::is_fallback`] then reports (health shows `degraded`).
    pub fn load(path: impl AsRef<Path>) -> Router {
        match Router::try_load(path) {
            Ok(router) => router,
            Err(e) => {
                tracing::warn!(error = %e, "router config unusable; using the built-in fallback table");
                Router::fallback()
            }
        }
    }

    /// Builds the keyword index from a parsed configuration, applying the
    /// Node.js defaults `weight || 1.0` and `priority || 999` (a 0 counts
    /// as absent too).
    pub fn from_config(config: RouterConfig) -> Router {
        let case_sensitive = config.case_sensitive();
        let normalise = |s: &str| {
            if case_sensitive {
                s.to_string()
            } else {
                s.to_lowercase()
            }
        };

        let mut routes = Vec::with_capacity(config.routes.0.len());
        let mut index: Vec<(String, Vec<usize>)> = Vec::new();
        let mut positions: HashMap<String, usize> = HashMap::new();
        for (id, def) in &config.routes.0 {
            let route_index = routes.len();
            let mut keywords: Vec<String> = Vec::with_capacity(def.keywords.len());
            for keyword in &def.keywords {
                let keyword = normalise(keyword);
                if keywords.contains(&keyword) {
                    // A keyword counts once per route, even if listed twice.
                    continue;
                }
                match positions.get(&keyword) {
                    Some(&at) => index[at].1.push(route_index),
                    None => {
                        positions.insert(keyword.clone(), index.len());
                        index.push((keyword.clone(), vec![route_index]));
                    }
                }
                keywords.push(keyword);
            }
            routes.push(Route {
                id: id.clone(),
                name: def.name.clone().unwrap_or_else(|| id.clone()),
                keywords,
                weight: or_default(def.weight, 1.0),
                priority: or_default(def.priority, 999.0),
            });
        }

        let patterns = BOOSTING_GROUPS
            .iter()
            .filter_map(|group| config.pattern(group))
            .map(|words| words.iter().map(|w| normalise(w)).collect())
            .collect();

        Router {
            routes,
            index,
            patterns,
            case_sensitive,
            cache_size: config.cache_size(),
            cache_ttl: Duration::from_millis(config.cache_ttl_ms()),
            fallback: false,
        }
    }

    /// Whether the built-in fallback table is in use.
    pub fn is_fallback(&self) -> bool {
        self.fallback
    }

    /// `settings.cache_size` (default 1000).
    pub fn cache_size(&self) -> usize {
        self.cache_size
    }

    /// `settings.cache_ttl` (default 300 s).
    pub fn cache_ttl(&self) -> Duration {
        self.cache_ttl
    }

    /// `settings.case_sensitive` (default false).
    pub fn case_sensitive(&self) -> bool {
        self.case_sensitive
    }

    /// A decision cache sized by this router's settings.
    pub fn new_cache(&self) -> DecisionCache {
        DecisionCache::new(self.cache_size, self.cache_ttl)
    }

    /// The configured route ids, in file order.
    pub fn route_ids(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| r.id.as_str())
    }

    /// The display name of a configured route (its `name`, or its id).
    pub fn route_name(&self, id: &str) -> Option<&str> {
        self.routes
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.name.as_str())
    }

    fn normalise(&self, s: &str) -> String {
        if self.case_sensitive {
            s.to_string()
        } else {
            s.to_lowercase()
        }
    }

    /// Routes `message` (API.md §6, steps 1–8). `context` holds the
    /// contents of earlier conversation messages, oldest first; only the
    /// last [`CONTEXT_MESSAGES`] are used, and they can only boost a route
    /// the message itself matched, never create one.
    pub fn select(&self, message: &str, context: &[String]) -> Decision {
        let text = self.normalise(message);
        let mut matches: Vec<Match> = Vec::new();

        // 2. Scan: each indexed keyword found as a substring counts once
        //    for each route that owns it.
        for (keyword, owners) in &self.index {
            if !text.contains(keyword.as_str()) {
                continue;
            }
            for &owner in owners {
                let route = &self.routes[owner];
                let at = match matches.iter().position(|m| m.route == Some(owner)) {
                    Some(at) => at,
                    None => {
                        matches.push(Match {
                            route_id: route.id.clone(),
                            route: Some(owner),
                            score: 0.0,
                            keywords: Vec::new(),
                            weight: route.weight,
                            priority: route.priority,
                            context_enhanced: false,
                        });
                        matches.len() - 1
                    }
                };
                matches[at].score += route.weight;
                matches[at].keywords.push(keyword.clone());
            }
        }

        // 3. Patterns boost complex_reasoning, creating its match if needed.
        for words in &self.patterns {
            let found: Vec<String> = words
                .iter()
                .filter(|w| text.contains(w.as_str()))
                .cloned()
                .collect();
            if found.is_empty() {
                continue;
            }
            let boost = PATTERN_BOOST * found.len() as f64;
            match matches
                .iter_mut()
                .find(|m| m.route_id == ROUTE_COMPLEX_REASONING)
            {
                Some(m) => m.score += boost,
                None => {
                    let route = self
                        .routes
                        .iter()
                        .position(|r| r.id == ROUTE_COMPLEX_REASONING);
                    let (weight, priority) = match route {
                        Some(i) => (self.routes[i].weight, self.routes[i].priority),
                        None => (COMPLEX_DEFAULT_WEIGHT, COMPLEX_DEFAULT_PRIORITY),
                    };
                    matches.push(Match {
                        route_id: ROUTE_COMPLEX_REASONING.to_string(),
                        route,
                        score: boost,
                        keywords: found,
                        weight,
                        priority,
                        context_enhanced: false,
                    });
                }
            }
        }

        // 4. Stable sort: priority ascending, then score descending.
        sort_matches(&mut matches);

        // 5. Context boost for existing matches only, then re-sort.
        if !context.is_empty() {
            let start = context.len().saturating_sub(CONTEXT_MESSAGES);
            let joined = self.normalise(&context[start..].join(" "));
            for m in &mut matches {
                let Some(route) = m.route.and_then(|i| self.routes.get(i)) else {
                    continue;
                };
                let n = route
                    .keywords
                    .iter()
                    .filter(|k| joined.contains(k.as_str()))
                    .count();
                if n > 0 {
                    m.score += CONTEXT_BOOST * n as f64;
                    m.context_enhanced = true;
                }
            }
            sort_matches(&mut matches);
        }

        // 6. No match at all.
        let Some(best) = matches.into_iter().next() else {
            return Decision {
                route: ROUTE_CHAT.to_string(),
                confidence: 0.1,
                reason: REASON_NO_KEYWORDS,
                matched_keywords: Vec::new(),
                context_enhanced: false,
            };
        };

        // 7–8. Confidence of the best match against the fixed threshold.
        let confidence = confidence(&best, js_len(message));
        let (route, reason) = if confidence < CONFIDENCE_THRESHOLD {
            (ROUTE_CHAT.to_string(), REASON_BELOW_THRESHOLD)
        } else {
            (best.route_id, REASON_SUCCESS)
        };
        Decision {
            route,
            confidence,
            reason,
            matched_keywords: best.keywords,
            context_enhanced: best.context_enhanced,
        }
    }
}

/// JavaScript's `value || default` for an optional number.
fn or_default(value: Option<f64>, default: f64) -> f64 {
    match value {
        Some(v) if v != 0.0 && !v.is_nan() => v,
        _ => default,
    }
}

fn sort_matches(matches: &mut [Match]) {
    matches.sort_by(|a, b| {
        a.priority
            .total_cmp(&b.priority)
            .then(b.score.total_cmp(&a.score))
    });
}

/// Step 7, clamped to [0.1, 1.0], where `kw` is the number of recorded
/// keywords and `len` the message length in UTF-16 code units:
///
/// ```text
/// 0.5·min(score/2,1) + 0.3·min(kw/2,1) + (priority==1 ? 0.1 : 0)
///   + 0.05·min(len/30,1) + (contextEnhanced ? 0.15 : 0)
///   + (weight>1 ? (weight−1)·0.1 : 0)
/// ```
///
/// The terms are summed left to right, in the order API.md states them.
fn confidence(m: &Match, message_len: usize) -> f64 {
    let mut c = 0.5 * (m.score / 2.0).min(1.0);
    c += 0.3 * (m.keywords.len() as f64 / 2.0).min(1.0);
    if m.priority == 1.0 {
        c += 0.1;
    }
    c += 0.05 * (message_len as f64 / 30.0).min(1.0);
    if m.context_enhanced {
        c += 0.15;
    }
    if m.weight > 1.0 {
        c += (m.weight - 1.0) * 0.1;
    }
    c.clamp(0.1, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYWORDS_JSON: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/keywords.json"
    ));

    fn router() -> Router {
        Router::from_json(KEYWORDS_JSON).expect("config/keywords.json parses")
    }

    fn ctx(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn api_md_15_routing_vectors() {
        let r = router();
        let cases: [(&str, &[&str], &str, f64, &str); 12] = [
            ("你好，你是谁？", &[], "chat", 0.1, REASON_NO_KEYWORDS),
            ("hello world", &[], "chat", 0.1, REASON_NO_KEYWORDS),
            (
                "什么是人工智能？",
                &[],
                "chat",
                0.408,
                REASON_BELOW_THRESHOLD,
            ),
            (
                "今天天气怎么样？",
                &[],
                "complex_reasoning",
                0.708,
                REASON_SUCCESS,
            ),
            (
                "帮我制定一个工作计划",
                &[],
                "work_assistant",
                0.917,
                REASON_SUCCESS,
            ),
            (
                "如何提高工作效率？",
                &[],
                "work_assistant",
                0.915,
                REASON_SUCCESS,
            ),
            (
                "分析一下React和Vue的优缺点",
                &[],
                "complex_reasoning",
                0.948,
                REASON_SUCCESS,
            ),
            (
                "请帮我推荐一些适合6口之家的家庭用车。",
                &[],
                "complex_reasoning",
                0.602,
                REASON_SUCCESS,
            ),
            ("怎么安排时间", &[], "chat", 0.51, REASON_BELOW_THRESHOLD),
            (
                "怎么安排时间",
                &["我们团队下周有个项目要交付", "会议很多，任务也很多"],
                "work_assistant",
                0.91,
                REASON_SUCCESS,
            ),
            ("周末想去看电影", &[], "chat", 0.362, REASON_BELOW_THRESHOLD),
            (
                "周末想去看电影",
                &["最近心情不好", "想找朋友聊天"],
                "chat",
                0.737,
                REASON_SUCCESS,
            ),
        ];
        for (message, context, route, confidence, reason) in cases {
            let d = r.select(message, &ctx(context));
            assert_eq!(d.route, route, "{message} {context:?}: {d:?}");
            assert!(
                (d.confidence - confidence).abs() < 0.0015,
                "{message} {context:?}: confidence {} != {confidence}",
                d.confidence
            );
            assert_eq!(d.reason, reason, "{message} {context:?}: {d:?}");
        }
    }

    #[test]
    fn vector_details() {
        let r = router();
        // 怎么样 is a keyword; the 怎么 pattern adds score, not a keyword.
        let d = r.select("今天天气怎么样？", &[]);
        assert_eq!(d.matched_keywords, vec!["怎么样"]);
        // The context boosts the score but records no keywords.
        let d = r.select(
            "怎么安排时间",
            &ctx(&["我们团队下周有个项目要交付", "会议很多，任务也很多"]),
        );
        assert_eq!(d.matched_keywords, vec!["安排"]);
        assert!(d.context_enhanced);
        let d = r.select("周末想去看电影", &ctx(&["最近心情不好", "想找朋友聊天"]));
        assert!(d.context_enhanced);
        assert_eq!(d.endpoint(), EndpointKind::Chat);
    }

    #[test]
    fn file_shape_and_order() {
        let r = router();
        assert!(!r.is_fallback());
        assert_eq!(
            r.route_ids().collect::<Vec<_>>(),
            ["work_assistant", "chat", "complex_reasoning"]
        );
        assert_eq!(r.route_name("chat"), Some("日常对话"));
        let lens: Vec<usize> = r.routes.iter().map(|x| x.keywords.len()).collect();
        assert_eq!(lens, [38, 32, 45]);
        assert_eq!(r.patterns.len(), 3);
        assert!(r.patterns.iter().all(|p| p.len() == 7));
        assert_eq!(r.cache_size(), 1000);
        assert_eq!(r.cache_ttl(), Duration::from_millis(300_000));
        assert!(!r.case_sensitive());
        let config = RouterConfig::from_json(KEYWORDS_JSON).unwrap();
        assert_eq!(
            config.pattern("decision_words").map(<[String]>::len),
            Some(7)
        );
    }

    #[test]
    fn case_insensitive_matching() {
        let r = Router::from_json(
            r#"{"routes":{"dev":{"name":"Dev","keywords":["Rust","API"],"weight":1.0,"priority":1}}}"#,
        )
        .unwrap();
        let d = r.select("how do I write an api in RUST", &[]);
        assert_eq!(d.route, "dev");
        assert_eq!(d.matched_keywords, vec!["rust", "api"]);
        let cs = Router::from_json(
            r#"{"routes":{"dev":{"keywords":["Rust"],"priority":1}},"settings":{"case_sensitive":true}}"#,
        )
        .unwrap();
        assert_eq!(cs.select("rust", &[]).reason, REASON_NO_KEYWORDS);
        assert_eq!(cs.select("Rust", &[]).matched_keywords, vec!["Rust"]);
    }

    #[test]
    fn a_keyword_counts_once() {
        let r = router();
        let once = r.select("电影", &[]);
        let thrice = r.select("电影电影电影", &[]);
        assert_eq!(thrice.matched_keywords, vec!["电影"]);
        // Only the length term differs.
        let diff = thrice.confidence - once.confidence;
        assert!((diff - 0.05 * 4.0 / 30.0).abs() < 1e-9, "{diff}");
    }

    #[test]
    fn pattern_only_match_creates_complex_reasoning() {
        let r = router();
        // 对比 and 区别 are comparison words and no route's keywords.
        let d = r.select("对比一下这两者的区别", &[]);
        assert_eq!(d.matched_keywords, vec!["对比", "区别"]);
        // score 1.0, 2 keywords, priority 1, len 10, weight 1.2:
        // 0.25 + 0.3 + 0.1 + 0.05/3 + 0.02
        let expected = 0.25 + 0.3 + 0.1 + 0.05 * 10.0 / 30.0 + 0.02;
        assert!((d.confidence - expected).abs() < 1e-9);
        assert_eq!(d.route, "complex_reasoning");
        assert_eq!(d.reason, REASON_SUCCESS);
        assert!(d.is_complex_route());
        assert_eq!(d.endpoint(), EndpointKind::WorkAssistant);
    }

    #[test]
    fn decision_words_have_no_effect() {
        let r = router();
        // 权衡 and 取舍 are decision words only.
        let d = r.select("权衡取舍", &[]);
        assert_eq!(d.reason, REASON_NO_KEYWORDS);
    }

    #[test]
    fn context_never_creates_a_match() {
        let r = router();
        let d = r.select("hello world", &ctx(&["工作 任务 项目 会议", "聊天 朋友"]));
        assert_eq!(d.route, "chat");
        assert_eq!(d.confidence, 0.1);
        assert_eq!(d.reason, REASON_NO_KEYWORDS);
        assert!(!d.context_enhanced);
    }

    #[test]
    fn context_uses_only_the_last_six_messages() {
        let r = router();
        let mut context = ctx(&["心情 朋友 聊天"]);
        context.extend(std::iter::repeat_n("无关".to_string(), 6));
        let d = r.select("周末想去看电影", &context);
        assert!(!d.context_enhanced);
        assert_eq!(d.reason, REASON_BELOW_THRESHOLD);
        context.pop();
        let d = r.select("周末想去看电影", &context);
        assert!(d.context_enhanced);
        assert_eq!(d.reason, REASON_SUCCESS);
    }

    #[test]
    fn fallback_table() {
        let r = Router::fallback();
        assert!(r.is_fallback());
        assert_eq!(r.route_ids().collect::<Vec<_>>(), ["chat"]);
        // No patterns, so questions alone match nothing.
        assert_eq!(r.select("什么是人工智能？", &[]).reason, REASON_NO_KEYWORDS);
        assert_eq!(
            r.select("帮我制定一个工作计划", &[]).reason,
            REASON_NO_KEYWORDS
        );
        // 帮助: score 0.8, 1 keyword, priority 2, len 4: 0.2+0.15+0.05·4/30.
        let d = r.select("需要帮助", &[]);
        assert_eq!(d.route, "chat");
        assert_eq!(d.reason, REASON_BELOW_THRESHOLD);
        assert!((d.confidence - (0.35 + 0.05 * 4.0 / 30.0)).abs() < 1e-9);
        // 聊天 + 问答 + 帮助: score 2.4, 3 keywords, len 6 → 0.8 + 0.01.
        let d = r.select("聊天问答帮助", &[]);
        assert_eq!(d.reason, REASON_SUCCESS);
        assert!((d.confidence - 0.81).abs() < 1e-9);
        assert_eq!(r.cache_size(), 1000);
    }

    #[test]
    fn invalid_or_missing_file_falls_back() {
        assert!(Router::from_json("{ not json").is_err());
        assert!(Router::from_json("{}").is_err());
        let dir = std::env::temp_dir().join(format!("routing-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("keywords.json");
        std::fs::write(&bad, "{ not json").unwrap();
        let r = Router::load(&bad);
        assert!(r.is_fallback());
        assert_eq!(r.route_ids().collect::<Vec<_>>(), ["chat"]);
        let r = Router::load(dir.join("missing.json"));
        assert!(r.is_fallback());
        std::fs::remove_dir_all(&dir).ok();
        let r = Router::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/keywords.json"
        ));
        assert!(!r.is_fallback());
    }

    #[test]
    fn node_defaults_for_weight_and_priority() {
        let r = Router::from_json(
            r#"{"routes":{"a":{"keywords":["x"],"weight":0,"priority":0},"b":{"keywords":["y"],"priority":1}}}"#,
        )
        .unwrap();
        assert_eq!(r.routes[0].weight, 1.0);
        assert_eq!(r.routes[0].priority, 999.0);
        // b (priority 1) outranks a (priority 999) despite equal scores.
        assert_eq!(r.select("xy", &[]).matched_keywords, vec!["y"]);
    }

    #[test]
    fn ties_keep_creation_order() {
        let r = Router::from_json(
            r#"{"routes":{"second":{"keywords":["b"],"priority":1},"first":{"keywords":["a"],"priority":1}}}"#,
        )
        .unwrap();
        // Equal priority and score: file order decides, not the message.
        assert_eq!(r.select("a b", &[]).matched_keywords, vec!["b"]);
        assert_eq!(r.select("b a", &[]).matched_keywords, vec!["b"]);
    }

    #[test]
    fn endpoints() {
        assert_eq!(endpoint_for("chat"), EndpointKind::Chat);
        assert_eq!(endpoint_for("work_assistant"), EndpointKind::WorkAssistant);
        assert_eq!(
            endpoint_for("complex_reasoning"),
            EndpointKind::WorkAssistant
        );
        assert_eq!(endpoint_for("unknown"), EndpointKind::Chat);
        assert_eq!(
            endpoint_for(emergency_route("写报告")),
            EndpointKind::WorkAssistant
        );
    }

    #[test]
    fn confidence_is_clamped() {
        let r = Router::from_json(
            r#"{"routes":{"big":{"keywords":["a","b"],"weight":10,"priority":1}}}"#,
        )
        .unwrap();
        assert_eq!(r.select("ab", &[]).confidence, 1.0);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let r = router();
        for message in ["", " ", "\u{0}", "😀", "İ", &"工作".repeat(10_000)] {
            let d = r.select(message, &ctx(&["", "😀"]));
            assert!((0.1..=1.0).contains(&d.confidence));
        }
    }
}
