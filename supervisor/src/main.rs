//! `heartalk` command line: parse arguments, set up JSON logging, dispatch.
//!
//! Exit codes are listed in `exit.rs` and docs/operations.md; a bad config
//! file is always 64 with every error printed, whichever verb read it.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use heartalk::cli::{Cli, Command, Target};
use heartalk::client::{ClientError, ask};
use heartalk::exit::Exit;
use shared::config::{Config, LoadError};
use shared::control::{self, Body};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                Exit::Usage.code()
            } else {
                0
            });
        }
    };
    match cli.command {
        Command::Check { file, config_only } => match load(&file) {
            Ok(config) => {
                if !config_only {
                    if let Some(code) = refuse_secrets(&config, &file) {
                        return code;
                    }
                }
                let workers: Vec<String> = config
                    .apps
                    .iter()
                    .map(|a| format!("{} ({:?} on {})", a.name, a.instances, a.listen))
                    .collect();
                let scope = if config_only {
                    " (the config only: secrets not checked)"
                } else {
                    ""
                };
                println!("{}: ok{scope} — {}", file.display(), workers.join(", "));
                ExitCode::SUCCESS
            }
            Err(code) => ExitCode::from(code.code()),
        },
        Command::Status { target, json } => verb(&target, |path| status(path, json)),
        Command::Top { target } => verb(&target, |path| heartalk::top::run(path, &target.config)),
        Command::Reload { target } => verb(&target, reload),
        Command::Stop { target } => verb(&target, stop),
        Command::Restart { app, target } => verb(&target, |path| restart(path, app)),
        Command::Describe { app, json, target } => verb(&target, |path| describe(path, app, json)),
        Command::Scale {
            app,
            instances,
            target,
        } => verb(&target, |path| scale(path, app, instances)),
        Command::Completions { shell } => {
            heartalk::cli::completions(shell, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man { dir } => match write_man(dir.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("heartalk: writing the man page: {e:#}");
                ExitCode::from(Exit::Forced.code())
            }
        },
        Command::Logs(args) => match load(&args.config) {
            Ok(config) => match heartalk::tail::run(&config, &args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("heartalk: {e:#}");
                    ExitCode::from(Exit::Forced.code())
                }
            },
            Err(code) => ExitCode::from(code.code()),
        },
        Command::Health { url, timeout } => {
            ExitCode::from(heartalk::health::command(url.as_deref(), timeout).code())
        }
        Command::Run { config: file } => {
            let config = match load(&file) {
                Ok(c) => c,
                Err(code) => return ExitCode::from(code.code()),
            };
            // Before anything is set up (a log directory or control socket
            // that cannot be written would otherwise hide the reason).
            if let Some(code) = refuse_secrets(&config, &file) {
                return code;
            }
            // The log writer starts first, so the supervisor's own events
            // go to the same file as the workers' lines.
            let mirror = config.log.stdout.unwrap_or_else(heartalk::sys::is_pid1);
            let sink = match heartalk::logs::LogSink::start(&config.log, mirror) {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!(
                        "heartalk: cannot write logs to {}: {e}; worker output goes to stdout",
                        config.log.dir.display()
                    );
                    None
                }
            };
            init_tracing(sink.clone());
            match runtime().and_then(|rt| rt.block_on(heartalk::run::run(config, sink))) {
                Ok(exit) => ExitCode::from(exit.code()),
                Err(e) => {
                    tracing::error!(event = "fatal", error = format!("{e:#}"));
                    ExitCode::from(Exit::Setup.code())
                }
            }
        }
    }
}

/// Resolves the control socket of `target` and runs `f` on it; failures
/// are one plain line on stderr and a documented exit code.
fn verb(target: &Target, f: impl FnOnce(&Path) -> Result<Exit, ClientError>) -> ExitCode {
    let path = match &target.socket {
        Some(p) => p.clone(),
        None => match load(&target.config) {
            Ok(c) => heartalk::control::find_socket(&c),
            Err(code) => return ExitCode::from(code.code()),
        },
    };
    match f(&path) {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(e @ ClientError::NotRunning(_)) => {
            eprintln!("heartalk: {e}");
            ExitCode::from(Exit::NotRunning.code())
        }
        Err(e) => {
            eprintln!("heartalk: {e}");
            ExitCode::from(Exit::Forced.code())
        }
    }
}

fn status(path: &Path, json: bool) -> Result<Exit, ClientError> {
    match ask(path, control::Command::Status, Duration::from_secs(10))? {
        Body::Status(s) if json => {
            println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            Ok(Exit::Clean)
        }
        Body::Status(s) => {
            print!("{}", heartalk::status::render_table(&s));
            Ok(Exit::Clean)
        }
        other => unexpected(other),
    }
}

fn reload(path: &Path) -> Result<Exit, ClientError> {
    // A reload waits for every new worker's READY: allow for slow starts.
    match ask(path, control::Command::Reload, Duration::from_secs(600))? {
        Body::Reload(r) if r.outcome == "committed" => {
            println!("reload committed: generation {}", r.generation);
            Ok(Exit::Clean)
        }
        Body::Reload(r) => {
            eprintln!(
                "heartalk: reload {} (generation {}): {}",
                r.outcome.replace('_', " "),
                r.generation,
                r.reason.as_deref().unwrap_or("no reason given")
            );
            Ok(Exit::Forced)
        }
        other => unexpected(other),
    }
}

fn restart(path: &Path, app: Option<String>) -> Result<Exit, ClientError> {
    // Every replacement waits for its READY: allow for slow starts.
    match ask(
        path,
        control::Command::Restart { app },
        Duration::from_secs(600),
    )? {
        Body::Restart(r) => {
            let apps = r.apps.join(", ");
            let skipped = match r.skipped {
                0 => String::new(),
                n => format!(" ({n} not serving, skipped: they restart anyway)"),
            };
            if r.outcome != "done" {
                eprintln!(
                    "heartalk: restart {}: {} replaced{skipped}",
                    r.outcome, r.replaced
                );
                return Ok(Exit::Forced);
            }
            if r.failed.is_empty() {
                println!("restarted {apps}: {} workers replaced{skipped}", r.replaced);
                return Ok(Exit::Clean);
            }
            eprintln!(
                "heartalk: restart of {apps}: {} replaced, {} failed (the old workers keep serving){skipped}",
                r.replaced,
                r.failed.len()
            );
            for why in &r.failed {
                eprintln!("  {why}");
            }
            Ok(Exit::Forced)
        }
        other => unexpected(other),
    }
}

fn scale(path: &Path, app: String, instances: String) -> Result<Exit, ClientError> {
    let r = match ask(
        path,
        control::Command::Scale { app, instances },
        Duration::from_secs(10),
    )? {
        Body::Scale(r) => r,
        other => return unexpected(other),
    };
    let held = match &r.scaled {
        Some(n) => format!("scaled to {n}; the file says {}", r.instances),
        None => format!("the file's instances ({})", r.instances),
    };
    println!("{}: {} -> {} workers ({held})", r.app, r.from, r.to);
    // New workers start now: wait until every slot serves, as `reload` does.
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        let status = match ask(path, control::Command::Status, Duration::from_secs(10))? {
            Body::Status(s) => s,
            other => return unexpected(other),
        };
        let Some(app) = status.apps.iter().find(|a| a.name == r.app) else {
            eprintln!("heartalk: app {} is gone (a reload removed it)", r.app);
            return Ok(Exit::Forced);
        };
        if app.workers.iter().any(|w| w.state == "errored") {
            eprintln!(
                "heartalk: a slot of {} gave up (errored): see `heartalk status`",
                r.app
            );
            return Ok(Exit::Forced);
        }
        let serving = app
            .workers
            .iter()
            .filter(|w| matches!(w.state.as_str(), "online" | "degraded"))
            .count();
        if app.workers.len() == r.to && serving == r.to {
            println!("{}: {serving} workers serving", r.app);
            return Ok(Exit::Clean);
        }
        if std::time::Instant::now() >= deadline {
            eprintln!(
                "heartalk: {} of {} workers serving after 10 minutes",
                serving, r.to
            );
            return Ok(Exit::Forced);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn describe(path: &Path, app: String, json: bool) -> Result<Exit, ClientError> {
    match ask(
        path,
        control::Command::Describe { app },
        Duration::from_secs(10),
    )? {
        Body::Describe(d) if json => {
            println!("{}", serde_json::to_string_pretty(&d).unwrap_or_default());
            Ok(Exit::Clean)
        }
        Body::Describe(d) => {
            print!("{}", heartalk::describe::render(&d));
            Ok(Exit::Clean)
        }
        other => unexpected(other),
    }
}

fn stop(path: &Path) -> Result<Exit, ClientError> {
    match ask(path, control::Command::Stop, Duration::from_secs(10))? {
        Body::Stopping => {}
        other => return unexpected(other),
    }
    // The supervisor removes its socket when it has exited.
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while std::time::Instant::now() < deadline {
        if std::os::unix::net::UnixStream::connect(path).is_err() {
            println!("stopped");
            return Ok(Exit::Clean);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("heartalk: the supervisor is still stopping after 10 minutes");
    Ok(Exit::Forced)
}

/// `heartalk man`: heartalk(1) on stdout, or every page into `dir`.
fn write_man(dir: Option<&Path>) -> anyhow::Result<()> {
    let Some(dir) = dir else {
        return Ok(heartalk::cli::man(&mut std::io::stdout())?);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in heartalk::cli::man_pages()? {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn unexpected(body: Body) -> Result<Exit, ClientError> {
    match body {
        Body::Error { message, .. } => eprintln!("heartalk: the supervisor refused: {message}"),
        other => eprintln!("heartalk: unexpected answer from the supervisor: {other:?}"),
    }
    Ok(Exit::Forced)
}

/// Exit 64 with every error when an app's workers would refuse their
/// secrets or token rules (see `heartalk::secrets`), printed on stderr.
fn refuse_secrets(config: &Config, file: &Path) -> Option<ExitCode> {
    let refused = heartalk::secrets::check_apps(&config.apps);
    if refused.is_empty() {
        return None;
    }
    for line in &refused {
        eprintln!("heartalk: {line}");
    }
    eprintln!(
        "heartalk: {} error(s) in the secrets and token rules of {}",
        refused.len(),
        file.display()
    );
    Some(ExitCode::from(Exit::Usage.code()))
}

/// Reads the config, printing every problem to stderr.
fn load(path: &std::path::Path) -> Result<Config, Exit> {
    match Config::load(path) {
        Ok(c) => Ok(c),
        Err(LoadError::Invalid(errors)) => {
            eprintln!("{errors}");
            eprintln!("{} error(s) in {}", errors.errors.len(), path.display());
            Err(Exit::Usage)
        }
        Err(e @ LoadError::Io { .. }) => {
            eprintln!("error: {e}");
            Err(Exit::Usage)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// Lifecycle events as JSON lines on stdout and in the log file;
/// `HEARTALK_LOG` or `LOG_LEVEL` sets the filter (default `info`).
fn init_tracing(sink: Option<heartalk::logs::LogSink>) {
    let filter = std::env::var("HEARTALK_LOG")
        .or_else(|_| std::env::var("LOG_LEVEL"))
        .unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_target(true)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(heartalk::logs::OwnEvents { sink })
        .init();
}
