//! The response-cache key (API.md §9): SHA-256 over a canonical encoding of
//! everything that decides an upstream answer.
//!
//! The inputs are typed values taken *after* validation and context
//! assembly, never the raw request bytes, so JSON key order, whitespace and
//! fields the pipeline ignores cannot split one answer into several keys.
//! Each field is written as a tag, a length and the bytes, so no two
//! different inputs encode the same (`"ab"+"c"` ≠ `"a"+"bc"`).

use sha2::{Digest, Sha256};

use crate::provider::ChatMessage;

/// What makes two requests the same question.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyParts<'a> {
    /// `chat` or `translate`.
    pub kind: &'a str,
    /// The provider label (`byteplus`, `simulated`, …).
    pub provider: &'a str,
    /// The upstream endpoint id / model name.
    pub model: &'a str,
    /// The strategy label (`chain-of-thought`, `self-consistency`, `direct`).
    pub strategy: &'a str,
    /// Self-Consistency samples (0 for other strategies).
    pub samples: u32,
    /// The final upstream message list (for SC: sample 0's).
    pub messages: &'a [ChatMessage],
    pub temperature: f64,
    pub max_tokens: u32,
    pub top_p: f64,
    /// `SHOW_REASONING_PROCESS`: changes the prompt and the answer's shape.
    pub show_reasoning: bool,
}

impl<'a> KeyParts<'a> {
    /// The parts of one upstream request: its endpoint, messages and
    /// parameters, plus what the request does not carry.
    pub fn for_request(
        kind: &'a str,
        provider: &'a str,
        req: &'a crate::provider::CompletionRequest,
        strategy: &'a str,
        samples: u32,
        show_reasoning: bool,
    ) -> KeyParts<'a> {
        KeyParts {
            kind,
            provider,
            model: &req.model,
            strategy,
            samples,
            messages: &req.messages,
            temperature: req.temperature,
            max_tokens: req.max_tokens,
            top_p: req.top_p,
            show_reasoning,
        }
    }
}

/// A cache key: 32 bytes of SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// The Redis key: versioned, so a format change never reads old values.
    pub fn redis_key(&self) -> String {
        format!("heartalk:resp:v1:{}", hex::encode(self.0))
    }
}

fn field(h: &mut Sha256, tag: u8, bytes: &[u8]) {
    h.update([tag]);
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// A float in one canonical form (`-0.0` is `0.0`; the bits otherwise).
fn float(x: f64) -> [u8; 8] {
    let x = if x == 0.0 { 0.0 } else { x };
    x.to_bits().to_le_bytes()
}

/// The key of `p`.
pub fn key(p: &KeyParts<'_>) -> Key {
    let mut h = Sha256::new();
    field(&mut h, b'k', p.kind.as_bytes());
    field(&mut h, b'p', p.provider.as_bytes());
    field(&mut h, b'm', p.model.as_bytes());
    field(&mut h, b's', p.strategy.as_bytes());
    field(&mut h, b'n', &p.samples.to_le_bytes());
    field(&mut h, b'l', &(p.messages.len() as u64).to_le_bytes());
    for m in p.messages {
        field(&mut h, b'r', m.role.as_bytes());
        field(&mut h, b'c', m.content.as_bytes());
    }
    field(&mut h, b't', &float(p.temperature));
    field(&mut h, b'x', &p.max_tokens.to_le_bytes());
    field(&mut h, b'q', &float(p.top_p));
    field(&mut h, b'v', &[u8::from(p.show_reasoning)]);
    Key(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(messages: &[ChatMessage]) -> KeyParts<'_> {
        KeyParts {
            kind: "chat",
            provider: "byteplus",
            model: "ep-chat",
            strategy: "chain-of-thought",
            samples: 0,
            messages,
            temperature: 0.7,
            max_tokens: 2000,
            top_p: 1.0,
            show_reasoning: false,
        }
    }

    #[test]
    fn every_input_changes_the_key() {
        let m = vec![ChatMessage::new("user", "你好")];
        let base = key(&parts(&m));
        assert_eq!(base, key(&parts(&m)), "deterministic");
        let variants: Vec<KeyParts<'_>> = vec![
            KeyParts {
                kind: "translate",
                ..parts(&m)
            },
            KeyParts {
                provider: "simulated",
                ..parts(&m)
            },
            KeyParts {
                model: "ep-work",
                ..parts(&m)
            },
            KeyParts {
                strategy: "direct",
                ..parts(&m)
            },
            KeyParts {
                samples: 3,
                ..parts(&m)
            },
            KeyParts {
                temperature: 0.8,
                ..parts(&m)
            },
            KeyParts {
                max_tokens: 100,
                ..parts(&m)
            },
            KeyParts {
                top_p: 0.9,
                ..parts(&m)
            },
            KeyParts {
                show_reasoning: true,
                ..parts(&m)
            },
        ];
        for v in &variants {
            assert_ne!(key(v), base, "{v:?}");
        }
        let other = vec![ChatMessage::new("user", "你好!")];
        assert_ne!(key(&parts(&other)), base);
        let role = vec![ChatMessage::new("system", "你好")];
        assert_ne!(key(&parts(&role)), base);
    }

    #[test]
    fn boundaries_between_messages_matter() {
        let a = vec![
            ChatMessage::new("user", "ab"),
            ChatMessage::new("user", "c"),
        ];
        let b = vec![
            ChatMessage::new("user", "a"),
            ChatMessage::new("user", "bc"),
        ];
        assert_ne!(key(&parts(&a)), key(&parts(&b)));
    }

    #[test]
    fn negative_zero_is_zero() {
        let m = vec![ChatMessage::new("user", "x")];
        let a = KeyParts {
            temperature: 0.0,
            ..parts(&m)
        };
        let b = KeyParts {
            temperature: -0.0,
            ..parts(&m)
        };
        assert_eq!(key(&a), key(&b));
    }

    #[test]
    fn redis_keys_are_namespaced_and_versioned() {
        let k = key(&parts(&[]));
        let r = k.redis_key();
        assert!(r.starts_with("heartalk:resp:v1:"));
        assert_eq!(r.len(), "heartalk:resp:v1:".len() + 64);
    }
}
