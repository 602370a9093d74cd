//! Code both sides of the supervisor/worker contract need: the
//! `ecosystem.toml` schema ([`config`]), the systemd-style socket passing
//! and readiness helpers ([`activation`]), and the control-socket protocol
//! between the CLI verbs and a running supervisor ([`control`]).

pub mod activation;
pub mod config;
pub mod control;
