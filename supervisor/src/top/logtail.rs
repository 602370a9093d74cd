//! The fleet log's last lines for `heartalk top`: the end of
//! `<log.dir>/heartalk.log` read afresh on every refresh (a rotation
//! simply shows the new file's lines), each JSON line made one compact
//! line — time, `app/slot` (or `heartalk` for the supervisor's own
//! events), then what it says. [`compact`] is the only formatter here, so
//! a fuller one can take its place.

use std::fs::File;
use std::io;
use std::path::Path;

use serde_json::{Map, Value};

/// How much of the file's end is read on each refresh.
pub const TAIL_BYTES: u64 = 64 << 10;

/// The last whole lines within the last `max` bytes of `path`, read from
/// the end as `heartalk logs` reads it ([`crate::tail::backwards`]); a last
/// line still being written is shown as it is so far.
pub fn read_tail(path: &Path, max: u64) -> io::Result<Vec<String>> {
    let file = File::open(path)?;
    let end = file.metadata()?.len();
    let mut room = max;
    let mut lines = Vec::new();
    crate::tail::backwards(&file, end, false, |line| {
        // The line and its newline must fit in what is left of the window.
        let Some(left) = room.checked_sub(line.len() as u64 + 1) else {
            return false;
        };
        room = left;
        lines.push(String::from_utf8_lossy(line).into_owned());
        true
    })?;
    lines.reverse();
    Ok(lines)
}

/// Fields shown elsewhere in the compact line, or not worth its room.
const HIDDEN: [&str; 5] = ["timestamp", "level", "target", "event", "message"];
/// Tags the supervisor adds to a worker's line (its source says them).
const WORKER_TAGS: [&str; 4] = ["app", "slot", "pid", "stream"];

/// `12:13:07 heartalk/1 WARN message key=value ...` from one log line (a
/// line that is not a JSON object is shown as it is).
pub fn compact(line: &str) -> String {
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line) else {
        return line.to_string();
    };
    let time = obj
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.split_once('T'))
        .map_or("--:--:--", |(_, t)| t.get(..8).unwrap_or(t));
    // Worker lines carry `stream`; the supervisor's own events do not.
    let worker = obj.contains_key("stream");
    let source = match (worker, obj.get("app").and_then(Value::as_str)) {
        (true, Some(app)) => format!("{app}/{}", plain(obj.get("slot"))),
        _ => "heartalk".to_string(),
    };
    let mut words: Vec<String> = Vec::new();
    if let Some(level) = obj.get("level").and_then(Value::as_str) {
        if matches!(level, "WARN" | "ERROR") {
            words.push(level.to_string());
        }
    }
    for key in ["event", "message"] {
        if let Some(v) = obj.get(key) {
            words.push(plain(Some(v)));
        }
    }
    words.extend(fields(&obj, worker));
    format!("{time} {source} {}", words.join(" "))
        .trim_end()
        .to_string()
}

/// `key=value` of every field not shown otherwise.
fn fields(obj: &Map<String, Value>, worker: bool) -> impl Iterator<Item = String> + '_ {
    obj.iter()
        .filter(move |(k, _)| {
            let shown_elsewhere =
                HIDDEN.contains(&k.as_str()) || (worker && WORKER_TAGS.contains(&k.as_str()));
            !shown_elsewhere
        })
        .map(|(k, v)| format!("{k}={}", plain(Some(v))))
}

/// A value as text: strings without quotes, the rest as JSON.
fn plain(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_lines_are_shown_by_app_and_slot() {
        let line = r#"{"app":"heartalk","slot":1,"pid":7381,"stream":"stdout","timestamp":"2026-12-06T12:13:07.619531Z","level":"WARN","message":"router config unusable","path":"config/keywords.json","target":"heartalk_worker::services"}"#;
        assert_eq!(
            compact(line),
            "12:13:07 heartalk/1 WARN router config unusable path=config/keywords.json"
        );
        let plain_text = r#"{"timestamp":"2026-12-06T12:13:08Z","app":"tw","slot":0,"pid":5,"stream":"stderr","message":"boom"}"#;
        assert_eq!(compact(plain_text), "12:13:08 tw/0 boom");
    }

    #[test]
    fn supervisor_events_are_shown_as_heartalk() {
        let line = r#"{"timestamp":"2026-12-06T12:13:07.743140Z","level":"INFO","event":"worker_ready","app":"heartalk","slot":1,"pid":7381,"generation":1,"target":"heartalk::fleet"}"#;
        assert_eq!(
            compact(line),
            "12:13:07 heartalk worker_ready app=heartalk slot=1 pid=7381 generation=1"
        );
    }

    #[test]
    fn other_lines_are_shown_as_they_are() {
        assert_eq!(compact("not json"), "not json");
        assert_eq!(compact("[1,2]"), "[1,2]");
        assert_eq!(compact("{}"), "--:--:-- heartalk");
    }

    #[test]
    fn the_tail_is_whole_lines_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heartalk.log");
        let text: String = (0..100).map(|i| format!("line {i:03}\n")).collect();
        std::fs::write(&path, text).unwrap();
        // 9 bytes a line: the last 50 bytes hold 5 whole lines and a cut one.
        let tail = read_tail(&path, 50).unwrap();
        assert_eq!(
            tail,
            ["line 095", "line 096", "line 097", "line 098", "line 099"]
        );
        // A window that starts a line keeps it.
        assert_eq!(read_tail(&path, 45).unwrap(), tail);
        assert_eq!(read_tail(&path, 1 << 20).unwrap().len(), 100);
        assert_eq!(read_tail(&path, 900).unwrap().len(), 100);
        assert!(read_tail(&dir.path().join("missing"), 50).is_err());
    }
}
