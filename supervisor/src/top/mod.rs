//! `heartalk top`: a live full-screen view of the fleet, refreshed every
//! second over the control socket — what `pm2 monit` is for, but usable
//! over SSH and in an 80×24 terminal (plain text, no mouse, columns that do
//! not fit are dropped instead of wrapped).
//!
//! One thread asks the supervisor for its status and reads the end of the
//! fleet log every [`REFRESH`]; another reads the keyboard; the main thread
//! owns the terminal and redraws on whatever either sends. [`model`] turns
//! snapshots into rows and rates (pure), [`draw`] paints a frame, and
//! [`logtail`] reads and compacts the log's last lines.
//!
//! A supervisor that is not running when `top` starts is exit 3 with the
//! usual message, before the screen is touched; one that goes away while
//! `top` runs (a stop, a container restart) is said on the screen, which
//! keeps the last figures and retries every second until it answers again.
//! The terminal is restored however `top` ends: a quit key, an error, or a
//! panic (a guard and a panic hook both leave the alternate screen and raw
//! mode).

pub mod draw;
#[cfg(test)]
mod fixtures;
pub mod logtail;
pub mod model;

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, terminal};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use shared::config::Config;
use shared::control::{self, Body, Status};

use crate::client::{ClientError, ask};
use crate::exit::Exit;
use draw::LogPane;
use model::{Model, Selection};

/// How often the status and the log are read.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long one status request may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `heartalk top` against the supervisor on `socket`; `config` is the
/// `-c` file, used to find the log when the supervisor's own is unreadable.
pub fn run(socket: &Path, config: &Path) -> Result<Exit, ClientError> {
    if !io::stdout().is_terminal() {
        eprintln!("heartalk top needs a terminal; use `heartalk status`");
        return Ok(Exit::Usage);
    }
    let first = status(socket)?;
    let mut log = LogFinder::new(config);
    let first_log = log.pane(&first);
    let screen = match Screen::enter() {
        Ok(s) => s,
        Err(e) => {
            restore();
            eprintln!("heartalk: cannot set up the terminal: {e}");
            return Ok(Exit::Forced);
        }
    };
    let (tx, rx) = mpsc::channel();
    spawn_refresher(socket.to_path_buf(), log, tx.clone());
    spawn_keys(tx);
    let outcome = ui(screen, first, first_log, &rx);
    restore();
    match outcome {
        Ok(()) => Ok(Exit::Clean),
        Err(e) => {
            eprintln!("heartalk: top: {e}");
            Ok(Exit::Forced)
        }
    }
}

/// What the other threads tell the screen.
enum Msg {
    Refreshed {
        at: Instant,
        status: Box<Result<Status, String>>,
        log: Option<LogPane>,
    },
    Input(Event),
    InputFailed(io::Error),
}

/// The status, or why there is none.
fn status(socket: &Path) -> Result<Status, ClientError> {
    match ask(socket, control::Command::Status, ASK_TIMEOUT)? {
        Body::Status(s) => Ok(s),
        Body::Error { message, .. } => Err(ClientError::Protocol(message)),
        other => Err(ClientError::Protocol(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

/// Asks for the status and reads the log every [`REFRESH`], until the
/// screen is gone.
fn spawn_refresher(socket: PathBuf, mut log: LogFinder, tx: mpsc::Sender<Msg>) {
    std::thread::spawn(move || {
        let mut next = Instant::now() + REFRESH;
        loop {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            next += REFRESH;
            let status = status(&socket).map_err(|e| e.to_string());
            let log = status.as_ref().ok().map(|s| log.pane(s));
            let msg = Msg::Refreshed {
                at: Instant::now(),
                status: Box::new(status),
                log,
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
    });
}

fn spawn_keys(tx: mpsc::Sender<Msg>) {
    std::thread::spawn(move || {
        loop {
            let msg = match event::read() {
                Ok(ev) => Msg::Input(ev),
                Err(e) => Msg::InputFailed(e),
            };
            let failed = matches!(msg, Msg::InputFailed(_));
            if tx.send(msg).is_err() || failed {
                return;
            }
        }
    });
}

/// What a key does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Quit,
    Move(isize),
    None,
}

fn action(key: KeyEvent) -> Action {
    if key.kind != KeyEventKind::Press {
        return Action::None;
    }
    match key.code {
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Action::Quit,
        KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
        KeyCode::Up | KeyCode::Char('k') => Action::Move(-1),
        KeyCode::Down | KeyCode::Char('j') => Action::Move(1),
        KeyCode::PageUp => Action::Move(-10),
        KeyCode::PageDown => Action::Move(10),
        KeyCode::Home | KeyCode::Char('g') => Action::Move(isize::MIN / 2),
        KeyCode::End | KeyCode::Char('G') => Action::Move(isize::MAX / 2),
        _ => Action::None,
    }
}

/// The screen's loop: draw, wait for a refresh or a key, repeat.
fn ui(
    mut screen: Screen,
    first: Status,
    first_log: LogPane,
    rx: &mpsc::Receiver<Msg>,
) -> io::Result<()> {
    let mut model = Model::default();
    model.update(first, Instant::now());
    let mut log = first_log;
    let mut selection = Selection::default();
    let mut problem: Option<String> = None;
    loop {
        let extras = draw::Extras {
            selected: selection.index(model.rows.len()),
            log: &log,
            problem: problem.as_deref(),
        };
        screen.term.draw(|f| draw::draw(f, &model, &extras))?;
        let Ok(msg) = rx.recv() else {
            return Ok(());
        };
        match msg {
            Msg::Refreshed { at, status, log: l } => {
                match *status {
                    Ok(s) => {
                        model.update(s, at);
                        selection.clamp(model.rows.len());
                        problem = None;
                    }
                    Err(why) => problem = Some(why),
                }
                if let Some(l) = l {
                    log = l;
                }
            }
            Msg::Input(Event::Key(key)) => match action(key) {
                Action::Quit => return Ok(()),
                Action::Move(d) => selection.step(d, model.rows.len()),
                Action::None => {}
            },
            // A resize (or anything else): just redraw.
            Msg::Input(_) => {}
            Msg::InputFailed(e) => return Err(e),
        }
    }
}

/// Finds `<log.dir>/heartalk.log` from the running supervisor's config
/// (its `config` in the status), else from the `-c` file.
struct LogFinder {
    fallback: PathBuf,
    /// The supervisor's config path it was found for, and the file.
    found: Option<(String, Result<PathBuf, String>)>,
}

impl LogFinder {
    fn new(fallback: &Path) -> LogFinder {
        LogFinder {
            fallback: fallback.to_path_buf(),
            found: None,
        }
    }

    fn file(&mut self, s: &Status) -> Result<PathBuf, String> {
        let config = &s.supervisor.config;
        match &self.found {
            Some((c, file)) if c == config => file.clone(),
            _ => {
                let file = Config::load(Path::new(config))
                    .or_else(|_| Config::load(&self.fallback))
                    .map(|c| c.log.dir.join(crate::logs::FILE_NAME))
                    .map_err(|_| format!("no log shown: cannot read the config {config}"));
                self.found = Some((config.clone(), file.clone()));
                file
            }
        }
    }

    fn pane(&mut self, s: &Status) -> LogPane {
        let file = match self.file(s) {
            Ok(f) => f,
            Err(why) => return LogPane::Unavailable(why),
        };
        match logtail::read_tail(&file, logtail::TAIL_BYTES) {
            Ok(lines) => LogPane::Lines(lines.iter().map(|l| logtail::compact(l)).collect()),
            Err(e) => LogPane::Unavailable(format!("{}: {e}", file.display())),
        }
    }
}

/// The terminal in raw mode on the alternate screen, restored on drop.
struct Screen {
    term: Terminal<CrosstermBackend<io::Stdout>>,
}

/// Whether the terminal is ours (raw, alternate screen) now.
static ENTERED: AtomicBool = AtomicBool::new(false);

impl Screen {
    fn enter() -> io::Result<Screen> {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        ENTERED.store(true, Ordering::SeqCst);
        terminal::enable_raw_mode()?;
        execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)?;
        let mut term = Terminal::new(CrosstermBackend::new(io::stdout()))?;
        term.clear()?;
        Ok(Screen { term })
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves the alternate screen and raw mode, once, whoever calls first
/// (the guard, the panic hook, an error path).
fn restore() {
    if ENTERED.swap(false, Ordering::SeqCst) {
        let _ = terminal::disable_raw_mode();
        let mut out = io::stdout();
        let _ = execute!(out, terminal::LeaveAlternateScreen, cursor::Show);
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, modifiers)
    }

    #[test]
    fn keys_quit_and_move() {
        let none = KeyModifiers::NONE;
        for quit in [
            key(KeyCode::Char('q'), none),
            key(KeyCode::Esc, none),
            key(KeyCode::Char('c'), KeyModifiers::CONTROL),
        ] {
            assert_eq!(action(quit), Action::Quit, "{quit:?}");
        }
        assert_eq!(action(key(KeyCode::Char('c'), none)), Action::None);
        assert_eq!(action(key(KeyCode::Down, none)), Action::Move(1));
        assert_eq!(action(key(KeyCode::Char('j'), none)), Action::Move(1));
        assert_eq!(action(key(KeyCode::Up, none)), Action::Move(-1));
        assert_eq!(action(key(KeyCode::Char('k'), none)), Action::Move(-1));
        let mut release = key(KeyCode::Char('q'), none);
        release.kind = KeyEventKind::Release;
        assert_eq!(action(release), Action::None);
    }
}
