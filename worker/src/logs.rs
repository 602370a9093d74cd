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

use std::io::{self, BufWriter, Stdout, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The longest a line waits in the buffer (the supervisor batches its own
/// reads over 200 ms, so this adds little to when a line is on disk).
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// The buffer's size: about 200 access lines per write.
const BUFFER: usize = 64 << 10;

/// A `tracing_subscriber` writer that batches lines into `W` (stdout in
/// the worker). Clones share one buffer.
pub struct Batched<W: Write> {
    inner: Arc<Mutex<BufWriter<W>>>,
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
        let _ = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    flusher.flush_now();
                }
            });
        let guard = FlushOnDrop(batched.clone());
        (batched, guard)
    }
}

impl<W: Write> Batched<W> {
    pub fn new(w: W) -> Self {
        Batched {
            inner: Arc::new(Mutex::new(BufWriter::with_capacity(BUFFER, w))),
        }
    }

    /// Writes what is buffered. A failed write (the pipe is gone: the
    /// supervisor has exited) is not an error of the worker's: dropped.
    pub fn flush_now(&self) {
        let _ = self.lock().flush();
    }

    fn lock(&self) -> MutexGuard<'_, BufWriter<W>> {
        // A panic while holding the lock leaves a buffer of whole lines.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One event's writer: holds the buffer for the event's single write.
pub struct Line<'a, W: Write>(MutexGuard<'a, BufWriter<W>>);

impl<W: Write> Write for Line<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    /// Not a flush to the pipe: the batching is the point.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + 'a> tracing_subscriber::fmt::MakeWriter<'a> for Batched<W> {
    type Writer = Line<'a, W>;

    fn make_writer(&'a self) -> Self::Writer {
        Line(self.lock())
    }
}

/// Writes the remaining buffered lines when dropped.
pub struct FlushOnDrop<W: Write>(Batched<W>);

impl<W: Write> Drop for FlushOnDrop<W> {
    fn drop(&mut self) {
        self.0.flush_now();
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
