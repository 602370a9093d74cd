//! `heartalk logs`: the log that [`crate::logs`] writes, read back for a
//! person — the last lines across the rotated (and gzipped) files, kept by
//! app, slot and age, printed with where each came from, and followed as it
//! grows, across rotations, the way `tail -F` follows a file. It reads the
//! files only (no control socket), so it works whether the supervisor runs
//! or not.
//!
//! The pure part decides everything about a line: [`Entry`] is one stored
//! line parsed once, [`Filter`] keeps or drops it, [`render`] prints it
//! (human, raw message or the stored JSON) and [`rotated_names`] orders the
//! files. The I/O around it is thin: a plain file is read backwards from
//! its end (the last lines cost the last blocks, however big the file), a
//! gzipped one forwards keeping only the lines still needed, and the follow
//! loop polls every [`POLL`], noticing a rotation by the inode at
//! `heartalk.log` changing: the old file, still open, is read to its end
//! (the writer flushes before it renames), then the new one from its start.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use serde_json::{Map, Value};
use shared::config::Config;

use crate::cli::LogsArgs;
use crate::logs::FILE_NAME;

/// Lines printed when neither `--lines` nor `--since` is given (`tail`'s
/// habit, with more context).
pub const DEFAULT_LINES: usize = 50;
/// How often `--follow` looks for new lines and for a rotation.
pub const POLL: Duration = Duration::from_millis(200);
/// Bytes read at a time, backwards and forwards.
const BLOCK: usize = 64 << 10;

/// One stored line: its text as written and, when that is a JSON object,
/// its fields.
#[derive(Debug, Clone)]
pub struct Entry {
    pub text: String,
    fields: Option<Map<String, Value>>,
}

impl Entry {
    pub fn parse(text: String) -> Entry {
        let fields = if text.starts_with('{') {
            serde_json::from_str(&text).ok()
        } else {
            None
        };
        Entry { text, fields }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.fields.as_ref()?.get(key)
    }

    /// A worker's line: the supervisor tags every one with `stream` (a
    /// worker's own `stream` field wins a clash, but is there all the same);
    /// the supervisor's own events have none.
    pub fn is_worker(&self) -> bool {
        self.get("stream").is_some()
    }

    pub fn app(&self) -> Option<&str> {
        self.get("app")?.as_str()
    }

    pub fn slot(&self) -> Option<u64> {
        self.get("slot")?.as_u64()
    }

    /// When the line was logged (`timestamp`, RFC 3339).
    pub fn time(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339_weak(self.get("timestamp")?.as_str()?).ok()
    }
}

/// Which lines to print.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Lines whose `app` is this: the app's worker lines and the
    /// supervisor's events about it (spawned, exited ...). Lines without an
    /// app (the supervisor's fleet-wide events, non-JSON lines) are left out.
    pub app: Option<String>,
    /// Lines whose `slot` is this, likewise.
    pub slot: Option<u64>,
    /// Lines logged at or after this. A line without a readable time is
    /// kept: dropping it would hide what cannot be dated.
    pub since: Option<SystemTime>,
}

impl Filter {
    pub fn keeps(&self, e: &Entry) -> bool {
        if self.app.as_deref().is_some_and(|a| e.app() != Some(a)) {
            return false;
        }
        if self.slot.is_some_and(|s| e.slot() != Some(s)) {
            return false;
        }
        match (self.since, e.time()) {
            (Some(since), Some(t)) => t >= since,
            _ => true,
        }
    }
}

/// How lines are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Time, source (`app/slot/pid`, or `heartalk` for the supervisor's
    /// own events), level (or the stream), message; ANSI colours if `color`.
    Human { color: bool },
    /// The message column alone.
    Raw,
    /// The stored line unchanged.
    Json,
}

/// `e` printed in `format` (no newline). A line that is not a JSON object
/// is printed as it is, whatever the format.
pub fn render(e: &Entry, format: Format) -> String {
    let Some(fields) = &e.fields else {
        return e.text.clone();
    };
    match format {
        Format::Json => e.text.clone(),
        Format::Raw => message(fields, e.is_worker()),
        Format::Human { color } => human(fields, e.is_worker(), color),
    }
}

/// Fields shown in their own column, never repeated in the message.
const COLUMNS: [&str; 3] = ["timestamp", "level", "target"];
/// The tags the supervisor puts on a worker line: the source column.
const SOURCE: [&str; 4] = ["app", "slot", "pid", "stream"];

fn human(f: &Map<String, Value>, worker: bool, color: bool) -> String {
    let time = match f.get("timestamp").and_then(Value::as_str) {
        Some(ts) => match humantime::parse_rfc3339_weak(ts) {
            Ok(t) => humantime::format_rfc3339_millis(t).to_string(),
            Err(_) => ts.to_string(),
        },
        None => "-".to_string(),
    };
    let source = if worker {
        let part = |k: &str| f.get(k).map_or("?".to_string(), bare);
        format!("{}/{}/{}", part("app"), part("slot"), part("pid"))
    } else {
        "heartalk".to_string()
    };
    let level = f
        .get("level")
        .or_else(|| f.get("stream").filter(|_| worker))
        .map_or("-".to_string(), bare);
    let paint = |code: &str, text: String| {
        if color && !code.is_empty() {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text
        }
    };
    format!(
        "{} {} {} {}",
        paint("2", time),
        paint(if worker { "36" } else { "1" }, format!("{source:<16}")),
        paint(level_color(&level), format!("{level:<6}")),
        message(f, worker)
    )
}

/// The ANSI colour of a level (or stream): errors red, warnings and stderr
/// yellow.
fn level_color(level: &str) -> &'static str {
    match level.to_ascii_uppercase().as_str() {
        "ERROR" | "FATAL" | "CRITICAL" => "31",
        "WARN" | "WARNING" | "STDERR" => "33",
        "INFO" => "32",
        "DEBUG" => "34",
        "TRACE" => "2",
        _ => "",
    }
}

/// The message column: for the supervisor's events the `event` name, its
/// `message` if any, then every other field as `k=v`; for a worker line its
/// own `message` (the text it printed), then its other fields.
fn message(f: &Map<String, Value>, worker: bool) -> String {
    let mut out = String::new();
    if !worker {
        if let Some(event) = f.get("event") {
            out.push_str(&bare(event));
        }
    }
    if let Some(m) = f.get("message") {
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&bare(m));
    }
    for (k, v) in f {
        let head = k == "message" || (!worker && k == "event");
        if head || COLUMNS.contains(&k.as_str()) || (worker && SOURCE.contains(&k.as_str())) {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(&quoted(v));
    }
    out
}

/// A value as text: strings without their quotes.
fn bare(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A value for `k=v`: bare when that reads unambiguously, JSON otherwise.
fn quoted(v: &Value) -> String {
    match v {
        Value::String(s)
            if !s.is_empty()
                && !s
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=') =>
        {
            s.clone()
        }
        other => other.to_string(),
    }
}

/// The rotated files among `names` (as `logs.rs` names them:
/// `heartalk-<time>-<n>.log`, gzipped `.log.gz`), oldest first, each once
/// under its plain name: while it is being compressed a file exists under
/// both names, and a reader opens whichever is there (see [`open_rotated`]).
pub fn rotated_names(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = names
        .into_iter()
        .filter_map(|n| {
            let plain = n.strip_suffix(".gz").unwrap_or(&n);
            (plain.starts_with("heartalk-") && plain.ends_with(".log")).then(|| plain.to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What `heartalk logs` prints, from its arguments.
pub struct Options {
    pub lines: usize,
    pub follow: bool,
    pub filter: Filter,
    pub format: Format,
}

impl Options {
    /// `--lines` defaults to [`DEFAULT_LINES`], or to every line when
    /// `--since` is given; colours only on a terminal without `NO_COLOR`.
    pub fn new(args: &LogsArgs, now: SystemTime, terminal: bool) -> Options {
        let default = if args.since.is_some() {
            usize::MAX
        } else {
            DEFAULT_LINES
        };
        let format = if args.json {
            Format::Json
        } else if args.raw {
            Format::Raw
        } else {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            Format::Human {
                color: terminal && !no_color,
            }
        };
        Options {
            lines: args.lines.unwrap_or(default),
            follow: args.follow,
            filter: Filter {
                app: args.app.clone(),
                slot: args.slot,
                since: args
                    .since
                    .map(|d| now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH)),
            },
            format,
        }
    }
}

/// `heartalk logs`: prints the tail, then follows if asked. Stdout closed
/// by its reader (`| head`) ends it quietly, as success.
pub fn run(config: &Config, args: &LogsArgs) -> anyhow::Result<()> {
    let opts = Options::new(args, SystemTime::now(), io::stdout().is_terminal());
    match print(&config.log.dir, &opts) {
        Err(e) if broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn print(dir: &Path, opts: &Options) -> anyhow::Result<()> {
    let path = dir.join(FILE_NAME);
    // The current file is opened first: following continues on this very
    // handle from where the tail ended, so no line is missed or repeated.
    let current = match File::open(&path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let rotated = match std::fs::read_dir(dir) {
        Ok(entries) => rotated_names(
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok()),
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    if current.is_none() && rotated.is_empty() {
        anyhow::bail!(
            "no log file in {} (nothing has been logged with this config yet)",
            dir.display()
        );
    }
    let rotated: Vec<PathBuf> = rotated.iter().map(|n| dir.join(n)).collect();
    let (lines, end) = tail(current.as_ref(), &rotated, opts.lines, &opts.filter)?;
    let mut out = Printer {
        out: io::BufWriter::with_capacity(BLOCK, io::stdout().lock()),
        format: opts.format,
        filter: &opts.filter,
    };
    for e in &lines {
        out.print(e)?;
    }
    out.out.flush()?;
    if opts.follow {
        follow(&path, current, end, &mut out)?;
    }
    Ok(())
}

/// The last `n` lines `filter` keeps, oldest first: from the current file
/// (up to its last complete line, whose end is returned: following starts
/// there), then, as far back as needed, from the rotated files, newest
/// first. With `--since`, a file last written before it is not read.
fn tail(
    current: Option<&File>,
    rotated: &[PathBuf],
    n: usize,
    filter: &Filter,
) -> anyhow::Result<(Vec<Entry>, u64)> {
    let mut newest_first = Vec::new();
    let mut end = 0;
    let mut current_id = None;
    if let Some(f) = current {
        let meta = f.metadata()?;
        current_id = Some((meta.dev(), meta.ino()));
        let wanted = n > 0 && !older(&meta, filter);
        end = backwards(f, meta.len(), true, |line| {
            wanted && collect(&mut newest_first, line, filter, n)
        })?;
    }
    for path in rotated.iter().rev() {
        if newest_first.len() >= n {
            break;
        }
        let Some((file, gz)) = open_rotated(path)? else {
            continue; // pruned meanwhile
        };
        let meta = file.metadata()?;
        if older(&meta, filter) {
            break;
        }
        if current_id == Some((meta.dev(), meta.ino())) {
            continue; // the current file, rotated since it was opened
        }
        if gz {
            let need = n - newest_first.len();
            let mut last = VecDeque::new();
            let decoder = BufReader::new(flate2::read::MultiGzDecoder::new(file));
            let read = forwards(decoder, |line| {
                last.extend(kept(line, filter));
                if last.len() > need {
                    last.pop_front();
                }
            });
            if let Err(e) = read {
                // A damaged old file does not hide the rest.
                eprintln!("heartalk: reading {}.gz: {e}", path.display());
            }
            newest_first.extend(last.into_iter().rev());
        } else {
            backwards(&file, meta.len(), false, |line| {
                collect(&mut newest_first, line, filter, n)
            })
            .with_context(|| format!("reading {}", path.display()))?;
        }
    }
    newest_first.reverse();
    Ok((newest_first, end))
}

/// `line` as an entry, if `filter` keeps it.
fn kept(line: &[u8], filter: &Filter) -> Option<Entry> {
    let e = Entry::parse(String::from_utf8_lossy(line).into_owned());
    filter.keeps(&e).then_some(e)
}

/// Adds `line` to `out` if `filter` keeps it; true while fewer than `n`.
fn collect(out: &mut Vec<Entry>, line: &[u8], filter: &Filter, n: usize) -> bool {
    out.extend(kept(line, filter));
    out.len() < n
}

/// The file was last written before `--since`: none of its lines is newer.
fn older(meta: &std::fs::Metadata, filter: &Filter) -> bool {
    filter
        .since
        .is_some_and(|since| meta.modified().is_ok_and(|m| m < since))
}

/// Opens a rotated file under its plain name or, compressed meanwhile,
/// under its `.gz` one; `None` if it is gone (retention). True: gzipped.
fn open_rotated(plain: &Path) -> anyhow::Result<Option<(File, bool)>> {
    let mut gz = plain.as_os_str().to_owned();
    gz.push(".gz");
    for (path, is_gz) in [(plain.to_path_buf(), false), (PathBuf::from(gz), true)] {
        match File::open(&path) {
            Ok(f) => return Ok(Some((f, is_gz))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        }
    }
    Ok(None)
}

/// Hands the lines of `file` before `end` to `each`, last first, until it
/// returns false; empty lines are skipped. With `whole_only`, a last line
/// without its newline (still being written) is left out. Returns where
/// the complete lines end.
pub fn backwards(
    file: &File,
    end: u64,
    whole_only: bool,
    mut each: impl FnMut(&[u8]) -> bool,
) -> io::Result<u64> {
    let mut pos = end;
    // The bytes from `pos` not yet handed out: the start of a line.
    let mut buf: Vec<u8> = Vec::new();
    let mut complete = (!whole_only).then_some(end);
    loop {
        while let Some(nl) = buf.iter().rposition(|&b| b == b'\n') {
            match complete {
                None => complete = Some(pos + nl as u64 + 1),
                Some(c) => {
                    let line = &buf[nl + 1..];
                    if !line.is_empty() && !each(line) {
                        return Ok(c);
                    }
                }
            }
            buf.truncate(nl);
        }
        if pos == 0 {
            break;
        }
        let start = pos.saturating_sub(BLOCK as u64);
        let mut block = vec![0; (pos - start) as usize];
        file.read_exact_at(&mut block, start)?;
        block.extend_from_slice(&buf);
        buf = block;
        pos = start;
    }
    match complete {
        // Not one newline: nothing is complete yet.
        None => Ok(0),
        Some(c) => {
            if !buf.is_empty() {
                each(&buf);
            }
            Ok(c)
        }
    }
}

/// Hands every non-empty line of `input` to `each`, in order.
fn forwards(mut input: impl BufRead, mut each: impl FnMut(&[u8])) -> io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if !line.is_empty() {
            each(&line);
        }
    }
}

/// Filters and prints lines to stdout.
struct Printer<'a, W: Write> {
    out: W,
    format: Format,
    filter: &'a Filter,
}

impl<W: Write> Printer<'_, W> {
    fn print(&mut self, e: &Entry) -> io::Result<()> {
        writeln!(self.out, "{}", render(e, self.format))
    }

    fn line(&mut self, bytes: &[u8]) -> io::Result<()> {
        match kept(bytes, self.filter) {
            Some(e) => self.print(&e),
            None => Ok(()),
        }
    }
}

/// `--follow`: prints lines appended to `path` from `pos` of `file` (the
/// file the tail read) on, polling every [`POLL`]. When another file
/// appears at `path` (a rotation), the old one is read to its end, then
/// the new one from its start; a file cut shorter than what was read
/// (copy-and-truncate) is read again from its start. Runs until killed or
/// until stdout is closed.
fn follow<W: Write>(
    path: &Path,
    mut file: Option<File>,
    mut pos: u64,
    out: &mut Printer<W>,
) -> anyhow::Result<()> {
    let mut partial = Vec::new();
    let mut buf = vec![0; BLOCK];
    loop {
        if let Some(f) = &file {
            if drain(f, &mut pos, &mut partial, &mut buf, |l| out.line(l))? {
                continue;
            }
        }
        match std::fs::metadata(path) {
            Ok(m) if file.as_ref().is_none_or(|f| !same_file(f, &m)) => {
                if let Some(f) = &file {
                    drain(f, &mut pos, &mut partial, &mut buf, |l| out.line(l))?;
                    if !partial.is_empty() {
                        out.line(&partial)?;
                        partial.clear();
                    }
                }
                match File::open(path) {
                    Ok(f) => {
                        file = Some(f);
                        pos = 0;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("opening {}", path.display()));
                    }
                }
            }
            Ok(m) if m.len() < pos => {
                pos = 0;
                partial.clear();
            }
            _ => {}
        }
        out.out.flush()?;
        std::thread::sleep(POLL);
    }
}

fn same_file(f: &File, m: &std::fs::Metadata) -> bool {
    f.metadata()
        .is_ok_and(|o| o.dev() == m.dev() && o.ino() == m.ino())
}

/// Reads `file` from `pos` to its end, handing each complete line to
/// `each`; a last piece without its newline waits in `partial`. True if
/// anything was read.
fn drain(
    file: &File,
    pos: &mut u64,
    partial: &mut Vec<u8>,
    buf: &mut [u8],
    mut each: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<bool> {
    let mut any = false;
    loop {
        let n = file.read_at(buf, *pos)?;
        if n == 0 {
            return Ok(any);
        }
        any = true;
        *pos += n as u64;
        for piece in buf[..n].split_inclusive(|&b| b == b'\n') {
            match piece.strip_suffix(b"\n") {
                Some(rest) => {
                    partial.extend_from_slice(rest);
                    if !partial.is_empty() {
                        each(partial)?;
                    }
                    partial.clear();
                }
                None => partial.extend_from_slice(piece),
            }
        }
    }
}

#[cfg(test)]
#[path = "tail_tests.rs"]
mod tests;
