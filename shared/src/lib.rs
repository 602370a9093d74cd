//! Code both sides of the supervisor/worker contract need: the
//! `ecosystem.toml` schema ([`config`]), the systemd-style socket passing
//! and readiness helpers ([`activation`]), the control-socket protocol
//! between the CLI verbs and a running supervisor ([`control`]), the
//! secrets and their `_FILE` variables ([`secrets`]), and the
//! shared memory the supervisor hands its workers ([`shm`]).

pub mod activation;
pub mod config;
pub mod control;
pub mod secrets;
pub mod shm;
