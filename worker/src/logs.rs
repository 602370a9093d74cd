//! The worker's log output: JSON lines on stdout, which the supervisor
//! reads from a pipe, frames and tags.
//!
//! Lines are gathered in one in-memory buffer and reach the pipe in large
//! writes: when the buffer is full, and at least every [`FLUSH_EVERY`]
//! from a small flusher thread. An access line per request would otherwise
//! cost a `write` each, and handing each line to a writer thread (what
//! `tracing-appender` does) costs a cross-thread wake-up per line instead;
//! with the serving thread appending to a buffer, the only per-line cost
//! left is formatting. Not lossy: a buffer that cannot be written because
//! the pipe is full makes the writer wait (the supervisor drops and counts
//! lines itself when its disk cannot keep up). Lines are whole in every
//! write: each event is formatted into one `write_all`, and a line that
//! does not fit in what is left of the buffer flushes the buffer first.
//! What a SIGKILL can lose is what is buffered: at most the last 50 ms or
//! 64 KiB of lines. Every line has the userinfo of any URL in it masked
//! ([`shared::secrets::redact_urls`]).

use std::io::{self, Stdout, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The longest a line waits in the buffer (the supervisor batches its own
/// reads over 200 ms, so this adds little to when a line is on disk).
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// How long the exit flush may wait for a pipe nobody reads.
const EXIT_FLUSH_LIMIT: Duration = Duration::from_secs(1);

/// The buffer's size: about 200 access lines per write.
const BUFFER: usize = 64 << 10;

/// A `tracing_subscriber` writer that batches lines into `W` (stdout in
/// the worker). Clones share one buffer.
///
/// Two locks, always taken in this order: the buffer, then the sink. A
/// write to the sink swaps the buffer out and lets the buffer go before it
/// writes, so a slow pipe holds up only a writer whose buffer is full (the
/// backpressure) and never an event that still fits; holding the sink
/// while swapping keeps the writes in order.
pub struct Batched<W: Write> {
    inner: Arc<Shared<W>>,
}

struct Shared<W> {
    buffer: Mutex<Vec<u8>>,
    sink: Mutex<W>,
}

impl<W: Write> Clone for Batched<W> {
    fn clone(&self) -> Self {
        Batched {
            inner: self.inner.clone(),
        }
    }
}

impl Batched<Stdout> {
    /// Batches into stdout, with the flusher thread running. Returns the
    /// writer and a guard that writes what is left when dropped (at the end
    /// of `main`).
    pub fn stdout() -> (Self, FlushOnDrop<Stdout>) {
        let batched = Batched::new(io::stdout());
        let flusher = batched.clone();
        // Detached: it holds only a clone and ends with the process.
        let spawned = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    flusher.flush_if_idle();
                }
            });
        if let Err(e) = spawned {
            // Lines then reach stdout only in full buffers and at exit.
            eprintln!("heartalk-worker: the log flusher thread did not start: {e}");
        }
        let guard = FlushOnDrop(batched.clone());
        (batched, guard)
    }
}

impl<W: Write> Batched<W> {
    pub fn new(w: W) -> Self {
        Batched {
            inner: Arc::new(Shared {
                buffer: Mutex::new(Vec::with_capacity(BUFFER)),
                sink: Mutex::new(w),
            }),
        }
    }

    /// Writes what is buffered, waiting for a write in progress.
    pub fn flush_now(&self) {
        let buffer = lock(&self.inner.buffer);
        self.write_out(buffer, lock(&self.inner.sink));
    }

    /// [`Batched::flush_now`] unless a write is in progress (the flusher
    /// never waits on the pipe while holding the buffer).
    fn flush_if_idle(&self) {
        let buffer = lock(&self.inner.buffer);
        if buffer.is_empty() {
            return;
        }
        let sink = match self.inner.sink.try_lock() {
            Ok(s) => s,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        self.write_out(buffer, sink);
    }

    /// Swaps the buffer out, lets it go, then writes it. A failed write
    /// (the pipe is gone: the supervisor has exited) is not an error of
    /// the worker's: the lines are dropped.
    fn write_out(&self, mut buffer: MutexGuard<'_, Vec<u8>>, mut sink: MutexGuard<'_, W>) {
        if buffer.is_empty() {
            return;
        }
        let full = std::mem::replace(&mut *buffer, Vec::with_capacity(BUFFER));
        drop(buffer);
        let _ = sink.write_all(&full).and_then(|()| sink.flush());
    }
}

/// A panic while holding a lock leaves whole lines (or a whole sink).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One event's writer: the formatted event arrives in one `write_all`.
pub struct Line<'a, W: Write>(&'a Batched<W>);

impl<W: Write> Write for Line<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    /// Appends; a buffer that would pass [`BUFFER`] is written out first,
    /// so every write to the sink ends with a whole line. A URL's password
    /// is masked on the way (`redis://:pw@host` → `redis://***@host`, and
    /// `?pass=…`): an error may quote the URL it failed on, and no event
    /// should have to remember that its URL may hold a password.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        // Two scans of a line: its UTF-8 check, then `redact_urls`'s search
        // for `://`, which passes nearly every line through untouched. The
        // logs benchmark (docs/benchmarks.md) measures this writer as it is.
        let redacted;
        let buf = match std::str::from_utf8(buf) {
            Ok(text) => {
                redacted = shared::secrets::redact_urls(text);
                redacted.as_bytes()
            }
            Err(_) => buf,
        };
        let shared = &self.0.inner;
        let mut buffer = lock(&shared.buffer);
        if !buffer.is_empty() && buffer.len() + buf.len() > BUFFER {
            self.0.write_out(buffer, lock(&shared.sink));
            buffer = lock(&shared.buffer);
        }
        buffer.extend_from_slice(buf);
        Ok(())
    }

    /// Not a flush to the pipe: the batching is the point.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + 'a> tracing_subscriber::fmt::MakeWriter<'a> for Batched<W> {
    type Writer = Line<'a, W>;

    fn make_writer(&'a self) -> Self::Writer {
        Line(self)
    }
}

/// Writes the remaining buffered lines when dropped, waiting at most
/// [`EXIT_FLUSH_LIMIT`] for a pipe that is not read (the exit must not
/// hang on it).
pub struct FlushOnDrop<W: Write + Send + 'static>(Batched<W>);

impl<W: Write + Send + 'static> Drop for FlushOnDrop<W> {
    fn drop(&mut self) {
        let batched = self.0.clone();
        let (done, finished) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("log-exit-flush".into())
            .spawn(move || {
                batched.flush_now();
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => {
                let _ = finished.recv_timeout(EXIT_FLUSH_LIMIT);
            }
            Err(_) => self.0.flush_now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::MakeWriter;

    /// A sink that records every `write` call it gets.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn line(i: usize) -> String {
        format!("{{\"i\":{i},\"pad\":\"{}\"}}\n", "x".repeat(300))
    }

    #[test]
    fn url_passwords_never_reach_the_sink() {
        let sink = Writes::default();
        let b = Batched::new(sink.clone());
        let event = "{\"error\":\"error sending request for url (http://svc:hunter2@backend:8000/x)\",\"to\":\"a@b.c\"}\n";
        b.make_writer().write_all(event.as_bytes()).unwrap();
        b.flush_now();
        let written = String::from_utf8(sink.0.lock().unwrap().concat()).unwrap();
        assert_eq!(
            written,
            "{\"error\":\"error sending request for url (http://***@backend:8000/x)\",\"to\":\"a@b.c\"}\n"
        );
    }

    #[test]
    fn lines_reach_the_sink_in_few_whole_line_writes() {
        let sink = Writes::default();
        let b = Batched::new(sink.clone());
        for i in 0..1000 {
            b.make_writer().write_all(line(i).as_bytes()).unwrap();
        }
        // Nothing written until the buffer fills: far fewer writes than lines.
        let before_flush = sink.0.lock().unwrap().len();
        assert!(
            before_flush > 0 && before_flush < 10,
            "{before_flush} writes"
        );
        b.flush_now();
        let writes = sink.0.lock().unwrap().clone();
        // Every write holds whole lines, and all of them, in order.
        let mut all = Vec::new();
        for w in &writes {
            assert_eq!(w.last(), Some(&b'\n'), "a write ends with a whole line");
            all.extend_from_slice(w);
        }
        let expected: String = (0..1000).map(line).collect();
        assert_eq!(String::from_utf8(all).unwrap(), expected);
    }

    /// A sink whose writes wait until the test lets them through.
    struct Gate {
        entered: std::sync::mpsc::Sender<()>,
        open: std::sync::mpsc::Receiver<()>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.entered.send(());
            let _ = self.open.recv();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_slow_pipe_does_not_hold_up_a_line_that_fits() {
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (open, open_rx) = std::sync::mpsc::channel();
        let b = Batched::new(Gate {
            entered: entered_tx,
            open: open_rx,
        });
        b.make_writer().write_all(line(1).as_bytes()).unwrap();
        // A flush that is stuck in the pipe...
        let flusher = b.clone();
        let stuck = std::thread::spawn(move || flusher.flush_now());
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the flush reached the sink");
        // ...does not stop the next event from being buffered.
        let (tx, appended) = std::sync::mpsc::channel();
        let writer = b.clone();
        std::thread::spawn(move || {
            writer.make_writer().write_all(line(2).as_bytes()).unwrap();
            let _ = tx.send(());
        });
        let fits = appended.recv_timeout(Duration::from_secs(10));
        let _ = open.send(());
        stuck.join().unwrap();
        fits.expect("a line that fits is buffered while the pipe is slow");
        assert_eq!(lock(&b.inner.buffer).as_slice(), line(2).as_bytes());
    }

    #[test]
    fn a_flush_of_the_event_writer_does_not_write_and_the_guard_does() {
        let sink = Writes::default();
        let b = Batched::new(sink.clone());
        {
            let mut w = b.make_writer();
            w.write_all(line(1).as_bytes()).unwrap();
            w.flush().unwrap();
        }
        assert!(sink.0.lock().unwrap().is_empty(), "still batched");
        drop(FlushOnDrop(b.clone()));
        assert_eq!(sink.0.lock().unwrap().concat(), line(1).into_bytes());
    }
}
