//! The `ecosystem.toml` schema: what the supervisor runs and how.
//!
//! The file is PM2's ecosystem file in TOML, with PM2's key names where PM2
//! has one (`instances`, `max_memory_restart` became `max_memory`,
//! `kill_timeout`, `listen_timeout`, `min_uptime`, `max_restarts`,
//! `restart_delay`). Reading is strict and exhaustive: unknown keys, wrong
//! types and bad values are all errors, and every one of them is reported
//! with its line and column in a single pass (see [`diag`]), because an
//! operator fixing a config should not have to re-run the check per mistake.

mod diag;
mod read;
pub mod units;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use diag::{ConfigError, ConfigErrors};

/// Errors from [`Config::load`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(#[from] ConfigErrors),
}

/// A validated configuration; relative paths are already resolved against
/// the directory of the config file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was read from (for reloads and messages).
    pub path: PathBuf,
    pub supervisor: SupervisorSettings,
    pub log: LogSettings,
    pub apps: Vec<App>,
}

/// `[supervisor]`: the control plane.
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorSettings {
    /// The control socket; `None` = the default location (see the
    /// supervisor's `control` module).
    pub control_socket: Option<PathBuf>,
    /// An admin address where the supervisor itself serves the fleet-wide
    /// `/metrics` (e.g. `127.0.0.1:9464`).
    pub metrics_listen: Option<SocketAddr>,
    /// Whether `GET /metrics` on the service port answers with the
    /// fleet-wide metrics (default true).
    pub service_metrics: bool,
}

impl Default for SupervisorSettings {
    fn default() -> Self {
        SupervisorSettings {
            control_socket: None,
            metrics_listen: None,
            service_metrics: true,
        }
    }
}

/// Where and how worker output is kept (used by the log writer).
#[derive(Debug, Clone, PartialEq)]
pub struct LogSettings {
    pub dir: PathBuf,
    /// Rotate a file when it grows past this many bytes.
    pub max_size: u64,
    /// Rotated files kept per log.
    pub max_files: u32,
    /// Mirror every line on the supervisor's stdout; `None` = only when PID 1.
    pub stdout: Option<bool>,
    /// Longest line kept whole; longer ones are split into marked chunks.
    pub max_line: usize,
    /// Also rotate when the file is this old.
    pub rotate_interval: Option<Duration>,
    /// Lines queued for the writer; past this, lines are dropped and counted.
    pub queue: usize,
    /// Compress rotated files.
    pub compress: bool,
}

/// How many workers an app runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instances {
    Count(NonZeroU32),
    /// One per CPU this process may use (affinity and cgroup quota).
    Max,
}

/// One supervised program and its worker pool.
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    pub name: String,
    /// Program to exec: a path, or a name looked up next to the supervisor
    /// binary and then on `PATH`.
    pub script: String,
    pub args: Vec<String>,
    pub instances: Instances,
    pub listen: SocketAddr,
    pub cwd: PathBuf,
    /// Extra environment for the workers, `${VAR}` already expanded; the
    /// workers also inherit the supervisor's environment.
    pub env: BTreeMap<String, String>,
    /// Graceful replacement threshold (PSS-confirmed), bytes.
    pub max_memory: Option<u64>,
    /// Immediate SIGKILL threshold, bytes.
    pub max_memory_hard: Option<u64>,
    pub memory_check_interval: Duration,
    pub memory_strikes: u32,
    /// A worker that ran this long was stable: its backoff resets.
    pub min_uptime: Duration,
    /// Unstable restarts allowed before the slot is `errored`.
    pub max_restarts: u32,
    /// First restart delay (exponential backoff base).
    pub restart_delay: Duration,
    /// Backoff cap.
    pub restart_delay_max: Duration,
    /// Time a new worker has to send `READY=1`.
    pub listen_timeout: Duration,
    /// Time a stopping worker has to exit before SIGKILL.
    pub kill_timeout: Duration,
    /// Replacement workers started at once during a reload.
    pub max_surge: u32,
    /// A worker that pinged `WATCHDOG=1` at least once and then stays
    /// silent this long is hung: it is replaced (`None`: `"0"`, off).
    pub watchdog: Option<Duration>,
}

/// The shortest watchdog allowed: the worker pings at half the interval,
/// and a shorter one would replace healthy workers on a scheduling hiccup.
pub const MIN_WATCHDOG: Duration = Duration::from_secs(1);

/// The port `listen` defaults to, as the Node.js service did.
pub const DEFAULT_PORT: u16 = 8001;
/// The program run when an app names none.
pub const DEFAULT_SCRIPT: &str = "heartalk-worker";

impl Config {
    /// Reads and validates `path`, expanding `${VAR}` from the process
    /// environment and applying the `PORT` override.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let env = |k: &str| std::env::var(k).ok();
        Ok(Config::parse(&text, path, &env)?)
    }

    /// Validates `text` as if read from `path`; `env` supplies `${VAR}`
    /// values and the `PORT` override (so tests need no process env).
    pub fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        read::read(text, path, base, env)
    }
}

impl App {
    /// Defaults for every optional key; `read` overrides what the file sets.
    pub(crate) fn with_defaults(name: String, cwd: PathBuf) -> App {
        App {
            name,
            script: DEFAULT_SCRIPT.to_string(),
            args: Vec::new(),
            instances: Instances::Max,
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            cwd,
            env: BTreeMap::new(),
            max_memory: None,
            max_memory_hard: None,
            memory_check_interval: Duration::from_secs(1),
            memory_strikes: 2,
            min_uptime: Duration::from_secs(1),
            max_restarts: 16,
            restart_delay: Duration::from_millis(100),
            restart_delay_max: Duration::from_secs(15),
            listen_timeout: Duration::from_secs(10),
            kill_timeout: Duration::from_secs(35),
            max_surge: 1,
            watchdog: Some(Duration::from_secs(10)),
        }
    }
}

/// Expands `${VAR}`, `${VAR:-default}` and `$$` in an env value.
///
/// A variable that is unset (and has no default) is an error rather than an
/// empty string: a missing secret should stop the start, not start a worker
/// with an empty JWT key.
pub fn expand_env(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = inner
                .find('}')
                .ok_or_else(|| "unterminated `${` (write `$$` for a literal `$`)".to_string())?;
            let expr = &inner[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{expr}}}` is not a valid variable reference"));
            }
            match (
                env(name).filter(|v| !v.is_empty() || default.is_none()),
                default,
            ) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(format!("environment variable `{name}` is not set")),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests;
