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
