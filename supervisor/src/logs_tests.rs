//! Unit tests of `logs.rs`, kept beside it so the module reads as code.

use serde_json::Value;

use super::*;

fn frame(max: usize, chunks: &[&[u8]]) -> Vec<Piece> {
    let mut f = Framer::new(max);
    let mut out = Vec::new();
    for c in chunks {
        f.push(c, &mut out);
    }
    f.finish(&mut out);
    out
}

#[test]
fn lines_survive_any_split() {
    let text = b"alpha\nbeta\r\ngamma\n";
    for cut in 0..text.len() {
        assert_eq!(
            frame(64, &[&text[..cut], &text[cut..]]),
            vec![
                Piece::Line("alpha".into()),
                Piece::Line("beta".into()),
                Piece::Line("gamma".into())
            ],
            "cut at {cut}"
        );
    }
    assert_eq!(
        frame(64, &[b"no newline"]),
        vec![Piece::Line("no newline".into())]
    );
}

#[test]
fn long_lines_become_marked_chunks_and_memory_stays_bounded() {
    let mut f = Framer::new(16);
    let mut out = Vec::new();
    let long = vec![b'x'; 1000];
    for c in long.chunks(7) {
        f.push(c, &mut out);
        assert!(f.buf.len() <= 16, "the framer holds at most max_line bytes");
    }
    f.push(b"y\nnext\n", &mut out);
    let chunks: Vec<_> = out
        .iter()
        .filter(|p| matches!(p, Piece::Chunk { .. }))
        .collect();
    assert_eq!(chunks.len(), 1000 / 16 + 1);
    assert!(matches!(
        out[0],
        Piece::Chunk {
            index: 0,
            last: false,
            ..
        }
    ));
    let Piece::Chunk { text, last, .. } = &out[chunks.len() - 1] else {
        panic!()
    };
    assert!(*last && text.ends_with('y'));
    let total: usize = out
        .iter()
        .filter_map(|p| match p {
            Piece::Chunk { text, .. } => Some(text.len()),
            _ => None,
        })
        .sum();
    assert_eq!(total, 1001, "no byte lost");
    assert_eq!(out.last(), Some(&Piece::Line("next".into())));
}

#[test]
fn chunks_do_not_split_characters() {
    let line = "你好".repeat(20);
    let out = frame(16, &[line.as_bytes(), b"\n"]);
    let joined: String = out
        .iter()
        .map(|p| match p {
            Piece::Chunk { text, .. } | Piece::Line(text) => text.clone(),
        })
        .collect();
    assert_eq!(joined, line);
    assert!(
        out.iter()
            .all(|p| !matches!(p, Piece::Chunk { text, .. } if text.contains('\u{FFFD}')))
    );
}

#[test]
fn json_lines_are_merged_and_text_is_wrapped() {
    let src = Source {
        app: "heartalk".into(),
        slot: 2,
        pid: 42,
        stream: "stdout",
    };
    let merged: Value = serde_json::from_str(&render(
        &src,
        &Piece::Line(r#"{"level":"INFO","message":"hi","pid":7}"#.into()),
        "T",
    ))
    .unwrap();
    assert_eq!(merged["level"], "INFO");
    assert_eq!(merged["message"], "hi");
    assert_eq!(merged["pid"], 7, "the worker's own field wins");
    assert_eq!(merged["slot"], 2);
    assert_eq!(merged["app"], "heartalk");
    let plain: Value =
        serde_json::from_str(&render(&src, &Piece::Line("panic! at \"x\"".into()), "T")).unwrap();
    assert_eq!(plain["message"], "panic! at \"x\"");
    assert_eq!(plain["stream"], "stdout");
    assert_eq!(plain["timestamp"], "T");
    let chunk: Value = serde_json::from_str(&render(
        &src,
        &Piece::Chunk {
            text: "{\"a\":".into(),
            index: 3,
            last: false,
        },
        "T",
    ))
    .unwrap();
    assert_eq!(chunk["message"], "{\"a\":");
    assert_eq!(chunk["chunk"], 3);
    assert_eq!(chunk["partial"], true);
    let empty: Value = serde_json::from_str(&render(&src, &Piece::Line("{}".into()), "T")).unwrap();
    assert_eq!(empty["slot"], 2);
    let not_json: Value =
        serde_json::from_str(&render(&src, &Piece::Line("{not json".into()), "T")).unwrap();
    assert_eq!(not_json["message"], "{not json");
}

fn settings(dir: &Path) -> LogSettings {
    LogSettings {
        dir: dir.to_path_buf(),
        max_size: 64 << 20,
        max_files: 2,
        stdout: Some(false),
        max_line: 1024,
        rotate_interval: None,
        queue: 10_000,
        compress: false,
    }
}

fn source(stream: &'static str) -> Source {
    Source {
        app: "api".into(),
        slot: 1,
        pid: 42,
        stream,
    }
}

/// The event loop's situation: a current-thread runtime whose thread
/// is busy (here, blocked polling the file, never yielding). The
/// pipes must be read, tagged and written all the same.
#[tokio::test(flavor = "current_thread")]
async fn pipes_are_read_and_tagged_while_the_callers_thread_is_busy() {
    const N: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let sink = LogSink::start(&settings(dir.path()), false).unwrap();
    let mut capture = Capture::start(sink, 1024).unwrap();
    let (out_r, out_w) = crate::sys::pipe().unwrap();
    let (err_r, err_w) = crate::sys::pipe().unwrap();
    capture.read(out_r, source("stdout"));
    capture.read(err_r, source("stderr"));
    // Less than a pipe's capacity: the writes never wait for a reader.
    let text: String = (0..N).map(|i| format!("line {i}\n")).collect();
    File::from(out_w).write_all(text.as_bytes()).unwrap();
    File::from(err_w)
        .write_all(b"{\"level\":\"WARN\",\"message\":\"oops\"}\n")
        .unwrap();

    let path = dir.path().join(FILE_NAME);
    let deadline = Instant::now() + Duration::from_secs(20);
    let lines: Vec<Value> = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        // The writer may be mid-line: only whole lines count.
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        let lines: Vec<Value> = whole
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() > N {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} lines written while the caller's thread was busy",
            lines.len(),
            N + 1
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(lines.len(), N + 1);
    let stdout: Vec<&str> = lines
        .iter()
        .filter(|l| l["stream"] == "stdout")
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..N).map(|i| format!("line {i}")).collect();
    assert_eq!(stdout, expected, "every line once, in order");
    assert!(
        lines
            .iter()
            .all(|l| l["app"] == "api" && l["slot"] == 1 && l["pid"] == 42)
    );
    let stderr: Vec<&Value> = lines.iter().filter(|l| l["stream"] == "stderr").collect();
    assert_eq!(stderr.len(), 1);
    assert_eq!(stderr[0]["level"], "WARN", "a JSON line is merged");
    assert!(
        capture.finish(Duration::from_secs(5)).await,
        "both pipes are at EOF"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn finishing_gives_up_on_a_pipe_still_open() {
    let dir = tempfile::tempdir().unwrap();
    let sink = LogSink::start(&settings(dir.path()), false).unwrap();
    let mut capture = Capture::start(sink, 1024).unwrap();
    let (closed_r, closed_w) = crate::sys::pipe().unwrap();
    let (open_r, _open_w) = crate::sys::pipe().unwrap();
    capture.read(closed_r, source("stdout"));
    capture.read(open_r, source("stderr"));
    drop(closed_w);
    let started = Instant::now();
    assert!(!capture.finish(Duration::from_millis(300)).await);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// A hung disk: the queue is full and nothing drains it. One read of
/// many lines must still finish in about one [`QUEUE_WAIT`], not one
/// per line, and every line is counted as dropped.
#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_costs_a_read_one_wait_not_one_per_line() {
    const N: usize = 20;
    let (tx, _rx) = mpsc::unbounded_channel();
    let sink = LogSink {
        tx,
        budget: Arc::new(tokio::sync::Semaphore::new(QUEUE_BYTES)),
        slots: Arc::new(tokio::sync::Semaphore::new(0)),
        dropped: Arc::new(AtomicU64::new(0)),
        failing: Arc::new(AtomicBool::new(false)),
        mirror_workers: false,
    };
    let mut pieces: Vec<Piece> = (0..N).map(|i| Piece::Line(format!("line {i}"))).collect();
    let started = Instant::now();
    forward(&source("stdout"), &sink, &mut pieces).await;
    let took = started.elapsed();
    assert!(
        took < QUEUE_WAIT + Duration::from_millis(300),
        "{N} lines against a full queue took {took:?}"
    );
    assert_eq!(sink.dropped.load(Ordering::Relaxed), N as u64);
}

/// An `io::Write` into a shared buffer (a tracing writer for tests).
#[derive(Clone)]
struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);

impl io::Write for Shared {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A log file that refuses every write (a symlink to `/dev/full`:
/// ENOSPC without root or a full disk). The failure is reported once,
/// when it starts, with the error and the file; the flag behind
/// `heartalk_log_writes_failing` is set while it lasts; a reopened file
/// with nothing written yet does not count as recovery; and once a line
/// reaches a file again the flag is cleared and `log_writes_resumed`
/// says how many lines were lost.
#[test]
fn failing_writes_are_reported_when_they_start_and_when_they_end() {
    let full = Path::new("/dev/full");
    if !full.exists() {
        eprintln!("no /dev/full here: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    std::os::unix::fs::symlink(full, &path).unwrap();
    let printed = Shared(Arc::default());
    let out = printed.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(move || out.clone())
        .finish();
    let events = |name: &str| -> Vec<Value> {
        String::from_utf8_lossy(&printed.0.lock().unwrap())
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v["event"] == name)
            .collect()
    };
    let dropped = Arc::new(AtomicU64::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let stats = || LogStats {
        dropped: dropped.load(Ordering::Relaxed),
        failing: failing.load(Ordering::Relaxed),
    };
    tracing::subscriber::with_default(subscriber, || {
        let mut w = Writer::new(
            &settings(dir.path()),
            dropped.clone(),
            failing.clone(),
            Arc::new(tokio::sync::Semaphore::new(QUEUE_BYTES)),
            Arc::new(tokio::sync::Semaphore::new(10)),
        )
        .unwrap();
        assert_eq!(stats(), LogStats::default());
        for i in 0..10 {
            w.write(&format!("line {i}"));
            w.flush();
            assert_eq!(
                stats(),
                LogStats {
                    dropped: i + 1,
                    failing: true
                }
            );
        }
        let failing_events = events("log_writes_failing");
        assert_eq!(failing_events.len(), 1, "one event per episode");
        let ev = &failing_events[0];
        assert_eq!(ev["level"], "ERROR");
        assert_eq!(ev["file"], path.display().to_string());
        assert!(
            ev["error"]
                .as_str()
                .unwrap()
                .contains("No space left on device"),
            "{ev}"
        );

        // SIGUSR1's reopen, still failing: an empty flush is no recovery.
        w.flush();
        w.file = None;
        w.open().unwrap();
        w.flush();
        assert!(stats().failing);
        assert!(events("log_writes_resumed").is_empty());

        // Space again. The reopened handle still writes to /dev/full:
        // its line is lost; the next one opens a regular file and lands.
        std::fs::remove_file(&path).unwrap();
        w.write("line 10");
        w.flush();
        assert_eq!(events("log_writes_failing").len(), 1);
        w.write("after");
        w.flush();
        assert_eq!(
            stats(),
            LogStats {
                dropped: 11,
                failing: false
            }
        );
        let resumed = events("log_writes_resumed");
        assert_eq!(resumed.len(), 1);
        assert_eq!(resumed[0]["dropped"], 11);
        assert_eq!(resumed[0]["level"], "WARN");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");

        // A second episode is reported again.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(full, &path).unwrap();
        w.file = None;
        w.write("lost");
        w.flush();
        assert!(stats().failing);
        assert_eq!(events("log_writes_failing").len(), 2);
    });
}

#[test]
fn retention_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..5 {
        std::fs::write(dir.path().join(format!("heartalk-2026-{i}.log.gz")), b"x").unwrap();
    }
    std::fs::write(dir.path().join(FILE_NAME), b"current").unwrap();
    retain(dir.path(), 2);
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "heartalk-2026-3.log.gz",
            "heartalk-2026-4.log.gz",
            "heartalk.log"
        ]
    );
}
