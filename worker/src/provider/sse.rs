//! Parsing of the UPSTREAM's Server-Sent Events stream (API.md §5.3,
//! "Upstream parsing"): [`SseParser`] turns raw network chunks into events,
//! and [`StreamState`] turns each event's JSON payload into
//! [`StreamEvent`] deltas while remembering `finish_reason`, `usage` and
//! `model` for the final [`StreamEvent::Done`].
//!
//! Both are pure (no I/O, no clock), so every framing corner — a line split
//! across any number of chunks, CRLF, multi-line `data:`, comments, invalid
//! UTF-8 — is unit tested here rather than over a socket.

use serde::Deserialize;

use super::{StreamEvent, UpstreamError, Usage};

/// One dispatched SSE event of the upstream stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// The `data:` lines of one event, joined with `\n`.
    Data(String),
    /// `data: [DONE]`: the upstream says the stream is complete.
    Done,
}

/// Incremental SSE line parser.
///
/// Bytes are buffered and only complete lines (ending in `\n` or `\r\n`)
/// are interpreted, so chunk boundaries never matter. An event is
/// dispatched on a blank line; `event:`, `id:`, `retry:`, unknown fields and
/// comments (`:`) are ignored. A `data: [DONE]` line ends the stream at once
/// (even before its blank line), and everything after it is ignored.
/// Invalid UTF-8 is replaced (lossy), never a panic.
#[derive(Debug, Default)]
pub struct SseParser {
    /// The unterminated tail of the last chunk(s).
    partial: Vec<u8>,
    /// `data:` lines of the event being assembled.
    data: Option<String>,
    /// Whether the first line is still to come (a leading BOM is skipped).
    started: bool,
    /// `[DONE]` seen: the parser yields nothing more.
    done: bool,
}

impl SseParser {
    pub fn new() -> Self {
        SseParser::default()
    }

    /// Feeds one network chunk; returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseItem> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while !self.done {
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                self.partial.extend_from_slice(rest);
                break;
            };
            let (head, tail) = (&rest[..nl], &rest[nl + 1..]);
            rest = tail;
            if self.partial.is_empty() {
                self.line(head, &mut out);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(head);
                self.line(&line, &mut out);
            }
        }
        out
    }

    /// End of stream: interprets an unterminated last line and dispatches a
    /// pending event (servers may close without the final blank line).
    pub fn finish(&mut self) -> Vec<SseItem> {
        let mut out = Vec::new();
        if !self.done && !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line, &mut out);
        }
        if !self.done {
            self.dispatch(&mut out);
        }
        out
    }

    fn line(&mut self, raw: &[u8], out: &mut Vec<SseItem>) {
        let mut raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if !self.started {
            self.started = true;
            raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
        }
        if raw.is_empty() {
            self.dispatch(out);
            return;
        }
        if raw[0] == b':' {
            return;
        }
        let (field, value) = match raw.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &raw[i + 1..];
                (&raw[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (raw, &b""[..]),
        };
        if field != b"data" {
            return;
        }
        let value = String::from_utf8_lossy(value);
        if self.data.is_none() && value.trim() == "[DONE]" {
            self.done = true;
            out.push(SseItem::Done);
            return;
        }
        match &mut self.data {
            Some(d) => {
                d.push('\n');
                d.push_str(&value);
            }
            None => self.data = Some(value.into_owned()),
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseItem>) {
        if let Some(d) = self.data.take() {
            if d.trim() == "[DONE]" {
                self.done = true;
                out.push(SseItem::Done);
            } else {
                out.push(SseItem::Data(d));
            }
        }
    }
}

/// What one `chat.completion.chunk` payload may carry. Every field is
/// optional: providers differ, and `null`s are common.
#[derive(Debug, Deserialize)]
struct ChunkPayload {
    #[serde(default)]
    choices: Option<Vec<ChunkChoice>>,
    #[serde(default)]
    usage: Option<serde_json::Value>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<ChunkDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
}

/// Maps payloads to deltas and keeps what the final `Done` reports.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StreamState {
    /// The last non-null `finish_reason` seen.
    pub finish_reason: Option<String>,
    /// The last `usage` object seen (OpenAI sends it in a `choices:[]` chunk).
    pub usage: Option<Usage>,
    /// The last top-level `model` seen.
    pub model: Option<String>,
    /// Payloads that were not a JSON object and were skipped.
    pub skipped: u64,
}

impl StreamState {
    pub fn new() -> Self {
        StreamState::default()
    }

    /// Interprets one `data:` payload. Reasoning comes before content when a
    /// chunk carries both. A payload that does not parse is skipped and
    /// counted in [`StreamState::skipped`]; a payload carrying a top-level
    /// `error` object (providers report mid-stream failures that way) is an
    /// error.
    pub fn apply(&mut self, payload: &str) -> Result<Vec<StreamEvent>, UpstreamError> {
        let chunk: ChunkPayload = match serde_json::from_str(payload) {
            Ok(c) => c,
            Err(_) => {
                self.skipped += 1;
                return Ok(Vec::new());
            }
        };
        if let Some(err) = chunk.error.filter(|e| !e.is_null()) {
            let message = err
                .get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
                .or_else(|| err.as_str().map(str::to_string))
                .unwrap_or_else(|| err.to_string());
            return Err(UpstreamError::InvalidResponse(format!(
                "upstream stream error: {message}"
            )));
        }
        if let Some(m) = chunk.model.filter(|m| !m.is_empty()) {
            self.model = Some(m);
        }
        if let Some(u) = chunk
            .usage
            .filter(|u| u.is_object())
            .and_then(|u| serde_json::from_value::<Usage>(u).ok())
        {
            self.usage = Some(u);
        }
        let mut out = Vec::new();
        if let Some(choice) = chunk.choices.and_then(|c| c.into_iter().next()) {
            if let Some(delta) = choice.delta {
                if let Some(r) = delta.reasoning_content.filter(|r| !r.is_empty()) {
                    out.push(StreamEvent::Reasoning(r));
                }
                if let Some(c) = delta.content.filter(|c| !c.is_empty()) {
                    out.push(StreamEvent::Content(c));
                }
            }
            if let Some(f) = choice.finish_reason.filter(|f| !f.is_empty()) {
                self.finish_reason = Some(f);
            }
        }
        Ok(out)
    }

    /// The final event, built from what was remembered.
    pub fn done_event(&self) -> StreamEvent {
        StreamEvent::Done {
            finish_reason: self.finish_reason.clone(),
            usage: self.usage.clone(),
            model: self.model.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        ": keep-alive comment\n",
        "event: message\n",
        "id: 1\n",
        "retry: 3000\n",
        "data: {\"model\":\"seed-1-6\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\r\n",
        "\r\n",
        "data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"思考中\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"你好，\"}}]}\n\n",
        "data: {\"choices\":\n",
        "data: [{\"delta\":{\"content\":\"世界😀\"}}]}\n\n",
        "data: {not json}\n\n",
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\n",
        "data: [DONE]\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"after done\"}}]}\n\n",
    );

    fn run(chunks: &[&[u8]]) -> Vec<SseItem> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(p.push(c));
        }
        out.extend(p.finish());
        out
    }

    #[test]
    fn whole_stream_parses() {
        let items = run(&[STREAM.as_bytes()]);
        assert_eq!(items.len(), 8);
        assert_eq!(
            items[3],
            SseItem::Data("{\"choices\":\n[{\"delta\":{\"content\":\"世界😀\"}}]}".into())
        );
        assert_eq!(items[4], SseItem::Data("{not json}".into()));
        assert_eq!(items.last(), Some(&SseItem::Done));
    }

    #[test]
    fn every_split_point_gives_the_same_items() {
        let bytes = STREAM.as_bytes();
        let whole = run(&[bytes]);
        for i in 0..=bytes.len() {
            assert_eq!(run(&[&bytes[..i], &bytes[i..]]), whole, "split at {i}");
        }
        for i in 0..bytes.len() {
            for j in [i + 1, i + 2, i + 7] {
                if j <= bytes.len() {
                    assert_eq!(
                        run(&[&bytes[..i], &bytes[i..j], &bytes[j..]]),
                        whole,
                        "split at {i},{j}"
                    );
                }
            }
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(&singles), whole);
    }

    #[test]
    fn crlf_comments_and_other_fields_are_handled() {
        let items =
            run(&[b":c\r\nevent: x\r\nid: 2\r\ndata:a\r\ndata:  b\r\n\r\ndata: [DONE]\r\n"]);
        assert_eq!(items, vec![SseItem::Data("a\n b".into()), SseItem::Done]);
    }

    #[test]
    fn eof_dispatches_a_pending_event_and_an_unterminated_line() {
        assert_eq!(run(&[b"data: x"]), vec![SseItem::Data("x".into())]);
        assert_eq!(run(&[b"data: x\n"]), vec![SseItem::Data("x".into())]);
        assert_eq!(run(&[b"data: [DONE]"]), vec![SseItem::Done]);
        assert_eq!(
            run(&[b"\xEF\xBB\xBFdata: y\n\n"]),
            vec![SseItem::Data("y".into())]
        );
    }

    #[test]
    fn invalid_utf8_is_lossy_not_a_panic() {
        let items = run(&[b"data: a\xFF", b"\xFEb\n\n"]);
        assert_eq!(items, vec![SseItem::Data("a\u{FFFD}\u{FFFD}b".into())]);
        // A multi-byte character split across chunks survives intact.
        let s = "data: 你\n\n".as_bytes();
        assert_eq!(run(&[&s[..7], &s[7..]]), vec![SseItem::Data("你".into())]);
    }

    #[test]
    fn payloads_map_to_deltas_and_final_state() {
        let mut st = StreamState::new();
        let mut events = Vec::new();
        for item in run(&[STREAM.as_bytes()]) {
            match item {
                SseItem::Data(d) => events.extend(st.apply(&d).unwrap()),
                SseItem::Done => events.push(st.done_event()),
            }
        }
        assert_eq!(
            events,
            vec![
                StreamEvent::Reasoning("思考中".into()),
                StreamEvent::Content("你好，".into()),
                StreamEvent::Content("世界😀".into()),
                StreamEvent::Done {
                    finish_reason: Some("stop".into()),
                    usage: Some(Usage {
                        prompt_tokens: 3,
                        completion_tokens: 4,
                        total_tokens: 7,
                        extra: Default::default()
                    }),
                    model: Some("seed-1-6".into()),
                }
            ]
        );
        assert_eq!(st.skipped, 1);
    }

    #[test]
    fn odd_payloads_are_tolerated_or_reported() {
        let mut st = StreamState::new();
        assert_eq!(st.apply("[1,2]").unwrap(), vec![]);
        assert_eq!(st.apply("").unwrap(), vec![]);
        assert_eq!(st.skipped, 2);
        assert_eq!(
            st.apply(r#"{"choices":null,"usage":null}"#).unwrap(),
            vec![]
        );
        assert_eq!(
            st.apply(r#"{"choices":[{"delta":{"content":null},"finish_reason":null}]}"#)
                .unwrap(),
            vec![]
        );
        assert_eq!(
            st.apply(r#"{"choices":[{"delta":{"reasoning_content":"r","content":"c"}}]}"#)
                .unwrap(),
            vec![
                StreamEvent::Reasoning("r".into()),
                StreamEvent::Content("c".into())
            ]
        );
        assert_eq!(st.finish_reason, None);
        let err = st
            .apply(r#"{"error":{"message":"overloaded","code":"ServerOverloaded"}}"#)
            .unwrap_err();
        assert_eq!(
            err,
            UpstreamError::InvalidResponse("upstream stream error: overloaded".into())
        );
    }
}
