//! Fixed word-list rules that sit beside the keyword router: the
//! complexity heuristic that picks a reasoning strategy (API.md §7) and the
//! emergency route used when the router itself fails (API.md §6). Both are
//! hard-coded in the Node.js service, not read from `keywords.json`.

use crate::provider::tokens::js_len;

/// The 21 complexity indicators of API.md §7, matched as substrings of the
/// lower-cased message.
pub const COMPLEXITY_INDICATORS: [&str; 21] = [
    "分析",
    "比较",
    "评估",
    "决策",
    "选择",
    "判断",
    "计划",
    "策略",
    "方案",
    "建议",
    "推荐",
    "如何",
    "为什么",
    "什么时候",
    "哪种",
    "哪个更好",
    "优缺点",
    "利弊",
    "风险",
    "机会",
    "挑战",
];

/// Words that send a message to `work_assistant` when the router fails.
pub const EMERGENCY_WORK_WORDS: [&str; 8] = [
    "工作", "任务", "项目", "计划", "安排", "会议", "报告", "分析",
];

/// Whether the §7 heuristic calls `message` complex: it contains one of
/// [`COMPLEXITY_INDICATORS`] (after lower-casing), or it is longer than 50
/// UTF-16 code units and has more than one `?` or `？` (counted together).
/// A `complex_reasoning` route is complex regardless; that check belongs to
/// the caller ([`super::Decision::is_complex_route`]).
pub fn is_complex(message: &str) -> bool {
    let lower = message.to_lowercase();
    if COMPLEXITY_INDICATORS.iter().any(|w| lower.contains(w)) {
        return true;
    }
    js_len(message) > 50 && message.chars().filter(|c| matches!(c, '?' | '？')).count() > 1
}

/// The route used when the router itself fails: `work_assistant` when the
/// message contains any of [`EMERGENCY_WORK_WORDS`], otherwise `chat`.
pub fn emergency_route(message: &str) -> &'static str {
    if EMERGENCY_WORK_WORDS.iter().any(|w| message.contains(w)) {
        "work_assistant"
    } else {
        "chat"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indicator_branch() {
        assert!(is_complex("分析一下React和Vue的优缺点"));
        assert!(is_complex("为什么天是蓝的"));
        assert!(!is_complex("你好"));
        assert!(!is_complex(""));
    }

    #[test]
    fn length_and_question_mark_branch() {
        // 51 UTF-16 units, two question marks (one ASCII, one full-width).
        let long = format!("{}?{}？", "a".repeat(25), "b".repeat(24));
        assert_eq!(js_len(&long), 51);
        assert!(is_complex(&long));
        // Exactly 50 units is not enough.
        let fifty = format!("{}?{}？", "a".repeat(24), "b".repeat(24));
        assert_eq!(js_len(&fifty), 50);
        assert!(!is_complex(&fifty));
        // One question mark is not enough.
        assert!(!is_complex(&format!("{}?", "a".repeat(60))));
        // Length is counted in UTF-16 units: 26 astral chars are 52 units.
        let astral = format!("{}??", "😀".repeat(26));
        assert!(js_len(&astral) > 50 && astral.chars().count() < 50);
        assert!(is_complex(&astral));
    }

    #[test]
    fn emergency_route_words() {
        assert_eq!(emergency_route("帮我写会议纪要"), "work_assistant");
        assert_eq!(emergency_route("分析"), "work_assistant");
        assert_eq!(emergency_route("今天天气不错"), "chat");
        assert_eq!(emergency_route(""), "chat");
    }
}
