//! `heartalk` command line: parse arguments, set up JSON logging, dispatch.
//!
//! Exit codes are listed in `exit.rs` and docs/operations.md; a bad config
//! file is always 64 with every error printed, whichever verb read it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use heartalk::client::{ClientError, ask};
use heartalk::exit::Exit;
use shared::config::{Config, LoadError};
use shared::control::{self, Body};

/// Process supervisor for the HearTalk AI service (replaces PM2).
#[derive(Parser)]
#[command(name = "heartalk", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the workers in the foreground until SIGTERM/SIGINT.
    Run {
        /// Config file.
        #[arg(short, long, default_value = "ecosystem.toml", env = "HEARTALK_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file: print every error with its line, exit 64 if any.
    Check {
        /// Config file.
        #[arg(default_value = "ecosystem.toml", env = "HEARTALK_CONFIG")]
        file: PathBuf,
    },
    /// Show every worker of the running fleet.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print the stable JSON schema (docs/operations.md) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Reload the config with zero downtime; waits for the outcome
    /// (exit 0 committed, 1 refused or rolled back).
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Stop the fleet gracefully and wait until the supervisor has exited.
    Stop {
        #[command(flatten)]
        target: Target,
    },
    /// Probe the service's health endpoint (the container HEALTHCHECK):
    /// exit 0 on HTTP 200 (healthy or degraded), 1 otherwise.
    Health {
        /// URL to GET [default: http://127.0.0.1:$PORT/api/v1/health, port 8001
        /// when PORT is unset].
        #[arg(long)]
        url: Option<String>,
        /// Give up after this long (connect, request and answer together).
        #[arg(long, default_value = "5s", value_parser = shared::config::units::parse_duration)]
        timeout: Duration,
    },
}

/// Which supervisor a verb talks to.
#[derive(clap::Args)]
struct Target {
    /// Config file of the running supervisor (locates its control socket).
    #[arg(short, long, default_value = "ecosystem.toml", env = "HEARTALK_CONFIG")]
    config: PathBuf,
    /// The control socket itself (overrides the config's).
    #[arg(long, env = "HEARTALK_SOCKET")]
    socket: Option<PathBuf>,
}

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
        Command::Check { file } => match load(&file) {
            Ok(config) => {
                let workers: Vec<String> = config
                    .apps
                    .iter()
                    .map(|a| format!("{} ({:?} on {})", a.name, a.instances, a.listen))
                    .collect();
                println!("{}: ok — {}", file.display(), workers.join(", "));
                ExitCode::SUCCESS
            }
            Err(code) => ExitCode::from(code.code()),
        },
        Command::Status { target, json } => verb(&target, |path| status(path, json)),
        Command::Reload { target } => verb(&target, reload),
        Command::Stop { target } => verb(&target, stop),
        Command::Health { url, timeout } => {
            ExitCode::from(heartalk::health::command(url.as_deref(), timeout).code())
        }
        Command::Run { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return ExitCode::from(code.code()),
            };
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

fn unexpected(body: Body) -> Result<Exit, ClientError> {
    match body {
        Body::Error { message, .. } => eprintln!("heartalk: the supervisor refused: {message}"),
        other => eprintln!("heartalk: unexpected answer from the supervisor: {other:?}"),
    }
    Ok(Exit::Forced)
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
