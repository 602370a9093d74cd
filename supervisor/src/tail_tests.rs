//! Tests of `heartalk logs`' pure parts: parsing a stored line, the
//! filters, the human, raw and JSON renderings, the order of rotated files,
//! the options from the flags, and reading a file backwards.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::*;

const TS: &str = "2026-12-06T12:07:08.891205Z";

fn entry(text: &str) -> Entry {
    Entry::parse(text.to_string())
}

fn worker_text(app: &str, slot: u64, text: &str) -> String {
    format!(
        r#"{{"timestamp":"{TS}","app":"{app}","slot":{slot},"pid":42,"stream":"stdout","message":"{text}"}}"#
    )
}

const READY: &str = r#"{"timestamp":"2026-12-06T12:07:08.893213Z","level":"INFO","message":"all workers ready","event":"fleet_ready","workers":1,"target":"heartalk::fleet"}"#;
const SPAWNED: &str = r#"{"timestamp":"2026-12-06T12:07:08.755059Z","level":"INFO","event":"worker_spawned","app":"web","slot":0,"pid":16949,"generation":1,"target":"heartalk::fleet"}"#;
const ACCESS: &str = r#"{"app":"web","slot":1,"pid":7,"stream":"stdout","timestamp":"2026-12-06T12:07:12.739749Z","level":"INFO","message":"request","path":"/api/v1/health","status":200,"user":"a b","target":"access"}"#;

fn human(text: &str) -> String {
    render(&entry(text), Format::Human { color: false })
}

#[test]
fn worker_lines_name_app_slot_and_pid_and_the_supervisor_names_itself() {
    assert_eq!(
        human(&worker_text("tw", 3, "line 3 7")),
        "2026-12-06T12:07:08.891Z tw/3/42          stdout line 3 7"
    );
    assert_eq!(
        human(READY),
        "2026-12-06T12:07:08.893Z heartalk         INFO   fleet_ready: all workers ready workers=1"
    );
    // the supervisor's events about a worker keep app/slot/pid as fields
    assert_eq!(
        human(SPAWNED),
        "2026-12-06T12:07:08.755Z heartalk         INFO   worker_spawned app=web slot=0 pid=16949 generation=1"
    );
    // a worker's own JSON: its level, its message, its other fields
    assert_eq!(
        human(ACCESS),
        "2026-12-06T12:07:12.739Z web/1/7          INFO   request path=/api/v1/health status=200 user=\"a b\""
    );
}

#[test]
fn stderr_is_shown_like_a_warning_and_colours_only_when_asked() {
    let line = worker_text("tw", 0, "oops").replace("stdout", "stderr");
    let plain = human(&line);
    assert!(plain.contains(" stderr oops"), "{plain}");
    assert!(!plain.contains('\x1b'));
    let coloured = render(&entry(&line), Format::Human { color: true });
    assert!(coloured.contains("\x1b[33mstderr"), "{coloured:?}");
    let error = render(
        &entry(r#"{"level":"ERROR","event":"spawn_failed"}"#),
        Format::Human { color: true },
    );
    assert!(error.contains("\x1b[31mERROR"), "{error:?}");
    // no timestamp, no level: placeholders keep the columns
    assert_eq!(human(r#"{"event":"x"}"#), "- heartalk         -      x");
}

#[test]
fn raw_is_the_message_column_and_json_the_stored_line() {
    assert_eq!(
        render(&entry(&worker_text("tw", 0, "line 0 1")), Format::Raw),
        "line 0 1"
    );
    assert_eq!(
        render(&entry(READY), Format::Raw),
        "fleet_ready: all workers ready workers=1"
    );
    for line in [READY, SPAWNED, ACCESS] {
        assert_eq!(render(&entry(line), Format::Json), line);
    }
    // a line that is not JSON is printed as it is, in every format
    for format in [Format::Json, Format::Raw, Format::Human { color: true }] {
        assert_eq!(render(&entry("plain text {"), format), "plain text {");
        assert_eq!(render(&entry("{not json"), format), "{not json");
    }
}

#[test]
fn values_are_quoted_only_when_bare_text_would_mislead() {
    let text =
        r#"{"event":"e","a":"x","b":"","c":"k=v","d":"say \"hi\"","e":[1,2],"f":null,"g":1.5}"#;
    assert_eq!(
        render(&entry(text), Format::Raw),
        r#"e a=x b="" c="k=v" d="say \"hi\"" e=[1,2] f=null g=1.5"#
    );
}

#[test]
fn app_and_slot_keep_the_lines_about_them() {
    let app = |a: &str| Filter {
        app: Some(a.into()),
        ..Filter::default()
    };
    assert!(app("tw").keeps(&entry(&worker_text("tw", 0, "x"))));
    assert!(!app("tw").keeps(&entry(&worker_text("other", 0, "x"))));
    // the supervisor's events about the app stay, fleet-wide ones go
    assert!(app("web").keeps(&entry(SPAWNED)));
    assert!(!app("web").keeps(&entry(READY)));
    assert!(!app("web").keeps(&entry("not json")));
    let slot = Filter {
        slot: Some(1),
        ..Filter::default()
    };
    assert!(slot.keeps(&entry(ACCESS)));
    assert!(!slot.keeps(&entry(SPAWNED)));
    assert!(!slot.keeps(&entry(READY)));
    let both = Filter {
        app: Some("tw".into()),
        slot: Some(2),
        ..Filter::default()
    };
    assert!(both.keeps(&entry(&worker_text("tw", 2, "x"))));
    assert!(!both.keeps(&entry(&worker_text("tw", 1, "x"))));
    assert!(!both.keeps(&entry(&worker_text("o", 2, "x"))));
    assert!(Filter::default().keeps(&entry("not json")));
}

#[test]
fn since_compares_the_line_time_and_keeps_what_has_none() {
    let at = humantime::parse_rfc3339("2026-12-06T12:07:08.800000Z").unwrap();
    let since = Filter {
        since: Some(at),
        ..Filter::default()
    };
    assert!(since.keeps(&entry(READY))); // 12:07:08.893
    assert!(!since.keeps(&entry(SPAWNED))); // 12:07:08.755
    assert!(since.keeps(&entry(r#"{"event":"undated"}"#)));
    assert!(since.keeps(&entry(r#"{"timestamp":1700000000}"#)));
    assert!(since.keeps(&entry("not json")));
}

#[test]
fn rotated_files_oldest_first_each_once() {
    let names = [
        "heartalk.log",
        "heartalk-20261206T120714769321Z-000002.log.gz",
        "heartalk-20261206T120714769321Z-000003.log",
        "heartalk-20261206T120714769321Z-000003.log.gz",
        "heartalk-20261206T120714769321Z-000004.log.gz.tmp",
        "heartalk-20261205T235959000000Z-000009.log.gz",
        "moved.log.old",
        "other.log",
    ];
    assert_eq!(
        rotated_names(names.iter().map(|s| s.to_string())),
        [
            "heartalk-20261205T235959000000Z-000009.log",
            "heartalk-20261206T120714769321Z-000002.log",
            "heartalk-20261206T120714769321Z-000003.log",
        ]
    );
}

#[test]
fn options_default_to_50_lines_or_all_since() {
    let args = |lines: Option<usize>, since: Option<Duration>| LogsArgs {
        config: PathBuf::from("ecosystem.toml"),
        lines,
        follow: false,
        app: None,
        slot: None,
        since,
        json: false,
        raw: false,
    };
    let now = SystemTime::now();
    let o = Options::new(&args(None, None), now, false);
    assert_eq!(o.lines, DEFAULT_LINES);
    assert_eq!(o.filter.since, None);
    assert_eq!(o.format, Format::Human { color: false });
    let ten = Duration::from_secs(600);
    let o = Options::new(&args(None, Some(ten)), now, false);
    assert_eq!(o.lines, usize::MAX);
    assert_eq!(o.filter.since, Some(now - ten));
    assert_eq!(Options::new(&args(Some(5), Some(ten)), now, false).lines, 5);
    let mut json = args(None, None);
    json.json = true;
    assert_eq!(Options::new(&json, now, true).format, Format::Json);
}

fn file_with(bytes: &[u8]) -> File {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f
}

fn all_backwards(f: &File, whole_only: bool) -> (Vec<String>, u64) {
    let mut lines = Vec::new();
    let len = f.metadata().unwrap().len();
    let end = backwards(f, len, whole_only, |l| {
        lines.push(String::from_utf8(l.to_vec()).unwrap());
        true
    })
    .unwrap();
    (lines, end)
}

#[test]
fn backwards_hands_out_lines_last_first_across_blocks() {
    let long = "x".repeat(BLOCK * 2 + 17);
    let text = format!("a\n\n{long}\nb\nc\n");
    let f = file_with(text.as_bytes());
    let (lines, end) = all_backwards(&f, true);
    assert_eq!(lines, ["c", "b", long.as_str(), "a"]);
    assert_eq!(end, text.len() as u64);
    // a last line still being written: left out, and the end is before it
    let f = file_with(b"a\nb\npart");
    assert_eq!(all_backwards(&f, true), (vec!["b".into(), "a".into()], 4));
    // in a rotated file it is a line like the others
    assert_eq!(
        all_backwards(&f, false),
        (vec!["part".into(), "b".into(), "a".into()], 8)
    );
    assert_eq!(all_backwards(&file_with(b"part"), true), (vec![], 0));
    assert_eq!(all_backwards(&file_with(b""), true), (vec![], 0));
    // stopping early still reports where the complete lines end
    let f = file_with(b"a\nb\nc\nd");
    let mut seen = Vec::new();
    let end = backwards(&f, 7, true, |l| {
        seen.push(l.to_vec());
        seen.len() < 2
    })
    .unwrap();
    assert_eq!((seen, end), (vec![b"c".to_vec(), b"b".to_vec()], 6));
}

#[test]
fn drain_keeps_a_partial_line_until_its_newline() {
    let mut f = file_with(b"one\ntw");
    let (mut pos, mut partial, mut buf) = (0, Vec::new(), vec![0; 4]);
    let mut lines = Vec::new();
    let mut read = |f: &File, pos: &mut u64, partial: &mut Vec<u8>, lines: &mut Vec<String>| {
        drain(f, pos, partial, &mut buf, |l| {
            lines.push(String::from_utf8(l.to_vec()).unwrap());
            Ok(())
        })
        .unwrap()
    };
    assert!(read(&f, &mut pos, &mut partial, &mut lines));
    assert_eq!(
        (lines.clone(), pos, partial.clone()),
        (vec!["one".into()], 6, b"tw".to_vec())
    );
    assert!(!read(&f, &mut pos, &mut partial, &mut lines));
    f.write_all(b"o\n\nthree\n").unwrap();
    assert!(read(&f, &mut pos, &mut partial, &mut lines));
    assert_eq!(lines, ["one", "two", "three"]);
    assert!(partial.is_empty());
}

/// A log dir: rotated files (`gz` says which are compressed), oldest
/// first, then the current file; each file `per` lines `<file> <i>`.
fn log_dir(files: &[bool], per: usize) -> (tempfile::TempDir, File, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let body = |name: usize| -> String {
        (0..per)
            .map(|i| {
                worker_text(
                    if i % 2 == 0 { "even" } else { "odd" },
                    0,
                    &format!("{name} {i}"),
                ) + "\n"
            })
            .collect()
    };
    let mut rotated = Vec::new();
    for (k, gz) in files.iter().enumerate() {
        let plain = dir
            .path()
            .join(format!("heartalk-20261206T1200{k:02}000000Z-{k:06}.log"));
        if *gz {
            let out = File::create(format!("{}.gz", plain.display())).unwrap();
            let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
            enc.write_all(body(k).as_bytes()).unwrap();
            enc.finish().unwrap();
        } else {
            std::fs::write(&plain, body(k)).unwrap();
        }
        rotated.push(plain);
    }
    let current = dir.path().join(FILE_NAME);
    std::fs::write(&current, body(files.len()) + "{\"partial").unwrap();
    (dir, File::open(current).unwrap(), rotated)
}

fn raw(lines: &[Entry]) -> Vec<String> {
    lines.iter().map(|e| render(e, Format::Raw)).collect()
}

#[test]
fn tail_reaches_back_through_plain_and_gzipped_files() {
    let (_dir, current, rotated) = log_dir(&[true, false, true], 4);
    let all = Filter::default();
    let (lines, end) = tail(Some(&current), &rotated, 6, &all).unwrap();
    assert_eq!(raw(&lines), ["2 2", "2 3", "3 0", "3 1", "3 2", "3 3"]);
    assert_eq!(
        end,
        current.metadata().unwrap().len() - "{\"partial".len() as u64
    );
    let (lines, _) = tail(Some(&current), &rotated, 100, &all).unwrap();
    assert_eq!(lines.len(), 16);
    assert_eq!(raw(&lines)[..5], ["0 0", "0 1", "0 2", "0 3", "1 0"]);
    // N counts the lines the filters keep
    let odd = Filter {
        app: Some("odd".into()),
        ..Filter::default()
    };
    let (lines, _) = tail(Some(&current), &rotated, 5, &odd).unwrap();
    assert_eq!(raw(&lines), ["1 3", "2 1", "2 3", "3 1", "3 3"]);
    // none wanted: nothing read, and following starts at the end
    let (lines, end0) = tail(Some(&current), &rotated, 0, &all).unwrap();
    assert!(lines.is_empty());
    assert_eq!(end0, end);
    // rotated files only (the current one renamed away)
    let (lines, end) = tail(None, &rotated, 2, &all).unwrap();
    assert_eq!((raw(&lines), end), (vec!["2 2".into(), "2 3".into()], 0));
}

#[test]
fn a_file_pruned_or_compressed_meanwhile_is_found_or_skipped() {
    let (dir, current, mut rotated) = log_dir(&[true, false], 2);
    // listed under its plain name, found compressed
    assert!(!rotated[0].exists());
    // one listed, then removed by retention
    rotated.insert(
        0,
        dir.path()
            .join("heartalk-20261206T000000000000Z-000000.log"),
    );
    let (lines, _) = tail(Some(&current), &rotated, 100, &Filter::default()).unwrap();
    assert_eq!(raw(&lines), ["0 0", "0 1", "1 0", "1 1", "2 0", "2 1"]);
}
