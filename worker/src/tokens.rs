//! The token estimate of API.md §8, used wherever the upstream gives no
//! usage (simulated provider, streams without usage) and for history trimming.
//!
//! `ceil(1.5 × CJK ideographs)` plus the whitespace-separated words left
//! once those ideographs are replaced by spaces. Crude, but it is the
//! contract's, so budgets behave as they did in the Node.js service.

/// Whether `c` is in U+4E00–U+9FFF (CJK Unified Ideographs).
fn is_cjk(c: char) -> bool {
    ('\u{4E00}'..='\u{9FFF}').contains(&c)
}

/// Estimated tokens of `text`.
pub fn estimate(text: &str) -> u64 {
    let mut cjk = 0u64;
    let mut words = 0u64;
    let mut in_word = false;
    for c in text.chars() {
        if is_cjk(c) {
            cjk += 1;
            in_word = false;
        } else if c.is_whitespace() {
            in_word = false;
        } else if !in_word {
            in_word = true;
            words += 1;
        }
    }
    (cjk * 3).div_ceil(2) + words
}

/// Length in UTF-16 code units, as JavaScript's `.length` (API.md §1).
pub fn js_len(text: &str) -> usize {
    text.encode_utf16().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cjk_counts_one_and_a_half_rounded_up() {
        assert_eq!(estimate("你好"), 3);
        assert_eq!(estimate("你好吗"), 5);
        assert_eq!(estimate(""), 0);
    }

    #[test]
    fn words_are_counted_between_ideographs() {
        assert_eq!(estimate("hello world"), 2);
        assert_eq!(estimate("分析React和Vue"), 5 + 2);
        assert_eq!(estimate("  a\tb\nc  "), 3);
    }

    #[test]
    fn js_length_counts_utf16_units() {
        assert_eq!(js_len("abc"), 3);
        assert_eq!(js_len("你好"), 2);
        assert_eq!(js_len("😀"), 2);
    }
}
