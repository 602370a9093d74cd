//! Code both sides of the supervisor/worker contract need: the
//! `ecosystem.toml` schema ([`config`]), the systemd-style socket passing
//! and readiness helpers ([`activation`]), the control-socket protocol
//! between the CLI verbs and a running supervisor ([`control`]), the
//! secrets and their `_FILE` variables ([`secrets`]), the shared memory
//! the supervisor hands its workers ([`shm`]), and the token rules the
//! worker applies and the supervisor checks before it starts one
//! ([`token_policy`]).

pub mod activation;
pub mod config;
pub mod control;
pub mod secrets;
pub mod shm;
pub mod token_policy;

/// The exit code of a `heartalk` or `heartalk-worker` that refused its
/// configuration, settings or secrets (sysexits' EX_USAGE, the project's
/// convention for bad input). The supervisor names a worker that exits
/// with it `refused` instead of `crash`.
pub const EXIT_REFUSED: u8 = 64;

/// Whether `NODE_ENV` (its value, when set) means production: exactly
/// `production` once trimmed. The one test behind the worker's defaults,
/// the secrets production requires and the token rules' defaults.
pub fn is_production(node_env: Option<&str>) -> bool {
    node_env.is_some_and(|v| v.trim() == "production")
}
