//! The command line's definition: every verb, flag and default, in one
//! place, so that argument parsing, `--help`, the shell completions and the
//! man page cannot disagree — the last two are generated from it
//! (`heartalk completions SHELL`, `heartalk man`). `main.rs` parses with it
//! and dispatches.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

/// Process supervisor for the HearTalk AI service (replaces PM2).
#[derive(Parser)]
#[command(name = "heartalk", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the workers in the foreground until SIGTERM/SIGINT.
    Run {
        /// Config file.
        #[arg(short, long, default_value = "ecosystem.toml", env = "HEARTALK_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file and the secrets its apps would get: print every error (with its line), exit 64 if any.
    Check {
        /// Config file.
        #[arg(default_value = "ecosystem.toml", env = "HEARTALK_CONFIG")]
        file: PathBuf,
        /// Check the config file alone, not the secrets (their files and
        /// this environment): to lint a config where the secrets are not,
        /// e.g. in CI.
        #[arg(long)]
        config_only: bool,
    },
    /// Show every worker of the running fleet.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print the stable JSON schema (docs/operations.md) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A live full-screen view of the fleet, refreshed every second: every
    /// worker's CPU, memory, requests per second, connections, restarts,
    /// and the end of the fleet log (q quits, Up/Down select). Needs a
    /// terminal; exit 3 if no supervisor is running.
    Top {
        #[command(flatten)]
        target: Target,
    },
    /// Reload the config with zero downtime; waits for the outcome
    /// (exit 0 committed, 1 refused or rolled back).
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Replace every worker (of APP, or of every app) with a fresh process
    /// running the same config (zero downtime, nothing re-read); waits for
    /// the outcome (exit 0 every worker replaced, 1 some replacement failed).
    Restart {
        /// Only this app's workers.
        app: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Change APP's worker count live: new slots get a socket and a
    /// worker, removed ones drain. The count holds across reloads until
    /// `heartalk scale APP file`; a new supervisor starts with the file's.
    /// Waits until every slot serves (exit 0) or one gives up (exit 1).
    Scale {
        /// The app.
        app: String,
        /// A worker count, `max` (one per usable CPU) or `file` (back to
        /// the config's `instances`).
        #[arg(value_parser = parse_scale)]
        instances: String,
        #[command(flatten)]
        target: Target,
    },
    /// One app in full: its effective config (secrets in its environment
    /// masked), every slot, restarts by reason, the latest exits and why,
    /// the last reload's outcome.
    Describe {
        /// The app.
        app: String,
        /// Print the JSON (docs/operations.md) instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Stop the fleet gracefully and wait until the supervisor has exited.
    Stop {
        #[command(flatten)]
        target: Target,
    },
    /// Print the last lines of the fleet's log, or follow it (`-f`), each
    /// line naming its app, slot and pid (or `heartalk`).
    ///
    /// Reads `<log.dir>/heartalk.log` and its rotated files (gzipped ones
    /// too), not the control socket, so it works whether the supervisor
    /// runs or not.
    Logs(LogsArgs),
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
    /// Print a shell completion script (bash, zsh, fish, elvish or
    /// powershell), e.g. `heartalk completions bash > /etc/bash_completion.d/heartalk`.
    Completions {
        /// The shell to complete for.
        shell: Shell,
    },
    /// Print the man page heartalk(1) (roff), or write every page
    /// (heartalk.1 and heartalk-VERB.1 for each verb) into a directory,
    /// e.g. `heartalk man --dir /usr/local/share/man/man1`.
    Man {
        /// Write every page into this directory instead of printing heartalk(1).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Which supervisor a verb talks to.
#[derive(clap::Args)]
pub struct Target {
    /// Config file of the running supervisor (locates its control socket).
    #[arg(short, long, default_value = "ecosystem.toml", env = "HEARTALK_CONFIG")]
    pub config: PathBuf,
    /// The control socket itself (overrides the config's).
    #[arg(long, env = "HEARTALK_SOCKET")]
    pub socket: Option<PathBuf>,
}

/// Checks a `heartalk scale` count before it is sent.
fn parse_scale(text: &str) -> Result<String, String> {
    match text {
        "max" | "file" => Ok(text.to_string()),
        n if n.parse::<u32>().is_ok_and(|n| n > 0) => Ok(text.to_string()),
        _ => Err("a worker count (1 or more), `max` or `file`".into()),
    }
}

/// `heartalk logs`' options (read by `tail.rs`).
#[derive(clap::Args)]
pub struct LogsArgs {
    /// Config file (its `[log] dir` holds the files).
    #[arg(short, long, default_value = "ecosystem.toml", env = "HEARTALK_CONFIG")]
    pub config: PathBuf,
    /// Print the last N lines (after the filters) [default: 50, or every line
    /// newer than --since when that is given].
    #[arg(short = 'n', long, value_name = "N")]
    pub lines: Option<usize>,
    /// Then keep printing lines as they are written, across rotations (like
    /// `tail -F`), until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// Only lines about this app: its workers' output and the supervisor's
    /// events naming it (fleet-wide events are left out).
    #[arg(long, value_name = "APP")]
    pub app: Option<String>,
    /// Only lines about this slot (of every app, or of --app).
    #[arg(long, value_name = "K")]
    pub slot: Option<u64>,
    /// Only lines logged in this last stretch of time, e.g. `10m`, `2h 30m`.
    #[arg(long, value_name = "DUR", value_parser = shared::config::units::parse_duration)]
    pub since: Option<Duration>,
    /// Print the stored JSON lines unchanged.
    #[arg(long, conflicts_with = "raw")]
    pub json: bool,
    /// Print the message text alone (no time, source or level).
    #[arg(long)]
    pub raw: bool,
}

/// The CLI as clap sees it (for generators and tests).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut command(), "heartalk", out);
}

/// Writes the man page `heartalk(1)`: the verbs listed, each pointing at
/// its own page `heartalk-VERB(1)` (see [`man_pages`]).
pub fn man(out: &mut dyn Write) -> std::io::Result<()> {
    let page = clap_mangen::Man::new(command());
    page.render(out)?;
    page_tail(out)
}

/// Every man page: `heartalk.1` and one `heartalk-VERB.1` per verb, as
/// (file name, roff text) — what `heartalk man --dir` writes, the way git
/// ships `git-commit(1)`.
pub fn man_pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut main = Vec::new();
    man(&mut main)?;
    let mut pages = vec![("heartalk.1".to_string(), main)];
    let mut cmd = command();
    // Built, it has the `help` verb too, which heartalk(1) lists.
    cmd.build();
    for sub in cmd.get_subcommands() {
        let name = format!("heartalk-{}", sub.get_name());
        let sub = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("heartalk {}", sub.get_name()));
        let mut text = Vec::new();
        clap_mangen::Man::new(sub)
            .title(name.clone())
            .render(&mut text)?;
        pages.push((format!("{name}.1"), text));
    }
    Ok(pages)
}

fn page_tail(out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        ".SH \"EXIT STATUS\"\n.TP\n0\nSuccess; for \\fBrun\\fR, every worker stopped cleanly.\n.TP\n1\n\
         A stop had to SIGKILL a worker; a reload refused or rolled back; an unhealthy probe.\n\
         .TP\n3\nNo supervisor answers on the control socket.\n.TP\n64\n\
         Bad usage or an invalid config file (every error printed with its line).\n.TP\n69\n\
         Every slot is errored: the workers keep crashing.\n.TP\n71\n\
         Setting up failed (a socket bind, a missing program).\n.TP\n75\n\
         Another supervisor already runs with this control socket."
    )?;
    writeln!(
        out,
        ".SH FILES\n.TP\necosystem.toml\nThe config file (\\fB--config\\fR, \\fBHEARTALK_CONFIG\\fR)."
    )
}
