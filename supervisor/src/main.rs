//! `heartalk` command line: parse arguments, set up JSON logging, dispatch.
//!
//! Exit codes are listed in `exit.rs` and docs/operations.md; a bad config
//! file is always 64 with every error printed, whichever verb read it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use heartalk::exit::Exit;
use shared::config::{Config, LoadError};

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
        Command::Run { config } => {
            init_tracing();
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return ExitCode::from(code.code()),
            };
            match runtime().and_then(|rt| rt.block_on(heartalk::run::run(config))) {
                Ok(exit) => ExitCode::from(exit.code()),
                Err(e) => {
                    tracing::error!(event = "fatal", error = format!("{e:#}"));
                    ExitCode::from(Exit::Setup.code())
                }
            }
        }
    }
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

/// Lifecycle events as JSON lines on stdout; `HEARTALK_LOG` or `LOG_LEVEL`
/// sets the filter (default `info`).
fn init_tracing() {
    let filter = std::env::var("HEARTALK_LOG")
        .or_else(|_| std::env::var("LOG_LEVEL"))
        .unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_target(true)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stdout)
        .init();
}
