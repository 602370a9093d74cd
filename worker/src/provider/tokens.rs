//! The token estimate of API.md §8, used wherever the upstream gives no
//! usage (simulated provider, streams without usage) and for history trimming;
//! and [`count`], which adds an answer's real usage to `ai_tokens_total`.
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
    let mut e = Estimator::default();
    e.push(text);
    e.total()
}

/// [`estimate`] of a text that arrives in pieces (a stream's deltas),
/// without keeping the text: the estimate of everything pushed so far,
/// equal to [`estimate`] of the pieces concatenated (a word split across
/// two pieces counts once). An open stream holds this instead of its whole
/// answer so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Estimator {
    cjk: u64,
    words: u64,
    /// The last character pushed was part of a word.
    in_word: bool,
}

impl Estimator {
    pub fn push(&mut self, piece: &str) {
        for c in piece.chars() {
            if is_cjk(c) {
                self.cjk += 1;
                self.in_word = false;
            } else if c.is_whitespace() {
                self.in_word = false;
            } else if !self.in_word {
                self.in_word = true;
                self.words += 1;
            }
        }
    }

    /// Estimated tokens of everything pushed.
    pub fn total(&self) -> u64 {
        (self.cjk * 3).div_ceil(2) + self.words
    }
}

/// Length in UTF-16 code units, as JavaScript's `.length` (API.md §1).
pub fn js_len(text: &str) -> usize {
    text.encode_utf16().count()
}

/// `ai_tokens_total` for one upstream answer.
pub fn count(usage: Option<&super::Usage>) {
    let Some(u) = usage else { return };
    crate::telemetry::tokens("prompt", u.prompt_tokens);
    crate::telemetry::tokens("completion", u.completion_tokens);
    if let Some(r) = u
        .extra
        .get("completion_tokens_details")
        .and_then(|d| d.get("reasoning_tokens"))
        .and_then(serde_json::Value::as_u64)
    {
        crate::telemetry::tokens("reasoning", r);
    }
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
    fn pieces_estimate_as_their_concatenation() {
        let text = "分析 React和Vue  的区别, hello wor ld 😀你好";
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        for &(i, _) in &chars {
            for &(j, _) in chars.iter().filter(|(j, _)| *j >= i) {
                let mut e = Estimator::default();
                for piece in [&text[..i], &text[i..j], &text[j..]] {
                    e.push(piece);
                }
                assert_eq!(e.total(), estimate(text), "split at {i},{j}");
            }
        }
    }

    #[test]
    fn js_length_counts_utf16_units() {
        assert_eq!(js_len("abc"), 3);
        assert_eq!(js_len("你好"), 2);
        assert_eq!(js_len("😀"), 2);
    }
}
