//! Worker output, owned by the supervisor: framed into whole lines, tagged,
//! written to one log file with rotation by rename, and never allowed to
//! block a worker for long or to grow the supervisor without bound.
//!
//! Each worker's stdout and stderr are pipes, each read by one task of
//! [`Capture`]: a runtime on a thread of its own (`log-reader`), never the
//! event loop's, because framing and tagging every line of a log flood
//! there would delay signal handling, reaping and control requests. One
//! task per pipe keeps each stream's lines in order. A [`Framer`] cuts the
//! byte stream into lines, splitting a line longer than `max_line` into
//! marked chunks so a worker that never writes a newline cannot make us
//! buffer without limit. Every line becomes one JSON line tagged with app,
//! slot, pid, stream and time (a worker line that is already a JSON object
//! is merged, not escaped). All lines, the supervisor's own events
//! included, go through one bounded queue to one writer thread, so one
//! file (`<log.dir>/heartalk.log`) tells the whole story in order.
//! Rotation renames the file and opens a new one (never
//! copy-and-truncate, which loses lines), gzips the rotated file on
//! another thread and keeps `max_files` of them. When the disk is slow the
//! queue absorbs bursts; a line that cannot be queued within
//! [`QUEUE_WAIT`], or cannot be written (disk full), is dropped and
//! counted. The moment writing starts failing a `log_writes_failing`
//! event (with the error) is printed on stdout, whatever happens to the
//! file, and [`LogStats::failing`] is set for `/metrics`; once writing works
//! again a `log_writes_resumed` event says how many lines were lost.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use shared::config::LogSettings;
use tokio::sync::mpsc;

/// The log file's name inside `log.dir`.
pub const FILE_NAME: &str = "heartalk.log";
/// Bytes of lines queued for the writer at most: the bound on what a slow
/// disk can make the supervisor hold (with `max_line`, whatever workers write).
pub const QUEUE_BYTES: usize = 32 << 20;
/// How long a reader waits for room in the queue before it drops a line:
/// long enough to ride out a burst, short enough that a stuck disk never
/// stalls a worker (its pipe keeps draining).
pub const QUEUE_WAIT: Duration = Duration::from_millis(200);

/// One framed piece of a worker's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Line(String),
    /// Part `index` (from 0) of a line longer than `max_line`.
    Chunk {
        text: String,
        index: u32,
        last: bool,
    },
}

/// Cuts a byte stream into lines, holding at most `max` bytes.
pub struct Framer {
    buf: Vec<u8>,
    max: usize,
    /// The next chunk index of an over-long line in progress (0: none).
    chunk: u32,
}

impl Framer {
    pub fn new(max: usize) -> Framer {
        Framer {
            buf: Vec::new(),
            max: max.max(16),
            chunk: 0,
        }
    }

    /// Adds `data`; complete lines and full chunks are appended to `out`.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<Piece>) {
        while !data.is_empty() {
            let room = self.max - self.buf.len();
            let take = match data.iter().position(|&b| b == b'\n') {
                Some(nl) if nl <= room => {
                    self.buf.extend_from_slice(&data[..nl]);
                    data = &data[nl + 1..];
                    self.end_line(out);
                    continue;
                }
                _ => room.min(data.len()),
            };
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() >= self.max {
                self.emit_chunk(out);
            }
        }
    }

    /// End of stream: a pending partial line is emitted.
    pub fn finish(&mut self, out: &mut Vec<Piece>) {
        if !self.buf.is_empty() || self.chunk > 0 {
            self.end_line(out);
        }
    }

    fn end_line(&mut self, out: &mut Vec<Piece>) {
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        let text = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        if self.chunk > 0 {
            out.push(Piece::Chunk {
                text,
                index: self.chunk,
                last: true,
            });
            self.chunk = 0;
        } else {
            out.push(Piece::Line(text));
        }
    }

    /// Emits the buffer as a chunk, cut at a UTF-8 boundary when possible.
    fn emit_chunk(&mut self, out: &mut Vec<Piece>) {
        let cut = utf8_cut(&self.buf);
        let text = String::from_utf8_lossy(&self.buf[..cut]).into_owned();
        self.buf.drain(..cut);
        out.push(Piece::Chunk {
            text,
            index: self.chunk,
            last: false,
        });
        self.chunk += 1;
    }
}

/// The longest prefix of `b` that does not end inside a UTF-8 sequence
/// (all of `b` when it is not UTF-8 anyway).
fn utf8_cut(b: &[u8]) -> usize {
    match std::str::from_utf8(b) {
        Ok(_) => b.len(),
        Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
        Err(_) => b.len(),
    }
}

/// Where a line came from.
#[derive(Debug, Clone)]
pub struct Source {
    pub app: String,
    pub slot: usize,
    pub pid: i32,
    pub stream: &'static str,
}

/// RFC 3339 UTC with microseconds.
pub fn timestamp(now: SystemTime) -> String {
    humantime::format_rfc3339_micros(now).to_string()
}

/// One JSON line for `piece`. A worker line that is a JSON object keeps
/// its own fields and gains ours (its own win on a clash); anything else
/// becomes `message`. Chunks are never parsed: they are fragments.
///
/// The object case is spliced, not rebuilt: the line is validated and its
/// top-level keys read (values skipped), and our missing fields are
/// inserted after the `{`. That is the hot path under request logging, and
/// several times cheaper than parsing into a tree and printing it again.
pub fn render(source: &Source, piece: &Piece, ts: &str) -> String {
    let (text, chunk) = match piece {
        Piece::Line(t) => (t.as_str(), None),
        Piece::Chunk { text, index, last } => (text.as_str(), Some((*index, *last))),
    };
    if chunk.is_none() && text.starts_with('{') {
        if let Some(spliced) = splice(source, text, ts) {
            return spliced;
        }
    }
    let mut out = String::with_capacity(text.len() + 128);
    out.push('{');
    push_ours(&mut out, source, ts, &|_| false);
    out.push_str("\"message\":");
    push_json_str(&mut out, text);
    if let Some((index, last)) = chunk {
        out.push_str(&format!(",\"chunk\":{index},\"partial\":{}", !last));
    }
    out.push('}');
    out
}

/// Which of our tags a worker's JSON object already has. Deserializing
/// into this validates the whole line but allocates nothing for the keys
/// and values we skip.
#[derive(serde::Deserialize)]
struct OurKeys {
    timestamp: Option<serde::de::IgnoredAny>,
    app: Option<serde::de::IgnoredAny>,
    slot: Option<serde::de::IgnoredAny>,
    pid: Option<serde::de::IgnoredAny>,
    stream: Option<serde::de::IgnoredAny>,
}

/// `text` (a JSON object) with our fields added where it has none.
fn splice(source: &Source, text: &str, ts: &str) -> Option<String> {
    let k: OurKeys = serde_json::from_str(text).ok()?;
    let has = |name: &str| match name {
        "timestamp" => k.timestamp.is_some(),
        "app" => k.app.is_some(),
        "slot" => k.slot.is_some(),
        "pid" => k.pid.is_some(),
        "stream" => k.stream.is_some(),
        _ => false,
    };
    let mut out = String::with_capacity(text.len() + 128);
    out.push('{');
    push_ours(&mut out, source, ts, &has);
    let rest = text[1..].trim_start();
    if rest.starts_with('}') {
        out.pop(); // the object was empty: no comma before its `}`
    }
    out.push_str(rest);
    Some(out)
}

/// Our fields, each followed by a comma, skipping those `has` says exist.
fn push_ours(out: &mut String, source: &Source, ts: &str, has: &dyn Fn(&str) -> bool) {
    use std::fmt::Write as _;
    if !has("timestamp") {
        out.push_str("\"timestamp\":");
        push_json_str(out, ts);
        out.push(',');
    }
    if !has("app") {
        out.push_str("\"app\":");
        push_json_str(out, &source.app);
        out.push(',');
    }
    if !has("slot") {
        let _ = write!(out, "\"slot\":{},", source.slot);
    }
    if !has("pid") {
        let _ = write!(out, "\"pid\":{},", source.pid);
    }
    if !has("stream") {
        let _ = write!(out, "\"stream\":\"{}\",", source.stream);
    }
}

fn push_json_str(out: &mut String, s: &str) {
    // serde_json's escaping (into a temporary string: serde_json writes to
    // `io::Write`, which `String` is not).
    match serde_json::to_string(s) {
        Ok(q) => out.push_str(&q),
        Err(_) => out.push_str("\"\""),
    }
}

/// A message for the writer thread.
pub enum Msg {
    /// A rendered line; `mirror` also copies it to stdout. Its length is
    /// held from the byte budget until it is written.
    Line { text: String, mirror: bool },
    /// Reopen the file (external logrotate renamed it; SIGUSR1).
    Reopen,
    /// Write out everything queued so far, then answer.
    Flush(std::sync::mpsc::Sender<()>),
}

/// The sending side, shared by every reader and the tracing writer.
#[derive(Clone)]
pub struct LogSink {
    tx: mpsc::UnboundedSender<Msg>,
    /// Bytes that may still be queued ([`QUEUE_BYTES`] in all).
    budget: Arc<tokio::sync::Semaphore>,
    /// Lines that may still be queued (`log.queue`).
    slots: Arc<tokio::sync::Semaphore>,
    dropped: Arc<AtomicU64>,
    /// Writing the file fails now (set and cleared by the writer thread).
    failing: Arc<AtomicBool>,
    /// Copy worker lines to stdout too (containers: `log.stdout`).
    pub mirror_workers: bool,
}

/// The log writer's health, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Lines dropped so far (queue full or disk failing).
    pub dropped: u64,
    /// Writing the log file fails now: from the first failed write until
    /// one succeeds again.
    pub failing: bool,
}

impl LogSink {
    /// Opens `<dir>/heartalk.log` and starts the writer thread.
    pub fn start(settings: &LogSettings, mirror_workers: bool) -> io::Result<LogSink> {
        std::fs::create_dir_all(&settings.dir)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let dropped = Arc::new(AtomicU64::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let budget = Arc::new(tokio::sync::Semaphore::new(QUEUE_BYTES));
        let slots = Arc::new(tokio::sync::Semaphore::new(settings.queue.max(1)));
        let mut writer = Writer::new(
            settings,
            dropped.clone(),
            failing.clone(),
            budget.clone(),
            slots.clone(),
        )?;
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(LogSink {
            tx,
            budget,
            slots,
            dropped,
            failing,
            mirror_workers,
        })
    }

    /// Queues a worker line, waiting for room until `deadline` at most (a
    /// deadline already past: only takes room that is free now). The
    /// deadline is one per read, not per line, so a full queue costs a read
    /// [`QUEUE_WAIT`] in all and the pipe keeps draining; a line that finds
    /// no room is dropped and counted.
    pub async fn worker_line(&self, text: String, deadline: tokio::time::Instant) {
        let cost = weight(&text);
        let queued = if tokio::time::Instant::now() >= deadline {
            match (self.slots.try_acquire(), self.budget.try_acquire_many(cost)) {
                (Ok(slot), Ok(bytes)) => {
                    slot.forget();
                    bytes.forget();
                    true
                }
                _ => false,
            }
        } else {
            let room = async {
                let slot = self.slots.acquire().await.ok()?;
                let bytes = self.budget.acquire_many(cost).await.ok()?;
                slot.forget();
                bytes.forget();
                Some(())
            };
            matches!(tokio::time::timeout_at(deadline, room).await, Ok(Some(())))
        };
        if queued {
            let _ = self.tx.send(Msg::Line {
                text,
                mirror: self.mirror_workers,
            });
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues a line from a synchronous context (the supervisor's own
    /// events, already printed to stdout); never waits.
    pub fn own_line(&self, text: String) {
        let cost = weight(&text);
        match (self.slots.try_acquire(), self.budget.try_acquire_many(cost)) {
            (Ok(slot), Ok(bytes)) => {
                slot.forget();
                bytes.forget();
                let _ = self.tx.send(Msg::Line {
                    text,
                    mirror: false,
                });
            }
            _ => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen);
    }

    /// Waits (up to `timeout`) until everything queued so far is written.
    pub async fn flush(&self, timeout: Duration) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = tokio::task::spawn_blocking(move || rx.recv_timeout(timeout)).await;
        }
    }

    /// Dropped lines and whether writing fails now.
    pub fn stats(&self) -> LogStats {
        LogStats {
            dropped: self.dropped.load(Ordering::Relaxed),
            failing: self.failing.load(Ordering::Relaxed),
        }
    }
}

/// The readers of the workers' output pipes, on the `log-reader` thread.
///
/// That thread runs a current-thread runtime of its own; [`Capture::read`]
/// hands it one pipe at a time, and the task reads, frames, tags and queues
/// that pipe's lines (waiting at most [`QUEUE_WAIT`] for room, as
/// [`LogSink::worker_line`] does) until EOF. The caller — the event loop —
/// only passes descriptors and never touches a line.
pub struct Capture {
    handle: tokio::runtime::Handle,
    sink: LogSink,
    max_line: usize,
    readers: Vec<tokio::task::JoinHandle<()>>,
    /// Sending (or dropping) it ends the thread's runtime, and with it any
    /// reader still waiting on a pipe an orphan holds open.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Capture {
    /// Starts the `log-reader` thread; lines go to `sink`.
    pub fn start(sink: LogSink, max_line: usize) -> io::Result<Capture> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("log-reader".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(Capture {
            handle,
            sink,
            max_line,
            readers: Vec::new(),
            stop: Some(stop),
        })
    }

    /// Reads `fd` (the read end of one worker stream) until EOF, on the
    /// log thread.
    pub fn read(&mut self, fd: std::os::fd::OwnedFd, source: Source) {
        self.readers.retain(|r| !r.is_finished());
        let task = read_pipe(fd, source, self.sink.clone(), self.max_line);
        self.readers.push(self.handle.spawn(task));
    }

    /// Waits up to `timeout` until every pipe has reached EOF and its lines
    /// are queued for the writer, then stops the log thread. False when a
    /// pipe is still open then (an orphan holds it): its reader is dropped.
    pub async fn finish(mut self, timeout: Duration) -> bool {
        let readers = std::mem::take(&mut self.readers);
        tokio::time::timeout(timeout, futures_util::future::join_all(readers))
            .await
            .is_ok()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Frames one pipe into log lines until EOF (a task of [`Capture`]).
async fn read_pipe(fd: std::os::fd::OwnedFd, source: Source, sink: LogSink, max_line: usize) {
    use tokio::io::AsyncReadExt;
    let mut rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!(event = "log_pipe_failed", app = %source.app, slot = source.slot, error = %e);
            return;
        }
    };
    let mut framer = Framer::new(max_line);
    let mut buf = vec![0u8; 64 << 10];
    let mut pieces = Vec::new();
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        framer.push(&buf[..n], &mut pieces);
        forward(&source, &sink, &mut pieces).await;
    }
    framer.finish(&mut pieces);
    forward(&source, &sink, &mut pieces).await;
}

/// Tags `pieces` (one read's worth, one timestamp) and queues them in order.
/// The whole read waits at most [`QUEUE_WAIT`] for room (one deadline, not
/// one per line), so however many lines a read holds, a stuck writer delays
/// the pipe by that much per read: lines past the deadline are queued only
/// if room is free at once, else dropped and counted.
async fn forward(source: &Source, sink: &LogSink, pieces: &mut Vec<Piece>) {
    if pieces.is_empty() {
        return;
    }
    let ts = timestamp(SystemTime::now());
    let deadline = tokio::time::Instant::now() + QUEUE_WAIT;
    for p in pieces.drain(..) {
        sink.worker_line(render(source, &p, &ts), deadline).await;
    }
}

/// What a queued line holds of the byte budget (at least 1).
fn weight(text: &str) -> u32 {
    u32::try_from(text.len() + 1)
        .unwrap_or(u32::MAX)
        .min(QUEUE_BYTES as u32)
}

/// The writer thread's state: the open file and its rotation.
struct Writer {
    budget: Arc<tokio::sync::Semaphore>,
    slots: Arc<tokio::sync::Semaphore>,
    /// Lines in the buffer since the last successful flush: lost together
    /// if that flush fails.
    unflushed: u64,
    dir: PathBuf,
    file: Option<BufWriter<File>>,
    size: u64,
    opened: Instant,
    max_size: u64,
    max_files: usize,
    interval: Option<Duration>,
    dropped: Arc<AtomicU64>,
    /// Drops counted when writing last failed (None: writing works).
    failing_since: Option<u64>,
    /// Mirrors `failing_since.is_some()` for [`LogSink::stats`].
    failing: Arc<AtomicBool>,
    seq: u64,
    gzip: Option<std::sync::mpsc::Sender<GzipJob>>,
}

impl Writer {
    fn new(
        s: &LogSettings,
        dropped: Arc<AtomicU64>,
        failing: Arc<AtomicBool>,
        budget: Arc<tokio::sync::Semaphore>,
        slots: Arc<tokio::sync::Semaphore>,
    ) -> io::Result<Writer> {
        let gzip = if s.compress {
            let (tx, rx) = std::sync::mpsc::channel::<GzipJob>();
            let dir = s.dir.clone();
            let keep = s.max_files as usize;
            std::thread::Builder::new()
                .name("log-gzip".into())
                .spawn(move || {
                    for job in rx {
                        match job {
                            GzipJob::File(path) => {
                                // Retention may have removed an old file first.
                                if let Err(e) = gzip(&path)
                                    .or_else(|e| if path.exists() { Err(e) } else { Ok(()) })
                                {
                                    eprintln!(
                                        "heartalk: compressing {} failed: {e}",
                                        path.display()
                                    );
                                }
                                retain(&dir, keep);
                            }
                            GzipJob::Barrier(done) => {
                                let _ = done.send(());
                            }
                        }
                    }
                })?;
            Some(tx)
        } else {
            None
        };
        let mut w = Writer {
            budget,
            slots,
            unflushed: 0,
            dir: s.dir.clone(),
            file: None,
            size: 0,
            opened: Instant::now(),
            max_size: s.max_size.max(1),
            max_files: s.max_files as usize,
            interval: s.rotate_interval,
            dropped,
            failing_since: None,
            failing,
            seq: 0,
            gzip,
        };
        w.open()?;
        Ok(w)
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    fn open(&mut self) -> io::Result<()> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path())?;
        self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
        self.file = Some(BufWriter::with_capacity(64 << 10, f));
        self.opened = Instant::now();
        Ok(())
    }

    fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut stdout = io::stdout();
        while let Some(msg) = rx.blocking_recv() {
            let mut next = Some(msg);
            // Take what is queued, then flush once: few syscalls under load,
            // and an idle writer leaves nothing sitting in the buffer.
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Line { text, mirror } => {
                        if mirror {
                            let _ = writeln!(stdout, "{text}");
                        }
                        self.write(&text);
                        self.budget.add_permits(weight(&text) as usize);
                        self.slots.add_permits(1);
                    }
                    Msg::Reopen => {
                        self.flush();
                        self.file = None;
                        if let Err(e) = self.open() {
                            eprintln!("heartalk: reopening the log file failed: {e}");
                        }
                    }
                    Msg::Flush(done) => {
                        self.flush();
                        // Also finish compressing and pruning what was rotated.
                        if let Some(gz) = &self.gzip {
                            let (tx, rx) = std::sync::mpsc::channel();
                            if gz.send(GzipJob::Barrier(tx)).is_ok() {
                                let _ = rx.recv_timeout(Duration::from_secs(30));
                            }
                        }
                        let _ = done.send(());
                    }
                }
                next = rx.try_recv().ok();
            }
            self.flush();
            let _ = stdout.flush();
        }
        self.flush();
    }

    fn write(&mut self, line: &str) {
        let due = self.size > 0
            && (self.size + line.len() as u64 + 1 > self.max_size
                || self.interval.is_some_and(|i| self.opened.elapsed() >= i));
        if due {
            self.rotate();
        }
        if self.file.is_none() {
            if let Err(e) = self.open() {
                self.lost(1, &e);
                return;
            }
        }
        let Some(f) = self.file.as_mut() else { return };
        if let Err(e) = f
            .write_all(line.as_bytes())
            .and_then(|_| f.write_all(b"\n"))
        {
            // The buffer's lines are lost with the handle.
            self.file = None;
            let n = self.unflushed + 1;
            self.unflushed = 0;
            self.lost(n, &e);
            return;
        }
        self.unflushed += 1;
        self.size += line.len() as u64 + 1;
    }

    /// Counts `n` lines that will never reach the disk because of `error`.
    /// The first failure of an episode (writing worked until now) is
    /// reported at once: a `log_writes_failing` event, printed on stdout by
    /// the tracing writer (its copy for the file is queued and, the file
    /// failing, most likely dropped and counted too), and the gauge. Only
    /// the transition costs anything; later failures just count.
    fn lost(&mut self, n: u64, error: &io::Error) {
        let before = self.dropped.fetch_add(n, Ordering::Relaxed);
        if self.failing_since.is_none() {
            self.failing_since = Some(before);
            self.failing.store(true, Ordering::Relaxed);
            tracing::error!(
                event = "log_writes_failing",
                file = %self.path().display(),
                error = %error,
                "writing the log file fails: lines are dropped (and counted) until it works again"
            );
        }
    }

    fn flush(&mut self) {
        let Some(f) = self.file.as_mut() else { return };
        if let Err(e) = f.flush() {
            // Disk full or failing: what was buffered is dropped and counted;
            // the file is reopened (and retried) with the next line.
            self.file = None;
            let n = std::mem::take(&mut self.unflushed);
            self.lost(n, &e);
            return;
        }
        // Writing works again once a line has reached the file, not when a
        // freshly (re)opened file merely had nothing to write.
        if std::mem::take(&mut self.unflushed) == 0 {
            return;
        }
        if let Some(before) = self.failing_since.take() {
            self.failing.store(false, Ordering::Relaxed);
            let lost = self.dropped.load(Ordering::Relaxed) - before;
            // On stdout and, through the queue, in the file (after the
            // lines already queued).
            tracing::warn!(
                event = "log_writes_resumed",
                file = %self.path().display(),
                dropped = lost,
                "log writing works again; lines were dropped while it failed"
            );
        }
    }

    /// Rename the current file aside (never copy-and-truncate) and start a
    /// new one; compression and retention happen off this thread.
    fn rotate(&mut self) {
        self.flush();
        self.file = None;
        self.seq += 1;
        let stamp = humantime::format_rfc3339_micros(SystemTime::now())
            .to_string()
            .replace([':', '-'], "")
            .replace('.', "");
        let rotated = self
            .dir
            .join(format!("heartalk-{stamp}-{:06}.log", self.seq));
        if let Err(e) = std::fs::rename(self.path(), &rotated) {
            eprintln!("heartalk: rotating the log file failed: {e}");
        } else {
            // Prune at once (counting files still waiting for compression),
            // so retention holds even if compression lags.
            retain(&self.dir, self.max_files);
            if let Some(gz) = &self.gzip {
                let _ = gz.send(GzipJob::File(rotated));
            }
        }
        if let Err(e) = self.open() {
            // The line being written is counted by `write`, which retries.
            self.lost(0, &e);
        }
    }
}

/// Work for the compression thread.
enum GzipJob {
    File(PathBuf),
    /// Answered once every file sent before it is done.
    Barrier(std::sync::mpsc::Sender<()>),
}

/// Compresses `path` to `path.gz` (through a temporary name, so a reader
/// never sees half a file) and removes the original.
fn gzip(path: &Path) -> io::Result<()> {
    let gz = path.with_extension("log.gz");
    let tmp = path.with_extension("log.gz.tmp");
    {
        let mut input = File::open(path)?;
        let out = File::create(&tmp)?;
        let mut enc =
            flate2::write::GzEncoder::new(BufWriter::new(out), flate2::Compression::fast());
        io::copy(&mut input, &mut enc)?;
        enc.finish()?.flush()?;
    }
    std::fs::rename(&tmp, &gz)?;
    std::fs::remove_file(path)
}

/// Keeps the newest `keep` rotated files (plain or gzipped).
fn retain(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut rotated: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("heartalk-") && (n.ends_with(".log") || n.ends_with(".log.gz")))
        .collect();
    rotated.sort();
    let excess = rotated.len().saturating_sub(keep);
    for name in &rotated[..excess] {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

/// The tracing writer for the supervisor's own events: printed to stdout
/// as before, and queued for the log file.
///
/// Queuing never waits (a full queue drops and counts the line), but the
/// print is a synchronous write under the process-wide stdout lock, on the
/// thread that logs the event (the event loop's, mostly). So the event loop
/// never waits for the log file, yet it can block on stdout: when whatever
/// reads stdout stalls (a full pipe to a container's log collector), and,
/// with `log.stdout` mirroring worker lines (the default as PID 1), while
/// the writer thread holds the lock writing a worker line to that stalled
/// stdout. A worker flood can then delay the loop's events by as long as
/// stdout takes to drain.
#[derive(Clone)]
pub struct OwnEvents {
    pub sink: Option<LogSink>,
}

pub struct OwnEventWriter {
    buf: Vec<u8>,
    sink: Option<LogSink>,
}

impl io::Write for OwnEventWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for OwnEventWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut out = io::stdout().lock();
        let _ = out.write_all(&self.buf);
        let _ = out.flush();
        if let Some(sink) = &self.sink {
            for line in String::from_utf8_lossy(&self.buf)
                .lines()
                .filter(|l| !l.is_empty())
            {
                sink.own_line(line.to_string());
            }
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for OwnEvents {
    type Writer = OwnEventWriter;

    fn make_writer(&'a self) -> Self::Writer {
        OwnEventWriter {
            buf: Vec::new(),
            sink: self.sink.clone(),
        }
    }
}

#[cfg(test)]
#[path = "logs_tests.rs"]
mod tests;
